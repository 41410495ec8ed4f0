package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// place is the network namespace a measurement runs in: the bench's own,
// or another one, which its processes enter with nsenter and the HTTP
// client reaches with sockets made there.
type place struct {
	netns     string            // /proc/PID/ns/net; "" for the bench's own
	transport http.RoundTripper // reaches the exporter's listen address there
	addr      string            // the exporter's listen address; "" for exporterAddr
}

// listen is the address the exporter of p listens on: two exporters
// measured by turns in one namespace need one each.
func (p place) listen() string {
	if p.addr == "" {
		return exporterAddr
	}
	return p.addr
}

// home is the bench's own namespace.
var home = place{transport: http.DefaultTransport}

// command runs bin with args in p's namespace. nsenter execs bin without
// forking, so the process's pid is bin's.
func (p place) command(bin string, args ...string) *exec.Cmd {
	if p.netns == "" {
		return exec.Command(bin, args...)
	}
	return exec.Command("nsenter", append([]string{"--net=" + p.netns, "--", bin}, args...)...)
}

// emptyNetns is a network namespace with nothing in it but loopback, held
// by a sleeping process of its own: it goes when that process and the
// processes that entered it have.
type emptyNetns struct {
	place
	holder  *exec.Cmd
	client  *http.Transport // place's transport
	buckets int             // its tcp_ehash_entries: negative when shared with the host
}

// ownBuckets is the size of the table an empty namespace is given when it
// is not to share the host's.
const ownBuckets = 1024

// childEhash is the sysctl that gives a namespace made afterwards, by a
// process of this one, a table of its own; per namespace since Linux 6.1.
const childEhash = "/proc/sys/net/ipv4/tcp_child_ehash_entries"

// makeEmptyNetns makes an empty namespace with loopback up that shares the
// host's connection table or, own, has one of ownBuckets buckets, and
// checks which it got.
func makeEmptyNetns(own bool) (*emptyNetns, error) {
	holder, err := startHolder(own)
	if err != nil {
		return nil, err
	}
	e := &emptyNetns{holder: holder}
	e.netns = fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)
	e.client = &http.Transport{DialContext: dialIn(e.netns)}
	e.transport = e.client
	if out, err := e.command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		e.remove()
		return nil, fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	out, err := e.command("cat", "/proc/sys/net/ipv4/tcp_ehash_entries").Output()
	if err == nil {
		e.buckets, err = strconv.Atoi(strings.TrimSpace(string(out)))
	}
	switch {
	case err != nil:
		err = fmt.Errorf("tcp_ehash_entries of the empty namespace: %v", err)
	case own && e.buckets != ownBuckets:
		err = fmt.Errorf("empty namespace made after tcp_child_ehash_entries=%d has tcp_ehash_entries %d", ownBuckets, e.buckets)
	case !own && e.buckets >= 0:
		err = fmt.Errorf("empty namespace has tcp_ehash_entries %d: not the host's shared table", e.buckets)
	}
	if err != nil {
		e.remove()
		return nil, err
	}
	return e, nil
}

// startHolder starts the process whose namespace is the empty one, a new
// one made by its clone(2); own, with childEhash set to ownBuckets for
// that clone only, so that no other namespace is made with it.
func startHolder(own bool) (*exec.Cmd, error) {
	if own {
		restore, err := setChildEhash(ownBuckets)
		if err != nil {
			return nil, err
		}
		defer restore()
	}
	holder := exec.Command("sleep", "1800") // bounded, should the bench die unseen
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := holder.Start(); err != nil {
		return nil, fmt.Errorf("empty namespace: %v", err)
	}
	return holder, nil
}

// setChildEhash sets childEhash in the bench's own namespace, never the
// host's, and returns what restores the old value.
func setChildEhash(v int) (restore func(), err error) {
	self, _ := os.Readlink("/proc/self/ns/net")
	outer := strings.Fields(os.Getenv(outerNetnsEnv))
	if os.Getenv("TEE_BENCH_NETNS") == "" || self == "" || len(outer) == 0 || slices.Contains(outer, self) {
		return nil, fmt.Errorf("not in a network namespace of its own: %s not set", childEhash)
	}
	old, err := os.ReadFile(childEhash)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(childEhash, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return nil, err
	}
	return func() {
		// Should this fail, the next shared namespace fails its check.
		if err := os.WriteFile(childEhash, old, 0o644); err != nil {
			log.Printf("restore %s: %v", childEhash, err)
		}
	}, nil
}

// remove ends the holder, and the HTTP client's kept-alive connections,
// whose sockets hold the namespace too.
func (e *emptyNetns) remove() {
	e.client.CloseIdleConnections()
	e.holder.Process.Kill()
	e.holder.Wait()
}

// dialIn dials from the network namespace at path: a socket stays in the
// namespace it was made in, so only the dial's thread needs to be there.
// The dial of an IP address makes its socket in the calling goroutine.
func dialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(path, func() (err error) {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// inNetns runs f on a thread moved into the network namespace at path, and
// moves the thread back. A thread that cannot be moved back stays locked to
// the goroutine, and the runtime ends it when the goroutine ends.
func inNetns(path string, f func() error) error {
	trap := setnsTrap()
	if trap == 0 {
		return fmt.Errorf("setns: system call number unknown on %s", runtime.GOARCH)
	}
	target, err := os.Open(path)
	if err != nil {
		return err
	}
	defer target.Close()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	if _, _, e := syscall.Syscall(trap, target.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", path, e)
	}
	err = f()
	if _, _, e := syscall.Syscall(trap, self.Fd(), syscall.CLONE_NEWNET, 0); e == 0 {
		runtime.UnlockOSThread()
	}
	return err
}

// setnsTrap is setns(2)'s number, which package syscall's tables for amd64
// and 386 predate; 0 where not known.
func setnsTrap() uintptr {
	switch runtime.GOARCH {
	case "amd64":
		return 308
	case "386":
		return 346
	case "arm64", "riscv64", "loong64":
		return 268
	case "arm":
		return 375
	}
	return 0
}
