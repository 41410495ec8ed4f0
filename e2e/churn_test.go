package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// Connection churn leaves nothing behind in the exporter.

// churnNetnsEnv tells the re-executed test binary that it runs in its own
// network namespace.
const churnNetnsEnv = "TCP_ESTABLISHED_EXPORTER_CHURN_NETNS"

// TestChurnNoLeak runs in a private network namespace, where the tables
// list this test's sockets only, so that counts can be exact: it re-runs
// the test binary under `unshare -n`, which runs the exporter's binary.
func TestChurnNoLeak(t *testing.T) {
	if os.Getenv(churnNetnsEnv) == "1" {
		for _, source := range []string{"proc", "netlink"} {
			t.Run(source, func(t *testing.T) { churnNoLeak(t, source) })
		}
		return
	}
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root for a private network namespace (unshare -n): exact counts need tables that hold this test's sockets only")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipWithout(t, "needs %s (util-linux, iproute2): %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", "sh", "-c", `ip link set lo up && exec "$0" "$@"`,
		os.Args[0], "-test.run=^TestChurnNoLeak$", "-test.count=1", "-test.v", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), churnNetnsEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a private network namespace: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestChurnNoLeak")) {
		t.Fatalf("in a private network namespace: the test did not pass:\n%s", out)
	}
	t.Logf("in a private network namespace:\n%s", out)
}

func churnNoLeak(t *testing.T, source string) {
	begin := time.Now()
	// gctrace reports the live heap of each collection on stderr: the
	// exporter's heap, seen from outside.
	x := startBinary(t, []string{"GODEBUG=gctrace=1"}, "-source", source, "-interval", "50ms", "-duration", "1s", "-direction", "all")
	pid := x.cmd.Process.Pid
	file := map[string]string{"proc": `file="tcp"`, "netlink": `file="netlink"`}[source]
	t.Cleanup(func() {
		if l := x.stderr.String(); strings.Contains(l, "http: ") || strings.Contains(l, "failed") {
			t.Errorf("the exporter logged errors:\n%s", l)
		}
	})
	sc := keepAlive(t, x.url)
	goroutines := func(m string) float64 { return testnet.Samples(m, "go_goroutines")[""] }

	// Five ports, three IPv4 and two IPv6, whose servers read until the
	// client closes.
	var sinks []*sink
	for _, a := range []string{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "[::1]:0", "[::1]:0"} {
		sinks = append(sinks, listenSink(t, a))
	}
	addrs := make([]string, len(sinks))
	for i, s := range sinks {
		addrs[i] = s.ln.Addr().String()
	}
	tracked := func(m string) float64 { return testnet.Samples(m, trackedName)[""] }
	onlyScrape := func() string {
		// Neither end of the scrape connection is tracked: both are
		// the exporter's own (SPEC 1).
		if got := tracked(sc.get(t, "/metrics")); got != 0 {
			return fmt.Sprintf("%s %v, want 0", trackedName, got)
		}
		return ""
	}

	// Warm up: the tracker's map, the buffers and the runtime's goroutine
	// structures reach their working size, which they keep (Go maps do not
	// shrink); too short a warm-up leaves a few hundred KiB to grow in the
	// churn.
	churn(t, addrs, 5000, 250, nil)
	waitCheck(t, 30*time.Second, "the warm-up connections to be forgotten", func() string {
		for _, s := range sinks {
			if n := s.open.Load(); n > 0 {
				return fmt.Sprintf("%d connections of port %d still open", n, s.port)
			}
		}
		return onlyScrape()
	})
	warmHeap := liveHeap(t, x, sc)
	// The fewest of a few looks: a read of /proc holds a file open.
	warmFDs := openFDs(t, pid)
	for range 5 {
		time.Sleep(20 * time.Millisecond)
		warmFDs = min(warmFDs, openFDs(t, pid))
	}
	warmGoroutines := goroutines(sc.get(t, "/metrics"))
	t.Logf("after warm-up: live heap %d MiB, %d fds, %v goroutines", warmHeap, warmFDs, warmGoroutines)

	// Churn, scraping all along.
	churnStart := time.Now()
	startReads := testnet.Samples(sc.get(t, "/metrics"), readsName)[file]
	scrapes, lastReads := 0, startReads
	churn(t, addrs, 20_000, 250, func() {
		m := sc.get(t, "/metrics")
		scrapes++
		if r := testnet.Samples(m, readsName)[file]; r < lastReads {
			t.Fatalf("%s{%s} went back from %v to %v", readsName, file, lastReads, r)
		} else {
			lastReads = r
		}
		for _, s := range sinks {
			if _, ok := testnet.Samples(m, longtermName)[s.series("in")]; !ok {
				t.Fatalf("no series %s of a listening port during the churn", s.series("in"))
			}
		}
	})
	t.Logf("20,000 connections in %s, %d scrapes and %v reads meanwhile", time.Since(churnStart).Round(time.Millisecond), scrapes, lastReads-startReads)
	if scrapes > 0 && lastReads-startReads < 1 {
		t.Errorf("no read of the tables during the churn")
	}
	waitCheck(t, 30*time.Second, "the churned connections to be forgotten", onlyScrape)
	lifetimes := 0.0
	m := sc.get(t, "/metrics")
	for _, s := range sinks {
		for _, dir := range []string{"in", "out"} {
			lifetimes += testnet.Samples(m, lifetimeName+"_count")[s.series(dir)]
		}
	}
	if lifetimes <= 0 || lifetimes > 2*25_000 {
		t.Errorf("lifetimes observed on the churned ports: %v, want some and at most one per end of 25,000 connections", lifetimes)
	}

	// The churned ports go away; a few known connections stay.
	for _, s := range sinks {
		s.close()
	}
	held := testnet.Listen(t, "tcp", "127.0.0.1:0")
	const n = 7
	testnet.Dial(t, n, "tcp", held.Listener.Addr().String())
	want := map[string]float64{
		fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, held.Port):  n,
		fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, held.Port): n,
	}
	waitCheck(t, 30*time.Second, "exact counts of the held connections", func() string {
		m := sc.get(t, "/metrics")
		if got := tracked(m); got != 2*n {
			return fmt.Sprintf("%s %v, want %d: both ends of %d connections, not the scrape's", trackedName, got, 2*n, n)
		}
		for _, name := range []string{longtermName, establishedName} {
			// The scrape connection's client end, an outbound
			// connection to the exporter's own port, has no series.
			got := testnet.Samples(m, name)
			if diff := cmp.Diff(want, got); diff != "" {
				return fmt.Sprintf("%s mismatch (-want +got):\n%s", name, diff)
			}
		}
		for _, s := range sinks {
			if p := fmt.Sprintf(`port="%d"`, s.port); strings.Contains(m, p) {
				return fmt.Sprintf("a series of the closed port %s is still exported", p)
			}
		}
		return ""
	})

	// Nothing is left behind in the exporter: heap, file descriptors,
	// goroutines. The held connections are the test's, not its.
	const marginMiB = 1
	var heap int
	waitCheck(t, 4*time.Minute, "the exporter's heap to return to its warm-up size", func() string {
		if heap = liveHeap(t, x, sc); heap > warmHeap+marginMiB {
			return fmt.Sprintf("live heap %d MiB, %d after warm-up", heap, warmHeap)
		}
		return ""
	})
	var fds int
	var gs float64
	waitCheck(t, 20*time.Second, "fds and goroutines to return to their warm-up numbers", func() string {
		if fds = openFDs(t, pid); fds != warmFDs {
			return fmt.Sprintf("%d open fds, want %d", fds, warmFDs)
		}
		if gs = goroutines(sc.get(t, "/metrics")); gs != warmGoroutines {
			return fmt.Sprintf("%v goroutines, want %v", gs, warmGoroutines)
		}
		return ""
	})
	t.Logf("after churn: live heap %d MiB (%+d), %d fds, %v goroutines; %s in all",
		heap, heap-warmHeap, fds, gs, time.Since(begin).Round(time.Millisecond))
}

// The connections, scrapes and measures of TestChurnNoLeak.

// churn opens and closes n connections to addrs, workers at a time,
// and calls tick (when not nil) from the test goroutine every half second
// meanwhile. Each worker keeps its last two connections open, so that
// connections live across reads of the tables; every other one ends with
// a reset, the rest with a FIN.
func churn(t *testing.T, addrs []string, n, workers int, tick func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var next, done atomic.Int64
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var ring [2]net.Conn // this worker's last two connections
			defer func() {
				for _, c := range ring {
					if c != nil {
						c.Close()
					}
				}
			}()
			d := net.Dialer{Timeout: 30 * time.Second} // SYN retries at 1, 3, 7 and 15s
			for i, made := next.Add(1)-1, 0; i < int64(n); i, made = next.Add(1)-1, made+1 {
				c, err := d.DialContext(ctx, "tcp", addrs[i%int64(len(addrs))])
				if err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				if i%2 == 0 {
					c.(*net.TCPConn).SetLinger(0)
				}
				if old := ring[made%2]; old != nil {
					old.Close()
				}
				ring[made%2] = c
				done.Add(1)
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-finished:
			select {
			case err := <-errc:
				t.Fatalf("churn: %v (%d of %d connections made); kernel counters: %s", err, done.Load(), n, tcpStats())
			default:
			}
			if got := done.Load(); got != int64(n) {
				t.Fatalf("churn: %d of %d connections made", got, n)
			}
			return
		case <-ticker.C:
			if tick != nil {
				tick()
			}
		}
	}
}

// sink is a listener whose server side reads each connection until
// the client closes it.
type sink struct {
	ln   net.Listener
	port int
	v6   bool
	wg   sync.WaitGroup
	open atomic.Int64 // connections accepted and not yet closed
}

func listenSink(t *testing.T, addr string) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr)
	s := &sink{ln: ln, port: a.Port, v6: a.IP.To4() == nil}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.open.Add(1)
			s.wg.Go(func() {
				io.Copy(io.Discard, c)
				c.Close()
				s.open.Add(-1)
			})
		}
	})
	t.Cleanup(s.close)
	return s
}

// close stops the listener and waits until every connection has ended.
func (s *sink) close() {
	s.ln.Close()
	s.wg.Wait()
}

// series is the label text of the sink's port in the given direction.
func (s *sink) series(dir string) string {
	v := "4"
	if s.v6 {
		v = "6"
	}
	return fmt.Sprintf(`direction="%s",port="%d",tcp_version="%s"`, dir, s.port, v)
}

// keepAliveScraper scrapes over one kept-alive connection, so that exactly one
// client end of a scrape connection is in the tables at any time.
type keepAliveScraper struct {
	c    net.Conn
	r    *bufio.Reader
	host string
}

func keepAlive(t *testing.T, base string) *keepAliveScraper {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	c := testnet.Dial(t, 1, "tcp", host)[0]
	return &keepAliveScraper{c: c, r: bufio.NewReader(c), host: host}
}

func (s *keepAliveScraper) get(t *testing.T, path string) string {
	t.Helper()
	s.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(s.c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, s.host); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp, err := http.ReadResponse(s.r, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || resp.Close {
		t.Fatalf("GET %s: status %d, close %t, %v", path, resp.StatusCode, resp.Close, err)
	}
	return string(body)
}

// openFDs counts the open file descriptors of process pid.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// gcLine is a line of GODEBUG=gctrace=1: the collection's number and the
// live heap it marked, in MiB rounded down.
var gcLine = regexp.MustCompile(`(?m)^gc ([0-9]+) @.* [0-9]+->[0-9]+->([0-9]+) MB`)

// lastGC returns the number and marked live heap (MiB) of the last
// collection the exporter's gctrace reported in log, 0 and 0 when none.
func lastGC(log string) (n, heapMiB int) {
	m := gcLine.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return 0, 0
	}
	n, _ = strconv.Atoi(m[len(m)-1][1])
	heapMiB, _ = strconv.Atoi(m[len(m)-1][2])
	return n, heapMiB
}

// liveHeap waits for the exporter to finish a collection that starts after
// the call, scraping meanwhile so that it allocates, and returns the live
// heap that collection marked, in MiB.
func liveHeap(t *testing.T, x *exporterProc, sc *keepAliveScraper) int {
	t.Helper()
	after, _ := lastGC(x.stderr.String())
	var heap int
	waitCheck(t, 3*time.Minute, "a garbage collection in the exporter", func() string {
		sc.get(t, "/metrics")
		n, h := lastGC(x.stderr.String())
		if n <= after+1 { // collection after+1 may have begun before the call
			return fmt.Sprintf("the last collection is number %d, waiting for %d", n, after+2)
		}
		heap = h
		return ""
	})
	return heap
}

// tcpStats returns the kernel's TCP counters that tell why connections
// fail (drops, overflows, reuse of TIME_WAIT ports), those not zero.
func tcpStats() string {
	var out []string
	for _, path := range []string{"/proc/net/snmp", "/proc/net/netstat"} {
		data, err := os.ReadFile(path)
		if err != nil {
			return err.Error()
		}
		lines := strings.Split(string(data), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 || (names[0] != "Tcp:" && names[0] != "TcpExt:") {
				continue
			}
			for j := 1; j < len(names); j++ {
				if values[j] != "0" && (strings.Contains(names[j], "Drop") || strings.Contains(names[j], "Overflow") ||
					strings.Contains(names[j], "Fail") || strings.Contains(names[j], "Retrans") ||
					strings.Contains(names[j], "Syncookies") || strings.Contains(names[j], "TW") || strings.Contains(names[j], "PAWS")) {
					out = append(out, names[j]+"="+values[j])
				}
			}
		}
	}
	return strings.Join(out, " ")
}
