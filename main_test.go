package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Tests of serve, in-process on loopback as main runs it, and the helpers
// the package's tests share: goldens, real sockets, a server.

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

// startServer runs serve in-process on an ephemeral loopback port with
// the given flags, as main does, and stops it at the end of the test,
// when serve must return nil. It returns the base URL, http://127.0.0.1:PORT.
func startServer(t testing.TB, args ...string) string {
	t.Helper()
	return "http://" + runServe(t, log.New(io.Discard, "", 0), args...)
}

// runServe is startServer logging to logger; it returns the address,
// 127.0.0.1:PORT.
func runServe(t testing.TB, logger *log.Logger, args ...string) string {
	t.Helper()
	s, err := loadSettings(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, s, ln, logger) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("serve did not return 20s after its context was cancelled")
		}
	})
	return ln.Addr().String()
}

// seriesOf picks the samples of one family for the given ports, keyed by
// their labels.
func seriesOf(body, name string, ports ...int) map[string]float64 {
	got := make(map[string]float64)
	for labels, v := range samples(body, name) {
		for _, p := range ports {
			if strings.Contains(labels, fmt.Sprintf(`port="%d"`, p)) {
				got[labels] = v
			}
		}
	}
	return got
}

// waitSeries polls /metrics until the series of family name on ports are
// exactly want, and returns the body that matched.
func waitSeries(t *testing.T, base, name string, ports []int, want map[string]float64) string {
	t.Helper()
	var body string
	var got map[string]float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		body = scrape(t, base)
		if got = seriesOf(body, name, ports...); cmp.Equal(want, got) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: series mismatch after 30s (-want +got):\n%s", name, cmp.Diff(want, got))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestServe(t *testing.T) {
	v4 := listenLoopback(t, "tcp4", "127.0.0.1:0")
	v6 := listenLoopback(t, "tcp6", "[::1]:0")
	dual := listenLoopback(t, "tcp", "[::]:0")
	ports := []int{v4.port, v6.port, dual.port}
	base := startServer(t, "-duration", "1s", "-interval", "100ms")
	label := func(port int, version string) string {
		return fmt.Sprintf(`port="%d",tcp_version="%s"`, port, version)
	}
	idle := map[string]float64{label(v4.port, "4"): 0, label(v6.port, "6"): 0, label(dual.port, "4"): 0, label(dual.port, "6"): 0}
	waitSeries(t, base, longtermName, ports, idle)

	opened := time.Now()
	v4Conns := dial(t, 3, "tcp4", fmt.Sprintf("127.0.0.1:%d", v4.port))
	dial(t, 2, "tcp6", fmt.Sprintf("[::1]:%d", v6.port))
	dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.port)) // IPv4 clients of a dual-stack listener
	dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.port))
	all := map[string]float64{label(v4.port, "4"): 3, label(v6.port, "6"): 2, label(dual.port, "4"): 2, label(dual.port, "6"): 1}
	body := waitSeries(t, base, establishedName, ports, all)
	if time.Since(opened) < time.Second { // else the connections may be long-term already
		if diff := cmp.Diff(idle, seriesOf(body, longtermName, ports...)); diff != "" {
			t.Errorf("long-term before the duration mismatch (-want +got):\n%s", diff)
		}
	}
	waitSeries(t, base, longtermName, ports, all)

	for _, c := range v4Conns {
		c.Close()
	}
	gone := map[string]float64{label(v4.port, "4"): 0, label(v6.port, "6"): 2, label(dual.port, "4"): 2, label(dual.port, "6"): 1}
	waitSeries(t, base, longtermName, ports, gone)
	v4.ln.Close()
	delete(gone, label(v4.port, "4"))
	waitSeries(t, base, longtermName, ports, gone)
}

func TestServeSimpleWithPort(t *testing.T) {
	dual := listenLoopback(t, "tcp", "[::]:0")
	other := listenLoopback(t, "tcp", "127.0.0.1:0")
	base := startServer(t, "-simple", "-port", fmt.Sprint(dual.port), "-duration", "1s", "-interval", "100ms")
	dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.port))
	dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.port))
	dial(t, 4, "tcp4", fmt.Sprintf("127.0.0.1:%d", other.port))
	waitFor(t, 30*time.Second, "three long-term connections in simple mode", func() bool {
		return cmp.Equal(map[string]float64{"": 3}, samples(scrape(t, base), longtermName))
	})
}

func TestEstablishedCountsYoungConnections(t *testing.T) {
	srv := listenLoopback(t, "tcp4", "127.0.0.1:0")
	base := startServer(t, "-port", strconv.Itoa(srv.port), "-duration", "3s", "-interval", "100ms")
	key := fmt.Sprintf(`port="%d",tcp_version="4"`, srv.port)
	idle6 := fmt.Sprintf(`port="%d",tcp_version="6"`, srv.port) // kept at 0 by the port setting
	addr := fmt.Sprintf("127.0.0.1:%d", srv.port)
	dial(t, 2, "tcp4", addr)
	waitSeries(t, base, longtermName, []int{srv.port}, map[string]float64{key: 2, idle6: 0})
	// Three young ones beside: seen within the duration of their opening,
	// they cannot be long-term. A machine too slow for that tries again.
	for attempt := 1; ; attempt++ {
		opened := time.Now()
		young := dial(t, 3, "tcp4", addr)
		body := waitSeries(t, base, establishedName, []int{srv.port}, map[string]float64{key: 5, idle6: 0})
		if time.Since(opened) < 3*time.Second {
			if got := samples(body, longtermName)[key]; got != 2 {
				t.Errorf("long-term = %v beside 5 established of which 3 young, want 2", got)
			}
			return
		}
		if attempt == 3 {
			t.Fatal("three times the young connections took longer than the duration to be seen")
		}
		for _, c := range young {
			c.Close()
		}
		waitSeries(t, base, establishedName, []int{srv.port}, map[string]float64{key: 2, idle6: 0})
	}
}
