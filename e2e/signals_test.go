package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// Hardening: signals and listen ports.

func TestSignalsAndPorts(t *testing.T) {
	t.Run("SIGTERM during a scrape", signalsSIGTERMDuringScrape)
	t.Run("listen address in use", signalsListenInUse)
	t.Run("loopback only", signalsLoopbackOnly)
}

// signalsSIGTERMDuringScrape is the subtest "SIGTERM during a scrape" of TestSignalsAndPorts.
func signalsSIGTERMDuringScrape(t *testing.T) {
	// Thousands of listening ports make a body of megabytes, more than
	// the socket buffers hold: while the client does not read, the
	// scrape's handler is still writing. (A request whose header is
	// not complete when the shutdown begins is dropped by net/http.)
	procfs := t.TempDir()
	if err := os.Mkdir(filepath.Join(procfs, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	good4, err := os.ReadFile("testdata/hostile/tcp")
	if err != nil {
		t.Fatal(err)
	}
	tcp := good4[:bytes.IndexByte(good4, '\n')+1]
	for i := range 6000 {
		tcp = fmt.Appendf(tcp, "%4d: 0100007F:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000c41000 100 0 0 10 0\n", i, 20000+i, 60000+i)
	}
	if err := os.WriteFile(filepath.Join(procfs, "net", "tcp"), tcp, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startBinary(t, nil, "-procfs", procfs, "-interval", "1s")
	ref := families(testnet.Scrape(t, p.url))
	addr := strings.TrimPrefix(p.url, "http://")
	const rcvbuf = 4096
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, rcvbuf), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testnet.WaitFor(t, 10*time.Second, "the exporter to stop accepting connections", func() bool {
		c2, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the scrape in flight: status %d, %v after %d bytes", resp.StatusCode, err, len(body))
	}
	if bad := checkComplete(string(body), ref); bad != "" {
		t.Errorf("the scrape in flight: %s", bad)
	}
	if max := 4<<20 + 2*rcvbuf; len(body) < 2*max {
		t.Errorf("a body of %d bytes: the socket buffers (at most %d bytes) may have held it all, so the scrape was not in flight", len(body), max)
	}
	if got := len(testnet.Samples(string(body), longtermName)); got != 6000 {
		t.Errorf("%d series of %s, want 6000: one for each listening port", got, longtermName)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the exporter still runs 10s after the scrape in flight ended:\n%s", p.stderr)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0; log:\n%s", code, p.stderr)
	}
	if strings.Contains(p.stderr.String(), "tcp_established_exporter: ") {
		t.Errorf("an error at shutdown:\n%s", p.stderr)
	}
	t.Logf("a %d-byte scrape in flight completed; exited %s after SIGTERM", len(body), time.Since(signalled).Round(time.Millisecond))
}

// signalsListenInUse is the subtest "listen address in use" of TestSignalsAndPorts.
func signalsListenInUse(t *testing.T) {
	bin := buildBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	for _, listen := range []string{"127.0.0.1:" + port, port} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, "-listen", listen)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("-listen %s in use: %v, want exit status 1", listen, err)
		}
		out := stderr.String()
		if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") ||
			!strings.HasPrefix(out, "tcp_established_exporter: ") || !strings.Contains(out, "address already in use") {
			t.Errorf("-listen %s in use: stderr %q, want one line saying the address is in use", listen, out)
		}
		if stdout.Len() > 0 {
			t.Errorf("-listen %s in use: stdout %q, want nothing", listen, stdout.String())
		}
	}
}

// signalsLoopbackOnly is the subtest "loopback only" of TestSignalsAndPorts.
// It runs in a network namespace of its own, with documentation addresses
// on a veth interface as the host's addresses: no traffic leaves it.
func signalsLoopbackOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to create a network namespace")
	}
	ip := lookPath(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t, ip, "listen")
	for _, args := range [][]string{
		{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"addr", "add", "192.0.2.1/24", "dev", "v0"},
		{"addr", "add", "2001:db8::1/64", "dev", "v0", "nodad"},
		{"link", "set", "v0", "up"},
		{"link", "set", "v1", "up"},
	} {
		if out, err := exec.Command(ip, append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %v: %v\n%s", ns, args, err, out)
		}
	}
	hosts := []string{"192.0.2.1", "2001:db8::1"}
	bin := buildBinary(t)
	startProcess(t, nil, ip, "netns", "exec", ns, bin, "-listen", "127.0.0.1:9690")
	startProcess(t, nil, ip, "netns", "exec", ns, bin, "-listen", "9691")
	testnet.WaitFor(t, waitLong, "both exporters", func() bool {
		_, err1 := scrapeInNetns(ip, ns, self, "http://127.0.0.1:9690/healthz")
		_, err2 := scrapeInNetns(ip, ns, self, "http://127.0.0.1:9691/healthz")
		return err1 == nil && err2 == nil
	})
	for _, h := range hosts {
		// Listening on all addresses answers on each host address: the
		// refusal below is the exporter's doing.
		if body, err := scrapeInNetns(ip, ns, self, "http://"+net.JoinHostPort(h, "9691")+"/healthz"); err != nil || body != "ok\n" {
			t.Errorf("-listen 9691, /healthz via %s: %q, %v; want ok", h, body, err)
		}
		_, err := scrapeInNetns(ip, ns, self, "http://"+net.JoinHostPort(h, "9690")+"/healthz")
		if err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("-listen 127.0.0.1:9690, dialling %s: %v, want connection refused", h, err)
		}
	}
}
