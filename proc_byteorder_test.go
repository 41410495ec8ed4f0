package main

import (
	"bytes"
	"encoding/binary"
	"slices"
	"syscall"
	"testing"
)

// The fixtures were captured on little-endian machines. On a big-endian
// host (s390x) the tests turn them into what that host's kernel writes,
// by the rule of the kernel's interfaces: what the kernel keeps in host
// order (the words of an address in /proc/net/tcp's text, netlink and
// inet_diag integers) is byte-swapped, what is in network order on every
// host (the ports and addresses of inet_diag_msg) stays. The parsers then
// must give the same goldens on either host. A big-endian binary cannot be
// checked against a live kernel here: under qemu-s390x-static it reads the
// little-endian host's /proc, and qemu refuses NETLINK_SOCK_DIAG; so e2e
// runs these tests, compiled for s390x, under qemu against the converted
// fixtures instead.

// bigEndian holds on the host running the tests.
var bigEndian = binary.NativeEndian.Uint16([]byte{0, 1}) == 1

// procLayout returns a little-endian host's table text as a host of the
// given byte order prints it. Only well-formed address fields change, so
// that a malformed fixture stays malformed in the same way.
func procLayout(le []byte, big bool) []byte {
	if !big {
		return le
	}
	b := slices.Clone(le)
	for start := 0; start < len(b); {
		end := bytes.IndexByte(b[start:], '\n')
		if end < 0 {
			end = len(b) - start
		}
		line := b[start : start+end]
		_, rest := nextField(line) // sl
		for range 2 {              // local_address, rem_address
			var f []byte
			f, rest = nextField(rest)
			swapAddrWords(f)
		}
		start += end + 1
	}
	return b
}

// swapAddrWords reverses the bytes of each 8-digit word of an address
// field "WORDS:PORT" in place; other text is left alone.
func swapAddrWords(f []byte) {
	n := len(f) - 5
	if n != 8 && n != 32 || f[n] != ':' {
		return
	}
	for _, c := range f {
		if c != ':' && hexValue[c] > 0xf {
			return
		}
	}
	for w := 0; w < n; w += 8 {
		word := f[w : w+8]
		for i := 0; i < 4; i += 2 { // swap digit pairs 0<->3, 1<->2
			j := 6 - i
			word[i], word[i+1], word[j], word[j+1] = word[j], word[j+1], word[i], word[i+1]
		}
	}
}

// diagLayout returns a sock_diag reply captured on a little-endian host as
// a host of the given byte order receives it. The payloads of attributes
// after an inet_diag_msg and the request an NLMSG_ERROR echoes past its
// header are left as they are: the parser reads neither.
func diagLayout(le []byte, big bool) []byte {
	if !big {
		return le
	}
	b := slices.Clone(le)
	swap := func(off, size int) {
		if off+size <= len(b) {
			slices.Reverse(b[off : off+size])
		}
	}
	header := func(off int) {
		for _, f := range [...][2]int{{0, 4}, {4, 2}, {6, 2}, {8, 4}, {12, 4}} { // len, type, flags, seq, pid
			swap(off+f[0], f[1])
		}
	}
	lu16 := binary.LittleEndian.Uint16
	for off := 0; off+nlmsgHdrLen <= len(le); {
		n := int(binary.LittleEndian.Uint32(le[off:]))
		typ := lu16(le[off+4:])
		header(off)
		p := off + nlmsgHdrLen
		switch typ {
		case sockDiagByFamily, tcpDiagGetSock:
			// idiag_if, idiag_cookie[2], expires, rqueue, wqueue, uid, inode
			for f := 40; f < diagMsgLen; f += 4 {
				swap(p+f, 4)
			}
			for a := p + diagMsgLen; a+4 <= off+n && a+4 <= len(le); { // rtattr len, type
				alen := int(lu16(le[a:]))
				swap(a, 2)
				swap(a+2, 2)
				if alen < 4 {
					break
				}
				a += (alen + 3) &^ 3
			}
		case syscall.NLMSG_ERROR:
			swap(p, 4) // error
			header(p + 4)
		case syscall.NLMSG_DONE:
			swap(p, 4)
		}
		if n < nlmsgHdrLen {
			break
		}
		off += (n + 3) &^ 3
	}
	return b
}

// TestProcLayout pins the big-endian text the converter writes: the words
// a big-endian kernel prints for the same addresses.
func TestProcLayout(t *testing.T) {
	for _, c := range []struct{ name, le, be string }{
		{"IPv4", // 127.0.0.1:8080 127.0.0.1:36018
			"   0: 0100007F:1F90 0100007F:8CB2 01 x",
			"   0: 7F000001:1F90 7F000001:8CB2 01 x"},
		{"IPv6", // [::1]:80 [2001:db8::1]:443
			"   1: 00000000000000000000000001000000:0050 B80D0120000000000000000001000000:01BB 01",
			"   1: 00000000000000000000000000000001:0050 20010DB8000000000000000000000001:01BB 01"},
		{"IPv4-mapped", // [::ffff:127.0.0.1]:65535
			"   2: 0000000000000000FFFF00000100007F:FFFF 00000000000000000000000000000000:0000 0A",
			"   2: 00000000000000000000FFFF7F000001:FFFF 00000000000000000000000000000000:0000 0A"},
		{"malformed field kept",
			"   3: 0100007F:8CB4 0100007F:95F3X 06",
			"   3: 7F000001:8CB4 0100007F:95F3X 06"},
		{"header kept",
			"  sl  local_address rem_address   st",
			"  sl  local_address rem_address   st"},
	} {
		if got := string(procLayout([]byte(c.le+"\n"+c.le), true)); got != c.be+"\n"+c.be {
			t.Errorf("%s: procLayout(%q) = %q, want %q twice", c.name, c.le, got, c.be)
		}
		if got := string(procLayout([]byte(c.le), false)); got != c.le {
			t.Errorf("%s: procLayout(%q, little-endian) = %q, want it unchanged", c.name, c.le, got)
		}
	}
}
