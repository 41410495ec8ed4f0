package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var captureNetlink = flag.Bool("capture-netlink", false,
	"rewrite testdata/netlink/*.bin and *.golden from this machine's kernel")

const diagTestdata = "testdata/netlink"

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

func diagLine(s *socket) string {
	return fmt.Sprintf("%v %v %v %d", s.Local, s.Remote, s.State, s.Inode)
}

func diagSort(ss []socket) []socket {
	slices.SortFunc(ss, func(a, b socket) int { return strings.Compare(diagLine(&a), diagLine(&b)) })
	return ss
}

// diagCollect dumps with d and returns every socket.
func diagCollect(t *testing.T, d *diagSource, port int) []socket {
	t.Helper()
	var got []socket
	if err := d.dump(port, func(s *socket) { got = append(got, *s) }); err != nil {
		t.Fatalf("dump(%d): %v", port, err)
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

// TestCaptureNetlink rewrites the golden files from real kernel replies.
// A filter keeps them to the test's own sockets whatever else the machine
// runs.
func TestCaptureNetlink(t *testing.T) {
	if !*captureNetlink {
		t.Skip("rewrites testdata/netlink only with -capture-netlink")
	}
	n := diagOpenTestNet(t)
	d := newTestDiagSource(t)
	if err := os.MkdirAll(diagTestdata, 0o755); err != nil {
		t.Fatal(err)
	}
	own := diagAnyPortFilter(n.port4, n.port6, n.portDual)
	broken := slices.Clone(own)
	broken[1] = 0 // yes = 0: the kernel rejects the program
	for _, c := range []struct {
		name   string
		family uint8
		bc     []byte
	}{
		{"inet", syscall.AF_INET, own},
		{"inet6", syscall.AF_INET6, own},
		{"einval", syscall.AF_INET, broken},
	} {
		d.seq++
		req := appendRequest(nil, d.seq, c.family, listenStates|establishedStates, -1)
		req = binary.NativeEndian.AppendUint16(req, uint16(4+len(c.bc)))
		req = append(binary.NativeEndian.AppendUint16(req, diagReqBytecode), c.bc...)
		binary.NativeEndian.PutUint32(req, uint32(len(req)))
		if _, err := syscall.Write(d.fd, req); err != nil {
			t.Fatal(err)
		}
		var raw []byte
		for done := false; !done; {
			n, err := d.recv()
			if err != nil {
				t.Fatal(err)
			}
			raw = append(raw, d.buf[:n]...)
			done, _ = parseDiagMessages(d.buf[:n], func(*socket) {})
		}
		golden, _ := diagGolden(raw)
		t.Logf("%s:\n%s", c.name, golden)
		diagWrite(t, c.name+".bin", raw)
		diagWrite(t, c.name+".golden", []byte(golden))
	}
}

// diagAnyPortFilter builds bytecode accepting sockets with any of ports as
// source or destination port, the way appendPortFilter does for one:
// each comparison but the last is followed by a JMP to the end (accept).
func diagAnyPortFilter(ports ...uint16) []byte {
	ne := binary.NativeEndian
	total := 2*len(ports)*12 - 4
	var b []byte
	for i, p := range ports {
		for j, code := range []uint8{bcSrcEq, bcDstEq} {
			b = ne.AppendUint16(append(b, code, 8), 12)
			b = ne.AppendUint16(append(b, 0, 0), p)
			if i < len(ports)-1 || j == 0 {
				b = ne.AppendUint16(append(b, bcJmp, 4), uint16(total-len(b)))
			}
		}
	}
	return b
}

func diagWrite(t *testing.T, name string, b []byte) {
	if err := os.WriteFile(filepath.Join(diagTestdata, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// diagGolden renders a parse of raw: one socket per line, then the outcome.
func diagGolden(raw []byte) (string, error) {
	var b strings.Builder
	done, err := parseDiagMessages(raw, func(s *socket) { b.WriteString(diagLine(s) + "\n") })
	fmt.Fprintf(&b, "done=%v err=%v\n", done, err)
	return b.String(), err
}

func diagRead(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(diagTestdata, name))
	if err != nil {
		tb.Fatalf("%v (regenerate with go test -run TestCaptureNetlink -capture-netlink)", err)
	}
	return b
}

func TestParseDiagGolden(t *testing.T) {
	for _, c := range []struct {
		name string
		want string // a line the capture must contain
	}{
		{"inet", " 127.0.0.1:"},
		{"inet6", " [::ffff:127.0.0.1]:"}, // accepted by the dual-stack listener
		{"einval", "invalid argument"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := diagGolden(diagRead(t, c.name+".bin"))
			want := string(diagRead(t, c.name+".golden"))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("parse of %s.bin mismatch (-want +got):\n%s", c.name, diff)
			}
			if !strings.Contains(got, c.want) {
				t.Errorf("capture %s lacks %q; recapture with -capture-netlink", c.name, c.want)
			}
		})
	}
}

type diagCase struct {
	name      string
	data      []byte
	wantDone  bool
	wantN     int   // sockets before the outcome
	wantErr   error // nil, or a sentinel for errors.Is
	wantErrno error // nil, or the errno the error must also wrap
}

// diagCases derives well-formed and malformed buffers from real captures.
func diagCases(tb testing.TB) []diagCase {
	base := diagRead(tb, "inet.bin")
	ne := binary.NativeEndian
	first := int(ne.Uint32(base)) // the first message is an inet_diag_msg
	total := strings.Count(string(diagRead(tb, "inet.golden")), "\n") - 1
	edit := func(off int, put func([]byte)) []byte {
		b := slices.Clone(base)
		put(b[off:])
		return b
	}
	msg := func(typ uint16, payload ...byte) []byte {
		b := ne.AppendUint32(nil, uint32(nlmsgHdrLen+len(payload)))
		b = ne.AppendUint16(b, typ)
		return append(append(b, make([]byte, 10)...), payload...)
	}
	errno := func(e syscall.Errno) []byte { return ne.AppendUint32(nil, uint32(-int32(e))) }
	return []diagCase{
		{name: "real dump", data: base, wantDone: true, wantN: total},
		{name: "empty", data: nil},
		{name: "first message only", data: base[:first], wantN: 1},
		{name: "noop then dump", data: append(msg(syscall.NLMSG_NOOP), base...), wantDone: true, wantN: total},
		{name: "ack", data: msg(syscall.NLMSG_ERROR, errno(0)...), wantDone: true},
		{name: "done without error field", data: msg(syscall.NLMSG_DONE), wantDone: true},
		{name: "truncated mid-header", data: base[:first+10], wantN: 1, wantErr: errDiagHeader},
		{name: "truncated mid-payload", data: base[:first+nlmsgHdrLen+30], wantN: 1, wantErr: errDiagLength},
		{name: "lying length", data: edit(0, func(b []byte) { ne.PutUint32(b, uint32(len(base)+64)) }), wantErr: errDiagLength},
		{name: "huge length", data: edit(0, func(b []byte) { ne.PutUint32(b, 0xffffffff) }), wantErr: errDiagLength},
		{name: "length below header", data: edit(0, func(b []byte) { ne.PutUint32(b, 12) }), wantErr: errDiagShortLen},
		{name: "zero length", data: edit(0, func(b []byte) { ne.PutUint32(b, 0) }), wantErr: errDiagShortLen},
		{name: "payload shorter than inet_diag_msg", data: edit(0, func(b []byte) { ne.PutUint32(b, nlmsgHdrLen+40) }), wantErr: errDiagShortMsg},
		{name: "real NLMSG_ERROR", data: diagRead(tb, "einval.bin"), wantDone: true, wantErr: errDiagNetlink, wantErrno: syscall.EINVAL},
		{name: "NLMSG_ERROR EPERM", data: append(base[:first:first], msg(syscall.NLMSG_ERROR, errno(syscall.EPERM)...)...), wantDone: true, wantN: 1, wantErr: errDiagNetlink, wantErrno: syscall.EPERM},
		{name: "NLMSG_ERROR without errno", data: msg(syscall.NLMSG_ERROR, 1, 2), wantErr: errDiagShortMsg},
		{name: "NLMSG_DONE with error", data: msg(syscall.NLMSG_DONE, errno(syscall.EBUSY)...), wantDone: true, wantErr: errDiagNetlink, wantErrno: syscall.EBUSY},
		{name: "unknown type", data: edit(4, func(b []byte) { ne.PutUint16(b, 0x99) }), wantErr: errDiagType},
		{name: "unknown family", data: edit(nlmsgHdrLen, func(b []byte) { b[0] = 99 }), wantErr: errDiagFamily},
		{name: "state zero", data: edit(nlmsgHdrLen+1, func(b []byte) { b[0] = 0 }), wantErr: errDiagState},
		{name: "state beyond NEW_SYN_RECV", data: edit(nlmsgHdrLen+1, func(b []byte) { b[0] = 13 }), wantErr: errDiagState},
	}
}

func TestParseDiagMessages(t *testing.T) {
	for _, c := range diagCases(t) {
		t.Run(c.name, func(t *testing.T) {
			n := 0
			done, err := parseDiagMessages(c.data, func(*socket) { n++ })
			if c.wantErr == nil && err != nil || !errors.Is(err, c.wantErr) {
				t.Errorf("err = %v, want %v", err, c.wantErr)
			}
			if c.wantErrno != nil && !errors.Is(err, c.wantErrno) {
				t.Errorf("err = %v, want it to wrap %v", err, c.wantErrno)
			}
			if diff := cmp.Diff([]any{c.wantDone, c.wantN}, []any{done, n}); diff != "" {
				t.Errorf("done, sockets mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseReplyChecksSeq: a reply to another request is an error.
func TestParseReplyChecksSeq(t *testing.T) {
	base := diagRead(t, "inet.bin")
	seq, pid := binary.NativeEndian.Uint32(base[8:]), binary.NativeEndian.Uint32(base[12:])
	var s socket
	for _, c := range []struct {
		name     string
		seq, pid uint32
		wantErr  error
	}{
		{"same request", seq, pid, nil},
		{"other seq", seq + 1, pid, errDiagSeq},
		{"other pid", seq, pid + 1, errDiagSeq},
	} {
		_, err := parseReply(base, c.seq, c.pid, &s, func(*socket) {})
		if !errors.Is(err, c.wantErr) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.wantErr)
		}
	}
}

func FuzzParseDiagMessages(f *testing.F) {
	for _, c := range diagCases(f) {
		f.Add(c.data)
	}
	f.Add(diagRead(f, "inet6.bin"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseDiagMessages(b, func(s *socket) {
			if strings.HasPrefix(s.State.String(), "tcpState(") {
				t.Errorf("invalid state %v", s.State)
			}
			l, r := s.Local.Addr(), s.Remote.Addr()
			if !l.IsValid() || !r.IsValid() || l.Is4() != r.Is4() {
				t.Errorf("addresses of mixed or no family: %v %v", s.Local, s.Remote)
			}
		})
	})
}

// diagBCRun is the kernel's inet_diag_bc_run for the ops the filter uses.
// Call it only on a program diagBCAudit accepts.
func diagBCRun(bc []byte, sport, dport uint16) bool {
	ne := binary.NativeEndian
	left, i := len(bc), 0
	for left > 0 {
		op := bc[i:]
		ok := true
		switch op[0] {
		case bcJmp:
			ok = false
		case bcSrcEq:
			ok = sport == ne.Uint16(op[6:])
		case bcDstEq:
			ok = dport == ne.Uint16(op[6:])
		}
		step := int(ne.Uint16(op[2:])) // no
		if ok {
			step = int(op[1]) // yes
		}
		i, left = i+step, left-step
	}
	return left == 0
}

// diagBCAudit is the kernel's inet_diag_bc_audit for the ops the filter
// uses: each yes must reach the next op, each no an op boundary, the end, or
// 4 bytes past it (reject); the yes chain must end exactly at the end.
func diagBCAudit(bc []byte) error {
	ne := binary.NativeEndian
	validCC := func(cc int) bool { // is cc bytes before the end on the yes chain?
		for left, i := len(bc), 0; left >= 0; {
			if cc >= left {
				return cc == left
			}
			yes := int(bc[i+1])
			if yes < 4 || yes&3 != 0 {
				return false
			}
			i, left = i+yes, left-yes
		}
		return false
	}
	left, i := len(bc), 0
	for left > 0 {
		op := bc[i:]
		code, yes, no := op[0], int(op[1]), int(ne.Uint16(op[2:]))
		minLen := 4
		switch code {
		case bcSrcEq, bcDstEq:
			if minLen += 4; left < minLen {
				return fmt.Errorf("offset %d: port comparison truncated", i)
			}
		case bcJmp, 0:
		default:
			return fmt.Errorf("offset %d: unexpected code %d", i, code)
		}
		if code != 0 && (no < minLen || no > left+4 || no&3 != 0 || no < left && !validCC(left-no)) {
			return fmt.Errorf("offset %d: bad no %d", i, no)
		}
		if yes < minLen || yes > left+4 || yes&3 != 0 {
			return fmt.Errorf("offset %d: bad yes %d", i, yes)
		}
		i, left = i+yes, left-yes
	}
	if left != 0 {
		return fmt.Errorf("yes chain ends %d bytes past the end", -left)
	}
	return nil
}

// TestPortFilterBytecode checks the filter's program against the kernel's
// rules: inet_diag_bc_audit's and what inet_diag_bc_run computes.
func TestPortFilterBytecode(t *testing.T) {
	for _, p := range []uint16{0, 1, 80, 8080, 65535} {
		bc := appendPortFilter(nil, p)
		if err := diagBCAudit(bc); err != nil {
			t.Errorf("port %d: kernel would reject % x: %v", p, bc, err)
		}
		if diff := cmp.Diff(diagAnyPortFilter(p), bc); diff != "" {
			t.Errorf("port %d: filter mismatch with the general form (-want +got):\n%s", p, diff)
		}
		for _, sd := range [][2]uint16{{p, 1}, {1, p}, {p, p}, {p + 1, p - 1}, {1, 2}} {
			got := diagBCRun(bc, sd[0], sd[1])
			if want := sd[0] == p || sd[1] == p; got != want {
				t.Errorf("port %d: filter(sport %d, dport %d) = %v, want %v", p, sd[0], sd[1], got, want)
			}
		}
	}
}

// TestDiagDumpMatchesProc compares netlink with /proc for the test's own
// sockets, which are stable while the rest of the table may change.
func TestDiagDumpMatchesProc(t *testing.T) {
	n := diagOpenTestNet(t)
	d := newTestDiagSource(t)
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
	for _, c := range []struct {
		name string
		port int
	}{
		{"all", -1},
		{"IPv4 listener port", int(n.port4)},
		{"IPv6 listener port", int(n.port6)},
		{"dual-stack listener port", int(n.portDual)},
		{"all again", -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var want []socket
			for _, s := range own {
				if c.port < 0 || s.State == stateListen || int(s.Local.Port()) == c.port || int(s.Remote.Port()) == c.port {
					want = append(want, s)
				}
			}
			var got []socket
			for _, s := range diagCollect(t, d, c.port) {
				if c.port >= 0 && s.State == stateEstablished && int(s.Local.Port()) != c.port && int(s.Remote.Port()) != c.port {
					t.Errorf("port %d: the kernel sent an unrelated socket %s", c.port, diagLine(&s))
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
	for _, port := range []int{0, 1, 65535} {
		for _, s := range diagCollect(t, d, port) {
			if s.State != stateListen && s.Local.Port() != uint16(port) && s.Remote.Port() != uint16(port) {
				t.Errorf("port %d: unrelated socket %s", port, diagLine(&s))
			}
		}
	}
}

func TestDiagDumpErrors(t *testing.T) {
	d := newTestDiagSource(t)
	for _, port := range []int{-2, 65536} {
		if err := d.dump(port, func(*socket) {}); !errors.Is(err, errDiagPort) {
			t.Errorf("dump(%d) = %v, want %v", port, err, errDiagPort)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.dump(-1, func(*socket) {}); !errors.Is(err, errDiagClosed) {
		t.Errorf("dump after Close = %v, want %v", err, errDiagClosed)
	}
}

// TestDiagDumpRecovers: after a dump left unread, the kernel refuses new
// dumps (EBUSY) and old replies would be misread; the source must notice and
// start afresh on a new socket.
func TestDiagDumpRecovers(t *testing.T) {
	diagOpenTestNet(t)
	d := newTestDiagSource(t)
	if err := d.send(syscall.AF_INET, listenStates|establishedStates, -1); err != nil {
		t.Fatal(err)
	}
	err := d.dump(-1, func(*socket) {})
	if !errors.Is(err, errDiagSeq) {
		t.Errorf("dump after an abandoned one = %v, want %v", err, errDiagSeq)
	}
	if err := d.dump(-1, func(*socket) {}); err != nil {
		t.Errorf("second dump = %v, want success", err)
	}
}

// BenchmarkDiagDump dumps the real table, and a table of 10,000 established
// sockets (5,000 loopback connections), against reading /proc the same way.
func BenchmarkDiagDump(b *testing.B) {
	const pairs = 5000
	run := func(name string, table func(b *testing.B) int) {
		port := table(b)
		b.Run(name+"/netlink", func(b *testing.B) { diagBenchNetlink(b, -1) })
		if port > 0 {
			b.Run(name+"/netlink-port", func(b *testing.B) { diagBenchNetlink(b, port) })
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

func diagBenchNetlink(b *testing.B, port int) {
	d := newTestDiagSource(b)
	n := 0
	fn := func(*socket) { n++ }
	b.ReportAllocs()
	for b.Loop() {
		if err := d.dump(port, fn); err != nil {
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
