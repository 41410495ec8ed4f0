package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// tcpState is a TCP state numbered as the kernel numbers it in the st
// column of /proc/net/tcp (include/net/tcp_states.h).
type tcpState uint8

const (
	stateEstablished tcpState = 0x01
	stateSynSent     tcpState = 0x02
	stateSynRecv     tcpState = 0x03
	stateFinWait1    tcpState = 0x04
	stateFinWait2    tcpState = 0x05
	stateTimeWait    tcpState = 0x06
	stateClose       tcpState = 0x07
	stateCloseWait   tcpState = 0x08
	stateLastAck     tcpState = 0x09
	stateListen      tcpState = 0x0A
	stateClosing     tcpState = 0x0B
	stateNewSynRecv  tcpState = 0x0C
)

var stateNames = [...]string{
	stateEstablished: "ESTABLISHED",
	stateSynSent:     "SYN_SENT",
	stateSynRecv:     "SYN_RECV",
	stateFinWait1:    "FIN_WAIT1",
	stateFinWait2:    "FIN_WAIT2",
	stateTimeWait:    "TIME_WAIT",
	stateClose:       "CLOSE",
	stateCloseWait:   "CLOSE_WAIT",
	stateLastAck:     "LAST_ACK",
	stateListen:      "LISTEN",
	stateClosing:     "CLOSING",
	stateNewSynRecv:  "NEW_SYN_RECV",
}

func (s tcpState) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("tcpState(%#02x)", uint8(s))
}

// socket is one line of a connection table. An IPv4 socket listed in tcp6
// keeps its IPv4-mapped address (::ffff:a.b.c.d), as the kernel lists it.
type socket struct {
	Local, Remote netip.AddrPort
	State         tcpState
	Inode         uint64
}

// ParseError locates a malformed line of a connection table.
type ParseError struct {
	Path string // file name as given to the parser
	Line int    // 1-based line number
	Text string // the line, shortened to maxQuoted bytes
	Err  error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %v: %q", e.Path, e.Line, e.Err, e.Text)
}

func (e *ParseError) Unwrap() error { return e.Err }

// maxQuoted bounds the text a ParseError keeps, so that a hostile 10 MB
// line does not end up in the log.
const maxQuoted = 64

var (
	errEmpty    = errors.New("empty file")
	errHeader   = errors.New("not a tcp table header")
	errFields   = errors.New("too few fields")
	errAddress  = errors.New("malformed address")
	errState    = errors.New("malformed state")
	errInode    = errors.New("malformed inode")
	errTooLong  = errors.New("line too long")
	errSlotName = errors.New("malformed slot")
	errTooBig   = errors.New("larger than 1 GiB: not a connection table")
)

// tableBufSize is the parser's buffer. The kernel returns about one page per
// read(2) whatever the buffer, so a bigger one saves nothing; it only has to
// hold the longest line we accept.
const tableBufSize = 64 << 10

// maxTableBytes bounds one read of a table. A million sockets make about
// 150 MB; a file that never ends (a FIFO kept fed, /dev/zero mounted in its
// place) must fail the read, not stall the poll loop for good.
const maxTableBytes = 1 << 30

// tableParser parses /proc/net/tcp and /proc/net/tcp6. It keeps its buffer
// between reads so that the steady state allocates nothing.
type tableParser struct {
	buf []byte
	s   socket // the line being parsed, handed to the caller
}

// parse reads one table from r and calls fn for each well-formed socket line;
// fn must not keep the pointer. A malformed line is skipped and handed to bad
// as a *ParseError. parse fails only when r fails, the header is wrong or
// r holds more than maxTableBytes.
func (p *tableParser) parse(r io.Reader, path string, fn func(*socket), bad func(error)) error {
	if p.buf == nil {
		p.buf = make([]byte, tableBufSize)
	}
	buf := p.buf
	var (
		start, end int    // unparsed bytes are buf[start:end]
		total      int    // bytes read
		lineNo     int    // lines seen so far
		skipping   bool   // inside a line longer than buf
		skipped    string // the start of that line
		eof        bool
		s          = &p.s
	)
	line := func(b []byte) error {
		lineNo++
		switch {
		case lineNo == 1:
			if !isHeader(b) {
				return fmt.Errorf("%s: %w: %q", path, errHeader, shorten(b))
			}
		case skipping:
			skipping = false
			bad(&ParseError{path, lineNo, skipped, errTooLong})
		default:
			if err := parseLine(b, s); err != nil {
				bad(&ParseError{path, lineNo, shorten(b), err})
				return nil
			}
			fn(s)
		}
		return nil
	}
	for !eof {
		// A reader may return its last bytes together with io.EOF.
		n, err := r.Read(buf[end:])
		end += n
		if total += n; total > maxTableBytes {
			return fmt.Errorf("%s: %w", path, errTooBig)
		}
		switch {
		case err == io.EOF:
			eof = true
		case err != nil:
			return fmt.Errorf("%s: %w", path, err)
		}
		for {
			i := bytes.IndexByte(buf[start:end], '\n')
			if i < 0 {
				break
			}
			if err := line(buf[start : start+i]); err != nil {
				return err
			}
			start += i + 1
		}
		switch {
		case start == end:
			start, end = 0, 0
		case start == 0 && end == len(buf):
			// No newline in a full buffer: drop what we have and skip to
			// the end of the line.
			if !skipping {
				skipped = shorten(buf)
			}
			skipping = true
			end = 0
		case start > 0:
			end = copy(buf, buf[start:end])
			start = 0
		}
	}
	if end > start || skipping { // a last line without its newline
		if err := line(buf[start:end]); err != nil {
			return err
		}
	}
	if lineNo == 0 {
		return fmt.Errorf("%s: %w", path, errEmpty)
	}
	return nil
}

func shorten(b []byte) string {
	if len(b) > maxQuoted {
		b = b[:maxQuoted]
	}
	return string(b)
}

// isHeader reports whether b starts like the header line of tcp or tcp6.
func isHeader(b []byte) bool {
	f, rest := nextField(b)
	if string(f) != "sl" {
		return false
	}
	f, _ = nextField(rest)
	return string(f) == "local_address"
}

// nextField splits off the first space-separated field of b.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && b[i] == ' ' {
		i++
	}
	j := i
	for j < len(b) && b[j] != ' ' {
		j++
	}
	return b[i:j], b[j:]
}

// parseLine parses one socket line into s:
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//
// A line laid out as the kernel prints it takes parseKernelLine; any other
// goes field by field, with the same outcome.
func parseLine(b []byte, s *socket) error {
	if parseKernelLine(b, s) {
		return nil
	}
	return parseFields(b, s)
}

// parseKernelLine parses a well-formed line in the kernel's own layout,
//
//	"%4d: %08X:%04X %08X:%04X %02X %08X:%08X %02X:%08lX %08X %5u %8d %lu ..."
//
// (the addresses 32 hex digits in tcp6), where every field up to the uid
// has a fixed width: it checks the separators where they must be instead of
// looking for them. It reports false for any line it does not take, which
// parseFields then judges, so that its result is always parseFields'.
func parseKernelLine(b []byte, s *socket) bool {
	i := 0
	for i < len(b) && b[i] == ' ' {
		i++
	}
	j := i
	for j < len(b) && '0' <= b[j] && b[j] <= '9' {
		j++
	}
	if j == i || j >= len(b) || b[j] != ':' {
		return false
	}
	b = b[j+1:]
	n := 8 + 1 + 4 // an address and its port
	if len(b) > 9 && b[9] != ':' {
		n = 32 + 1 + 4
	}
	// After the addresses, " st tx_queue:rx_queue tr:tm->when retrnsmt "
	// of 2, 17, 11 and 8 bytes: spaces where they separate, and only
	// there (st is checked as hex).
	const tail = 1 + 2 + 1 + 17 + 1 + 11 + 1 + 8 + 1
	if len(b) < 2+2*n+tail || b[0] != ' ' || b[1+n] != ' ' {
		return false
	}
	m := b[2+2*n:]
	if m[0] != ' ' || m[3] != ' ' || m[21] != ' ' || m[33] != ' ' || m[42] != ' ' || bytes.Count(m[4:42], space) != 2 {
		return false
	}
	uid, rest := nextField(m[tail:])
	timeout, rest := nextField(rest)
	inode, _ := nextField(rest)
	if len(uid) == 0 || len(timeout) == 0 {
		return false
	}
	var ok bool
	if s.Inode, ok = parseDecimal(inode); !ok {
		return false
	}
	st, ok := parseHex(m[1:3])
	if !ok {
		return false
	}
	var err error
	if s.Local, err = parseAddrPort(b[1 : 1+n]); err != nil {
		return false
	}
	if s.Remote, err = parseAddrPort(b[2+n : 2+2*n]); err != nil {
		return false
	}
	s.State = tcpState(st)
	return true
}

var space = []byte{' '}

// parseFields is parseLine for any line: it splits the fields at spaces.
func parseFields(b []byte, s *socket) error {
	var f [10][]byte
	for i := range f {
		f[i], b = nextField(b)
		if len(f[i]) == 0 {
			return errFields
		}
	}
	if sl := f[0]; len(sl) < 2 || sl[len(sl)-1] != ':' {
		return errSlotName
	}
	var err error
	if s.Local, err = parseAddrPort(f[1]); err != nil {
		return err
	}
	if s.Remote, err = parseAddrPort(f[2]); err != nil {
		return err
	}
	if len(f[3]) != 2 {
		return errState
	}
	st, ok := parseHex(f[3])
	if !ok {
		return errState
	}
	s.State = tcpState(st)
	if s.Inode, ok = parseDecimal(f[9]); !ok {
		return errInode
	}
	return nil
}

// parseAddrPort parses the kernel's "0100007F:1F90" (IPv4) or 32 hex digits
// and a port (IPv6). The kernel prints each 32-bit word of the address as a
// number in host byte order.
func parseAddrPort(b []byte) (netip.AddrPort, error) {
	if len(b) != 8+1+4 && len(b) != 32+1+4 {
		return netip.AddrPort{}, errAddress
	}
	n := len(b) - 5
	if b[n] != ':' {
		return netip.AddrPort{}, errAddress
	}
	port, ok := parseHex(b[n+1:])
	if !ok {
		return netip.AddrPort{}, errAddress
	}
	var a [16]byte
	for i := 0; i < n; i += 8 {
		w, ok := parseHex(b[i : i+8])
		if !ok {
			return netip.AddrPort{}, errAddress
		}
		binary.NativeEndian.PutUint32(a[i/2:], uint32(w))
	}
	if n == 8 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), uint16(port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a), uint16(port)), nil
}

// parseHex parses up to 8 hex digits, either case.
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 8 {
		return 0, false
	}
	var v uint64
	var bad byte // a digit's value, or'ed: above 0xf if any was not one
	for _, c := range b {
		d := hexValue[c]
		bad |= d
		v = v<<4 | uint64(d&0xf)
	}
	return v, bad <= 0xf
}

// parseDecimal parses an unsigned decimal that fits in 64 bits.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c - 'a' + 10)
		t[c-'a'+'A'] = byte(c - 'a' + 10)
	}
	return t
}()
