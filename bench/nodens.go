package main

import (
	"encoding/binary"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// A node of pods, for the node rows: K network namespaces, each of
// podProcs processes (a pod's containers: sleep processes, entered into
// it) and holding loopback connections made inside it, beside the bench's
// own namespace, which plays the host's. The bench holds the sockets
// itself: a Go process a pod would cost megabytes each, and who holds a
// socket does not change the tables.

const (
	podProcs  = 3    // processes in each namespace
	nodeProcs = 2000 // processes on the node, made up with sleeps in the host's namespace
	sleepFor  = "3600"
)

// pod is one namespace of the node.
type pod struct {
	procs   []*exec.Cmd
	netns   string // /proc/PID/ns/net of its first process
	ln      *net.TCPListener
	conns   []*net.TCPConn // both ends of each connection
	buckets int            // its tcp_ehash_entries: negative when shared with the host
}

// node is the pods and the sleeps that make up the node's processes.
type node struct {
	pods   []*pod
	extras []*exec.Cmd
}

// podConns is how many connections each of k namespaces holds: 50, fewer
// beyond 100 namespaces, 5,000 in all, so that the fds fit in the
// bench's limit (20,000 here, which it cannot raise).
func podConns(k int) int { return max(1, min(50, 5000/k)) }

// makeNode makes k namespaces of conns connections each; own, each with a
// table of its own (tcp_child_ehash_entries set while they are made), and
// checks which they got.
func makeNode(k, conns int, own bool) (*node, error) {
	if err := checkLimits(k, conns); err != nil {
		return nil, err
	}
	n := &node{}
	err := n.startPods(k, own)
	for i := 0; err == nil && i < len(n.pods); i++ {
		p := n.pods[i]
		err = inNetns(p.netns, func() error { return p.populate(conns) })
		switch {
		case err != nil:
		case own && p.buckets != ownBuckets:
			err = fmt.Errorf("namespace made after tcp_child_ehash_entries=%d has tcp_ehash_entries %d", ownBuckets, p.buckets)
		case !own && p.buckets >= 0:
			err = fmt.Errorf("namespace has tcp_ehash_entries %d: not the host's shared table", p.buckets)
		}
	}
	if err != nil {
		n.remove()
		return nil, err
	}
	return n, nil
}

// checkLimits fails unless the sockets fit in the bench's open-file limit
// and the processes in the machine's pids, with room to spare.
func checkLimits(k, conns int) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if fds := k * (2*conns + 1); uint64(fds+1000) > rl.Cur {
		return fmt.Errorf("%d namespaces of %d connections need %d fds, over the limit of %d less 1000", k, conns, fds, rl.Cur)
	}
	pidMax := readInt("/proc/sys/kernel/pid_max", 32768)
	tasks := 0
	if f := strings.Fields(readString("/proc/loadavg")); len(f) > 3 {
		_, total, _ := strings.Cut(f[3], "/")
		tasks, _ = strconv.Atoi(total)
	}
	if need := max(k*podProcs, nodeProcs); tasks+need+2000 > pidMax {
		return fmt.Errorf("%d processes beside the machine's %d tasks exceed pid_max %d less 2000", need, tasks, pidMax)
	}
	return nil
}

// startPods starts k processes, each in a new network namespace, made
// while tcp_child_ehash_entries is set when own (and restored at once),
// then the other processes of each namespace.
func (n *node) startPods(k int, own bool) error {
	if err := n.startFirsts(k, own); err != nil {
		return err
	}
	for _, p := range n.pods {
		for range podProcs - 1 {
			cmd, err := startSleep("nsenter", "--net="+p.netns, "--", "sleep", sleepFor)
			if err != nil {
				return err
			}
			p.procs = append(p.procs, cmd)
		}
	}
	return nil
}

// startFirsts starts the first process of each of k namespaces, which
// makes the namespace by its clone(2).
func (n *node) startFirsts(k int, own bool) error {
	if own {
		restore, err := setChildEhash(ownBuckets)
		if err != nil {
			return err
		}
		defer restore()
	}
	for range k {
		cmd := exec.Command("sleep", sleepFor)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("a pod's namespace: %v", err)
		}
		n.pods = append(n.pods, &pod{procs: []*exec.Cmd{cmd}, netns: fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)})
	}
	return nil
}

// startSleep starts a process bounded in time, killed should the bench
// die (and, the bench being PID 1 of its PID namespace, with it anyway).
func startSleep(bin string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %v", bin, err)
	}
	return cmd, nil
}

// populate runs on a thread inside p's namespace: it brings loopback up,
// reads the size of the namespace's table (/proc/sys/net is the calling
// thread's namespace's) and makes conns connections to a listener there.
func (p *pod) populate(conns int) error {
	if err := loopbackUp(); err != nil {
		return err
	}
	v, err := os.ReadFile("/proc/sys/net/ipv4/tcp_ehash_entries")
	if err == nil {
		p.buckets, err = strconv.Atoi(strings.TrimSpace(string(v)))
	}
	if err != nil {
		return fmt.Errorf("tcp_ehash_entries: %v", err)
	}
	if p.ln, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		return err
	}
	addr := p.ln.Addr().(*net.TCPAddr)
	for range conns { // the dial of an IP address makes its socket on this thread
		c, err := net.DialTCP("tcp4", nil, addr)
		if err != nil {
			return err
		}
		p.conns = append(p.conns, c)
	}
	for range conns {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			return err
		}
		p.conns = append(p.conns, c)
	}
	return nil
}

// loopbackUp sets the flag IFF_UP of lo in the calling thread's namespace,
// as ip link set lo up does, without a process a namespace.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: the name, then the flags
	copy(ifr[:], "lo")
	ioctl := func(req uintptr) error {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
			return fmt.Errorf("ioctl %#x lo: %w", req, e)
		}
		return nil
	}
	if err := ioctl(syscall.SIOCGIFFLAGS); err != nil {
		return err
	}
	binary.NativeEndian.PutUint16(ifr[16:], binary.NativeEndian.Uint16(ifr[16:])|syscall.IFF_UP)
	return ioctl(syscall.SIOCSIFFLAGS)
}

// startExtras starts sleeps in the host's namespace until the node has
// total processes, counting those to come of more.
func (n *node) startExtras(total, more int) error {
	for have := countProcs() + more; have < total; have++ {
		cmd, err := startSleep("sleep", sleepFor)
		if err != nil {
			return err
		}
		n.extras = append(n.extras, cmd)
	}
	return nil
}

// stopExtras ends the sleeps of startExtras.
func (n *node) stopExtras() {
	stopAll(n.extras)
	n.extras = nil
}

func stopAll(cmds []*exec.Cmd) {
	for _, c := range cmds {
		c.Process.Kill()
	}
	for _, c := range cmds {
		c.Wait()
	}
}

// remove closes the pods' sockets with an RST, which leaves no TIME_WAIT
// behind, and ends every process: the namespaces go with the last of
// their processes and sockets. It waits, a minute at most, for the kernel
// to free them (it does so in the background), so that the next
// measurement does not share the machine with that work.
func (n *node) remove() {
	before := netnsObjects()
	n.stopExtras()
	for _, p := range n.pods {
		closeConns(p.conns)
		if p.ln != nil {
			p.ln.Close()
		}
		stopAll(p.procs)
	}
	if left := otherNetns(); left > 0 {
		log.Printf("%d network namespaces besides the bench's still have a process", left)
	}
	start := time.Now()
	err := waitFor(time.Minute, "the kernel to free the namespaces", func() bool {
		return netnsObjects() <= before-len(n.pods)+64
	})
	if err != nil {
		log.Print(err)
	}
	log.Printf("%d namespaces removed, freed by the kernel in %.1f s", len(n.pods), time.Since(start).Seconds())
}

func closeConns(conns []*net.TCPConn) {
	for _, c := range conns {
		c.SetLinger(0)
		c.Close()
	}
}

// countProcs is the processes in the bench's PID namespace: its /proc's
// numbered entries, which the exporter's scan lists.
func countProcs() int {
	names, err := readDirNames("/proc")
	n := 0
	for _, name := range names {
		if _, err := strconv.Atoi(name); err == nil {
			n++
		}
	}
	if err != nil {
		log.Printf("listing /proc: %v", err)
	}
	return n
}

// otherNetns is the processes in a network namespace other than the
// bench's own.
func otherNetns() int {
	self, _ := os.Readlink("/proc/self/ns/net")
	names, _ := readDirNames("/proc")
	n := 0
	for _, name := range names {
		if _, err := strconv.Atoi(name); err != nil {
			continue
		}
		if ns, err := os.Readlink("/proc/" + name + "/ns/net"); err == nil && ns != self {
			n++
		}
	}
	return n
}

func readDirNames(path string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// netnsObjects is the machine's network namespaces still allocated, from
// the slab they are made of (every engineer's, and some free objects the
// allocator keeps per CPU): a proxy, to see the kernel's freeing end.
func netnsObjects() int {
	for line := range strings.SplitSeq(readString("/proc/slabinfo"), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "net_namespace" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func readString(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

func readInt(path string, def int) int {
	n, err := strconv.Atoi(strings.TrimSpace(readString(path)))
	if err != nil {
		return def
	}
	return n
}
