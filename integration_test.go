package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The tests in this file hold the real binary against programs nobody on
// the project wrote: promtool, a Prometheus server, ss and the kernel's
// network namespaces. A test that needs a missing tool, or root, skips and
// says why; test.sh installs the tools, and CI runs as root.

// waitLong bounds every wait on a process: the machine is shared and slow
// at times, and a test must not depend on its speed.
const waitLong = 60 * time.Second

// helperEnv makes the test binary, re-executed inside a network namespace,
// do one job of runHelper instead of running tests.
const helperEnv = "TEE_TEST_HELPER"

func init() {
	if job := os.Getenv(helperEnv); job != "" {
		os.Exit(runHelper(job, os.Stdin, os.Stdout, os.Stderr))
	}
}

// runHelper does a job for a test that cannot do it from its own network
// namespace:
//
//   - scrape: GET $TEE_TEST_URL and print the body;
//   - hold: listen on 127.0.0.1:$TEE_TEST_PORT, open $TEE_TEST_CONNS
//     connections to it, print "ready" and hold them until stdin closes.
func runHelper(job string, stdin io.Reader, stdout, stderr io.Writer) int {
	var err error
	switch job {
	case "scrape":
		err = helperScrape(os.Getenv("TEE_TEST_URL"), stdout)
	case "hold":
		err = helperHold(os.Getenv("TEE_TEST_PORT"), os.Getenv("TEE_TEST_CONNS"), stdin, stdout)
	default:
		err = fmt.Errorf("unknown job %q", job)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s=%s: %v\n", helperEnv, job, err)
		return 1
	}
	return 0
}

func helperScrape(u string, stdout io.Writer) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	_, err = io.Copy(stdout, resp.Body)
	return err
}

func helperHold(port, conns string, stdin io.Reader, stdout io.Writer) error {
	n, err := strconv.Atoi(conns)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return err
	}
	defer ln.Close()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// The backlog completes the handshakes; accepting afterwards is enough.
	for range n {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	for range n {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	fmt.Fprintln(stdout, "ready")
	// Until the test closes stdin, or dies: then the pipe closes too.
	_, err = io.Copy(io.Discard, stdin)
	return err
}

// lookPath finds a tool or skips the test.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (test.sh installs it): %v", name, err)
	}
	return p
}

// process is a program other than the exporter under startBinary: a
// Prometheus server, or an exporter or helper inside a network namespace.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer // stdout and stderr
	done  chan struct{}
}

// startProcess starts name with args, and stops it at the end of the test.
func startProcess(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), out: new(syncBuffer), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

// checkRunning fails the test if the process has exited.
func (p *process) checkRunning(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("%s exited early: %v\n%s", p.cmd.Path, p.cmd.ProcessState, p.out)
	default:
	}
}

// stop closes stdin, asks the process to stop with SIGTERM and kills it if
// it has not within 10 s.
func (p *process) stop() {
	p.stdin.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitForEqual polls got until it returns want, and on timeout shows the
// last difference and error.
func waitForEqual[T any](t *testing.T, what string, want T, got func() (T, error)) {
	t.Helper()
	var (
		last    T
		lastErr error
		ok      bool
	)
	defer func() {
		if !ok {
			t.Logf("%s: last error %v; mismatch (-want +got):\n%s", what, lastErr, cmp.Diff(want, last))
		}
	}()
	waitFor(t, waitLong, what, func() bool {
		last, lastErr = got()
		return lastErr == nil && cmp.Equal(want, last)
	})
	ok = true
}

// portSamples is samples(body, name) restricted to the series of the given
// ports, so that other sockets of the machine do not get in the way; the
// one sample of simple mode, without labels, stays.
func portSamples(body, name string, ports ...int) map[string]float64 {
	m := samples(body, name)
	for labels := range m {
		keep := labels == ""
		for _, p := range ports {
			keep = keep || strings.Contains(labels, fmt.Sprintf(`port="%d"`, p))
		}
		if !keep {
			delete(m, labels)
		}
	}
	return m
}

// scrapeSamples returns a got function for waitForEqual that scrapes the
// exporter at base for the samples of name on ports.
func scrapeSamples(t *testing.T, base, name string, ports ...int) func() (map[string]float64, error) {
	return func() (map[string]float64, error) {
		return portSamples(scrape(t, base), name, ports...), nil
	}
}

func hostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// TestPromtoolCheckMetrics lints what each mode serves with promtool, with
// IPv4 and IPv6 connections open, long-term, and one of them closed so
// that the lifetime histogram has an observation.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := lookPath(t, "promtool")
	tests := []struct {
		name string
		args func(p4, p6 int) []string
		// want* are the long-term gauge before and after closing one IPv4
		// connection, and the lifetime histogram's count after.
		wantBefore, wantAfter, wantLifetimes func(p4, p6 int) map[string]float64
	}{
		{
			name: "labelled",
			args: func(p4, p6 int) []string { return nil },
			wantBefore: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`port="%d",tcp_version="4"`, p4): 3,
					fmt.Sprintf(`port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantAfter: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`port="%d",tcp_version="4"`, p4): 2,
					fmt.Sprintf(`port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantLifetimes: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`port="%d",tcp_version="4"`, p4): 1,
					fmt.Sprintf(`port="%d",tcp_version="6"`, p6): 0,
				}
			},
		},
		{
			// -port makes the one unlabelled sample ours alone.
			name:          "simple",
			args:          func(p4, p6 int) []string { return []string{"-simple", "-port", strconv.Itoa(p4)} },
			wantBefore:    func(p4, p6 int) map[string]float64 { return map[string]float64{"": 3} },
			wantAfter:     func(p4, p6 int) map[string]float64 { return map[string]float64{"": 2} },
			wantLifetimes: func(p4, p6 int) map[string]float64 { return map[string]float64{"": 1} },
		},
		{
			// Both ends of a loopback connection are on this machine: the
			// accepted one counts in, the dialling one out.
			name: "direction all",
			args: func(p4, p6 int) []string { return []string{"-direction", "all"} },
			wantBefore: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, p4):  3,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, p4): 3,
					fmt.Sprintf(`direction="in",port="%d",tcp_version="6"`, p6):  2,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantAfter: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, p4):  2,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, p4): 2,
					fmt.Sprintf(`direction="in",port="%d",tcp_version="6"`, p6):  2,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantLifetimes: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, p4):  1,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, p4): 1,
					fmt.Sprintf(`direction="in",port="%d",tcp_version="6"`, p6):  0,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="6"`, p6): 0,
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv4 := listenLoopback(t, "tcp", "127.0.0.1:0")
			srv6 := listenLoopback(t, "tcp", "[::1]:0")
			p4, p6 := srv4.port, srv6.port
			conns4 := dial(t, 3, "tcp", hostPort("127.0.0.1", p4))
			dial(t, 2, "tcp", hostPort("::1", p6))
			args := append([]string{"-duration", "1s", "-interval", "100ms"}, tt.args(p4, p6)...)
			x := startBinary(t, nil, args...)

			waitForEqual(t, "the connections to be long-term", tt.wantBefore(p4, p6),
				scrapeSamples(t, x.url, longtermName, p4, p6))
			conns4[0].Close()
			waitForEqual(t, "the closed connection to leave the gauge", tt.wantAfter(p4, p6),
				scrapeSamples(t, x.url, longtermName, p4, p6))
			waitForEqual(t, "the closed connection's lifetime to be observed", tt.wantLifetimes(p4, p6),
				scrapeSamples(t, x.url, lifetimeName+"_count", p4, p6))

			body := scrape(t, x.url)
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(body)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			code := 0
			switch {
			case errors.As(err, &exit):
				code = exit.ExitCode()
			case err != nil:
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			const kept = `netstat_tcp_longterm_connections_total non-counter metrics should not have "_total" suffix`
			switch {
			case code == 0 && len(out) == 0:
			case code == 3 && len(lines) == 1 && lines[0] == kept:
			default:
				t.Errorf("promtool check metrics: exit %d, want 0 with no output or 3 with only the lint line of the kept name; output:\n%s\nbody:\n%s", code, out, body)
			}
		})
	}
}

// TestPrometheusScrapes has a real Prometheus server scrape the exporter
// and asks it, through its HTTP API, for the counts of known connections.
func TestPrometheusScrapes(t *testing.T) {
	prometheus := lookPath(t, "prometheus")
	// Port A listens on [::], dual-stack: its IPv4 clients show in tcp6 as
	// ::ffff:127.0.0.1 and still count as tcp_version 4.
	a := listenLoopback(t, "tcp", "[::]:0")
	b := listenLoopback(t, "tcp", "127.0.0.1:0")
	a4 := dial(t, 3, "tcp", hostPort("127.0.0.1", a.port))
	dial(t, 2, "tcp", hostPort("::1", a.port))
	b4 := dial(t, 1, "tcp", hostPort("127.0.0.1", b.port))
	x := startBinary(t, nil, "-duration", "1s", "-interval", "100ms")

	dir := t.TempDir() // removed after the server is stopped: cleanups run last first
	config := filepath.Join(dir, "prometheus.yml")
	err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tee
    static_configs:
      - targets: ['127.0.0.1:%d']
`, x.port), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	web := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := startProcess(t, nil, prometheus,
		"--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web,
		"--log.level=warn",
	)
	base := "http://" + web
	waitFor(t, waitLong, "Prometheus to be ready", func() bool {
		srv.checkRunning(t)
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	waitForEqual(t, "Prometheus to scrape the exporter", map[string]float64{"": 1},
		promQuery(base, `up{job="tee"}`))
	query := fmt.Sprintf(`netstat_tcp_longterm_connections_total{job="tee",port=~"%d|%d"}`, a.port, b.port)
	series := func(port int, v string) string { return fmt.Sprintf("port=%d,tcp_version=%s", port, v) }
	waitForEqual(t, "Prometheus to see the long-term connections", map[string]float64{
		series(a.port, "4"): 3,
		series(a.port, "6"): 2,
		series(b.port, "4"): 1,
	}, promQuery(base, query, "port", "tcp_version"))

	a4[0].Close()
	a4[1].Close()
	b4[0].Close()
	// Port B's listener keeps its series, at 0.
	waitForEqual(t, "Prometheus to see the connections closed", map[string]float64{
		series(a.port, "4"): 1,
		series(a.port, "6"): 2,
		series(b.port, "4"): 0,
	}, promQuery(base, query, "port", "tcp_version"))
}

// promQuery returns a got function for waitForEqual that runs an instant
// query and maps each sample, named by the values of keys
// ("port=3838,tcp_version=4"), to its value.
func promQuery(base, query string, keys ...string) func() (map[string]float64, error) {
	return func() (map[string]float64, error) {
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				ResultType string `json:"resultType"`
				Result     []struct {
					Metric map[string]string `json:"metric"`
					Value  []any             `json:"value"` // [unix time, "value"]
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, fmt.Errorf("query %s: %s: %v", query, resp.Status, err)
		}
		if r.Status != "success" || r.Data.ResultType != "vector" {
			return nil, fmt.Errorf("query %s: status %q, result type %q: %s", query, r.Status, r.Data.ResultType, r.Error)
		}
		m := make(map[string]float64)
		for _, s := range r.Data.Result {
			var name []string
			for _, k := range keys {
				name = append(name, k+"="+s.Metric[k])
			}
			if len(s.Value) != 2 {
				return nil, fmt.Errorf("query %s: malformed value %v", query, s.Value)
			}
			text, _ := s.Value[1].(string)
			v, err := strconv.ParseFloat(text, 64)
			if err != nil {
				return nil, fmt.Errorf("query %s: %v", query, err)
			}
			m[strings.Join(name, ",")] = v
		}
		return m, nil
	}
}

// TestCountsMatchSS compares, port by port, the exporter's counts of a few
// hundred connections of mixed age with what ss lists for the same ports.
func TestCountsMatchSS(t *testing.T) {
	ss := lookPath(t, "ss")
	servers := []*loopbackServer{
		listenLoopback(t, "tcp", "127.0.0.1:0"),
		listenLoopback(t, "tcp", "127.0.0.1:0"),
		listenLoopback(t, "tcp", "[::1]:0"),
		listenLoopback(t, "tcp", "[::1]:0"),
		listenLoopback(t, "tcp", "[::]:0"), // dual-stack: IPv4 clients count as tcp_version 4
	}
	var ports []int
	for _, s := range servers {
		ports = append(ports, s.port)
	}
	// One batch: 100 connections, a different number on each port.
	batch := []struct {
		server int
		host   string
		n      int
	}{
		{0, "127.0.0.1", 30},
		{1, "127.0.0.1", 10},
		{2, "::1", 25},
		{3, "::1", 15},
		{4, "127.0.0.1", 12},
		{4, "::1", 8},
	}
	openBatch := func() {
		for _, c := range batch {
			dial(t, c.n, "tcp", hostPort(c.host, servers[c.server].port))
		}
	}
	// want is the labelled samples after k batches: each connection counts
	// once in (the accepted end) and once out (the dialling end).
	want := func(k int) map[string]float64 {
		m := make(map[string]float64)
		for _, c := range batch {
			v := "4"
			if c.host == "::1" {
				v = "6"
			}
			for _, dir := range []string{"in", "out"} {
				m[fmt.Sprintf(`direction=%q,port="%d",tcp_version="%s"`, dir, servers[c.server].port, v)] += float64(k * c.n)
			}
		}
		return m
	}

	openBatch() // first seen at the exporter's first read
	x := startBinary(t, nil, "-direction", "all", "-duration", "1s", "-interval", "100ms")
	openBatch() // first seen a read or so later
	waitForEqual(t, "the first two batches to be long-term", want(2),
		scrapeSamples(t, x.url, longtermName, ports...))
	openBatch() // younger than duration for a while

	waitForEqual(t, "all batches to be established", want(3),
		scrapeSamples(t, x.url, establishedName, ports...))
	matchSS(t, ss, x, establishedName, ports, 3*100)
	waitForEqual(t, "all batches to be long-term", want(3),
		scrapeSamples(t, x.url, longtermName, ports...))
	matchSS(t, ss, x, longtermName, ports, 3*100)
}

// matchSS checks, for each port P, that the exporter's inbound count of
// name is the number of established sockets ss lists with local port P,
// and its outbound count the number with remote port P; and that they add
// up to total connections each way. The two are taken back to back, a few
// times if they disagree.
func matchSS(t *testing.T, ss string, x *exporterProc, name string, ports []int, total int) {
	t.Helper()
	const attempts = 5
	var diff string
	for range attempts {
		got := make(map[string]int)
		for labels, v := range portSamples(scrape(t, x.url), name, ports...) {
			dir, _, _ := strings.Cut(strings.TrimPrefix(labels, `direction="`), `"`)
			_, port, _ := strings.Cut(labels, `port="`)
			port, _, _ = strings.Cut(port, `"`)
			got[dir+" "+port] += int(v)
		}
		want := make(map[string]int)
		sum := 0
		for _, p := range ports {
			in := ssCount(t, ss, fmt.Sprintf("( sport = :%d )", p))
			out := ssCount(t, ss, fmt.Sprintf("( dport = :%d )", p))
			want[fmt.Sprintf("in %d", p)], want[fmt.Sprintf("out %d", p)] = in, out
			sum += in
		}
		if sum != total {
			t.Fatalf("ss lists %d established connections to our ports, want %d: %v", sum, total, want)
		}
		if diff = cmp.Diff(want, got); diff == "" {
			return
		}
		t.Logf("%s disagrees with ss (-ss +exporter), trying again after the next read:\n%s", name, diff)
		reads := samples(scrape(t, x.url), readsName)[`file="tcp"`]
		waitFor(t, waitLong, "the next read", func() bool {
			return samples(scrape(t, x.url), readsName)[`file="tcp"`] > reads
		})
	}
	t.Fatalf("%s disagrees with ss %d times; last mismatch (-ss +exporter):\n%s", name, attempts, diff)
}

// ssCount counts the established TCP sockets that ss lists for filter.
func ssCount(t *testing.T, ss, filter string) int {
	t.Helper()
	out, err := exec.Command(ss, "-Htn", "state", "established", filter).Output()
	if err != nil {
		t.Fatalf("ss %s: %v", filter, err)
	}
	return strings.Count(string(out), "\n")
}

var netnsSeq atomic.Int64

// newNetns creates a network namespace with its loopback up, and deletes
// it at the end of the test, after the processes inside are stopped.
func newNetns(t *testing.T, ip, suffix string) string {
	t.Helper()
	name := fmt.Sprintf("tee-test-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), suffix)
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	if out, err := exec.Command(ip, "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", name, err, out)
	}
	return name
}

// TestSidecarNetns runs the exporter in one network namespace of two, each
// with connections on the same port, as a sidecar shares its pod's: each
// exporter counts the connections of its own namespace only.
func TestSidecarNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	ip := lookPath(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	const (
		port   = 7000 // in fresh namespaces, nothing else holds it
		listen = "127.0.0.1:9690"
	)
	namespaces := []struct {
		suffix string
		conns  int
		name   string
	}{
		{suffix: "a", conns: 4},
		{suffix: "b", conns: 7},
	}
	for i := range namespaces {
		ns := &namespaces[i]
		ns.name = newNetns(t, ip, ns.suffix)
		holder := startProcess(t, []string{helperEnv + "=hold", "TEE_TEST_PORT=" + strconv.Itoa(port), "TEE_TEST_CONNS=" + strconv.Itoa(ns.conns)},
			ip, "netns", "exec", ns.name, self)
		waitFor(t, waitLong, "the connections in "+ns.name, func() bool {
			holder.checkRunning(t)
			return strings.Contains(holder.out.String(), "ready\n")
		})
		startProcess(t, nil, ip, "netns", "exec", ns.name, bin, "-listen", listen, "-duration", "1s", "-interval", "100ms")
	}
	for _, ns := range namespaces {
		// Everything the exporter counts: its own listener never shows,
		// and nothing of the other namespace does.
		want := map[string]float64{fmt.Sprintf(`port="%d",tcp_version="4"`, port): float64(ns.conns)}
		for _, name := range []string{longtermName, establishedName} {
			waitForEqual(t, name+" in "+ns.name, want, func() (map[string]float64, error) {
				body, err := scrapeInNetns(ip, ns.name, self, "http://"+listen+"/metrics")
				return samples(body, name), err
			})
		}
	}
}

// scrapeInNetns scrapes u from inside network namespace ns, by the test
// binary re-executed there.
func scrapeInNetns(ip, ns, self, u string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ip, "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), helperEnv+"=scrape", "TEE_TEST_URL="+u)
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		err = fmt.Errorf("%v: %s", err, exit.Stderr)
	}
	return string(out), err
}

// TestProcfsRoot serves a fixed capture through -procfs. The fixture,
// testdata/integration/procfs/net/tcp and tcp6, is /proc/net/tcp and tcp6
// of a fresh network namespace (lo up) captured while one program held:
//
//	listeners 127.0.0.1:3838, [::]:8080 (dual-stack), [::1]:9000, 127.0.0.1:5432 (idle)
//	127.0.0.1:20001..20003 -> 127.0.0.1:3838        3 ESTABLISHED pairs (tcp)
//	127.0.0.1:20011..20012 -> 127.0.0.1:8080        2 pairs: the dialling ends in tcp,
//	                                                the accepted ends in tcp6 as ::ffff:127.0.0.1
//	[::1]:20013 -> [::1]:8080                       1 pair (tcp6)
//	[::1]:20021..20022 -> [::1]:9000                2 pairs (tcp6)
//	127.0.0.1:20031 -> 127.0.0.1:6000               1 pair whose listener was then closed
//	127.0.0.1:20004 -> 127.0.0.1:3838, client closed: FIN_WAIT2 and CLOSE_WAIT, not counted
//	127.0.0.1:20041 -> 127.0.0.1:7000, both closed: TIME_WAIT, not counted
//
// Every local port in it is below 32768, the kernel's ephemeral range, so
// the exporter's own port (freePort) cannot clash with one.
func TestProcfsRoot(t *testing.T) {
	fixture := filepath.Join("testdata", "integration", "procfs")
	tests := []struct {
		name string
		args []string
		want map[string]float64 // long-term and established alike
	}{
		{
			// Inbound: the accepted ends, by the port of their listener.
			// 8080 listens on [::], so it has a series per IP version, and
			// its mapped IPv4 clients count as 4. 5432 is idle. 6000 has
			// no listener any more: its pair is outbound both ways.
			name: "in",
			want: map[string]float64{
				`port="3838",tcp_version="4"`: 3,
				`port="5432",tcp_version="4"`: 0,
				`port="8080",tcp_version="4"`: 2,
				`port="8080",tcp_version="6"`: 1,
				`port="9000",tcp_version="6"`: 2,
			},
		},
		{
			// Outbound: the dialling ends, by remote port; and both ends
			// of the pair whose listener closed: 20031 -> 6000 by 6000,
			// 6000 -> 20031 by 20031.
			name: "all",
			args: []string{"-direction", "all"},
			want: map[string]float64{
				`direction="in",port="3838",tcp_version="4"`:   3,
				`direction="out",port="3838",tcp_version="4"`:  3,
				`direction="in",port="5432",tcp_version="4"`:   0,
				`direction="out",port="6000",tcp_version="4"`:  1,
				`direction="in",port="8080",tcp_version="4"`:   2,
				`direction="out",port="8080",tcp_version="4"`:  2,
				`direction="in",port="8080",tcp_version="6"`:   1,
				`direction="out",port="8080",tcp_version="6"`:  1,
				`direction="in",port="9000",tcp_version="6"`:   2,
				`direction="out",port="9000",tcp_version="6"`:  2,
				`direction="out",port="20031",tcp_version="4"`: 1,
			},
		},
		{
			name: "out",
			args: []string{"-direction", "out"},
			want: map[string]float64{
				`direction="out",port="3838",tcp_version="4"`:  3,
				`direction="out",port="6000",tcp_version="4"`:  1,
				`direction="out",port="8080",tcp_version="4"`:  2,
				`direction="out",port="8080",tcp_version="6"`:  1,
				`direction="out",port="9000",tcp_version="6"`:  2,
				`direction="out",port="20031",tcp_version="4"`: 1,
			},
		},
		{
			// IPv6 out, the mapped IPv4 clients of [::]:8080 kept.
			name: "tcpv6 false",
			args: []string{"-tcpv6=false"},
			want: map[string]float64{
				`port="3838",tcp_version="4"`: 3,
				`port="5432",tcp_version="4"`: 0,
				`port="8080",tcp_version="4"`: 2,
			},
		},
		{
			name: "port",
			args: []string{"-port", "8080"},
			want: map[string]float64{
				`port="8080",tcp_version="4"`: 2,
				`port="8080",tcp_version="6"`: 1,
			},
		},
		{
			name: "idle port",
			args: []string{"-port", "5432"},
			want: map[string]float64{
				`port="5432",tcp_version="4"`: 0,
				`port="5432",tcp_version="6"`: 0,
			},
		},
		{
			name: "simple", // 3 + 2 + 1 + 2
			args: []string{"-simple"},
			want: map[string]float64{"": 8},
		},
		{
			name: "simple all", // 8 in, 8 + 1 + 1 out
			args: []string{"-simple", "-direction", "all"},
			want: map[string]float64{"": 18},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-procfs", fixture, "-duration", "1s", "-interval", "100ms"}, tt.args...)
			x := startBinary(t, nil, args...)
			waitForEqual(t, "the fixture's connections to be long-term", tt.want, func() (map[string]float64, error) {
				return samples(scrape(t, x.url), longtermName), nil
			})
			body := scrape(t, x.url)
			if diff := cmp.Diff(tt.want, samples(body, establishedName)); diff != "" {
				t.Errorf("%s mismatch (-want +got):\n%s", establishedName, diff)
			}
			if diff := cmp.Diff(map[string]float64{`file="tcp"`: 0, `file="tcp6"`: 0}, samples(body, malformedName)); diff != "" {
				t.Errorf("%s mismatch (-want +got):\n%s", malformedName, diff)
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		x := startBinary(t, nil, "-procfs", "/nonexistent", "-interval", "100ms")
		resp, err := http.Get(x.url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "/nonexistent/net/tcp") {
			t.Errorf("GET /healthz with -procfs /nonexistent: %s %q, want 503 naming /nonexistent/net/tcp", resp.Status, body)
		}
	})
}
