package main

import (
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// TestProcessMetrics checks the process families, which describe this
// very test process when the server runs in-process, against /proc/self
// and getrlimit read here independently.
func TestProcessMetrics(t *testing.T) {
	base := startServer(t, "-interval", "1s")
	cpuBefore := selfStatField(t, 14) + selfStatField(t, 15)
	body := testnet.Scrape(t, base)
	cpuAfter := selfStatField(t, 14) + selfStatField(t, 15)
	get := func(name string) float64 {
		v, ok := testnet.Samples(body, name)[""]
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
