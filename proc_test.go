package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The captures are laid out as a procfs root, so that tests of the whole
// exporter can point it at testdata/procfs.
const captureDir = "testdata/procfs/net"

var equateAddrPort = cmpopts.EquateComparable(netip.AddrPort{})

// parseAll parses one table with a fresh parser.
func parseAll(r io.Reader, path string) (got []socket, bad []error, err error) {
	var p tableParser
	err = p.parse(r, path, func(s *socket) { got = append(got, *s) }, func(e error) { bad = append(bad, e) })
	return got, bad, err
}

// badLine is a malformed line as the tests expect it: Err is matched with
// errors.Is.
type badLine struct {
	Line int
	Err  error
}

func badLines(t *testing.T, path string, errs []error) []badLine {
	t.Helper()
	var bl []badLine
	for _, err := range errs {
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Path != path || len(pe.Text) > maxQuoted {
			t.Errorf("bad line reported as %#v, want a *ParseError for %s", err, path)
			continue
		}
		bl = append(bl, badLine{pe.Line, err})
	}
	return bl
}

func TestParseFixtures(t *testing.T) {
	if *capture {
		captureProc(t)
	}
	tests := []struct {
		name    string
		file    string // under testdata; the sockets wanted are listed in file.golden
		wantBad []badLine
		wantErr error
	}{
		{"capture tcp", "procfs/net/tcp", nil, nil},
		{"capture tcp6", "procfs/net/tcp6", nil, nil},
		{"duplicated line", "proc/dup.tcp", nil, nil},
		{"short line", "proc/short.tcp", []badLine{{3, errFields}}, nil},
		{"bad hex in address", "proc/badaddr.tcp", []badLine{{2, errAddress}}, nil},
		{"bad hex in tcp6 address", "proc/badaddr.tcp6", []badLine{{4, errAddress}}, nil},
		{"bad state", "proc/badstate.tcp", []badLine{{4, errState}}, nil},
		{"bad inode", "proc/badinode.tcp", []badLine{{3, errInode}}, nil},
		{"bad slot", "proc/badslot.tcp", []badLine{{5, errSlotName}}, nil},
		{"several bad lines", "proc/mixed.tcp", []badLine{{2, errState}, {4, errAddress}, {5, errInode}}, nil},
		{"no newline at end", "proc/nonewline.tcp", nil, nil},
		{"truncated last line", "proc/truncated.tcp", []badLine{{6, errFields}}, nil},
		{"header only", "proc/headeronly.tcp6", nil, nil},
		{"no header", "proc/noheader.tcp", nil, errHeader},
		{"empty file", "proc/empty.tcp", nil, errEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, bad, err := parseAll(bytes.NewReader(procLayout(data, bigEndian)), path)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parse() error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.wantBad, badLines(t, path, bad), cmpopts.EquateErrors()); diff != "" {
				t.Errorf("bad lines mismatch (-want +got):\n%s", diff)
			}
			switch {
			case tt.wantErr == nil:
				golden(t, path+".golden", formatSockets(got))
			case got != nil:
				t.Errorf("parse() yielded %v, then failed", got)
			}
		})
	}
}

// formatSockets lists sockets as the golden files do, one
// "local remote STATE inode" a line.
func formatSockets(ss []socket) []byte {
	var b []byte
	for _, s := range ss {
		b = fmt.Appendf(b, "%v %v %v %d\n", s.Local, s.Remote, s.State, s.Inode)
	}
	return b
}

// TestParseLongLine pads a real line with spaces: it parses as long as it
// fits the parser's buffer with its newline, and is reported after.
func TestParseLongLine(t *testing.T) {
	line := formatLine(testSocket)
	tests := []struct {
		name    string
		length  int  // of the padded line, without its newline
		last    bool // without a newline at the end of the file
		want    []socket
		wantBad []badLine
	}{
		{"fits", tableBufSize - 1, false, []socket{testSocket, testSocket}, nil},
		{"one byte too long", tableBufSize, false, []socket{testSocket}, []badLine{{2, errTooLong}}},
		{"three buffers", 3*tableBufSize + 7, false, []socket{testSocket}, []badLine{{2, errTooLong}}},
		{"last, fits", tableBufSize - 1, true, []socket{testSocket}, nil},
		{"last, one byte too long", tableBufSize, true, nil, []badLine{{2, errTooLong}}},
		{"last, two buffers", 2 * tableBufSize, true, nil, []badLine{{2, errTooLong}}},
		{"last, 100000 bytes", 100000, true, nil, []badLine{{2, errTooLong}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			long := line + strings.Repeat(" ", tt.length-len(line))
			table := tcpHeader + "\n" + long
			if !tt.last {
				table += "\n" + line + "\n"
			}
			got, bad, err := parseAll(strings.NewReader(table), "tcp")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, equateAddrPort); diff != "" {
				t.Errorf("sockets mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantBad, badLines(t, "tcp", bad), cmpopts.EquateErrors()); diff != "" {
				t.Errorf("bad lines mismatch (-want +got):\n%s", diff)
			}
			for _, err := range bad {
				var pe *ParseError
				if errors.As(err, &pe) && !strings.HasPrefix(line, pe.Text) {
					t.Errorf("ParseError.Text = %q, want the start of the line %q", pe.Text, line)
				}
			}
		})
	}
}

// TestParseReaders feeds the captures through readers that return them in
// small pieces, or the last piece with io.EOF: the sockets are those of one
// big read.
func TestParseReaders(t *testing.T) {
	tests := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"one byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
		{"data with EOF", iotest.DataErrReader},
		{"one byte, data with EOF", func(r io.Reader) io.Reader { return iotest.DataErrReader(iotest.OneByteReader(r)) }},
	}
	for _, tt := range tests {
		for _, name := range []string{"tcp", "tcp6"} {
			t.Run(tt.name+"/"+name, func(t *testing.T) {
				path := filepath.Join(captureDir, name)
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				data = procLayout(data, bigEndian)
				want, _, _ := parseAll(bytes.NewReader(data), path)
				got, bad, err := parseAll(tt.wrap(bytes.NewReader(data)), path)
				if err != nil || bad != nil || len(want) == 0 {
					t.Fatalf("parse() = %v, bad lines %v, %d sockets in one read", err, bad, len(want))
				}
				if diff := cmp.Diff(want, got, equateAddrPort); diff != "" {
					t.Errorf("sockets mismatch (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestParseReadError(t *testing.T) {
	data := []byte(tcpHeader + "\n" + formatLine(testSocket) + "\n")
	errRead := errors.New("read failed")
	tests := []struct {
		name    string
		r       io.Reader
		wantErr error
	}{
		{"at once", iotest.ErrReader(errRead), errRead},
		{"mid-file", io.MultiReader(bytes.NewReader(data[:200]), iotest.ErrReader(errRead)), errRead},
		{"timeout", iotest.TimeoutReader(bytes.NewReader(data)), iotest.ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseAll(tt.r, "tcp")
			if !errors.Is(err, tt.wantErr) || !strings.HasPrefix(fmt.Sprint(err), "tcp: ") {
				t.Errorf("parse() error = %v, want tcp: %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseAddrPort(t *testing.T) {
	// The kernel text below is a little-endian kernel's; procLayout turns
	// it into this host's.
	tests := []struct {
		name    string
		in      string
		want    netip.AddrPort
		wantErr error
	}{
		{"IPv4", "0100007F:1F90", netip.MustParseAddrPort("127.0.0.1:8080"), nil},
		{"IPv4 lower case", "0100007f:1f90", netip.MustParseAddrPort("127.0.0.1:8080"), nil},
		{"IPv4 any", "00000000:0000", netip.MustParseAddrPort("0.0.0.0:0"), nil},
		{"IPv6 loopback", "00000000000000000000000001000000:0050", netip.MustParseAddrPort("[::1]:80"), nil},
		{"IPv4-mapped", "0000000000000000FFFF00000100007F:FFFF", netip.MustParseAddrPort("[::ffff:127.0.0.1]:65535"), nil},
		{"IPv6 global", "B80D0120000000000000000001000000:01BB", netip.MustParseAddrPort("[2001:db8::1]:443"), nil},
		{"no port", "0100007F", netip.AddrPort{}, errAddress},
		{"no colon", "0100007F01F90", netip.AddrPort{}, errAddress},
		{"short address", "100007F:1F90", netip.AddrPort{}, errAddress},
		{"bad hex", "0100007G:1F90", netip.AddrPort{}, errAddress},
		{"bad port", "0100007F:1F9X", netip.AddrPort{}, errAddress},
		{"sign", "+100007F:1F90", netip.AddrPort{}, errAddress},
		{"31 digits", "0000000000000000000000001000000:0050", netip.AddrPort{}, errAddress},
		{"empty", "", netip.AddrPort{}, errAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := procLayout([]byte("0: "+tt.in), bigEndian)
			got, err := parseAddrPort(line[3:])
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseAddrPort(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseAddrPort(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestTCPStateString(t *testing.T) {
	tests := []struct {
		st   tcpState
		want string
	}{
		{stateEstablished, "ESTABLISHED"},
		{stateTimeWait, "TIME_WAIT"},
		{stateListen, "LISTEN"},
		{stateNewSynRecv, "NEW_SYN_RECV"},
		{0, "tcpState(0x00)"},
		{0x0D, "tcpState(0x0d)"},
		{0xFF, "tcpState(0xff)"},
	}
	for _, tt := range tests {
		if got := tt.st.String(); got != tt.want {
			t.Errorf("tcpState(%d).String() = %q, want %q", uint8(tt.st), got, tt.want)
		}
	}
}

// TestParseAllocs checks that a warm parser allocates per table, not per line.
func TestParseAllocs(t *testing.T) {
	for _, n := range []int{10, 10000} {
		table := genTable(n, false)
		var (
			p     tableParser
			r     bytes.Reader
			count int
		)
		fn := func(*socket) { count++ }
		bad := func(err error) { t.Error(err) }
		run := func() {
			r.Reset(table)
			count = 0
			if err := p.parse(&r, "tcp", fn, bad); err != nil {
				t.Fatal(err)
			}
		}
		run()
		if allocs := testing.AllocsPerRun(10, run); allocs > 1 {
			t.Errorf("parsing %d lines: %v allocations, want at most 1", n, allocs)
		}
		if count != n {
			t.Errorf("parsed %d sockets, want %d", count, n)
		}
	}
}

func FuzzParseLine(f *testing.F) {
	for _, line := range fixtureLines(f) {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var fast, s socket
		err := parseFields(line, &s)
		if parseKernelLine(line, &fast) && (err != nil || fast != s) {
			t.Fatalf("%q: the kernel's layout gives %+v, field by field %+v, %v", line, fast, s, err)
		}
		if err != nil {
			return
		}
		in, out := spaceFields(line), spaceFields([]byte(formatLine(s)))
		for _, i := range []int{1, 2, 3, 9} { // local, remote, st, inode
			a := in[i]
			if i == 9 {
				a = trimZeros(a) // the kernel prints none
			}
			if !bytes.EqualFold(a, out[i]) {
				t.Errorf("field %d of %q parsed as %+v, which formats as %q", i, line, s, out[i])
			}
		}
	})
}

// TestKernelLayout: every socket line of the real captures, whatever their
// slot numbers' width, takes parseKernelLine, and one that the kernel did
// not lay out takes parseFields (FuzzParseLine holds that both agree).
func TestKernelLayout(t *testing.T) {
	lines := 0
	for _, path := range []string{captureDir + "/tcp", captureDir + "/tcp6"} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))[1:] {
			var s socket
			if !parseKernelLine(line, &s) {
				t.Errorf("%s:%d: %q does not take the kernel's layout", path, i+2, line)
			}
			lines++
		}
	}
	if lines == 0 {
		t.Fatal("the captures hold no socket line")
	}
	var s socket
	if wide := appendLine(nil, 123456, testSocket6); !parseKernelLine(wide, &s) || s != testSocket6 {
		t.Errorf("%q: parsed %+v by the kernel's layout, want %+v", wide, s, testSocket6)
	}
	line := []byte(formatLine(testSocket))
	for _, c := range []struct {
		old, new string
		err      error
	}{
		{" 00000000:00000000 ", " 0000000:00000000  ", nil}, // fields moved
		{": ", ":  ", nil},        // two spaces after sl
		{" 01 ", " 1 ", errState}, // a one-digit state
	} {
		forged := bytes.Replace(line, []byte(c.old), []byte(c.new), 1)
		if bytes.Equal(forged, line) {
			t.Fatalf("no %q in %q", c.old, line)
		}
		var s socket
		if parseKernelLine(forged, &s) {
			t.Errorf("%q takes the kernel's layout", forged)
		}
		if err := parseLine(forged, &s); err != c.err || err == nil && s != testSocket {
			t.Errorf("parseLine(%q) = %+v, %v; want %+v, %v", forged, s, err, testSocket, c.err)
		}
	}
}

func trimZeros(b []byte) []byte {
	if t := bytes.TrimLeft(b, "0"); len(t) > 0 {
		return t
	}
	return []byte("0")
}

// spaceFields splits b as parseLine does: at spaces only.
func spaceFields(b []byte) [][]byte {
	return bytes.FieldsFunc(b, func(r rune) bool { return r == ' ' })
}

// fixtureLines returns every line of every table in testdata.
func fixtureLines(tb testing.TB) [][]byte {
	tb.Helper()
	var lines [][]byte
	for _, pattern := range []string{captureDir + "/*", "testdata/proc/*"} {
		paths, _ := filepath.Glob(pattern)
		for _, path := range paths {
			if strings.HasSuffix(path, ".golden") {
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil {
				tb.Fatal(err)
			}
			for line := range bytes.Lines(data) {
				lines = append(lines, bytes.TrimSuffix(line, []byte("\n")))
			}
		}
	}
	return lines
}

func BenchmarkParseLine(b *testing.B) {
	for _, bb := range []struct {
		name string
		s    socket
	}{{"tcp", testSocket}, {"tcp6", testSocket6}} {
		line := []byte(formatLine(bb.s))
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			var s socket
			for b.Loop() {
				if err := parseLine(line, &s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseTable50k(b *testing.B) {
	tables := [][]byte{genTable(50000, false), genTable(50000, true)}
	var (
		p     tableParser
		r     bytes.Reader
		count int
	)
	fn := func(*socket) { count++ }
	bad := func(err error) { b.Fatal(err) }
	parse := func() {
		for _, table := range tables {
			r.Reset(table)
			if err := p.parse(&r, "bench", fn, bad); err != nil {
				b.Fatal(err)
			}
		}
	}
	parse() // the steady state: a warm parser
	count = 0
	b.ReportAllocs()
	b.SetBytes(int64(len(tables[0]) + len(tables[1])))
	for b.Loop() {
		parse()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(count), "ns/socket")
}

var (
	testSocket  = socket{netip.MustParseAddrPort("10.1.2.3:443"), netip.MustParseAddrPort("192.0.2.7:50123"), stateEstablished, 123456}
	testSocket6 = socket{netip.MustParseAddrPort("[2001:db8::1]:443"), netip.MustParseAddrPort("[2001:db8:ffff::7]:50123"), stateEstablished, 123457}
)
