// Command cadvisor reads the connection tables as cAdvisor does with its
// tcp metrics enabled (off by default "due to high CPU usage"), so that the
// benchmark can hold the exporter's node mode against it: each read, for
// every container process, /proc/PID/net/tcp and tcp6 read whole
// (os.ReadFile), copied to a string, split in lines with a bufio.Scanner
// and each line in fields with strings.Fields, its state counted in a map
// made afresh (cAdvisor's scanTCPStats in container/libcontainer/handler.go).
// A container is one process here, and cAdvisor reads each container's
// tables, so a namespace of three containers is read three times; and the
// root container's, the host's, through PID 1.
//
// It reads once an interval, as the exporter does, and prints its CPU time
// per read, all threads. A read of a shared table can take seconds:
// -budget stops the reads once they have taken that long, after at least
// one.
//
//	cadvisor -pids pids.txt -reads 5   # cpu_per_read_ns=... reads=5 lines=...
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	pidList := flag.String("pids", "", "a file of process ids, one a line: the containers' processes")
	reads := flag.Int("reads", 5, "reads to measure, at most")
	interval := flag.Duration("interval", time.Second, "time between reads")
	budget := flag.Duration("budget", 20*time.Second, "stop after the reads that end past this, measured")
	flag.Parse()
	pids, err := readPids(*pidList)
	if err != nil || *reads < 1 || *reads > 10000 || len(pids) == 0 {
		fmt.Fprintln(os.Stderr, "cadvisor: bad flags", err)
		os.Exit(2)
	}
	// Not measured: code and pages, touched by one container's read, not
	// all (a read of every table may take seconds).
	if _, err := readAll(pids[:1]); err != nil {
		fail(err)
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	<-t.C
	start, wall := cpuTime(), time.Now()
	n, lines := 0, 0
	for n < *reads && (n == 0 || time.Since(wall) < *budget) {
		if lines, err = readAll(pids); err != nil {
			fail(err)
		}
		n++
		<-t.C
	}
	fmt.Printf("cpu_per_read_ns=%d reads=%d lines=%d\n", (cpuTime()-start)/int64(n), n, lines)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cadvisor:", err)
	os.Exit(1)
}

func readPids(path string) ([]int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for f := range strings.FieldsSeq(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("bad pid %q", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// readAll reads both tables of every process, as cAdvisor's housekeeping
// does for each container, and returns the lines counted.
func readAll(pids []int) (int, error) {
	lines := 0
	for _, pid := range pids {
		for _, file := range [...]string{"net/tcp", "net/tcp6"} {
			n, err := scanTCPStats("/proc/" + strconv.Itoa(pid) + "/" + file)
			if err != nil {
				return lines, err
			}
			lines += n
		}
	}
	return lines, nil
}

// scanTCPStats counts the sockets of a table by state, cAdvisor's way.
func scanTCPStats(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	states := map[string]uint64{
		"01": 0, "02": 0, "03": 0, "04": 0, "05": 0, "06": 0,
		"07": 0, "08": 0, "09": 0, "0A": 0, "0B": 0,
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Split(bufio.ScanLines)
	if !sc.Scan() { // the header
		return 0, sc.Err()
	}
	n := 0
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 4 {
			return n, fmt.Errorf("%s: bad line %q", path, line)
		}
		if _, ok := states[f[3]]; !ok {
			return n, fmt.Errorf("%s: bad state in %q", path, line)
		}
		states[f[3]]++
		n++
	}
	return n, sc.Err()
}

// cpuTime is this process's CPU time, all threads.
func cpuTime() int64 {
	const clockProcessCPUTimeID = 2
	var ts syscall.Timespec
	syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}
