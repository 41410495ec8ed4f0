package main

import (
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// procfsDir lays out tables as <dir>/net/tcp and tcp6 and returns dir.
func procfsDir(t *testing.T, tcp, tcp6 []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tcp": tcp, "tcp6": tcp6} {
		if err := os.WriteFile(filepath.Join(dir, "net", name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A read of the real files through the poll loop allocates the same few
// times whatever the number of lines: nothing per line.
func TestPollAllocsPerLine(t *testing.T) {
	allocs := func(n int) float64 {
		s, err := loadSettings([]string{"-procfs", procfsDir(t, genTable(n, false), genTable(n, true)), "-direction", "all"},
			func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		x := newExporter(s, 9690, log.New(io.Discard, "", 0))
		x.poll()
		x.poll()
		return testing.AllocsPerRun(5, x.poll)
	}
	small, large := allocs(100), allocs(20000)
	if large != small {
		t.Errorf("a poll allocates %v times over 200 lines and %v times over 40,000: not constant", small, large)
	}
	t.Logf("allocations per poll: %v", small)
}

func TestHealthMetrics(t *testing.T) {
	for source, files := range map[string][]string{"proc": {"tcp", "tcp6"}, "netlink": {"netlink"}} {
		t.Run(source, func(t *testing.T) {
			base := startServer(t, "-interval", "50ms", "-source", source)
			var body string
			testnet.WaitFor(t, 30*time.Second, "three reads", func() bool {
				body = testnet.Scrape(t, base)
				return testnet.Samples(body, readsName)[`file="`+files[0]+`"`] >= 3
			})
			checkHealth(t, body, files)
		})
	}
}

func checkHealth(t *testing.T, body string, files []string) {
	t.Helper()
	build := testnet.Samples(body, buildInfoName)
	if want := fmt.Sprintf(`version="%s",goversion="%s"`, buildVersion(), runtime.Version()); build[want] != 1 {
		t.Errorf("build info = %v, want %s 1", build, want)
	}
	for _, name := range []string{readErrsName, malformedName} {
		want := make(map[string]float64)
		for _, file := range files {
			want[`file="`+file+`"`] = 0
		}
		if diff := cmp.Diff(want, testnet.Samples(body, name)); diff != "" {
			t.Errorf("%s mismatch (-want +got):\n%s", name, diff)
		}
	}
	if v := testnet.Samples(body, lastReadName)[""]; v <= 0 || v > 10 {
		t.Errorf("%s = %v, want a positive duration", lastReadName, v)
	}
	if _, ok := testnet.Samples(body, trackedName)[""]; !ok {
		t.Errorf("%s missing", trackedName)
	}
}

// TestSourcesAgree runs the exporter on /proc and on netlink side by side
// over the same real IPv4, IPv6 and IPv4-mapped connections: both must
// give the same counts, whatever the direction, with and without port.
func TestSourcesAgree(t *testing.T) {
	v4 := testnet.Listen(t, "tcp4", "127.0.0.1:0")
	v6 := testnet.Listen(t, "tcp6", "[::1]:0")
	dual := testnet.Listen(t, "tcp", "[::]:0")
	testnet.Dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", v4.Port))
	testnet.Dial(t, 2, "tcp6", fmt.Sprintf("[::1]:%d", v6.Port))
	testnet.Dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.Port))
	testnet.Dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.Port))
	ports := []int{v4.Port, v6.Port, dual.Port}
	series := func(dir string, port int, version string, n float64) (string, float64) {
		if dir != "" {
			dir = `direction="` + dir + `",`
		}
		return fmt.Sprintf(`%sport="%d",tcp_version="%s"`, dir, port, version), n
	}
	in := map[string]float64{}
	out := map[string]float64{}
	for _, s := range []struct {
		port    int
		version string
		n       float64
	}{{v4.Port, "4", 2}, {v6.Port, "6", 2}, {dual.Port, "4", 2}, {dual.Port, "6", 1}} {
		k, v := series("", s.port, s.version, s.n)
		in[k] = v
		k, v = series("out", s.port, s.version, s.n)
		out[k] = v
	}
	tests := []struct {
		name string
		args []string
		want map[string]float64
	}{
		{"in", nil, in},
		{"out", []string{"-direction", "out"}, out},
		{"all", []string{"-direction", "all"}, merge(prefixed(in, `direction="in",`), out)},
		{"in port", []string{"-port", fmt.Sprint(dual.Port)}, only(in, dual.Port)},
		{"out port", []string{"-direction", "out", "-port", fmt.Sprint(dual.Port)}, only(out, dual.Port)},
		{"all port", []string{"-direction", "all", "-port", fmt.Sprint(dual.Port)},
			merge(prefixed(only(in, dual.Port), `direction="in",`), only(out, dual.Port))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, source := range []string{"proc", "netlink"} {
				base := startServer(t, append([]string{"-source", source, "-duration", "1s", "-interval", "100ms"}, tt.args...)...)
				waitSeries(t, base, longtermName, ports, tt.want)
				waitSeries(t, base, establishedName, ports, tt.want)
			}
		})
	}
}

func prefixed(m map[string]float64, prefix string) map[string]float64 {
	out := make(map[string]float64)
	for k, v := range m {
		out[prefix+k] = v
	}
	return out
}

func merge(a, b map[string]float64) map[string]float64 {
	out := prefixed(a, "")
	for k, v := range b {
		out[k] = v
	}
	return out
}

// only keeps the series of port.
func only(m map[string]float64, port int) map[string]float64 {
	out := make(map[string]float64)
	for k, v := range m {
		if strings.Contains(k, fmt.Sprintf(`port="%d"`, port)) {
			out[k] = v
		}
	}
	return out
}

// TestReadsAtLowerPriority finds the thread the poll loop reads in,
// readNice nicer than the rest of the process and not its main thread, and
// sees it end with serve.
func TestReadsAtLowerPriority(t *testing.T) {
	nicesOf := func(paths ...string) (all []int) {
		for _, path := range paths {
			f, err := statFields(path)
			if err != nil {
				continue // the thread has ended
			}
			if len(f) > 16 {
				n, _ := strconv.Atoi(string(f[16])) // field 19, the nice value
				all = append(all, n)
			}
		}
		return all
	}
	nices := func() []int {
		stats, _ := filepath.Glob("/proc/self/task/*/stat")
		return nicesOf(stats...)
	}
	own := slices.Min(nices())
	want := own + readNice
	if want > 19 {
		t.Skipf("the tests run at nice %d: no thread can be %d nicer", own, readNice)
	}
	count := func() int {
		return len(slices.DeleteFunc(nices(), func(n int) bool { return n != want }))
	}
	testnet.WaitFor(t, 10*time.Second, "the reading threads of earlier tests to end", func() bool { return count() == 0 })
	t.Run("serving", func(t *testing.T) {
		startServer(t)
		testnet.WaitFor(t, 10*time.Second, fmt.Sprintf("one thread at nice %d", want), func() bool { return count() == 1 })
		if main := nicesOf("/proc/self/stat"); len(main) != 1 || main[0] != own {
			t.Errorf("the main thread is at nice %v, want %d", main, own)
		}
	})
	testnet.WaitFor(t, 10*time.Second, "the reading thread to end with serve", func() bool { return count() == 0 })
}

// On procfs a read of a table ends at the page that proves the end, a
// read(2) short of the call that returns 0, and lists the lines that call's
// reader would. The connections of one listener grow one at a time across
// several pages of the real table; at each step the sockets of its port,
// read both ways, must match, and some steps must have ended early.
func TestTableReaderEndsAtShortPage(t *testing.T) {
	for _, c := range []struct{ network, addr, file string }{
		{"tcp4", "127.0.0.1:0", "tcp"},
		{"tcp6", "[::1]:0", "tcp6"},
	} {
		t.Run(c.file, func(t *testing.T) {
			srv := testnet.Listen(t, c.network, c.addr)
			path := "/proc/net/" + c.file
			read := func(toZero bool) (pairs []string, ended bool) {
				r, err := openTable(path)
				if err != nil {
					t.Fatal(err)
				}
				defer syscall.Close(r.fd)
				if !r.seq {
					t.Fatalf("%s is not found on procfs", path)
				}
				r.seq = !toZero
				got, bad, err := parseAll(&r, path)
				if err != nil || bad != nil {
					t.Fatalf("reading %s: %v %v", path, err, bad)
				}
				for _, s := range got {
					// The pair, not the state: the server's end of the
					// newest connection may still be a request socket.
					if s.Local.Port() == uint16(srv.Port) || s.Remote.Port() == uint16(srv.Port) {
						pairs = append(pairs, s.Local.String()+" "+s.Remote.String())
					}
				}
				return pairs, r.done
			}
			early := 0
			const steps = 60 // tcp: over four pages of 27 lines
			for i := range steps {
				testnet.Dial(t, 1, c.network, srv.Listener.Addr().String())
				got, ended := read(false)
				want, _ := read(true)
				slices.Sort(got)
				slices.Sort(want)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("%d connections: sockets of port %d, ended early %v (-read to 0 +ended at a short page):\n%s", i+1, srv.Port, ended, diff)
				}
				if len(got) != 2*(i+1)+1 {
					t.Fatalf("%d connections: %d sockets of port %d, want %d", i+1, len(got), srv.Port, 2*(i+1)+1)
				}
				if ended {
					early++
				}
			}
			if early == 0 {
				t.Errorf("no read of %s ended at a short page in %d steps", path, steps)
			}
			t.Logf("%d of %d reads ended at a short page", early, steps)
		})
	}
}

// A table that is not on procfs, a capture in a file, is read until read(2)
// returns 0, however short its last read.
func TestTableReaderReadsFilesToZero(t *testing.T) {
	dir := procfsDir(t, genTable(3, false), genTable(3, true))
	r, err := openTable(filepath.Join(dir, "net", "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(r.fd)
	if r.seq {
		t.Fatalf("a file in %s taken for procfs", dir)
	}
	got, _, err := parseAll(&r, "tcp")
	if err != nil || len(got) != 3 || r.done {
		t.Errorf("read %d sockets, err %v, ended early %v; want 3, nil, false", len(got), err, r.done)
	}
}

func TestReadBuckets(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, data string
		want       tableBuckets
	}{
		{"shared with the host", "-262144\n", tableBuckets{n: -262144, known: true}},
		{"own", "1024\n", tableBuckets{n: 1024, known: true}},
		{"zero", "0\n", tableBuckets{}},
		{"not a number", "many\n", tableBuckets{}},
		{"empty", "", tableBuckets{}},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
		if err := os.WriteFile(path, []byte(c.data), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := readBuckets(path); got != c.want {
			t.Errorf("%s: readBuckets(%q) = %+v, want %+v", c.name, c.data, got, c.want)
		}
	}
	if got := readBuckets(filepath.Join(dir, "missing")); got.known {
		t.Errorf("a missing file gave %+v: a kernel before 6.1 has none", got)
	}
	// The kernel's own, for this namespace.
	data, err := os.ReadFile("/proc/sys/net/ipv4/tcp_ehash_entries")
	if err != nil {
		t.Logf("this kernel has no net.ipv4.tcp_ehash_entries (before 6.1): %v", err)
		return
	}
	if got := readBuckets("/proc/sys/net/ipv4/tcp_ehash_entries"); !got.known || strconv.Itoa(got.n) != strings.TrimSpace(string(data)) {
		t.Errorf("readBuckets of this kernel's = %+v, the file says %q", got, data)
	}
}

// TestNetlinkRetried: a failed netlink read is done again from /proc,
// /proc serves the reads until netlink is tried again after a back-off
// that doubles, and netlink serves them again once it works; one log line
// when it fails, one when it works again. The failure is the kernel's own:
// a dump left unread makes the next one read another request's replies.
func TestNetlinkRetried(t *testing.T) {
	srv := testnet.Listen(t, "tcp4", "127.0.0.1:0")
	testnet.Dial(t, 3, "tcp4", srv.Listener.Addr().String())
	s, err := loadSettings([]string{"-source", "netlink", "-port", strconv.Itoa(srv.Port)}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	x := newExporter(s, 9690, log.New(&logged, "", 0))
	if x.diag == nil {
		t.Skipf("no netlink here: %s", logged.String())
	}
	t.Cleanup(func() { x.diag.Close() })
	breakDump := func() {
		if x.diag.fd < 0 { // the failed dump's socket was replaced
			if err := x.diag.open(); err != nil {
				t.Fatal(err)
			}
		}
		if err := x.diag.send(x.diag.walk, syscall.AF_UNSPEC, listenStates, nil); err != nil {
			t.Fatal(err)
		}
	}
	established := fmt.Sprintf(`port="%d",tcp_version="4"`, srv.Port)
	step := func(what string, wantProc, wantNetlink uint64, wantBackoff time.Duration) {
		t.Helper()
		x.poll()
		if err := x.lastError(); err != nil {
			t.Fatalf("%s: the read failed: %v", what, err)
		}
		got := []any{x.files[0].reads, x.files[2].reads, x.backoff,
			testnet.Samples(string(x.acquire().b), establishedName)[established]}
		want := []any{wantProc, wantNetlink, wantBackoff, 3.0}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: tcp reads, netlink reads, back-off, established mismatch (-want +got):\n%s", what, diff)
		}
	}
	step("netlink", 0, 1, 0)
	breakDump()
	step("netlink failed, /proc read instead", 1, 2, time.Second)
	step("waiting to try netlink again", 2, 2, time.Second)
	breakDump()
	x.retryAt = time.Time{} // the wait is over
	step("netlink failed again", 3, 3, 2*time.Second)
	x.retryAt = time.Time{}
	step("netlink works again", 3, 4, 0)
	log := logged.String()
	for _, line := range []string{"netlink sock_diag failed", "netlink sock_diag works again"} {
		if n := strings.Count(log, line); n != 1 {
			t.Errorf("the log has %q %d times, want once:\n%s", line, n, log)
		}
	}
	if x.files[2].readErrors != 2 {
		t.Errorf("netlink read errors %d, want 2", x.files[2].readErrors)
	}
}
