package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// sock_diag against the real kernel: dumps compared with /proc, errors,
// recovery, and benchmarks.

var (
	diagLoop4 = netip.MustParseAddr("127.0.0.1")
	diagLoop6 = netip.MustParseAddr("::1")
)

// diagTestNet holds loopback connections of every address kind the parser
// meets: IPv4, IPv6, and an IPv4 client of a dual-stack listener, whose
// accepted socket is IPv6 with IPv4-mapped addresses.
type diagTestNet struct {
	ports                  map[uint16]bool // the listeners' ports
	port4, port6, portDual uint16
}

func diagOpenTestNet(tb testing.TB) *diagTestNet {
	tb.Helper()
	n := &diagTestNet{ports: map[uint16]bool{}}
	for _, c := range []struct {
		network, listen, dial string
		port                  *uint16
	}{
		{"tcp4", "127.0.0.1:0", "127.0.0.1", &n.port4},
		{"tcp6", "[::1]:0", "::1", &n.port6},
		{"tcp", "[::]:0", "127.0.0.1", &n.portDual},
	} {
		ln, err := net.Listen(c.network, c.listen)
		if err != nil {
			tb.Skipf("cannot listen on %s %s (no IPv6?): %v", c.network, c.listen, err)
		}
		tb.Cleanup(func() { ln.Close() })
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		*c.port, n.ports[port] = port, true
		diagConnect(tb, ln, net.JoinHostPort(c.dial, fmt.Sprint(port)))
	}
	return n
}

// diagConnect dials ln and accepts, keeping both ends open until cleanup.
func diagConnect(tb testing.TB, ln net.Listener, addr string) {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		tb.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	tb.Cleanup(func() { s.Close() })
}

// own reports whether s is one of the test's sockets: a listener or an end
// of a connection to one.
func (n *diagTestNet) own(s *socket) bool {
	ok := func(ap netip.AddrPort) bool {
		a := ap.Addr().Unmap()
		return n.ports[ap.Port()] && (a == diagLoop4 || a == diagLoop6 || a.IsUnspecified())
	}
	wanted := s.State == stateEstablished || s.State == stateListen
	return wanted && (ok(s.Local) || ok(s.Remote))
}

func diagSort(ss []socket) []socket {
	slices.SortFunc(ss, func(a, b socket) int { return strings.Compare(diagLine(&a), diagLine(&b)) })
	return ss
}

// diagCollect dumps with d and returns every socket.
func diagCollect(t *testing.T, d *diagSource, ports []uint16) []socket {
	t.Helper()
	var got []socket
	if err := d.dump(ports, func(s *socket) { got = append(got, *s) }); err != nil {
		t.Fatalf("dump(%v): %v", ports, err)
	}
	return got
}

// diagReadProc reads /proc/net/tcp and tcp6 with the /proc parser.
func diagReadProc(t *testing.T) []socket {
	t.Helper()
	var p tableParser
	var got []socket
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(path)
		if err != nil {
			t.Skipf("cannot read the /proc table to compare with: %v", err)
		}
		err = p.parse(f, path, func(s *socket) { got = append(got, *s) }, func(err error) { t.Errorf("%s: %v", path, err) })
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func newTestDiagSource(tb testing.TB) *diagSource {
	tb.Helper()
	d, err := newDiagSource()
	if err != nil {
		tb.Fatalf("newDiagSource: %v", err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// diagRefusedType is a request type that sock_diag refuses with EINVAL, as
// it does every type it does not know: asked with it for the one-walk
// request, a source meets the refusal of a kernel without TCPDIAG_GETSOCK
// (EOPNOTSUPP there) from the real kernel, and must dump per family.
const diagRefusedType = 17

// diagSources are the two ways a source dumps: one walk for both
// families, and per family where the kernel refuses the one walk.
var diagSources = []struct {
	name string
	walk uint16
}{{"one walk", tcpDiagGetSock}, {"per family", diagRefusedType}}

func openTestDiagSource(tb testing.TB, walk uint16) *diagSource {
	tb.Helper()
	d, err := openDiagSource(walk, -1, make([]byte, diagBufSize))
	if err != nil {
		tb.Fatalf("openDiagSource(%d, -1): %v", walk, err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// TestDiagOneWalkRefused: a source asks with TCPDIAG_GETSOCK where the
// kernel takes it (every Linux since 2.6), and per family where the kernel
// refuses the request.
func TestDiagOneWalkRefused(t *testing.T) {
	if d := newTestDiagSource(t); d.walk != tcpDiagGetSock || d.refused != nil {
		t.Errorf("newDiagSource: walk %d, refused %v; want %d, nil", d.walk, d.refused, tcpDiagGetSock)
	}
	d := openTestDiagSource(t, diagRefusedType)
	if d.walk != 0 || !errors.Is(d.refused, errDiagNetlink) || !errors.Is(d.refused, syscall.EINVAL) {
		t.Errorf("asked with type %d: walk %d, refused %v; want 0 and EINVAL", diagRefusedType, d.walk, d.refused)
	}
}

// TestDiagDumpMatchesProc compares netlink with /proc for the test's own
// sockets, which are stable while the rest of the table may change.
func TestDiagDumpMatchesProc(t *testing.T) {
	n := diagOpenTestNet(t)
	for _, src := range diagSources {
		t.Run(src.name, func(t *testing.T) { diagMatchProc(t, n, openTestDiagSource(t, src.walk)) })
	}
}

// diagMatchProc compares d's dumps with /proc for the sockets of n, all
// ports and several port filters.
func diagMatchProc(t *testing.T, n *diagTestNet, d *diagSource) {
	proc := diagReadProc(t)
	var own []socket
	for _, s := range proc {
		if n.own(&s) {
			own = append(own, s)
		}
	}
	if len(own) != 9 {
		t.Fatalf("/proc shows %d of the test's sockets, want 3 listeners and 6 connected:\n%v", len(own), own)
	}
	opts := cmpopts.EquateComparable(netip.AddrPort{})
	// 64 ports, the most the setting takes: the dual-stack listener's
	// last, so that every comparison of the program runs.
	var many []uint16
	for p := uint16(1); len(many) < maxPorts-1; p++ {
		if !n.ports[p] {
			many = append(many, p)
		}
	}
	many = append(many, n.portDual)
	for _, c := range []struct {
		name  string
		ports []uint16
	}{
		{"all", nil},
		{"IPv4 listener port", []uint16{n.port4}},
		{"IPv6 listener port", []uint16{n.port6}},
		{"dual-stack listener port", []uint16{n.portDual}},
		{"two ports", []uint16{n.port6, n.port4}},
		{"64 ports", many},
		{"all again", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			listed := func(s *socket) bool {
				return c.ports == nil || s.State == stateListen ||
					slices.Contains(c.ports, s.Local.Port()) || slices.Contains(c.ports, s.Remote.Port())
			}
			var want []socket
			for _, s := range own {
				if listed(&s) {
					want = append(want, s)
				}
			}
			var got []socket
			for _, s := range diagCollect(t, d, c.ports) {
				if !listed(&s) {
					t.Errorf("ports %v: the kernel sent an unrelated socket %s", c.ports, diagLine(&s))
				}
				if n.own(&s) {
					got = append(got, s)
				}
			}
			if diff := cmp.Diff(diagSort(want), diagSort(got), opts); diff != "" {
				t.Errorf("netlink vs /proc mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDiagDumpPortEdges: the kernel accepts the filter for extreme ports.
func TestDiagDumpPortEdges(t *testing.T) {
	d := newTestDiagSource(t)
	for _, ports := range [][]uint16{{0}, {1}, {65535}, {65535, 1}} {
		for _, s := range diagCollect(t, d, ports) {
			if s.State != stateListen && !slices.Contains(ports, s.Local.Port()) && !slices.Contains(ports, s.Remote.Port()) {
				t.Errorf("ports %v: unrelated socket %s", ports, diagLine(&s))
			}
		}
	}
}

func TestDiagDumpErrors(t *testing.T) {
	d := newTestDiagSource(t)
	if err := d.dump(make([]uint16, maxFilterPorts+1), func(*socket) {}); !errors.Is(err, errDiagPorts) {
		t.Errorf("dump(%d ports) = %v, want %v", maxFilterPorts+1, err, errDiagPorts)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.dump(nil, func(*socket) {}); !errors.Is(err, errDiagClosed) {
		t.Errorf("dump after Close = %v, want %v", err, errDiagClosed)
	}
}

// TestDiagDumpRecovers: after a dump left unread, the kernel refuses new
// dumps (EBUSY) and old replies would be misread; the source must notice and
// start afresh on a new socket.
func TestDiagDumpRecovers(t *testing.T) {
	diagOpenTestNet(t)
	d := newTestDiagSource(t)
	if err := d.send(d.walk, syscall.AF_UNSPEC, listenStates|establishedStates, nil); err != nil {
		t.Fatal(err)
	}
	err := d.dump(nil, func(*socket) {})
	if !errors.Is(err, errDiagSeq) {
		t.Errorf("dump after an abandoned one = %v, want %v", err, errDiagSeq)
	}
	if err := d.dump(nil, func(*socket) {}); err != nil {
		t.Errorf("second dump = %v, want success", err)
	}
}

// TestDiagRecvWaits: recv takes a queued datagram without blocking and,
// when none is queued, waits for one in a blocking call, up to the socket's
// receive timeout. A datagram socket pair stands in for the kernel's side.
func TestDiagRecvWaits(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
	timeout := func(d time.Duration) {
		tv := syscall.NsecToTimeval(int64(d))
		if err := syscall.SetsockoptTimeval(fds[0], syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
	}
	d := &diagSource{fd: fds[0], buf: make([]byte, diagBufSize)}
	if _, errno := recvfromNow(d.fd, d.buf, 0); errno != syscall.EAGAIN {
		t.Fatalf("recvfromNow on an empty socket = %v, want EAGAIN", errno)
	}
	// The kernel never ends a timeout early: a recv that returns sooner
	// did not wait.
	const short = 50 * time.Millisecond
	timeout(short)
	start := time.Now()
	_, err = d.recv()
	if took := time.Since(start); !errors.Is(err, syscall.EAGAIN) || took < short {
		t.Errorf("recv on an empty socket = %v after %v, want the timeout after at least %v", err, took, short)
	}
	timeout(time.Minute)
	sent := make(chan error, 1)
	go func() {
		_, err := syscall.Write(fds[1], []byte("late reply"))
		sent <- err
	}()
	n, err := d.recv()
	if got := string(d.buf[:n]); err != nil || got != "late reply" {
		t.Errorf("recv = %q, %v; want the datagram sent meanwhile", got, err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

// TestDiagDumpAllocs: a warm dump allocates nothing, on every architecture's
// receive path (recvfrom, or socketcall on 386 and s390x).
func TestDiagDumpAllocs(t *testing.T) {
	n := diagOpenTestNet(t)
	for _, src := range diagSources {
		t.Run(src.name, func(t *testing.T) { diagDumpAllocs(t, n, openTestDiagSource(t, src.walk)) })
	}
}

func diagDumpAllocs(t *testing.T, n *diagTestNet, d *diagSource) {
	count := 0
	fn := func(*socket) { count++ }
	for _, ports := range [][]uint16{nil, {n.port4}, {n.port6, n.port4, n.portDual}} {
		if err := d.dump(ports, fn); err != nil {
			t.Fatal(err)
		}
		if allocs := testing.AllocsPerRun(10, func() {
			if err := d.dump(ports, fn); err != nil {
				t.Fatal(err)
			}
		}); allocs != 0 {
			t.Errorf("dump(%v) allocates %v times, want 0", ports, allocs)
		}
	}
	if count == 0 {
		t.Error("the dumps listed no socket")
	}
}

// BenchmarkDiagDump dumps the real table, and a table of 10,000 established
// sockets (5,000 loopback connections), against reading /proc the same way.
func BenchmarkDiagDump(b *testing.B) {
	const pairs = 5000
	run := func(name string, table func(b *testing.B) int) {
		port := table(b)
		b.Run(name+"/netlink", func(b *testing.B) { diagBenchNetlink(b, nil) })
		if port > 0 {
			b.Run(name+"/netlink-port", func(b *testing.B) { diagBenchNetlink(b, []uint16{uint16(port)}) })
		}
		b.Run(name+"/proc", diagBenchProc)
	}
	run("table=machine", func(*testing.B) int { return 0 })
	run(fmt.Sprintf("table=%d", 2*pairs), func(b *testing.B) int {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close() })
		for range pairs {
			diagConnect(b, ln, ln.Addr().String())
		}
		n := diagOpenTestNet(b) // the filter picks the one connection to port4
		return int(n.port4)
	})
}

func diagBenchNetlink(b *testing.B, ports []uint16) {
	d := newTestDiagSource(b)
	n := 0
	fn := func(*socket) { n++ }
	b.ReportAllocs()
	for b.Loop() {
		if err := d.dump(ports, fn); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/float64(b.N), "sockets/op")
}

func diagBenchProc(b *testing.B) {
	var p tableParser
	n := 0
	fn := func(*socket) { n++ }
	b.ReportAllocs()
	for b.Loop() {
		for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			f, err := os.Open(path)
			if err != nil {
				b.Skip(err)
			}
			err = p.parse(f, path, fn, func(error) {})
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(n)/float64(b.N), "sockets/op")
}
