package main

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
)

// The process metrics that every Prometheus client library exports, under
// the same names, read from /proc/self at scrape time as they do.

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ is 100 on
// every Linux architecture that Go supports.
const userHZ = 100

// startTime is the process start time in seconds since the epoch; it never
// changes, so it is read once.
var startTime = sync.OnceValue(func() float64 {
	stat, err := readStat()
	if err != nil {
		return 0
	}
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(data, []byte("\nbtime "))
	if !ok {
		return 0
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	btime, err := strconv.ParseFloat(string(line), 64)
	if err != nil {
		return 0
	}
	return btime + stat.startTicks/userHZ
})

// procStat holds the fields of /proc/self/stat that are exported.
type procStat struct {
	cpuTicks   float64 // utime + stime
	startTicks float64 // since boot
	vsize, rss float64 // bytes
}

// readStat parses /proc/self/stat. The command name in parentheses may hold
// spaces, so fields are counted from the last ')'.
func readStat() (procStat, error) {
	f, err := statFields("/proc/self/stat")
	if err != nil {
		return procStat{}, err
	}
	if len(f) < 22 {
		return procStat{}, errFields
	}
	num := func(field int) float64 {
		v, _ := strconv.ParseFloat(string(f[field-3]), 64)
		return v
	}
	return procStat{
		cpuTicks:   num(14) + num(15),
		startTicks: num(22),
		vsize:      num(23),
		rss:        num(24) * float64(os.Getpagesize()),
	}, nil
}

// statFields reads a proc_pid_stat(5) file, of a process or a thread, and
// returns its fields from field 3, the state, on: the command name before
// them, in parentheses, may itself hold spaces and parentheses.
func statFields(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, errFields
	}
	return bytes.Fields(data[i+1:]), nil
}

// appendProcessMetrics writes the process_* families and go_goroutines;
// what cannot be read is left out rather than reported as zero.
func appendProcessMetrics(b []byte) []byte {
	if st, err := readStat(); err == nil {
		b = appendUnlabelled(b, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter", st.cpuTicks/userHZ)
		b = appendUnlabelled(b, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", st.rss)
		b = appendUnlabelled(b, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", st.vsize)
	}
	if f, err := os.Open("/proc/self/fd"); err == nil {
		names, err := f.Readdirnames(-1)
		f.Close()
		if err == nil {
			b = appendUnlabelled(b, "process_open_fds", "Number of open file descriptors.", "gauge", float64(len(names)-1)) // less the one reading
		}
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		b = appendUnlabelled(b, "process_max_fds", "Maximum number of open file descriptors.", "gauge", float64(lim.Cur))
	}
	if t := startTime(); t > 0 {
		b = appendUnlabelled(b, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge", t)
	}
	return appendUnlabelled(b, "go_goroutines", "Number of goroutines that currently exist.", "gauge", float64(runtime.NumGoroutine()))
}

// appendUnlabelled writes a family of one sample without labels.
func appendUnlabelled(b []byte, name, help, typ string, v float64) []byte {
	b = appendHeader(b, name, help, typ)
	return appendFloatSample(b, name, nil, v)
}
