package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

const exporterAddr = "127.0.0.1:19690"

// startExporter starts the exporter in at's namespace and waits until it
// answers there.
func startExporter(at place, bin string, args []string) (*exec.Cmd, error) {
	cmd := at.command(bin, append([]string{"-listen", at.listen()}, args...)...)
	return cmd, startUp(at, cmd)
}

// startUp starts cmd, an exporter of at, and waits until it answers there;
// it kills it should it not.
func startUp(at place, cmd *exec.Cmd) error {
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	err := waitFor(30*time.Second, "the exporter", func() bool {
		status, _, err := get(at, "/healthz", false)
		return err == nil && status == http.StatusOK
	})
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("%v\n%s", err, logs.String())
	}
	return nil
}

// readCount is the exporter's count of reads, from its own counter.
func readCount(at place) float64 {
	_, body, err := get(at, "/metrics", false)
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

// get fetches path from the exporter in at's namespace; gzip-encoded, as
// Prometheus asks, when gzip.
func get(at place, path string, gzip bool) (status int, body []byte, err error) {
	req, _ := http.NewRequest("GET", "http://"+at.listen()+path, nil)
	if gzip {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	resp, err := at.transport.RoundTrip(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
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
func scrapeLatency(at place, n int) (p50, p99 time.Duration, series int, err error) {
	d := make([]time.Duration, 0, n)
	for i := range n {
		if i > 0 && i%scrapeBurst == 0 {
			time.Sleep(burstGap)
		}
		start := time.Now()
		if _, _, err := get(at, "/metrics", true); err != nil {
			return 0, 0, 0, err
		}
		d = append(d, time.Since(start))
	}
	slices.Sort(d)
	_, body, err := get(at, "/metrics", false)
	series = strings.Count(string(body), "\nnetstat_tcp_longterm_connections_total")
	return d[n/2], d[(n*99+99)/100-1], series, err
}
