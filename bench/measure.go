package main

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// result is one row of the table.
type result struct {
	n          int
	variant    string        // the exporter's source, and port when set
	floor      time.Duration // bare read of tcp and tcp6
	dumpFloor  time.Duration // bare sock_diag dump, netlink variants only
	cpuPerRead time.Duration // exporter CPU over reads, per read
	rss        int64         // bytes, after the reads
	p50, p99   time.Duration // /metrics latency
	series     int           // samples of the long-term gauge
}

const exporterAddr = "127.0.0.1:19690"

// variants are the exporter configurations measured at each N; the port
// variant is run where the load tool gives a port.
var variants = []struct {
	name     string
	args     []string
	withPort bool
	netlink  bool // measured against the netlink floor too
}{
	{"proc", []string{"-source", "proc"}, false, false},
	{"netlink", []string{"-source", "netlink"}, false, true},
	{"netlink, port", []string{"-source", "netlink"}, true, true},
}

// rounds is how many times a measurement alternates between the floor and
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
		args := append(append([]string{}, v.args...), cfg.args...)
		dumpPort := ""
		if v.withPort {
			if port == "" {
				continue
			}
			args = append(args, "-port", port)
			dumpPort = port
		}
		r, err := measureVariant(bins, cfg, fmt.Sprintf("N=%d %s", n, v.name), args, v.netlink, dumpPort)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", v.name, err)
		}
		r.n, r.variant = n, v.name
		rows = append(rows, r)
	}
	return rows, nil
}

// measureVariant runs the exporter with args and measures it in rounds
// windows, stopped (SIGSTOP) while its floor reads between them: the
// sock_diag dump for a netlink variant, else /proc. A netlink variant's
// /proc floor, a column of the table and no target, is measured before
// the first window and after the last.
func measureVariant(bins binaries, cfg runConfig, label string, args []string, netlink bool, dumpPort string) (result, error) {
	var r result
	cmd, err := startExporter(bins.exporter, args)
	if err != nil {
		return r, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	time.Sleep(3 * time.Second) // a few reads to warm up, without scrapes
	per := max(cfg.reads/rounds, 1)
	floor := func() (time.Duration, error) {
		if netlink {
			return runFloor(bins.floor, per, "netlink", dumpPort)
		}
		return runFloor(bins.floor, per, "proc", "")
	}
	var (
		floors  []time.Duration // the compared floor, around each window
		windows []time.Duration // the exporter's CPU per read in each
		procs   []time.Duration // a netlink variant's /proc floor
	)
	for i := 0; ; i++ {
		cmd.Process.Signal(syscall.SIGSTOP)
		if netlink && (i == 0 || i == rounds) {
			d, err := runFloor(bins.floor, per, "proc", "")
			if err != nil {
				return r, err
			}
			procs = append(procs, d)
		}
		d, err := floor()
		if err != nil {
			return r, err
		}
		floors = append(floors, d)
		cmd.Process.Signal(syscall.SIGCONT)
		// The tick missed while stopped fires at once: that read, on
		// caches the floor took, is not measured.
		time.Sleep(2 * time.Second)
		if i == rounds {
			break
		}
		w, err := window(pid, per)
		if err != nil {
			return r, fmt.Errorf("%s: %v", strings.Join(args, " "), err)
		}
		windows = append(windows, w)
	}
	r.cpuPerRead, r.floor = mean(windows), mean(floors)
	procLog := ""
	if netlink {
		r.dumpFloor, r.floor = r.floor, mean(procs)
		procLog = "; /proc floor " + mss(procs)
	}
	log.Printf("%s: floor %s, exporter %s%s", label, mss(floors), mss(windows), procLog)
	r.p50, r.p99, r.series, err = scrapeLatency(cfg.scrapes)
	r.rss = rss(pid) // after the scrapes, which bring the gzip writer in
	return r, err
}

// window measures the CPU time per read of the exporter pid over reads
// seconds, a whole number of its 1 s intervals, so that what a read cut at
// the window's start leaves out the read cut at its end brings in,
// whatever the phase. The exporter's own count of reads, taken by a
// scrape outside the window, checks that it kept up.
func window(pid, reads int) (time.Duration, error) {
	reads0 := readCount()
	cpu0 := cpuTime(pid)
	time.Sleep(time.Duration(reads) * time.Second)
	cpu1 := cpuTime(pid)
	done := readCount() - reads0
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

func startExporter(bin string, args []string) (*exec.Cmd, error) {
	cmd := exec.Command(bin, append([]string{"-listen", exporterAddr}, args...)...)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	err := waitFor(30*time.Second, "the exporter", func() bool {
		resp, err := http.Get("http://" + exporterAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%v\n%s", err, logs.String())
	}
	return cmd, nil
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

// readCount is the exporter's count of reads, from its own counter.
func readCount() float64 {
	body, err := get(false)
	if err != nil {
		return -1
	}
	var most float64
	for line := range strings.SplitSeq(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, "tcp_established_exporter_reads_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				most = max(most, f)
			}
		}
	}
	return most
}

func get(gzip bool) ([]byte, error) {
	req, _ := http.NewRequest("GET", "http://"+exporterAddr+"/metrics", nil)
	if gzip {
		req.Header.Set("Accept-Encoding", "gzip") // as Prometheus asks
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// Scrapes are measured in bursts, as Prometheus scrapes (gzip, a
// kept-alive connection), each burst in a row, not spread out: spread 7 ms
// apart, each scrape found the exporter's threads asleep and waited for
// the kernel to wake them, and on a virtual machine that measured the host
// (p99 6 ms at N=0, where a read takes 1 ms) more than the exporter. A
// burst takes 50-100 ms and meets a read or not, so bursts start 1.3 s
// apart, at five phases of the exporter's 1 s interval.
const (
	scrapeBurst = 200
	burstGap    = 1300 * time.Millisecond
)

// scrapeLatency scrapes n times and returns the median and 99th percentile.
func scrapeLatency(n int) (p50, p99 time.Duration, series int, err error) {
	d := make([]time.Duration, 0, n)
	for i := range n {
		if i > 0 && i%scrapeBurst == 0 {
			time.Sleep(burstGap)
		}
		start := time.Now()
		if _, err := get(true); err != nil {
			return 0, 0, 0, err
		}
		d = append(d, time.Since(start))
	}
	slices.Sort(d)
	body, err := get(false)
	series = strings.Count(string(body), "\nnetstat_tcp_longterm_connections_total")
	return d[n/2], d[(n*99+99)/100-1], series, err
}

func printTable(w io.Writer, rows []result, bins binaries) {
	fmt.Fprintln(w, "| connections | source | floor: read tcp+tcp6 | floor: bare dump | exporter CPU per read | ratio to /proc floor | ratio to dump | RSS | /metrics p50 | /metrics p99 | series |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		dump, dumpRatio := "–", "–"
		if r.dumpFloor > 0 {
			dump, dumpRatio = ms(r.dumpFloor), fmt.Sprintf("%.2fx", float64(r.cpuPerRead)/float64(r.dumpFloor))
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %.2fx | %s | %.1f MiB | %s | %s | %d |\n",
			r.n, r.variant, ms(r.floor), dump, ms(r.cpuPerRead), float64(r.cpuPerRead)/float64(r.floor), dumpRatio,
			float64(r.rss)/(1<<20), ms(r.p50), ms(r.p99), r.series)
	}
	fmt.Fprintf(w, "\nstripped static binary: exporter %s, bare net/http server %s\n", size(bins.exporter), size(bins.bare))
	printGrowth(w, rows)
}

// printGrowth prints how the netlink exporter's cost and memory grow with
// the sockets (two a connection), beside the dump's, from the rows at N = 0.
func printGrowth(w io.Writer, rows []result) {
	var zero *result
	for i := range rows {
		if rows[i].n == 0 && rows[i].variant == "netlink" {
			zero = &rows[i]
		}
	}
	if zero == nil {
		return
	}
	fmt.Fprintln(w, "\n| connections | source | CPU per read | per socket beyond N=0 | bare dump per socket beyond N=0 | RSS | RSS per socket beyond N=0 |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		if r.n == 0 || r.variant != "netlink" {
			continue
		}
		socks := float64(2 * r.n)
		fmt.Fprintf(w, "| %d | %s | %s | %.0f ns | %.0f ns | %.1f MiB | %.0f B |\n",
			r.n, r.variant, ms(r.cpuPerRead), float64(r.cpuPerRead-zero.cpuPerRead)/socks,
			float64(r.dumpFloor-zero.dumpFloor)/socks, float64(r.rss)/(1<<20), float64(r.rss-zero.rss)/socks)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func size(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.2f MiB", float64(st.Size())/(1<<20))
}
