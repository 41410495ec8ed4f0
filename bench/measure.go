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

// measure holds n connections and runs each variant of the exporter,
// measuring its CPU per read, RSS and scrape latency, and the floors just
// before and just after it: the kernel's cost drifts over minutes.
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
		if v.withPort {
			if port == "" {
				continue
			}
			args = append(args, "-port", port)
		}
		dumpPort := ""
		if v.withPort {
			dumpPort = port
		}
		var procs, dumps [2]time.Duration
		floors := func(i int) error {
			var err error
			procs[i], err = runFloor(bins.floor, max(cfg.reads/2, 1), "proc", "")
			if err == nil && v.netlink {
				dumps[i], err = runFloor(bins.floor, max(cfg.reads/2, 1), "netlink", dumpPort)
			}
			return err
		}
		if err := floors(0); err != nil {
			return nil, err
		}
		r, err := measureExporter(bins.exporter, cfg, args)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", v.name, err)
		}
		if err := floors(1); err != nil {
			return nil, err
		}
		r.n, r.variant = n, v.name
		// The table has the means; the drift of the floors over the
		// minute between them shows how far a ratio can be trusted.
		dump := ""
		if v.netlink {
			dump = fmt.Sprintf("; dump %s, then %s", ms(dumps[0]), ms(dumps[1]))
		}
		log.Printf("N=%d %s: /proc floor %s, then %s%s; exporter %s",
			n, v.name, ms(procs[0]), ms(procs[1]), dump, ms(r.cpuPerRead))
		r.floor, r.dumpFloor = (procs[0]+procs[1])/2, (dumps[0]+dumps[1])/2
		rows = append(rows, r)
	}
	return rows, nil
}

// measureExporter runs the exporter with args and measures it.
func measureExporter(bin string, cfg runConfig, args []string) (result, error) {
	var r result
	cmd, err := startExporter(bin, args)
	if err != nil {
		return r, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	time.Sleep(3 * time.Second) // a few reads to warm up, without scrapes
	// One scrape before and one after, outside the CPU time measured: a
	// scrape costs as much as a small read.
	reads0 := reads()
	cpu0 := cpuTime(pid)
	time.Sleep(time.Duration(cfg.reads)*time.Second + 500*time.Millisecond) // the default interval
	cpu1 := cpuTime(pid)
	reads1 := reads()
	switch n := reads1 - reads0; {
	case n < 1:
		return r, fmt.Errorf("no read in %d s", cfg.reads)
	case n < float64(cfg.reads): // a read takes longer than the interval
		log.Printf("%s: only %v reads in %d s: CPU per read is over those", strings.Join(args, " "), n, cfg.reads)
	}
	r.cpuPerRead = time.Duration(float64(cpu1-cpu0) / (reads1 - reads0))
	r.p50, r.p99, r.series, err = scrapeLatency(cfg.scrapes)
	r.rss = rss(pid) // after the scrapes, which bring the gzip writer in
	return r, err
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

// reads is the exporter's read count, from its own counter.
func reads() float64 {
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

// scrapeLatency scrapes n times in a row, as Prometheus does (gzip, a
// kept-alive connection), and returns the median and 99th percentile. In
// a row, not spread out: spread 7 ms apart, each scrape found the
// exporter's threads asleep and waited for the kernel to wake them, and on
// a virtual machine that measured the host (p99 6 ms at N=0, where a read
// takes 1 ms) more than the exporter.
func scrapeLatency(n int) (p50, p99 time.Duration, series int, err error) {
	d := make([]time.Duration, 0, n)
	for range n {
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
