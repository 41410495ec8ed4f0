//go:build 386 || s390x

package main

import (
	"runtime"
	"syscall"
	"unsafe"
)

// socketcallRecvfrom is SYS_RECVFROM of linux/net.h, the call number that
// socketcall(2) dispatches on.
const socketcallRecvfrom = 12

// recvfrom is recvfrom(2) without the source address, which
// syscall.Recvfrom would allocate for each reply. On 386 there is no
// recvfrom system call before Linux 4.3, and on s390x the standard library
// also reaches sockets through socketcall(2), whose second argument points
// at the call's arguments as an array of longs. flags pass through, so
// that MSG_TRUNC reports a datagram's full length.
func recvfrom(fd int, p []byte, flags int) (int, syscall.Errno) {
	args := [6]uintptr{uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0}
	n, _, errno := syscall.Syscall(syscall.SYS_SOCKETCALL, socketcallRecvfrom, uintptr(unsafe.Pointer(&args)), 0)
	runtime.KeepAlive(p) // args holds its address as a plain number
	return int(n), errno
}

// recvfromNow is recvfrom with MSG_DONTWAIT, as a raw system call: one
// that cannot block needs no round trip through the scheduler.
func recvfromNow(fd int, p []byte, flags int) (int, syscall.Errno) {
	args := [6]uintptr{uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags | syscall.MSG_DONTWAIT), 0, 0}
	n, _, errno := syscall.RawSyscall(syscall.SYS_SOCKETCALL, socketcallRecvfrom, uintptr(unsafe.Pointer(&args)), 0)
	runtime.KeepAlive(p)
	return int(n), errno
}
