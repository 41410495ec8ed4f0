package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// The kernel's connection table: its /proc file read, and its size.

// tableReader reads a connection table with raw read(2) calls. Reads of
// /proc/net never block, and a raw call skips the scheduler's round trip
// that os.File pays on each of the hundreds of page-sized reads a table
// takes (see PERF-NOTES.md).
//
// On procfs it also spares the call that would return 0. The kernel's
// seq_file fills a read with whole lines until the next one does not fit in
// its buffer, a page or more, or the table ends; so a read that leaves more
// than the longest line of room in a page has met the end. The call after
// it would walk the whole hash table again from its first bucket
// (tcp_seq_start finds nowhere to resume past the end), in one call this
// kernel does not preempt: at 10,000 connections 4-6 ms of each file's
// 22-35 ms, and the longest wait a scrape had for a core. Any other file
// (a capture, a FIFO) is read until read(2) returns 0.
type tableReader struct {
	fd   int
	seq  bool // fd is a file of procfs
	done bool // a read met the end of the table
}

// maxLineLen bounds a line of /proc/net/tcp or tcp6 with room to spare:
// with every field at its widest, a tcp6 line is 288 bytes.
const maxLineLen = 512

const procSuperMagic = 0x9fa0 // PROC_SUPER_MAGIC, statfs(2)

var pageSize = os.Getpagesize()

// openTable opens path for a tableReader.
func openTable(path string) (tableReader, error) {
	// O_NONBLOCK: a FIFO put in place of the file must not hang the loop.
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return tableReader{}, err
	}
	var fs syscall.Statfs_t
	seq := syscall.Fstatfs(fd, &fs) == nil && fs.Type == procSuperMagic
	return tableReader{fd: fd, seq: seq}, nil
}

func (r *tableReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.done {
		return 0, io.EOF
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(r.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return 0, e
		case n == 0:
			return 0, io.EOF
		case r.seq && int(n)+maxLineLen < min(len(p), pageSize):
			r.done = true
			return int(n), io.EOF
		}
		return int(n), nil
	}
}

// tableBuckets is the size of the kernel's TCP connection table, which
// every dump and every read of /proc/net/tcp walks whole: the size of the
// namespace's own table, or minus the size of the host's table that it
// shares with every other namespace made before net.ipv4.tcp_child_ehash_entries
// was set (Linux 6.1).
type tableBuckets struct {
	n     int
	known bool // the kernel says (Linux 6.1 and later)
}

// readBuckets reads net.ipv4.tcp_ehash_entries from path.
func readBuckets(path string) tableBuckets {
	data, err := os.ReadFile(path)
	if err != nil {
		return tableBuckets{}
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	return tableBuckets{n: n, known: err == nil && n != 0}
}

func (b tableBuckets) String() string {
	if b.n < 0 {
		return fmt.Sprintf("the connection table has %d buckets, shared with the host's other network namespaces: each read walks all their sockets too", -b.n)
	}
	return fmt.Sprintf("the connection table has %d buckets, this network namespace's own", b.n)
}
