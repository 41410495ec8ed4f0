package main

import (
	"encoding/binary"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// Rewriting testdata/netlink from the kernel with -capture-netlink.

var captureNetlink = flag.Bool("capture-netlink", false,
	"rewrite testdata/netlink/*.bin and *.golden from this machine's kernel")

// captureNetlinkReplies rewrites the golden files from real kernel replies, before
// TestParseDiagGolden reads them (go test -run ParseDiagGolden
// -capture-netlink). A filter keeps them to the test's own sockets
// whatever else the machine runs.
func captureNetlinkReplies(t *testing.T) {
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
		typ    uint16
		family uint8
		bc     []byte
	}{
		{"inet", sockDiagByFamily, syscall.AF_INET, own},
		{"inet6", sockDiagByFamily, syscall.AF_INET6, own},
		{"walk", tcpDiagGetSock, syscall.AF_UNSPEC, own},
		{"einval", sockDiagByFamily, syscall.AF_INET, broken},
	} {
		d.seq++
		req := appendRequest(nil, d.seq, c.typ, c.family, listenStates|establishedStates, nil)
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

func diagWrite(t *testing.T, name string, b []byte) {
	if err := os.WriteFile(filepath.Join(diagTestdata, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
