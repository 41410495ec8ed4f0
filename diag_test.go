package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Parsing sock_diag replies: golden captures, malformed buffers, fuzzing.

const diagTestdata = "testdata/netlink"

func diagLine(s *socket) string {
	return fmt.Sprintf("%v %v %v %d", s.Local, s.Remote, s.State, s.Inode)
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
		tb.Fatalf("%v (regenerate with go test -run ParseDiagGolden -capture-netlink)", err)
	}
	if strings.HasSuffix(name, ".bin") {
		b = diagLayout(b, bigEndian)
	}
	return b
}

func TestParseDiagGolden(t *testing.T) {
	if *captureNetlink {
		captureNetlinkReplies(t)
	}
	for _, c := range []struct {
		name string
		want []string // what the capture must contain
	}{
		{"inet", []string{" 127.0.0.1:"}},
		{"inet6", []string{" [::ffff:127.0.0.1]:"}},                          // accepted by the dual-stack listener
		{"walk", []string{" 127.0.0.1:", " [::1]:", " [::ffff:127.0.0.1]:"}}, // both families in one dump
		{"einval", []string{"invalid argument"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := diagGolden(diagRead(t, c.name+".bin"))
			want := string(diagRead(t, c.name+".golden"))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("parse of %s.bin mismatch (-want +got):\n%s", c.name, diff)
			}
			for _, want := range c.want {
				if !strings.Contains(got, want) {
					t.Errorf("capture %s lacks %q; recapture with -capture-netlink", c.name, want)
				}
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
		{name: "real one-walk dump", data: diagRead(tb, "walk.bin"), wantDone: true,
			wantN: strings.Count(string(diagRead(tb, "walk.golden")), "\n") - 1},
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
	f.Add(diagRead(f, "walk.bin"))
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
