// Package e2e holds the system tests: they build the exporter's binary and
// hold it against programs nobody on the project wrote (promtool, a
// Prometheus server, ss, the kernel's network namespaces, an empty root).
// A test that needs a missing tool, or root, skips and says why; test.sh
// installs the tools, and CI runs as root with CI=true, where no test may
// skip. This file holds the helpers they share.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// The names the exporter serves, as docs/metrics.md lists them.
const (
	contentType     = "text/plain; version=0.0.4; charset=utf-8"
	longtermName    = "netstat_tcp_longterm_connections_total"
	establishedName = "netstat_tcp_established_connections"
	lifetimeName    = "netstat_tcp_connection_lifetime_seconds"
	readsName       = "tcp_established_exporter_reads_total"
	readErrsName    = "tcp_established_exporter_read_errors_total"
	malformedName   = "tcp_established_exporter_malformed_lines_total"
	trackedName     = "tcp_established_exporter_tracked_connections"
	bucketsName     = "tcp_established_exporter_connection_table_buckets"
	clientsName     = "netstat_tcp_longterm_clients"
)

// skipWithout skips a test that needs what this machine lacks (root, a
// tool). In CI (CI=true), where test.sh installs every tool and runs as
// root, it fails instead: no test may skip there unseen.
func skipWithout(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI must run this test: "+format, args...)
	}
	t.Skipf(format, args...)
}

// lookPath finds a tool or skips the test.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipWithout(t, "%s is not installed (test.sh installs it): %v", name, err)
	}
	return p
}

// waitLong bounds every wait on a process: the machine is shared and slow
// at times, and a test must not depend on its speed.
const waitLong = 60 * time.Second

// waitCheck waits until check returns "", and on timeout also reports the
// last thing check returned: "timed out" alone does not say what was wrong.
func waitCheck(t testing.TB, timeout time.Duration, what string, check func() string) {
	t.Helper()
	last := "never checked"
	defer func() {
		if t.Failed() && last != "" {
			t.Logf("%s: last seen: %s", what, last)
		}
	}()
	testnet.WaitFor(t, timeout, what, func() bool {
		last = check()
		return last == ""
	})
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
	testnet.WaitFor(t, waitLong, what, func() bool {
		last, lastErr = got()
		return lastErr == nil && cmp.Equal(want, last)
	})
	ok = true
}

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// TestMain removes the binary that buildBinary made, once every test is
// done with it.
func TestMain(m *testing.M) {
	code := m.Run()
	if binaryPath != "" {
		os.RemoveAll(filepath.Dir(binaryPath))
	}
	os.Exit(code)
}

// buildBinary builds the exporter (the module root, ..) once per test run,
// as the Dockerfile does, and returns its path.
func buildBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tcp_established_exporter-bin")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "tcp_established_exporter")
		cmd := exec.Command("go", "build", "-trimpath", "-gcflags=crypto/...=-l", "-ldflags=-s -w", "-o", binaryPath, "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// freePort returns a TCP port that was free a moment ago on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// exporterProc is a running exporter binary.
type exporterProc struct {
	cmd    *exec.Cmd
	url    string // http://127.0.0.1:PORT
	port   int
	stderr *syncBuffer
	done   chan struct{}
}

// startBinary runs the real binary with args (plus -listen on a free
// loopback port unless args has -listen) and env added to the test's, and
// waits until /healthz answers, over a connection it does not keep. The
// process is killed at the end of the test if still running.
func startBinary(t testing.TB, env []string, args ...string) *exporterProc {
	t.Helper()
	bin := buildBinary(t)
	p := &exporterProc{stderr: new(syncBuffer), done: make(chan struct{})}
	listen := ""
	for i, a := range args {
		if strings.TrimLeft(a, "-") == "listen" && i+1 < len(args) {
			listen = args[i+1]
		}
	}
	if listen == "" {
		p.port = freePort(t)
		listen = fmt.Sprintf("127.0.0.1:%d", p.port)
		args = append([]string{"-listen", listen}, args...)
	} else {
		_, port, _ := net.SplitHostPort(listen)
		p.port, _ = strconv.Atoi(port)
	}
	p.url = fmt.Sprintf("http://127.0.0.1:%d", p.port)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	testnet.WaitFor(t, 10*time.Second, "the exporter to answer /healthz", func() bool {
		select {
		case <-p.done:
			t.Fatalf("exporter exited early: %v\n%s", p.cmd.ProcessState, p.stderr)
		default:
		}
		resp, err := client.Get(p.url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return p
}

func (p *exporterProc) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// process is a program other than the exporter under startBinary: a
// Prometheus server, or an exporter or helper inside a network namespace.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer // stdout and stderr
	done  chan struct{}
	group bool // it leads a process group, and stop signals the group
}

// startProcess starts name with args, and stops it at the end of the test.
func startProcess(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	return start(t, false, env, name, args...)
}

// startProcessGroup is startProcess for a program that runs others (a
// browser, an R session): it leads a process group of its own, and stop
// signals the whole group.
func startProcessGroup(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	return start(t, true, env, name, args...)
}

func start(t *testing.T, group bool, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), out: new(syncBuffer), done: make(chan struct{}), group: group}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: group}
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
// it has not within 10 s; a group gets SIGTERM, and SIGKILL what is left of
// it after 5 s.
func (p *process) stop() {
	p.stdin.Close()
	if p.group {
		p.stopGroup()
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) stopGroup() {
	pgid := p.cmd.Process.Pid
	// The group's number is not reused while a member lives, and the
	// leader is reaped as it exits: ESRCH means the whole group is gone.
	gone := func() bool { return syscall.Kill(-pgid, 0) == syscall.ESRCH }
	if !gone() {
		syscall.Kill(-pgid, syscall.SIGTERM)
	}
	for deadline := time.Now().Add(5 * time.Second); !gone() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if !gone() {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	<-p.done
}

// get does one request with a client timeout and returns the status, the
// header and the whole body.
func get(t testing.TB, client *http.Client, method, url string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// portSamples is testnet.Samples(body, name) restricted to the series of the given
// ports, so that other sockets of the machine do not get in the way; the
// one sample of simple mode, without labels, stays.
func portSamples(body, name string, ports ...int) map[string]float64 {
	m := testnet.Samples(body, name)
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
		return portSamples(testnet.Scrape(t, base), name, ports...), nil
	}
}

// families lists the `# TYPE` lines of a text-format body, sorted.
func families(body string) []string {
	var fams []string
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			fams = append(fams, strings.TrimSuffix(rest, "\n"))
		}
	}
	slices.Sort(fams)
	return fams
}

// checkComplete reports what is wrong with a scraped body: incomplete (not
// ending with the last family the exporter writes) or with other families
// than want; "" when nothing is.
func checkComplete(body string, want []string) string {
	if !strings.HasSuffix(body, "\n") {
		return fmt.Sprintf("body of %d bytes does not end with a newline", len(body))
	}
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "go_goroutines ") {
		return fmt.Sprintf("body of %d bytes ends with %q, not the go_goroutines sample", len(body), last)
	}
	if diff := cmp.Diff(want, families(body)); diff != "" {
		return fmt.Sprintf("families mismatch (-want +got):\n%s", diff)
	}
	return ""
}

func hostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// Network namespaces, and the test binary re-executed inside one as a
// helper.

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

var netnsSeq atomic.Int64

// newNetns creates a network namespace with its loopback up, and deletes
// it at the end of the test, after the processes inside are stopped.
func newNetns(t *testing.T, ip, suffix string) string {
	t.Helper()
	return makeNetns(t, exec.Command(ip, "netns", "add"), ip, suffix)
}

// newNetnsOwnTable is newNetns for a namespace with a connection table of
// its own, of buckets buckets: made from a namespace of its own whose
// net.ipv4.tcp_child_ehash_entries (Linux 6.1) is set, so that the host's
// stays as it is.
func newNetnsOwnTable(t *testing.T, ip, suffix string, buckets int) string {
	t.Helper()
	script := fmt.Sprintf(`echo %d >/proc/sys/net/ipv4/tcp_child_ehash_entries && exec "$0" netns add "$1"`, buckets)
	return makeNetns(t, exec.Command("unshare", "-n", "sh", "-c", script, ip), ip, suffix)
}

// makeNetns runs add with the new namespace's name as its last argument.
func makeNetns(t *testing.T, add *exec.Cmd, ip, suffix string) string {
	t.Helper()
	name := fmt.Sprintf("tee-test-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), suffix)
	add.Args = append(add.Args, name)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(add.Args, " "), err, out)
	}
	t.Cleanup(func() {
		killNetnsPids(t, ip, name)
		if out, err := exec.Command(ip, "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	if out, err := exec.Command(ip, "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", name, err, out)
	}
	return name
}

// killNetnsPids kills what is still running in namespace ns once the test
// has stopped its processes: daemons they left (Chromium's crash handlers
// leave their process group and session), which would keep it alive.
func killNetnsPids(t *testing.T, ip, ns string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	killed := make(map[int]bool)
	for {
		out, err := exec.Command(ip, "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		if err != nil || len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes %v still in namespace %s", pids, ns)
			return
		}
		for _, s := range pids {
			if pid, err := strconv.Atoi(s); err == nil && !killed[pid] {
				killed[pid] = true
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				t.Logf("killing %d (%s), left in namespace %s", pid, bytes.TrimSpace(comm), ns)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrapeInNetns gets u from inside network namespace ns, by the test
// binary (self) re-executed there, and returns the body.
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

// scratchRoot makes what the scratch image holds: the binary at
// /tcp_established_exporter and an empty /proc to mount, nothing else.
func scratchRoot(t *testing.T, bin string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "tcp_established_exporter"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "proc"), 0o555); err != nil {
		t.Fatal(err)
	}
	return root
}
