// Command floor is what the benchmark compares the exporter with: the
// least a reader of the connection tables must spend. It reads the tables
// once an interval, as the exporter does, since a read after a pause costs
// 1.5-2x a back-to-back one (the kernel's structures have left the cache;
// see PERF-NOTES.md in the shared notes), and prints its own CPU time per
// read, all threads, the Go runtime's idle wake-ups included as they are in
// the exporter's. It makes raw system calls and parses nothing.
//
// With -source netlink (the default) a read is the kernel's own sock_diag
// dump of TCP sockets, both families, ESTABLISHED and LISTEN, the messages
// walked by their headers. How it asks is -walk: "one" (the default, as the
// exporter asks) is one TCPDIAG_GETSOCK request with the old struct
// inet_diag_req, which the kernel serves with family AF_UNSPEC, both
// families in one walk of the socket hash they share; "family" is one
// SOCK_DIAG_BY_FAMILY request a family, each walking the whole hash and
// skipping the other family's sockets. With -port, as the exporter with a
// port setting, each walk is two requests: the listeners, then the
// established sockets whose source or destination port is the port,
// filtered in the kernel. With -source proc a read is /proc/net/tcp then
// /proc/net/tcp6, opened and read to their end into a large buffer; the
// end is where the exporter finds it, at the first read that leaves more
// than a line's room in a page (the kernel's seq_file stops a read only
// when the next line does not fit or the table ends), not at a last call
// that returns 0 after walking the whole table again.
//
// With -netns, a file of network namespaces (/proc/PID/ns/net), one a line,
// a netlink read dumps each of them, as the exporter of a node does: a
// socket is opened inside each, once, by a thread that enters it (setns),
// and kept; a read asks each socket in turn.
//
//	floor -reads 20                   # cpu_per_read_ns=... reads=20 sockets=...
//	floor -reads 20 -walk family      # the same sockets, in two walks
//	floor -reads 20 -port 8080        # listeners, and only port 8080's
//	floor -reads 20 -source proc
//	floor -reads 20 -netns namespaces.txt
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	tcpDiagGetSock   = 18 // TCPDIAG_GETSOCK, the old request: both families
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	listenStates     = 1 << 10
	establishedState = 1 << 1
	diagReqBytecode  = 1  // INET_DIAG_REQ_BYTECODE
	bcJmp            = 1  // INET_DIAG_BC_JMP
	bcSrcEq          = 11 // INET_DIAG_BC_S_EQ
	bcDstEq          = 12 // INET_DIAG_BC_D_EQ
)

func main() {
	reads := flag.Int("reads", 20, "reads to measure, after one unmeasured")
	interval := flag.Duration("interval", time.Second, "time between reads")
	source := flag.String("source", "netlink", "netlink or proc")
	port := flag.Int("port", 0, "netlink: dump only this port's established sockets (0: all)")
	walk := flag.String("walk", "one", "netlink: one (one request for both families) or family (one a family)")
	netns := flag.String("netns", "", "netlink: a file of network namespace paths, one a line, each dumped by every read")
	flag.Parse()
	if *reads < 1 || *reads > 10000 || *port < 0 || *port > 65535 || *source != "netlink" && *source != "proc" ||
		*source == "proc" && (*port != 0 || *netns != "") || *walk != "one" && *walk != "family" {
		fmt.Fprintln(os.Stderr, "floor: bad flags")
		os.Exit(2)
	}
	read := readProc
	if *source == "netlink" {
		read = dumper(sockets(*netns), uint16(*port), *walk == "one")
	}
	buf := make([]byte, 1<<20)
	read(buf) // not measured: the first touches pages and code
	t := time.NewTicker(*interval)
	defer t.Stop()
	<-t.C
	start := cpuTime()
	var n int
	for range *reads {
		n = read(buf)
		<-t.C
	}
	// The window ends at a tick, as it began: one interval a read, the
	// runtime's idle wake-ups included, as they are in the exporter's.
	unit := "sockets"
	if *source == "proc" {
		unit = "bytes"
	}
	fmt.Printf("cpu_per_read_ns=%d reads=%d %s=%d\n", (cpuTime()-start)/int64(*reads), *reads, unit, n)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "floor:", err)
	os.Exit(1)
}

// maxLineLen bounds a line of the tables, as the exporter's does.
const maxLineLen = 512

var pageSize = os.Getpagesize()

// readProc reads /proc/net/tcp and tcp6 into buf, over and over, and
// returns the bytes read.
func readProc(buf []byte) int {
	total := 0
	for _, path := range [...]string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		for {
			n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if e != 0 {
				fail(fmt.Errorf("read %s: %w", path, e))
			}
			total += int(n)
			if int(n)+maxLineLen < pageSize {
				break
			}
		}
		syscall.Close(fd)
	}
	return total
}

// diagSocket opens a sock_diag socket in the calling thread's namespace.
func diagSocket() (int, error) {
	return syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
}

// sockets opens the sock_diag sockets a read dumps: one in the floor's own
// namespace when list is "", else one in each namespace the file list
// names, opened by a thread that enters each in turn and is never used
// again: its goroutine ends locked to it, which ends the thread.
func sockets(list string) []int {
	if list == "" {
		fd, err := diagSocket()
		if err != nil {
			fail(err)
		}
		return []int{fd}
	}
	data, err := os.ReadFile(list)
	if err != nil {
		fail(err)
	}
	paths := strings.Fields(string(data))
	fds := make([]int, 0, len(paths))
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		for _, path := range paths {
			fd, err := socketIn(path)
			if err != nil {
				done <- err
				return
			}
			fds = append(fds, fd)
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		fail(err)
	}
	return fds
}

// socketIn moves the calling thread into the network namespace at path and
// opens a sock_diag socket there, which stays in it.
func socketIn(path string) (int, error) {
	ns, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer syscall.Close(ns)
	if _, _, e := syscall.RawSyscall(setnsTrap(), uintptr(ns), syscall.CLONE_NEWNET, 0); e != 0 {
		return -1, fmt.Errorf("setns %s: %w", path, e)
	}
	return diagSocket()
}

// setnsTrap is setns(2)'s number, which package syscall's tables for
// amd64 and 386 lack.
func setnsTrap() uintptr {
	switch runtime.GOARCH {
	case "amd64":
		return 308
	case "386":
		return 346
	case "arm":
		return 375
	}
	return 268 // arm64, riscv64, loong64
}

// dumper returns a read of the sock_diag dump of each socket of fds: both
// families, in one walk or one a family, all ports or one, and the sockets
// it listed.
func dumper(fds []int, port uint16, oneWalk bool) func(buf []byte) int {
	families := []uint8{syscall.AF_INET, syscall.AF_INET6}
	if oneWalk {
		families = []uint8{syscall.AF_UNSPEC}
	}
	var reqs [][]byte
	for _, family := range families {
		seq := uint32(len(reqs) + 1)
		if port == 0 {
			reqs = append(reqs, request(seq, oneWalk, family, listenStates|establishedState, 0))
			continue
		}
		reqs = append(reqs, request(seq, oneWalk, family, listenStates, 0),
			request(seq+1, oneWalk, family, establishedState, port))
	}
	return func(buf []byte) int {
		msgs := 0
		for _, fd := range fds {
			for _, req := range reqs {
				if err := run(fd, req, buf[:64<<10], &msgs); err != nil {
					fail(err)
				}
			}
		}
		return msgs
	}
}

// request is a dump request for TCP sockets of family in states: a
// SOCK_DIAG_BY_FAMILY one with a struct inet_diag_req_v2, or, oneWalk, a
// TCPDIAG_GETSOCK one with the old struct inet_diag_req, whose family the
// kernel ignores (it walks both). A port other than 0 adds a filter: the
// source or destination port is port.
func request(seq uint32, oneWalk bool, family uint8, states uint32, port uint16) []byte {
	ne := binary.NativeEndian
	typ, n := uint16(sockDiagByFamily), 16+56
	if oneWalk {
		typ, n = tcpDiagGetSock, 16+60
	}
	if port != 0 {
		n += 4 + 20
	}
	b := ne.AppendUint32(nil, uint32(n))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	anyID := make([]byte, 48) // inet_diag_sockid: any
	if oneWalk {
		b = append(b, family, 0, 0, 0) // family, src_len, dst_len, idiag_ext
		b = append(b, anyID...)
		b = ne.AppendUint32(b, states)
		b = ne.AppendUint32(b, 0) // idiag_dbs
	} else {
		b = append(b, family, syscall.IPPROTO_TCP, 0, 0) // family, protocol, idiag_ext, pad
		b = ne.AppendUint32(b, states)
		b = append(b, anyID...)
	}
	if port != 0 {
		b = appendPortFilter(b, port)
	}
	return b
}

// appendPortFilter appends an INET_DIAG_REQ_BYTECODE attribute that
// accepts a socket whose source or destination port is port.
func appendPortFilter(b []byte, port uint16) []byte {
	ne := binary.NativeEndian
	op := func(b []byte, code, yes uint8, no uint16) []byte { return ne.AppendUint16(append(b, code, yes), no) }
	b = ne.AppendUint16(b, 4+20)
	b = ne.AppendUint16(b, diagReqBytecode)
	b = op(b, bcSrcEq, 8, 12) // sport == port? accept at 20 : go on at 12
	b = op(b, 0, 0, port)
	b = op(b, bcJmp, 4, 12)
	b = op(b, bcDstEq, 8, 12) // dport == port? accept : reject
	return op(b, 0, 0, port)
}

// run sends req and receives the replies to the end of the dump, walking
// the messages by their headers only, counting them in msgs.
func run(fd int, req, buf []byte, msgs *int) error {
	kernel := syscall.RawSockaddrNetlink{Family: syscall.AF_NETLINK}
	if _, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)),
		0, uintptr(unsafe.Pointer(&kernel)), unsafe.Sizeof(kernel)); e != 0 {
		return fmt.Errorf("sendto: %w", e)
	}
	ne := binary.NativeEndian
	for range 1 << 16 {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
		if e != 0 {
			return fmt.Errorf("recvfrom: %w", e)
		}
		for b := buf[:n]; len(b) >= 16; {
			l := ne.Uint32(b)
			switch ne.Uint16(b[4:]) {
			case syscall.NLMSG_DONE:
				return nil
			case syscall.NLMSG_ERROR:
				return fmt.Errorf("netlink error reply")
			}
			if l < 16 || int(l) > len(b) {
				return fmt.Errorf("bad message length %d", l)
			}
			*msgs++
			b = b[min((int(l)+3)&^3, len(b)):]
		}
	}
	return fmt.Errorf("dump did not end")
}

// cpuTime is this process's CPU time, all threads: one clock_gettime, so
// that measuring costs nothing beside a dump.
func cpuTime() int64 {
	const clockProcessCPUTimeID = 2
	var ts syscall.Timespec
	syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}
