package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runConfig is what every measurement of one run shares.
type runConfig struct {
	ports, reads, scrapes int
	args                  []string // extra exporter flags
	dir                   string
}

// result is one row of a table.
type result struct {
	n          int
	variant    string        // the exporter's source, and port when set
	buckets    int           // tcp_ehash_entries of an empty namespace's row
	floor      time.Duration // bare read of tcp and tcp6
	dumpFloor  time.Duration // bare sock_diag dump a family, netlink variants only
	oneFloor   time.Duration // bare one-walk sock_diag dump, netlink variants only
	cpuPerRead time.Duration // exporter CPU over reads, per read
	rss        int64         // bytes, after the reads
	p50, p99   time.Duration // /metrics latency
	series     int           // samples of the long-term gauge
}

// variants are the exporter configurations measured at each N; the port
// variant is run where the load tool gives a port.
var variants = []struct {
	name     string
	args     []string
	withPort bool
	netlink  bool // measured against the netlink floors too
}{
	{"proc", []string{"-source", "proc"}, false, false},
	{"netlink", []string{"-source", "netlink"}, false, true},
	{"netlink, port", []string{"-source", "netlink"}, true, true},
}

// job is one exporter configuration to measure, and where.
type job struct {
	label   string // for the log
	args    []string
	netlink bool   // compared with the dumps, else with /proc
	port    string // the dump floors' port filter, or ""
	at      place
}

// rounds is how many times a measurement alternates between the floors and
// the exporter: the kernel's cost drifts by 5-30% within a minute on a
// shared machine, and each floor is measured between two windows of the
// exporter, so that the drift lands on both.
const rounds = 4

// measure holds n connections and runs each variant of the exporter,
// measuring its CPU per read, RSS and scrape latency, and its floors.
func measure(bins binaries, cfg runConfig, n int) ([]result, error) {
	port := ""
	if n > 0 {
		stop, p, err := startLoad(bins.load, cfg, n)
		if err != nil {
			return nil, err
		}
		defer stop()
		port = p
	}
	var rows []result
	for _, v := range variants {
		j := job{label: fmt.Sprintf("N=%d %s", n, v.name), netlink: v.netlink, at: home}
		j.args = append(append([]string{}, v.args...), cfg.args...)
		if v.withPort {
			if port == "" {
				continue
			}
			j.args, j.port = append(j.args, "-port", port), port
		}
		r, err := measureVariant(bins, cfg, j)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", v.name, err)
		}
		r.n, r.variant = n, v.name
		rows = append(rows, r)
	}
	return rows, nil
}

// measureVariant runs the exporter of j and measures it in rounds windows,
// stopped (SIGSTOP) while its floors read between them.
func measureVariant(bins binaries, cfg runConfig, j job) (result, error) {
	var r result
	cmd, err := startExporter(j.at, bins.exporter, j.args)
	if err != nil {
		return r, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	time.Sleep(3 * time.Second) // a few reads to warm up, without scrapes
	per := max(cfg.reads/rounds, 1)
	var (
		f       floors
		windows []time.Duration // the exporter's CPU per read in each
	)
	for i := 0; ; i++ {
		cmd.Process.Signal(syscall.SIGSTOP)
		err := f.take(bins.floor, j, per, i)
		cmd.Process.Signal(syscall.SIGCONT)
		if err != nil {
			return r, err
		}
		// The tick missed while stopped fires at once: that read, on
		// caches the floor took, is not measured.
		time.Sleep(2 * time.Second)
		if i == rounds {
			break
		}
		w, err := window(j.at, pid, per)
		if err != nil {
			return r, fmt.Errorf("%s: %v", strings.Join(j.args, " "), err)
		}
		windows = append(windows, w)
	}
	r.cpuPerRead = mean(windows)
	r.floor, r.dumpFloor, r.oneFloor = mean(f.proc), mean(f.family), mean(f.one)
	log.Printf("%s: exporter %s; %s", j.label, mss(windows), f)
	r.p50, r.p99, r.series, err = scrapeLatency(j.at, cfg.scrapes)
	r.rss = rss(pid) // after the scrapes, which bring the gzip writer in
	return r, err
}

// floors are a variant's floor reads, taken while its exporter is stopped.
type floors struct {
	proc, one, family []time.Duration
}

// take runs the floors of stop i of rounds+1. A netlink variant is held
// against both dumps, the one-walk and the per-family, at every stop, and
// against /proc, a column and no target, at the first and the last; in
// turn first, so that neither always follows the exporter. Another
// variant is held against /proc.
func (f *floors) take(bin string, j job, per, i int) error {
	run := func(dst *[]time.Duration, source, walk, port string) error {
		d, err := runFloor(j.at, bin, per, source, walk, port)
		*dst = append(*dst, d)
		return err
	}
	if !j.netlink {
		return run(&f.proc, "proc", "", "")
	}
	if i == 0 || i == rounds {
		if err := run(&f.proc, "proc", "", ""); err != nil {
			return err
		}
	}
	one := func() error { return run(&f.one, "netlink", "one", j.port) }
	family := func() error { return run(&f.family, "netlink", "family", j.port) }
	if i%2 == 1 {
		one, family = family, one
	}
	if err := one(); err != nil {
		return err
	}
	return family()
}

// String is the floors for the log, in milliseconds.
func (f floors) String() string {
	var s []string
	for _, x := range []struct {
		name string
		ds   []time.Duration
	}{{"one-walk floor", f.one}, {"per-family floor", f.family}, {"/proc floor", f.proc}} {
		if len(x.ds) > 0 {
			s = append(s, x.name+" "+mss(x.ds))
		}
	}
	return strings.Join(s, "; ")
}

// window measures the CPU time per read of the exporter pid over reads
// seconds, a whole number of its 1 s intervals, so that what a read cut at
// the window's start leaves out the read cut at its end brings in,
// whatever the phase. The exporter's own count of reads, taken by a
// scrape outside the window, checks that it kept up.
func window(at place, pid, reads int) (time.Duration, error) {
	reads0 := readCount(at)
	cpu0 := cpuTime(pid)
	time.Sleep(time.Duration(reads) * time.Second)
	cpu1 := cpuTime(pid)
	done := readCount(at) - reads0
	switch {
	case done < 1:
		return 0, fmt.Errorf("no read in %d s", reads)
	case done < float64(reads)-1: // a read takes longer than the interval
		log.Printf("only %v reads in %d s: CPU per read is over those", done, reads)
		return time.Duration(float64(cpu1-cpu0) / done), nil
	}
	return time.Duration(cpu1-cpu0) / time.Duration(reads), nil
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(max(len(ds), 1))
}

// mss is ds in milliseconds, space-separated, for the log.
func mss(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.2f", float64(d)/1e6)
	}
	return strings.Join(s, " ") + " ms"
}

// startLoad runs the load tool and waits until it holds n connections; it
// returns one of the service ports.
func startLoad(bin string, cfg runConfig, n int) (stop func(), port string, err error) {
	ready := filepath.Join(cfg.dir, "ready")
	cmd := exec.Command(bin, "-n", strconv.Itoa(n), "-ports", strconv.Itoa(cfg.ports), "-hold", "20m", "-ready", ready)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	if err := waitFor(3*time.Minute, "the load tool", func() bool {
		_, err := os.Stat(ready)
		return err == nil
	}); err != nil {
		stop()
		return nil, "", err
	}
	data, _ := os.ReadFile(ready)
	for line := range strings.SplitSeq(string(data), "\n") {
		if ports, ok := strings.CutPrefix(line, "ports="); ok {
			port, _, _ = strings.Cut(ports, ",")
		}
	}
	return stop, port, nil
}

// cpuTime is the CPU time of every thread of pid, in nanoseconds, from
// schedstat: far finer than the clock ticks of /proc/PID/stat.
func cpuTime(pid int) int64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum int64
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(data))
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			sum += n
		}
	}
	return sum
}

func rss(pid int) int64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
