package main

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// scanAlone is the CPU time of what the exporter's scan does at each read
// once it knows every process (node.go's scan, listProcs and forget): list
// /proc with getdents into a kept buffer, parse each name, find the
// process in a map and mark it seen, then walk the map for the ones gone.
// It is a copy, measured in the bench, a check on the difference of the
// exporter's own reads, which the machine's drift blurs; 20 scans 50 ms
// apart, so that the caches are not as warm as in a tight loop (the
// exporter's scans are a second apart: this may still flatter it).
func scanAlone() time.Duration {
	procs := make(map[int]uint32) // the scan that last listed each
	buf := make([]byte, 32<<10)
	scan := func(gen uint32) {
		fd, err := syscall.Open("/proc", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		for {
			n, err := syscall.Getdents(fd, buf)
			if err != nil || n <= 0 {
				break
			}
			for b := buf[:n]; len(b) > 19; {
				size := int(binary.NativeEndian.Uint16(b[16:]))
				name, _, _ := bytes.Cut(b[19:size], []byte{0})
				if pid, err := strconv.Atoi(string(name)); err == nil && pid > 0 {
					procs[pid] = gen
				}
				b = b[size:]
			}
		}
		syscall.Close(fd)
		for pid, seen := range procs {
			if seen != gen {
				delete(procs, pid)
			}
		}
	}
	scan(1)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const scans = 20
	var sum time.Duration
	for i := range scans {
		time.Sleep(50 * time.Millisecond)
		t0 := threadCPU()
		scan(uint32(i + 2))
		sum += threadCPU() - t0
	}
	return sum / scans
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	const clockThreadCPUTimeID = 3
	var ts syscall.Timespec
	syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}
