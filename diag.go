package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// Wire constants from linux/netlink.h, linux/sock_diag.h and linux/inet_diag.h.
const (
	nlmsgHdrLen      = 16                        // sizeof(struct nlmsghdr)
	diagReqLen       = 56                        // sizeof(struct inet_diag_req_v2)
	diagOldReqLen    = 60                        // sizeof(struct inet_diag_req), the old request's
	diagMsgLen       = 72                        // sizeof(struct inet_diag_msg)
	netlinkSockDiag  = syscall.NETLINK_INET_DIAG // NETLINK_SOCK_DIAG, its later name
	tcpDiagGetSock   = 18                        // TCPDIAG_GETSOCK, the old request: both families
	sockDiagByFamily = 20                        // SOCK_DIAG_BY_FAMILY
	diagReqBytecode  = 1                         // INET_DIAG_REQ_BYTECODE
	bcJmp            = 1                         // INET_DIAG_BC_JMP
	bcSrcEq          = 11                        // INET_DIAG_BC_S_EQ
	bcDstEq          = 12                        // INET_DIAG_BC_D_EQ
)

const (
	// diagBufSize exceeds the largest datagram the kernel builds for a
	// dump (SKB_WITH_OVERHEAD(32 KiB)), so a reply is never truncated.
	diagBufSize = 64 << 10
	// diagTimeout bounds each receive so that a kernel that never ends a
	// dump cannot hang a scrape forever.
	diagTimeout = 5 * time.Second
	// diagMaxRecvs bounds the receive loop of one request: 1<<16 full
	// datagrams are about 20 million sockets.
	diagMaxRecvs = 1 << 16
)

const (
	listenStates      = 1 << stateListen
	establishedStates = 1 << stateEstablished
)

var (
	errDiagHeader   = errors.New("netlink header truncated")
	errDiagShortLen = errors.New("netlink message length below header size")
	errDiagLength   = errors.New("netlink message length beyond buffer")
	errDiagShortMsg = errors.New("netlink payload too short")
	errDiagType     = errors.New("unexpected netlink message type")
	errDiagFamily   = errors.New("unexpected address family")
	errDiagState    = errors.New("unexpected tcp state")
	errDiagNetlink  = errors.New("netlink error reply")
	errDiagSeq      = errors.New("netlink reply to another request")
	errDiagOverflow = errors.New("netlink datagram larger than buffer")
	errDiagEndless  = errors.New("netlink dump did not end")
	errDiagPorts    = errors.New("more ports than a filter takes")
	errDiagClosed   = errors.New("sock_diag source closed")
)

// diagSource dumps TCP sockets of the caller's network namespace over
// NETLINK_SOCK_DIAG. It is not safe for concurrent use.
//
// IPv4 and IPv6 TCP sockets live in one kernel table, and a dump of one
// family walks all of it, skipping the other's sockets. The old request,
// TCPDIAG_GETSOCK, is served with family AF_UNSPEC (inet_diag_dump_compat):
// both families in one walk, the same replies, the same bytecode. So a
// dump asks with it, and asks per family only where the kernel refuses it.
type diagSource struct {
	walk    uint16 // the one-walk request's type; 0 where the kernel refused it
	refused error  // why the kernel refused it
	netns   int    // the namespace file a socket is opened in; -1: the caller's
	fd      int    // -1 while closed or after a failed reopen
	buf     []byte // receive buffer, reused across reads
	req     []byte // request being sent, reused
	pid     uint32 // our netlink port id; the kernel addresses replies to it
	seq     uint32 // sequence number of the last request
	sock    socket // the value handed to fn, reused
	closed  bool   // Close was called
}

// newDiagSource opens the netlink socket that dump uses.
func newDiagSource() (*diagSource, error) {
	return openDiagSource(tcpDiagGetSock, -1, make([]byte, diagBufSize))
}

// newDiagSourceIn is newDiagSource for the network namespace of the file
// netns (a /proc/PID/ns/net), which the source then owns: its sockets are
// opened inside, so that a dump enters no namespace. buf, of diagBufSize
// bytes, is its receive buffer, which sources that never dump at the same
// time may share.
func newDiagSourceIn(netns int, buf []byte) (*diagSource, error) {
	d, err := openDiagSource(tcpDiagGetSock, netns, buf)
	if err != nil {
		syscall.Close(netns)
	}
	return d, err
}

// openDiagSource opens the socket and asks once with the one-walk request
// of type walk, for the listeners alone (the small listening table, not
// the connections'): an error reply means this kernel refuses it, and
// dumps ask per family.
func openDiagSource(walk uint16, netns int, buf []byte) (*diagSource, error) {
	d := &diagSource{walk: walk, netns: netns, fd: -1, buf: buf, req: make([]byte, 0, 128)}
	if err := d.open(); err != nil {
		return nil, err
	}
	err := d.request(walk, syscall.AF_UNSPEC, listenStates, nil, func(*socket) {})
	if errors.Is(err, errDiagNetlink) {
		d.walk, d.refused = 0, err
	} else if err != nil {
		d.closeSocket()
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	return d, nil
}

// open creates the socket and configures it with setupDiagSocket.
func (d *diagSource) open() error {
	fd, err := diagSocket(d.netns)
	if err != nil {
		return fmt.Errorf("sock_diag socket: %w", err)
	}
	pid, err := setupDiagSocket(fd)
	if err != nil {
		syscall.Close(fd)
		return fmt.Errorf("sock_diag setup: %w", err)
	}
	d.fd, d.pid = fd, pid
	return nil
}

// diagSocket opens a sock_diag socket in the network namespace of the file
// netns, or the caller's where netns is -1. A socket stays in the namespace
// it was made in; to make one in another, a thread enters it (setns) and
// is never used again: its goroutine ends locked to it, which ends the
// thread.
func diagSocket(netns int) (int, error) {
	socket := func() (int, error) {
		return syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, netlinkSockDiag)
	}
	if netns < 0 {
		return socket()
	}
	type result struct {
		fd  int
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if _, _, e := syscall.RawSyscall(sysSetns, uintptr(netns), syscall.CLONE_NEWNET, 0); e != 0 {
			c <- result{-1, fmt.Errorf("setns: %w", e)}
			return
		}
		fd, err := socket()
		c <- result{fd, err}
	}()
	r := <-c
	return r.fd, r.err
}

// setupDiagSocket sets the timeouts, binds fd and returns its port id.
// Connecting to the kernel (port id 0) makes the socket refuse datagrams
// from other processes.
func setupDiagSocket(fd int) (pid uint32, err error) {
	tv := syscall.NsecToTimeval(int64(diagTimeout))
	for _, opt := range [...]int{syscall.SO_RCVTIMEO, syscall.SO_SNDTIMEO} {
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, opt, &tv); err != nil {
			return 0, err
		}
	}
	kernel := &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}
	if err := syscall.Bind(fd, kernel); err != nil {
		return 0, err
	}
	if err := syscall.Connect(fd, kernel); err != nil {
		return 0, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	nl, ok := sa.(*syscall.SockaddrNetlink)
	if !ok {
		return 0, fmt.Errorf("unexpected local address %T", sa)
	}
	return nl.Pid, nil
}

// Close releases the socket, and the namespace file; later dumps fail.
func (d *diagSource) Close() error {
	d.closed = true
	if d.netns >= 0 {
		syscall.Close(d.netns)
		d.netns = -1
	}
	return d.closeSocket()
}

func (d *diagSource) closeSocket() error {
	if d.fd < 0 {
		return nil
	}
	err := syscall.Close(d.fd)
	d.fd = -1
	return err
}

// dump asks for the TCP sockets of both families in state ESTABLISHED or
// LISTEN and calls fn for each; fn must not keep the pointer. With ports
// (nil asks for all) the kernel sends every listener but only the
// established sockets whose source or destination port is one of ports.
// Asked per family, an error of one family does not stop the other; fn
// may have seen sockets of a failed dump.
func (d *diagSource) dump(ports []uint16, fn func(*socket)) error {
	if len(ports) > maxFilterPorts {
		return fmt.Errorf("%w: %d", errDiagPorts, len(ports))
	}
	if d.walk != 0 {
		if err := d.dumpStates(d.walk, syscall.AF_UNSPEC, ports, fn); err != nil {
			return fmt.Errorf("sock_diag: %w", err)
		}
		return nil
	}
	var errs [2]error
	for i, f := range diagFamilies {
		if err := d.dumpStates(sockDiagByFamily, f.family, ports, fn); err != nil {
			errs[i] = fmt.Errorf("sock_diag %s: %w", f.name, err)
		}
	}
	return errors.Join(errs[0], errs[1])
}

// dumpStates is one request of type typ for family, or with ports two:
// the listeners, then the established sockets carrying the port filter
// (bytecode has no test of state, and every listener tells direction).
func (d *diagSource) dumpStates(typ uint16, family uint8, ports []uint16, fn func(*socket)) error {
	if ports == nil {
		return d.request(typ, family, listenStates|establishedStates, nil, fn)
	}
	if err := d.request(typ, family, listenStates, nil, fn); err != nil {
		return err
	}
	return d.request(typ, family, establishedStates, ports, fn)
}

var diagFamilies = [...]struct {
	family uint8
	name   string
}{{syscall.AF_INET, "AF_INET"}, {syscall.AF_INET6, "AF_INET6"}}

// request runs one dump to its end. When it stops early, unread replies
// would be mistaken for the next request's and the kernel would refuse a new
// dump (EBUSY) while this one is pending, so the socket is replaced.
func (d *diagSource) request(typ uint16, family uint8, states uint32, ports []uint16, fn func(*socket)) error {
	if d.closed {
		return errDiagClosed
	}
	if d.fd < 0 {
		if err := d.open(); err != nil {
			return err
		}
	}
	err := d.send(typ, family, states, ports)
	for i := 0; err == nil; i++ {
		if i == diagMaxRecvs {
			err = errDiagEndless
			break
		}
		var n int
		if n, err = d.recv(); err != nil {
			break
		}
		var done bool
		done, err = parseReply(d.buf[:n], d.seq, d.pid, &d.sock, fn)
		if done {
			return err
		}
	}
	syscall.Close(d.fd)
	d.fd = -1
	return err
}

// send writes a dump request, as a raw system call, as recv first reads:
// the kernel serves a request inside the call that sends it, building the
// dump's first datagram there, and never waits in it. Made through the
// scheduler, a call that walks a table for tens of microseconds (a
// namespace's; milliseconds for a table shared with a busy host) has the
// runtime's monitor hand the thread's processor to another thread, woken
// for it, and take it back after: in a node's read, once a namespace.
func (d *diagSource) send(typ uint16, family uint8, states uint32, ports []uint16) error {
	d.seq++
	if d.seq == 0 { // 0 means "any" to parseReply
		d.seq = 1
	}
	d.req = appendRequest(d.req[:0], d.seq, typ, family, states, ports)
	_, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(d.fd), uintptr(unsafe.Pointer(&d.req[0])), uintptr(len(d.req)))
	if errno != 0 {
		return fmt.Errorf("send: %w", errno)
	}
	return nil
}

// recv reads one datagram into d.buf. MSG_TRUNC makes the kernel report the
// datagram's full length, so a truncated read is detected, not misparsed.
//
// A reply is almost always there already: the kernel builds the next
// datagram of a dump inside the call that takes the previous one. So recv
// first takes it with a raw call that cannot block, and only when none is
// queued waits in a call the scheduler knows of. A blocking call for each of
// the thousands of datagrams of a large table would have the runtime hand
// the thread's processor over and back each time, a cost of its own that
// the kernel's dump does not have (see PERF-NOTES.md).
func (d *diagSource) recv() (int, error) {
	for {
		n, errno := recvfromNow(d.fd, d.buf, syscall.MSG_TRUNC)
		if errno == syscall.EAGAIN {
			n, errno = recvfrom(d.fd, d.buf, syscall.MSG_TRUNC)
		}
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return 0, fmt.Errorf("recv: no reply within %v: %w", diagTimeout, errno)
		case errno != 0:
			return 0, fmt.Errorf("recv: %w", errno)
		case n > len(d.buf):
			return 0, fmt.Errorf("%w: %d bytes", errDiagOverflow, n)
		}
		return n, nil
	}
}

// appendRequest appends a dump request for TCP sockets of family in
// states: of type SOCK_DIAG_BY_FAMILY, a struct inet_diag_req_v2; of
// another type (TCPDIAG_GETSOCK), the old struct inet_diag_req, whose
// protocol is the type's and whose family the kernel ignores. ports other
// than nil add a filter: the source or destination port is one of ports.
func appendRequest(b []byte, seq uint32, typ uint16, family uint8, states uint32, ports []uint16) []byte {
	n := nlmsgHdrLen + diagOldReqLen
	if typ == sockDiagByFamily {
		n = nlmsgHdrLen + diagReqLen
	}
	if ports != nil {
		n += 4 + portFilterLen(len(ports))
	}
	ne := binary.NativeEndian
	b = ne.AppendUint32(b, uint32(n))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0) // nlmsg_pid: the kernel fills it in
	var anyID [48]byte        // inet_diag_sockid: match any
	if typ == sockDiagByFamily {
		b = append(b, family, syscall.IPPROTO_TCP, 0, 0) // family, protocol, idiag_ext, pad
		b = ne.AppendUint32(b, states)                   // idiag_states
		b = append(b, anyID[:]...)
	} else {
		b = append(b, family, 0, 0, 0) // family, src_len, dst_len, idiag_ext
		b = append(b, anyID[:]...)
		b = ne.AppendUint32(b, states) // idiag_states
		b = ne.AppendUint32(b, 0)      // idiag_dbs
	}
	if ports != nil {
		b = ne.AppendUint16(b, uint16(4+portFilterLen(len(ports)))) // nla_len
		b = ne.AppendUint16(b, diagReqBytecode)                     // nla_type
		b = appendPortFilter(b, ports)
	}
	return b
}

// maxFilterPorts bounds the ports of one filter: the jumps to its end must
// fit their 16-bit field, as must the attribute's length. The port setting
// allows fewer.
const maxFilterPorts = 1024

// portFilterLen is the length of appendPortFilter's program for n ports:
// two comparisons of 8 bytes a port, each but the last followed by a jump.
func portFilterLen(n int) int { return 2*n*12 - 4 }

// appendPortFilter appends inet_diag bytecode accepting a socket whose
// source or destination port is one of ports (at least one). Each op is
// {code, yes, no}: the program continues at op+yes when the condition holds
// and at op+no otherwise; landing exactly on the end accepts, landing 4
// bytes past it rejects. A port comparison takes two ops, the second
// holding the port in its no field. For ports p and q:
//
//	 0: S_EQ yes 8 no 12   sport == p? go to 8 : go to 12
//	 4:  (port p)
//	 8: JMP  yes 4 no 36   always "no": go to 44, the end: accept
//	12: D_EQ yes 8 no 12   dport == p? go to 20 : go to 24
//	16:  (port p)
//	20: JMP  yes 4 no 24   accept
//	24: S_EQ yes 8 no 12   sport == q? go to 32 : go to 36
//	28:  (port q)
//	32: JMP  yes 4 no 12   accept
//	36: D_EQ yes 8 no 12   dport == q? go to 44, accept : go to 48, reject
//	40:  (port q)
func appendPortFilter(b []byte, ports []uint16) []byte {
	ne := binary.NativeEndian
	op := func(b []byte, code, yes uint8, no uint16) []byte {
		return ne.AppendUint16(append(b, code, yes), no)
	}
	start, total := len(b), portFilterLen(len(ports))
	for _, p := range ports {
		for _, code := range [...]uint8{bcSrcEq, bcDstEq} {
			b = op(b, code, 8, 12)
			b = op(b, 0, 0, p)
			if len(b)-start < total { // not the last comparison
				b = op(b, bcJmp, 4, uint16(total-(len(b)-start)))
			}
		}
	}
	return b
}

// parseDiagMessages parses a buffer of netlink messages (one recv's worth),
// calling fn per inet_diag_msg; fn must not keep the pointer. done reports
// the end of the dump (NLMSG_DONE or NLMSG_ERROR, whose errno err wraps).
func parseDiagMessages(b []byte, fn func(*socket)) (done bool, err error) {
	var s socket
	return parseReply(b, 0, 0, &s, fn)
}

// parseReply is parseDiagMessages decoding into s. Unless seq is 0, every
// message must carry seq and pid, so that a stray reply is never counted.
func parseReply(b []byte, seq, pid uint32, s *socket, fn func(*socket)) (done bool, err error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return false, fmt.Errorf("%w: %d bytes left", errDiagHeader, len(b))
		}
		n := ne.Uint32(b)
		switch {
		case n < nlmsgHdrLen:
			return false, fmt.Errorf("%w: %d", errDiagShortLen, n)
		case uint64(n) > uint64(len(b)):
			return false, fmt.Errorf("%w: %d > %d", errDiagLength, n, len(b))
		case seq != 0 && (ne.Uint32(b[8:]) != seq || ne.Uint32(b[12:]) != pid):
			return false, fmt.Errorf("%w: seq %d pid %d", errDiagSeq, ne.Uint32(b[8:]), ne.Uint32(b[12:]))
		}
		payload := b[nlmsgHdrLen:n]
		switch typ := ne.Uint16(b[4:]); typ {
		case sockDiagByFamily, tcpDiagGetSock: // a reply has its request's type
			if err := parseDiagMsg(payload, s); err != nil {
				return false, err
			}
			fn(s)
		case syscall.NLMSG_DONE:
			return true, replyError(payload)
		case syscall.NLMSG_ERROR:
			if len(payload) < 4 {
				return false, fmt.Errorf("%w: NLMSG_ERROR of %d bytes", errDiagShortMsg, len(payload))
			}
			return true, replyError(payload)
		case syscall.NLMSG_NOOP:
		default:
			return false, fmt.Errorf("%w: %d", errDiagType, typ)
		}
		b = b[min((int(n)+3)&^3, len(b)):] // NLMSG_ALIGN; the last message may lack padding
	}
	return false, nil
}

// replyError decodes the int32 error that starts NLMSG_ERROR and NLMSG_DONE
// payloads; 0 is an acknowledgement.
func replyError(p []byte) error {
	if len(p) < 4 {
		return nil
	}
	e := int64(int32(binary.NativeEndian.Uint32(p)))
	if e == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", errDiagNetlink, syscall.Errno(max(e, -e)))
}

// parseDiagMsg decodes a struct inet_diag_msg. Addresses keep the family of
// the socket, as /proc/net/tcp6 keeps IPv4-mapped addresses.
func parseDiagMsg(p []byte, s *socket) error {
	if len(p) < diagMsgLen {
		return fmt.Errorf("%w: inet_diag_msg of %d bytes", errDiagShortMsg, len(p))
	}
	state := tcpState(p[1])
	if state < stateEstablished || state > stateNewSynRecv {
		return fmt.Errorf("%w: %d", errDiagState, p[1])
	}
	sport := binary.BigEndian.Uint16(p[4:])
	dport := binary.BigEndian.Uint16(p[6:])
	switch p[0] {
	case syscall.AF_INET:
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[8:12])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[24:28])), dport)
	case syscall.AF_INET6:
		s.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[8:24])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[24:40])), dport)
	default:
		return fmt.Errorf("%w: %d", errDiagFamily, p[0])
	}
	s.State = state
	s.Inode = uint64(binary.NativeEndian.Uint32(p[68:]))
	return nil
}
