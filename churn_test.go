package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Hardening: connection churn leaves nothing behind.

// churnNetnsEnv tells the re-executed test binary that it runs in its own
// network namespace.
const churnNetnsEnv = "TCP_ESTABLISHED_EXPORTER_CHURN_NETNS"

// TestChurnNoLeak runs in a private network namespace, where the tables
// list this test's sockets only, so that counts can be exact: it re-runs
// the test binary under `unshare -n`.
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
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", "sh", "-c", `ip link set lo up && exec "$0" "$@"`,
		os.Args[0], "-test.run=^TestChurnNoLeak$", "-test.count=1", "-test.v", "-test.timeout=3m")
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
	base, logs := startServer(t, "-source", source, "-interval", "50ms", "-duration", "1s", "-direction", "all")
	own := portOf(t, base)
	file := map[string]string{"proc": `file="tcp"`, "netlink": `file="netlink"`}[source]
	t.Cleanup(func() {
		if l := logs.String(); strings.Contains(l, "http: ") || strings.Contains(l, "failed") {
			t.Errorf("the exporter logged errors:\n%s", l)
		}
	})
	sc := hardKeepAlive(t, base)

	// Five ports, three IPv4 and two IPv6, whose servers read until the
	// client closes.
	var churn []*hardSink
	for _, a := range []string{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "[::1]:0", "[::1]:0"} {
		churn = append(churn, hardListenSink(t, a))
	}
	addrs := make([]string, len(churn))
	for i, s := range churn {
		addrs[i] = s.ln.Addr().String()
	}
	tracked := func(m string) float64 { return samples(m, trackedName)[""] }
	onlyScrape := func() string {
		// Neither end of the scrape connection is tracked: it is the
		// exporter's own (SPEC 1).
		if got := tracked(sc.get(t, "/metrics")); got != 0 {
			return fmt.Sprintf("%s %v, want 0", trackedName, got)
		}
		return ""
	}

	// Warm up: the tracker's map, the buffers and the runtime's goroutine
	// structures reach their working size, which they keep (Go maps do not
	// shrink); too short a warm-up leaves a few hundred KiB to grow in the
	// churn.
	hardChurn(t, addrs, 5000, 250, nil)
	hardWait(t, 30*time.Second, "the warm-up connections to be forgotten", func() string {
		for _, s := range churn {
			if n := s.open.Load(); n > 0 {
				return fmt.Sprintf("%d connections of port %d still open", n, s.port)
			}
		}
		return onlyScrape()
	})
	warmHeap := hardHeap()
	warmFDs := hardFDs(t)
	warmGoroutines := runtime.NumGoroutine()
	t.Logf("after warm-up: heap %d bytes, %d fds, %d goroutines", warmHeap, warmFDs, warmGoroutines)

	// Churn, scraping all along.
	churnStart := time.Now()
	startReads := samples(sc.get(t, "/metrics"), readsName)[file]
	scrapes, lastReads := 0, startReads
	hardChurn(t, addrs, 20_000, 250, func() {
		m := sc.get(t, "/metrics")
		scrapes++
		if r := samples(m, readsName)[file]; r < lastReads {
			t.Fatalf("%s{%s} went back from %v to %v", readsName, file, lastReads, r)
		} else {
			lastReads = r
		}
		for _, s := range churn {
			if _, ok := samples(m, longtermName)[s.series("in")]; !ok {
				t.Fatalf("no series %s of a listening port during the churn", s.series("in"))
			}
		}
	})
	t.Logf("20,000 connections in %s, %d scrapes and %v reads meanwhile", time.Since(churnStart).Round(time.Millisecond), scrapes, lastReads-startReads)
	if scrapes > 0 && lastReads-startReads < 1 {
		t.Errorf("no read of the tables during the churn")
	}
	hardWait(t, 30*time.Second, "the churned connections to be forgotten", onlyScrape)
	lifetimes := 0.0
	m := sc.get(t, "/metrics")
	for _, s := range churn {
		for _, dir := range []string{"in", "out"} {
			lifetimes += samples(m, lifetimeName+"_count")[s.series(dir)]
		}
	}
	if lifetimes <= 0 || lifetimes > 2*25_000 {
		t.Errorf("lifetimes observed on the churned ports: %v, want some and at most one per end of 25,000 connections", lifetimes)
	}

	// The churned ports go away; a few known connections stay.
	for _, s := range churn {
		s.close()
	}
	held := listenLoopback(t, "tcp", "127.0.0.1:0")
	const n = 7
	dial(t, n, "tcp", held.ln.Addr().String())
	want := map[string]float64{
		fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, held.port):  n,
		fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, held.port): n,
	}
	ownSeries := fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, own)
	hardWait(t, 30*time.Second, "exact counts of the held connections", func() string {
		m := sc.get(t, "/metrics")
		if got := tracked(m); got != 2*n+1 {
			return fmt.Sprintf("%s %v, want %d: both ends of %d connections and the scrape's client end", trackedName, got, 2*n+1, n)
		}
		for _, name := range []string{longtermName, establishedName} {
			got := samples(m, name)
			// The scrape connection's client end is an outbound
			// connection to the exporter's port; it is not under test.
			delete(got, ownSeries)
			if diff := cmp.Diff(want, got); diff != "" {
				return fmt.Sprintf("%s mismatch (-want +got):\n%s", name, diff)
			}
		}
		for _, s := range churn {
			if p := fmt.Sprintf(`port="%d"`, s.port); strings.Contains(m, p) {
				return fmt.Sprintf("a series of the closed port %s is still exported", p)
			}
		}
		return ""
	})

	// Nothing is left behind: heap, file descriptors, goroutines.
	const margin = 1 << 20
	var heap uint64
	hardWait(t, 20*time.Second, "the heap to return to its warm-up size", func() string {
		if heap = hardHeap(); heap > warmHeap+margin {
			return fmt.Sprintf("heap %d bytes, %d after warm-up: %+d", heap, warmHeap, int64(heap)-int64(warmHeap))
		}
		return ""
	})
	// Five churn listeners closed; one listener and both ends of the held
	// connections opened.
	wantFDs := warmFDs - len(churn) + 1 + 2*n
	wantGoroutines := warmGoroutines - len(churn) + 1 // listenLoopback's accept loop
	hardWait(t, 20*time.Second, "fds and goroutines to return to their warm-up numbers", func() string {
		if got := hardFDs(t); got != wantFDs {
			return fmt.Sprintf("%d open fds, want %d", got, wantFDs)
		}
		if got := runtime.NumGoroutine(); got != wantGoroutines {
			return fmt.Sprintf("%d goroutines, want %d", got, wantGoroutines)
		}
		return ""
	})
	t.Logf("after churn: heap %d bytes (%+d), %d fds, %d goroutines; %s in all",
		heap, int64(heap)-int64(warmHeap), wantFDs, wantGoroutines, time.Since(begin).Round(time.Millisecond))
}
