package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Helpers shared by the tests that run the real binary or real sockets.

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

// update rewrites the *.golden files from what the code produces.
var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with the golden file path, or rewrites it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

// waitFor polls cond until it holds or the deadline passes; it never
// assumes how fast the machine is.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// buildBinary builds the exporter once per test run, as the Dockerfile
// does, and returns its path.
func buildBinary(t testing.TB) string {
	t.Helper()
	binaryOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tcp_established_exporter-bin")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "tcp_established_exporter")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", binaryPath, ".")
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
// loopback port unless args has -listen) and waits until /healthz answers.
// The process is killed at the end of the test if still running.
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
	waitFor(t, 10*time.Second, "the exporter to answer /healthz", func() bool {
		select {
		case <-p.done:
			t.Fatalf("exporter exited early: %v\n%s", p.cmd.ProcessState, p.stderr)
		default:
		}
		resp, err := http.Get(p.url + "/healthz")
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

// scrape fetches /metrics from base (http://host:port) and returns the body.
func scrape(t testing.TB, base string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d, %v", base, resp.StatusCode, err)
	}
	return string(body)
}

// samples parses the samples of family name in a text-format body into a
// map from the label text (`port="80",tcp_version="4"`, "" when none) to
// the value.
func samples(body, name string) map[string]float64 {
	m := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		labels := ""
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			labels, rest = rest[1:end], rest[end+1:]
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err == nil {
			m[labels] = v
		}
	}
	return m
}

// loopbackServer accepts connections on addr ("127.0.0.1:0", "[::1]:0",
// "[::]:0") and holds them until the test ends.
type loopbackServer struct {
	ln    net.Listener
	port  int
	mu    sync.Mutex
	conns []net.Conn
}

func listenLoopback(t testing.TB, network, addr string) *loopbackServer {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &loopbackServer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			c.Close()
		}
	})
	return s
}

// dial opens n connections to addr and closes them at the end of the test.
func dial(t testing.TB, n int, network, addr string) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}
