package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Tests of the families beyond the original: the all-ages gauge, the
// lifetime histogram, the exporter's own health and the process metrics.

func TestEstablishedCountsYoungConnections(t *testing.T) {
	srv := listenLoopback(t, "tcp4", "127.0.0.1:0")
	base, _ := startServer(t, "-port", strconv.Itoa(srv.port), "-duration", "3s", "-interval", "100ms")
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

func TestLifetimeHistogram(t *testing.T) {
	for _, simple := range []bool{false, true} {
		t.Run(fmt.Sprintf("simple=%t", simple), func(t *testing.T) {
			t.Parallel()
			testLifetimes(t, simple)
		})
	}
}

// testLifetimes holds two real connections for known times and reads the
// histogram they land in.
func testLifetimes(t *testing.T, simple bool) {
	const interval = 100 * time.Millisecond
	srv := listenLoopback(t, "tcp4", "127.0.0.1:0")
	args := []string{"-port", strconv.Itoa(srv.port), "-interval", interval.String(), fmt.Sprintf("-simple=%t", simple)}
	base, _ := startServer(t, args...)
	labels := fmt.Sprintf(`port="%d",tcp_version="4"`, srv.port)
	if simple {
		labels = ""
	}
	conns := dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", srv.port))
	// The hold starts when the exporter has seen both: first-seen is then
	// at most one interval (and a read) earlier.
	waitFor(t, 30*time.Second, "both connections seen", func() bool {
		return samples(scrape(t, base), establishedName)[labels] == 2
	})
	held := []time.Duration{1500 * time.Millisecond, 7 * time.Second}
	start := time.Now()
	for i, c := range conns {
		time.Sleep(time.Until(start.Add(held[i])))
		c.Close()
	}
	var body string
	waitFor(t, 30*time.Second, "two lifetimes observed", func() bool {
		body = scrape(t, base)
		return samples(body, lifetimeName+"_count")[labels] == 2
	})
	buckets := samples(body, lifetimeName+"_bucket")
	le := func(bound string) float64 {
		if labels == "" {
			return buckets[`le="`+bound+`"`]
		}
		return buckets[labels+`,le="`+bound+`"`]
	}
	want := map[string]float64{"1": 0, "6": 1, "10": 2, "30": 2, "86400": 2, "+Inf": 2}
	for bound, n := range want {
		if got := le(bound); got != n {
			t.Errorf("bucket le=%s = %v, want %v\n%s", bound, got, n, body)
		}
	}
	sum := samples(body, lifetimeName+"_sum")[labels]
	slack := 2 * (interval + 250*time.Millisecond) // one interval and a read, per connection
	if d := math.Abs(sum - (held[0] + held[1]).Seconds()); d > slack.Seconds() {
		t.Errorf("sum = %.3fs, want %s within %s", sum, held[0]+held[1], slack)
	}
}

func TestHealthMetrics(t *testing.T) {
	for source, files := range map[string][]string{"proc": {"tcp", "tcp6"}, "netlink": {"netlink"}} {
		t.Run(source, func(t *testing.T) {
			base, _ := startServer(t, "-interval", "50ms", "-source", source)
			var body string
			waitFor(t, 30*time.Second, "three reads", func() bool {
				body = scrape(t, base)
				return samples(body, readsName)[`file="`+files[0]+`"`] >= 3
			})
			checkHealth(t, body, files)
		})
	}
}

func checkHealth(t *testing.T, body string, files []string) {
	t.Helper()
	build := samples(body, buildInfoName)
	if want := fmt.Sprintf(`version="%s",goversion="%s"`, buildVersion(), runtime.Version()); build[want] != 1 {
		t.Errorf("build info = %v, want %s 1", build, want)
	}
	for _, name := range []string{readErrsName, malformedName} {
		want := make(map[string]float64)
		for _, file := range files {
			want[`file="`+file+`"`] = 0
		}
		if diff := cmp.Diff(want, samples(body, name)); diff != "" {
			t.Errorf("%s mismatch (-want +got):\n%s", name, diff)
		}
	}
	if v := samples(body, lastReadName)[""]; v <= 0 || v > 10 {
		t.Errorf("%s = %v, want a positive duration", lastReadName, v)
	}
	if _, ok := samples(body, trackedName)[""]; !ok {
		t.Errorf("%s missing", trackedName)
	}
}

// TestProcessMetrics checks the process families, which describe this
// very test process when the server runs in-process, against /proc/self
// and getrlimit read here independently.
func TestProcessMetrics(t *testing.T) {
	base, _ := startServer(t, "-interval", "1s")
	cpuBefore := selfStatField(t, 14) + selfStatField(t, 15)
	body := scrape(t, base)
	cpuAfter := selfStatField(t, 14) + selfStatField(t, 15)
	get := func(name string) float64 {
		v, ok := samples(body, name)[""]
		if !ok {
			t.Fatalf("%s missing from\n%s", name, body)
		}
		return v
	}
	if cpu := get("process_cpu_seconds_total"); cpu < cpuBefore/userHZ || cpu > cpuAfter/userHZ {
		t.Errorf("process_cpu_seconds_total = %v, want between %v and %v", cpu, cpuBefore/userHZ, cpuAfter/userHZ)
	}
	rss := selfStatField(t, 24) * float64(os.Getpagesize())
	within(t, "process_resident_memory_bytes", get("process_resident_memory_bytes"), rss, 0.5)
	within(t, "process_virtual_memory_bytes", get("process_virtual_memory_bytes"), selfStatField(t, 23), 0.5)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	within(t, "process_open_fds", get("process_open_fds"), float64(len(fds)), 0.5)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if got := get("process_max_fds"); got != float64(lim.Cur) {
		t.Errorf("process_max_fds = %v, want %d", got, lim.Cur)
	}
	if start := get("process_start_time_seconds"); start > float64(time.Now().Unix()+1) || start < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("process_start_time_seconds = %v, not within the last hour", start)
	}
	if g := get("go_goroutines"); g < 3 {
		t.Errorf("go_goroutines = %v, want at least the poll loop, the server and this test", g)
	}
}

// selfStatField reads field n (1-based, as proc(5) numbers them) of
// /proc/self/stat.
func selfStatField(t *testing.T, n int) float64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(data[strings.LastIndex(string(data), ")")+2:]))
	v, err := strconv.ParseFloat(fields[n-3], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// within checks got against want with a relative tolerance.
func within(t *testing.T, name string, got, want, tolerance float64) {
	t.Helper()
	if math.Abs(got-want) > tolerance*want {
		t.Errorf("%s = %v, want %v within %.0f%%", name, got, want, tolerance*100)
	}
}
