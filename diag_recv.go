//go:build !386 && !s390x

package main

import (
	"syscall"
	"unsafe"
)

// recvfrom is recvfrom(2) without the source address, which
// syscall.Recvfrom would allocate for each reply. flags pass through, so
// that MSG_TRUNC reports a datagram's full length.
func recvfrom(fd int, p []byte, flags int) (int, syscall.Errno) {
	n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0)
	return int(n), errno
}

// recvfromNow is recvfrom with MSG_DONTWAIT, as a raw system call: one
// that cannot block needs no round trip through the scheduler.
func recvfromNow(fd int, p []byte, flags int) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags|syscall.MSG_DONTWAIT), 0, 0)
	return int(n), errno
}
