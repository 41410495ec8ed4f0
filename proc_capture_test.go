package main

// Kernel text for the parser's tests: real captures of /proc/net/tcp{,6},
// and lines written as the kernel writes them.

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"tcp_established_exporter/internal/testnet"
)

var capture = flag.Bool("capture", false, "rewrite testdata/procfs/net/tcp{,6} from live loopback sockets")

// captureProc rewrites the captures from the running kernel, before
// TestParseFixtures reads them:
//
//	go test -run ParseFixtures -capture -update
//
// As root it works in a network namespace of its own, so that the capture
// holds its own sockets only.
func captureProc(t *testing.T) {
	// Never unlocked: the thread may have left the host's network
	// namespace, and the runtime ends a thread still locked at exit.
	runtime.LockOSThread()
	isolated := enterNetns(t)
	want := openCaptureSockets(t)
	var tables map[string][]byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		tables = readTables(t)
		err := checkCapture(tables, want, isolated)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	for name, data := range tables {
		if err := os.WriteFile(filepath.Join(captureDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// enterNetns moves the calling thread, which must be locked, into a new
// network namespace with its loopback up. It reports whether it could.
func enterNetns(t *testing.T) bool {
	t.Helper()
	if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
		t.Logf("capturing in the host's network namespace, with its other sockets: %v", err)
		return false
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	var ifreq struct {
		name  [syscall.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(ifreq.name[:], "lo")
	ifreq.flags = syscall.IFF_UP
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifreq)))
	if e != 0 {
		t.Fatalf("bringing lo up: %v", e)
	}
	return true
}

// openCaptureSockets opens one loopback socket of each kind the captures
// must hold and returns them by table, inodes left out.
func openCaptureSockets(t *testing.T) map[string][]socket {
	t.Helper()
	v4 := closingListener(t, "tcp4", "127.0.0.1:0")
	v6 := closingListener(t, "tcp6", "[::1]:0")
	dual := closingListener(t, "tcp", "[::]:0")
	est4 := testnet.Dial(t, 1, "tcp4", v4.String())[0]
	est6 := testnet.Dial(t, 1, "tcp6", v6.String())[0]
	mapped := testnet.Dial(t, 1, "tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dual.Port()).String())[0]
	tw4 := testnet.Dial(t, 1, "tcp4", v4.String())[0]
	tw6 := testnet.Dial(t, 1, "tcp6", v6.String())[0]
	tw4.Close() // the side that closes first lingers in TIME_WAIT
	tw6.Close()
	any4, any6 := netip.AddrPortFrom(netip.IPv4Unspecified(), 0), netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	ends := func(c net.Conn) (local, remote netip.AddrPort) {
		return addrPort(c.LocalAddr()), addrPort(c.RemoteAddr())
	}
	l4, r4 := ends(est4)
	l6, r6 := ends(est6)
	lm, rm := ends(mapped)
	lt4, rt4 := ends(tw4)
	lt6, rt6 := ends(tw6)
	return map[string][]socket{
		"tcp": {
			{v4, any4, stateListen, 0},
			{l4, r4, stateEstablished, 0}, {r4, l4, stateEstablished, 0},
			{lm, rm, stateEstablished, 0},
			{lt4, rt4, stateTimeWait, 0},
		},
		"tcp6": {
			{v6, any6, stateListen, 0}, {dual, any6, stateListen, 0},
			{l6, r6, stateEstablished, 0}, {r6, l6, stateEstablished, 0},
			{mapTo6(rm), mapTo6(lm), stateEstablished, 0},
			{lt6, rt6, stateTimeWait, 0},
		},
	}
}

// closingListener listens on addr and closes each connection it accepts
// once the peer has closed it, until the test ends.
func closingListener(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return addrPort(ln.Addr())
}

// addrPort returns a's address as the tables list it: IPv4 plain.
func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// mapTo6 returns ap as tcp6 lists an IPv4 peer of a dual-stack socket.
func mapTo6(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
}

// readTables reads tcp and tcp6 of the calling thread's network namespace.
func readTables(t *testing.T) map[string][]byte {
	t.Helper()
	tables := make(map[string][]byte)
	for _, name := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile("/proc/thread-self/net/" + name)
		if err != nil {
			t.Fatal(err)
		}
		tables[name] = data
	}
	return tables
}

// checkCapture reports the sockets of want missing from tables, inodes
// that are not zero exactly in TIME_WAIT, and, if only is set, any other
// socket.
func checkCapture(tables map[string][]byte, want map[string][]socket, only bool) error {
	for name, ws := range want {
		got, bad, err := parseAll(bytes.NewReader(tables[name]), name)
		if err != nil || bad != nil {
			return fmt.Errorf("%s: %v %v", name, err, bad)
		}
		for _, w := range ws {
			i := slices.IndexFunc(got, func(g socket) bool { return g.Local == w.Local && g.Remote == w.Remote && g.State == w.State })
			if i < 0 {
				return fmt.Errorf("%s: no %v %v %v in\n%s", name, w.Local, w.Remote, w.State, tables[name])
			}
			if (got[i].Inode == 0) != (w.State == stateTimeWait) {
				return fmt.Errorf("%s: %v %v %v has inode %d", name, w.Local, w.Remote, w.State, got[i].Inode)
			}
		}
		if only && len(got) != len(ws) {
			return fmt.Errorf("%s: %d sockets, want %d:\n%s", name, len(got), len(ws), tables[name])
		}
	}
	return nil
}

// The kernel's table headers; tcp pads its lines with spaces to 149 bytes.
const (
	tcpHeader  = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     "
	tcp6Header = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
)

// formatLine prints s as the kernel does in tcp or tcp6, sl 0.
func formatLine(s socket) string { return string(appendLine(nil, 0, s)) }

// appendLine appends s as line sl of tcp (an IPv4 s) or tcp6, without the
// newline (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c).
func appendLine(b []byte, sl int, s socket) []byte {
	start := len(b)
	b = fmt.Appendf(b, "%4d: ", sl)
	b = appendHexAddrPort(b, s.Local)
	b = append(b, ' ')
	b = appendHexAddrPort(b, s.Remote)
	b = fmt.Appendf(b, " %02X 00000000:00000000 00:00000000 00000000  1000        0 %d 1 000000009a8b7c6d 20 4 30 10 -1", uint8(s.State), s.Inode)
	if s.Local.Addr().Is4() {
		for len(b)-start < len(tcpHeader) {
			b = append(b, ' ')
		}
	}
	return b
}

// appendHexAddrPort appends ap as the kernel prints it: the address as
// 32-bit words in host order, in hex, then the port.
func appendHexAddrPort(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().AsSlice()
	for i := 0; i < len(a); i += 4 {
		b = fmt.Appendf(b, "%08X", binary.NativeEndian.Uint32(a[i:]))
	}
	return fmt.Appendf(b, ":%04X", ap.Port())
}

// genTable returns a table of n sockets: a listener, then ten connections
// to it, the last in TIME_WAIT, and again; in tcp6 every other connection
// is IPv4-mapped. Inodes differ between the two files, as in the kernel.
func genTable(n int, v6 bool) []byte {
	header, unspecified := tcpHeader, netip.IPv4Unspecified()
	if v6 {
		header, unspecified = tcp6Header, netip.IPv6Unspecified()
	}
	b := append([]byte(header), '\n')
	for sl := range n {
		i, j := sl/11, sl%11
		local := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		peer := netip.AddrFrom4([4]byte{192, 0, 2, byte(j)})
		switch {
		case v6 && j%2 == 0:
			local = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
			peer = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 13: byte(j), 14: byte(i >> 8), 15: byte(i)})
		case v6:
			local, peer = netip.AddrFrom16(local.As16()), netip.AddrFrom16(peer.As16())
		}
		s := socket{netip.AddrPortFrom(local, 443), netip.AddrPortFrom(peer, uint16(32768+i)), stateEstablished, uint64(1e6 + sl + b2i(v6)*n)}
		switch j {
		case 0:
			s.Remote, s.State = netip.AddrPortFrom(unspecified, 0), stateListen
		case 10:
			s.State, s.Inode = stateTimeWait, 0
		}
		b = append(appendLine(b, sl, s), '\n')
	}
	return b
}
