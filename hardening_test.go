package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// Hardening tests: what the exporter meets when it runs for months next to
// production services. Hostile /proc content, hostile HTTP clients,
// connection churn, signals and ports, and the scratch image.

// hardWait waits until check returns "", and on timeout also reports the
// last thing check returned: "timed out" alone does not say what was wrong.
func hardWait(t testing.TB, timeout time.Duration, what string, check func() string) {
	t.Helper()
	last := "never checked"
	defer func() {
		if t.Failed() && last != "" {
			t.Logf("%s: last seen: %s", what, last)
		}
	}()
	waitFor(t, timeout, what, func() bool {
		last = check()
		return last == ""
	})
}

// hardGet does one request with a client timeout and returns the status,
// the header and the whole body.
func hardGet(t testing.TB, client *http.Client, method, url string, header http.Header) (int, http.Header, string) {
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

// hardFamilies lists the `# TYPE` lines of a text-format body, sorted.
func hardFamilies(body string) []string {
	var fams []string
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			fams = append(fams, strings.TrimSuffix(rest, "\n"))
		}
	}
	slices.Sort(fams)
	return fams
}

// hardComplete reports what is wrong with a scraped body: incomplete (not
// ending with the last family the exporter writes) or with other families
// than want.
func hardComplete(body string, want []string) string {
	if !strings.HasSuffix(body, "\n") {
		return fmt.Sprintf("body of %d bytes does not end with a newline", len(body))
	}
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "go_goroutines ") {
		return fmt.Sprintf("body of %d bytes ends with %q, not the go_goroutines sample", len(body), last)
	}
	if diff := cmp.Diff(want, hardFamilies(body)); diff != "" {
		return fmt.Sprintf("families mismatch (-want +got):\n%s", diff)
	}
	return ""
}

// hardServe runs the exporter in-process, as main does, on a fresh loopback
// listener, and returns its base URL, its port and its log. It stops at the
// end of the test, and serve must then return nil.
func hardServe(t testing.TB, args ...string) (base string, port int, logs *syncBuffer) {
	t.Helper()
	s, err := loadSettings(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = new(syncBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, s, ln, log.New(logs, "", log.LstdFlags)) }()
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
	port = ln.Addr().(*net.TCPAddr).Port
	return "http://" + ln.Addr().String(), port, logs
}

// ---------------------------------------------------------------------------
// TestHostileProc

// hostileStep is one state of the fake /proc and what the exporter must
// show while it lasts.
type hostileStep struct {
	name      string
	apply     func(t *testing.T)
	health    int                // /healthz status
	healthMsg string             // for 503: a part of the error /healthz shows
	longterm  map[string]float64 // the long-term gauge (and the established one)
	tracked   float64
	malformed int      // malformed lines in tcp, per read
	logs      []string // a part of each log line the step adds, any order
}

func TestHostileProc(t *testing.T) {
	good4, err := os.ReadFile("testdata/hostile/tcp")
	if err != nil {
		t.Fatal(err)
	}
	good6, err := os.ReadFile("testdata/hostile/tcp6")
	if err != nil {
		t.Fatal(err)
	}
	procfs := t.TempDir()
	netDir := filepath.Join(procfs, "net")
	if err := os.Mkdir(netDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tcp, tcp6 := filepath.Join(netDir, "tcp"), filepath.Join(netDir, "tcp6")

	// Every change is one rename, mkdir or remove, so that no read meets a
	// half-written file or a state between two steps.
	tmp := filepath.Join(netDir, "next")
	put := func(path string, data []byte, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(tmp, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	putGood := func(t *testing.T) { put(tcp, good4, 0o644) }
	remove := func(path string) func(t *testing.T) {
		return func(t *testing.T) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}
	}
	with := func(extra ...[]byte) []byte {
		return bytes.Join(append([][]byte{good4}, extra...), nil)
	}

	garbage := hostileGarbage()
	var junk []byte
	for i := range 300 {
		junk = fmt.Appendf(junk, "junk %03d\n", i)
	}
	// Distinct malformed lines logged before the junk step: the 10 MB
	// line, the 10 MiB last line and the garbage lines.
	loggedBefore := 2 + bytes.Count(garbage, []byte("\n"))

	full := map[string]float64{
		`port="22",tcp_version="4"`:   0, // an idle listener
		`port="8080",tcp_version="4"`: 3,
		`port="9090",tcp_version="4"`: 1, // an IPv4 client of [::]:9090, listed in tcp6
		`port="9090",tcp_version="6"`: 2,
	}
	v4only := map[string]float64{
		`port="22",tcp_version="4"`:   0,
		`port="8080",tcp_version="4"`: 3,
	}
	v6only := map[string]float64{
		`port="9090",tcp_version="4"`: 1,
		`port="9090",tcp_version="6"`: 2,
	}
	const (
		trackedFull = 11 // 3 accepted, 3 client ends, 1 outbound in tcp; 4 in tcp6
		tracked4    = 7
		tracked6    = 4
	)
	missing := "open " + tcp + ": no such file or directory"

	unreadable := hostileStep{
		name:      "an unreadable file (mode 000)",
		apply:     func(t *testing.T) { put(tcp, good4, 0) },
		health:    503,
		healthMsg: "open " + tcp + ": permission denied",
		longterm:  full, tracked: trackedFull,
		logs: []string{"permission denied"},
	}
	if os.Geteuid() == 0 {
		// Root reads a mode 000 file: a directory in its place opens, but
		// read(2) fails.
		unreadable = hostileStep{
			name: "a directory in place of the file",
			apply: func(t *testing.T) {
				if err := os.Mkdir(tcp, 0o755); err != nil {
					t.Fatal(err)
				}
			},
			health:    503,
			healthMsg: tcp + ": is a directory",
			longterm:  full, tracked: trackedFull,
			logs: []string{"is a directory"},
		}
	}

	steps := []hostileStep{{
		name:     "tcp6 missing from the start",
		apply:    func(t *testing.T) {},
		health:   200,
		longterm: v4only, tracked: tracked4,
		logs: []string{
			"reading connections from " + tcp + " and " + tcp6,
			tcp6 + " does not exist: IPv6 connections are not counted",
			"listening on",
		},
	}, {
		name:     "tcp6 appears",
		apply:    func(t *testing.T) { put(tcp6, good6, 0o644) },
		health:   200,
		longterm: full, tracked: trackedFull,
	}, {
		name: "a 10 MB line among good lines",
		apply: func(t *testing.T) {
			mid := len(good4) / 2
			mid += bytes.IndexByte(good4[mid:], '\n') + 1
			put(tcp, slices.Concat(good4[:mid], bytes.Repeat([]byte("A"), 10_000_000), []byte("\n"), good4[mid:]), 0o644)
		},
		health:   200,
		longterm: full, tracked: trackedFull,
		malformed: 1,
		logs:      []string{"line too long"},
	}, {
		name:     "a 10 MiB last line without a newline",
		apply:    func(t *testing.T) { put(tcp, with(bytes.Repeat([]byte("B"), 10<<20)), 0o644) },
		health:   200,
		longterm: full, tracked: trackedFull,
		malformed: 1,
		logs:      []string{"line too long"},
	}, {
		name:     "binary garbage lines",
		apply:    func(t *testing.T) { put(tcp, with(garbage), 0o644) },
		health:   200,
		longterm: full, tracked: trackedFull,
		malformed: bytes.Count(garbage, []byte("\n")),
		logs:      slices.Repeat([]string{"skipped malformed line"}, bytes.Count(garbage, []byte("\n"))),
	}, {
		name:     "more distinct malformed lines than are logged",
		apply:    func(t *testing.T) { put(tcp, with(junk), 0o644) },
		health:   200,
		longterm: full, tracked: trackedFull,
		malformed: 300,
		logs: append(slices.Repeat([]string{"skipped malformed line"}, maxBadLogged-loggedBefore),
			fmt.Sprintf("more than %d distinct malformed lines", maxBadLogged)),
	}, {
		name:      "binary garbage in place of the file",
		apply:     func(t *testing.T) { put(tcp, garbage, 0o644) },
		health:    503,
		healthMsg: tcp + ": not a tcp table header",
		longterm:  full, tracked: trackedFull,
		logs: []string{"not a tcp table header"},
	}, {
		name:     "a header only: no IPv4 sockets",
		apply:    func(t *testing.T) { put(tcp, good4[:bytes.IndexByte(good4, '\n')+1], 0o644) },
		health:   200,
		longterm: v6only, tracked: tracked6,
		logs: []string{"works again"},
	}, {
		name:     "good again",
		apply:    putGood,
		health:   200,
		longterm: full, tracked: trackedFull,
	}, {
		name:      "an empty file",
		apply:     func(t *testing.T) { put(tcp, nil, 0o644) },
		health:    503,
		healthMsg: tcp + ": empty file",
		longterm:  full, tracked: trackedFull,
		logs: []string{"empty file"},
	}, {
		name:     "good again after the empty file",
		apply:    putGood,
		health:   200,
		longterm: full, tracked: trackedFull,
		logs: []string{"works again"},
	}, {
		name: "a FIFO in place of the file",
		apply: func(t *testing.T) {
			if err := syscall.Mkfifo(tmp, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, tcp); err != nil {
				t.Fatal(err)
			}
		},
		health:    503,
		healthMsg: tcp + ": empty file",
		longterm:  full, tracked: trackedFull,
		logs: []string{"empty file"},
	}, {
		name:     "good again after the FIFO",
		apply:    putGood,
		health:   200,
		longterm: full, tracked: trackedFull,
		logs: []string{"works again"},
	}, {
		name: "a file that never ends (/dev/zero)",
		apply: func(t *testing.T) {
			if err := os.Symlink("/dev/zero", tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, tcp); err != nil {
				t.Fatal(err)
			}
		},
		health:    503,
		healthMsg: tcp + ": ",
		longterm:  full, tracked: trackedFull,
		logs: []string{"reading the connection tables failed"},
	}, {
		name:     "good again after the endless file",
		apply:    putGood,
		health:   200,
		longterm: full, tracked: trackedFull,
		logs: []string{"works again"},
	}, {
		name:      "the file vanishes",
		apply:     remove(tcp),
		health:    503,
		healthMsg: missing,
		longterm:  full, tracked: trackedFull,
		logs: []string{"no such file or directory"},
	},
		unreadable,
		{
			name:      "the unreadable file vanishes",
			apply:     remove(tcp),
			health:    503,
			healthMsg: missing,
			longterm:  full, tracked: trackedFull,
			logs: []string{"no such file or directory"},
		}, {
			name:     "the file is restored",
			apply:    putGood,
			health:   200,
			longterm: full, tracked: trackedFull,
			logs: []string{"works again"},
		}, {
			name:     "tcp6 vanishes",
			apply:    remove(tcp6),
			health:   200,
			longterm: v4only, tracked: tracked4,
			logs: []string{tcp6 + " does not exist: IPv6 connections are not counted"},
		}}

	putGood(t) // tcp6 is missing at the start
	p := startBinary(t, nil, "-procfs", procfs, "-interval", "100ms", "-duration", "1ms")
	client := &http.Client{Timeout: 10 * time.Second}
	logPos := 0
	for _, st := range steps {
		start := time.Now()
		st.apply(t)
		after := samples(scrape(t, p.url), readsName)[`file="tcp"`]
		hostileCheck(t, p, client, st, logPos, after)
		logPos = len(p.stderr.String())
		t.Logf("%s: %s", st.name, time.Since(start).Round(time.Millisecond))
	}

	// The log stays readable: short lines, no control characters from the
	// garbage, valid UTF-8.
	for i, line := range strings.Split(strings.TrimSuffix(p.stderr.String(), "\n"), "\n") {
		if len(line) > 1024 || !utf8.ValidString(line) || strings.ContainsFunc(line, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			t.Errorf("log line %d is not one short printable line: %q", i+1, line)
		}
	}
	select {
	case <-p.done:
		t.Fatalf("the exporter exited: %v", p.cmd.ProcessState)
	default:
	}
}

// hostileCheck waits until the exporter shows what step st wants, then
// watches five more reads of tcp: the counters move by exactly what each
// read meets, and the log does not grow. readsAfter is the count of reads
// of tcp that a scrape showed after the change was made.
func hostileCheck(t *testing.T, p *exporterProc, client *http.Client, st hostileStep, logPos int, readsAfter float64) {
	t.Helper()
	state := func() (string, string) {
		code, _, body := hardGet(t, client, "GET", p.url+"/healthz", nil)
		switch {
		case code != st.health:
			return "", fmt.Sprintf("/healthz: %d %q, want %d", code, body, st.health)
		case code == 200 && body != "ok\n":
			return "", fmt.Sprintf("/healthz: %d %q, want ok", code, body)
		case code == 503 && !strings.Contains(body, st.healthMsg):
			return "", fmt.Sprintf("/healthz: %d %q, want the error %q", code, body, st.healthMsg)
		}
		m := scrape(t, p.url)
		if diff := cmp.Diff(st.longterm, samples(m, longtermName)); diff != "" {
			return m, fmt.Sprintf("%s mismatch (-want +got):\n%s", longtermName, diff)
		}
		if diff := cmp.Diff(st.longterm, samples(m, establishedName)); diff != "" {
			return m, fmt.Sprintf("%s mismatch (-want +got):\n%s", establishedName, diff)
		}
		if got := samples(m, trackedName)[""]; got != st.tracked {
			return m, fmt.Sprintf("%s %v, want %v", trackedName, got, st.tracked)
		}
		return m, ""
	}
	newLog := func() []string {
		s := p.stderr.String()[logPos:]
		if s == "" {
			return nil
		}
		return strings.SplitAfter(strings.TrimSuffix(s, "\n"), "\n")
	}
	// The read after readsAfter may have opened the file before the
	// change; the reads after it cannot have.
	var m1 string
	hardWait(t, 30*time.Second, st.name+": the exporter to show the step", func() string {
		m, bad := state()
		if bad != "" {
			return bad
		}
		if got := samples(m, readsName)[`file="tcp"`]; got < readsAfter+1 {
			return fmt.Sprintf("%v reads of tcp, waiting for %v", got, readsAfter+1)
		}
		if n := len(newLog()); n < len(st.logs) {
			return fmt.Sprintf("%d new log lines, waiting for %d: %q", n, len(st.logs), newLog())
		}
		m1 = m
		return ""
	})
	logLen := len(p.stderr.String())
	counter := func(m, name, file string) float64 { return samples(m, name)[`file="`+file+`"`] }
	r1 := counter(m1, readsName, "tcp")
	var m2 string
	waitFor(t, 60*time.Second, st.name+": 5 more reads of tcp", func() bool {
		m2 = scrape(t, p.url)
		return counter(m2, readsName, "tcp") >= r1+5
	})
	reads := counter(m2, readsName, "tcp") - r1
	failing := 0.0
	if st.health != 200 {
		failing = 1
	}
	for _, c := range []struct {
		name, file string
		want       float64
	}{
		{malformedName, "tcp", reads * float64(st.malformed)},
		{readErrsName, "tcp", reads * failing},
		{malformedName, "tcp6", 0},
		{readErrsName, "tcp6", 0},
	} {
		if got := counter(m2, c.name, c.file) - counter(m1, c.name, c.file); got != c.want {
			t.Errorf("%s: %s{file=%q} grew by %v over %v reads, want %v", st.name, c.name, c.file, got, reads, c.want)
		}
	}
	if _, bad := state(); bad != "" {
		t.Errorf("%s: after %v more reads: %s", st.name, reads, bad)
	}
	if got := p.stderr.String(); len(got) != logLen {
		t.Errorf("%s: the log grew over %v reads:\n%s", st.name, reads, got[logLen:])
	}
	lines := newLog()
	unused := slices.Clone(lines)
	for _, want := range st.logs {
		i := slices.IndexFunc(unused, func(l string) bool { return strings.Contains(l, want) })
		if i < 0 {
			t.Errorf("%s: no log line with %q", st.name, want)
			continue
		}
		unused = slices.Delete(unused, i, i+1)
	}
	if len(unused) > 0 || len(lines) != len(st.logs) {
		t.Errorf("%s: %d new log lines, want %d; unexpected: %q", st.name, len(lines), len(st.logs), unused)
	}
	if t.Failed() {
		t.FailNow() // the next steps build on this one
	}
}

// hostileGarbage returns malformed lines, each ending in a newline and
// each different in its first 64 bytes (what a log line quotes): lines
// that look almost right, terminal escapes, NULs, and random bytes.
func hostileGarbage() []byte {
	const rest = " 01 00000000:00000000 02:000003BF 00000000     0        0 51010 2 0000000000c45400 20 4 30 10 -1"
	lines := []string{
		"   9: 0100007F:1F90",                            // too few fields
		"   9: 0100007F:1F9G 0100007F:9C44" + rest,       // not hex
		"   9  0100007F:1F90 0100007F:9C45" + rest,       // no colon after the slot
		"   9: 0100007F:1F90 0100007F:9C46 1" + rest[3:], // a one-digit state
		"   9: 0100007F:1F90 0100007F:9C47 01 00000000:00000000 02:000003BF 00000000     0        0 99999999999999999999999 2 0 20 4 30 10 -1",
		"   9: 0100007F:1F90 0100007F:9C48 01 00000000:00000000 02:000003BF 00000000     0        0 -1 2 0 20 4 30 10 -1",
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode", // a second header
		"\x1b[2J\x1b[31mred alert\x1b[0m\r",
		strings.Repeat("\x00", 100),
		"\xff\xfe\xfd invalid UTF-8",
	}
	r := rand.New(rand.NewChaCha8([32]byte{'h', 'o', 's', 't', 'i', 'l', 'e'}))
	for range 10 {
		b := make([]byte, 1+r.IntN(300))
		for i := range b {
			if b[i] = byte(r.Uint32()); b[i] == '\n' {
				b[i] = 0
			}
		}
		lines = append(lines, string(b))
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

// ---------------------------------------------------------------------------
// TestHostileHTTP

func TestHostileHTTP(t *testing.T) {
	base, _, logs := hardServe(t, "-interval", "100ms", "-duration", "1s")
	addr := strings.TrimPrefix(base, "http://")
	t.Cleanup(func() {
		// A panic in a handler, or a failing Accept, is logged by net/http.
		if l := logs.String(); strings.Contains(l, "http: ") {
			t.Errorf("the HTTP server logged errors:\n%s", l)
		}
	})
	client := &http.Client{Timeout: 3 * time.Second}
	ref := hardFamilies(scrape(t, base))
	if !slices.Contains(ref, longtermName+" gauge") || !slices.Contains(ref, "go_goroutines gauge") {
		t.Fatalf("the reference scrape lacks families: %q", ref)
	}

	t.Run("stalled clients", func(t *testing.T) {
		// Each sends half a request header and stalls.
		conns := dial(t, 200, "tcp", addr)
		opened := time.Now()
		for _, c := range conns {
			if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sl"); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		code, _, body := hardGet(t, client, "GET", base+"/metrics", nil)
		if code != 200 {
			t.Fatalf("scrape beside 200 stalled clients: status %d", code)
		}
		if bad := hardComplete(body, ref); bad != "" {
			t.Fatalf("scrape beside 200 stalled clients: %s", bad)
		}
		t.Logf("a scrape beside 200 stalled clients took %s", time.Since(start).Round(time.Millisecond))
		// The read-header timeout frees them: the server closes each
		// without an answer.
		for i, c := range conns {
			c.SetReadDeadline(opened.Add(30 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil || len(got) > 0 {
				t.Fatalf("stalled client %d: read %q, %v; want the server to close the connection", i, got, err)
			}
		}
		t.Logf("the server closed 200 stalled clients %s after they connected", time.Since(opened).Round(100*time.Millisecond))
	})

	t.Run("header sizes", func(t *testing.T) {
		for _, tc := range []struct {
			size int
			want int
		}{
			{4 << 10, 200},
			{32 << 10, 431},
			{1 << 20, 431},
		} {
			c := dial(t, 1, "tcp", addr)[0]
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// A write error is fine once the server has answered and
			// stopped reading.
			go fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", tc.size))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("a %d-byte header: %v", tc.size, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("a %d-byte header: status %d, want %d", tc.size, resp.StatusCode, tc.want)
			}
		}
	})

	t.Run("methods", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{
			{"POST", "/metrics"}, {"PUT", "/metrics"}, {"DELETE", "/metrics"}, {"PATCH", "/metrics"},
			{"POST", "/healthz"}, {"DELETE", "/"},
		} {
			code, h, _ := hardGet(t, client, tc.method, base+tc.path, nil)
			allow := strings.Split(strings.ReplaceAll(h.Get("Allow"), " ", ""), ",")
			if code != 405 || !slices.Contains(allow, "GET") || !slices.Contains(allow, "HEAD") {
				t.Errorf("%s %s: status %d, Allow %q; want 405 allowing GET and HEAD", tc.method, tc.path, code, h.Get("Allow"))
			}
		}
	})

	t.Run("unknown paths", func(t *testing.T) {
		for _, path := range []string{"/nope", "/metrics/", "/metricsx", "/healthz/x", "/index.html", "/debug/pprof/", "/debug/vars"} {
			if code, _, _ := hardGet(t, client, "GET", base+path, nil); code != 404 {
				t.Errorf("GET %s: status %d, want 404", path, code)
			}
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		for _, enc := range []string{"", "Accept-Encoding: gzip\r\n"} {
			c := dial(t, 1, "tcp", addr)[0]
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n", enc)
			raw, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			head, body, _ := strings.Cut(string(raw), "\r\n\r\n")
			if !strings.HasPrefix(head, "HTTP/1.1 200 ") || body != "" {
				t.Errorf("HEAD /metrics (%q): got %q, want 200 and no body", enc, raw)
			}
			if !strings.Contains(head, "\r\nContent-Type: "+contentType+"\r\n") {
				t.Errorf("HEAD /metrics (%q): no Content-Type %q in %q", enc, contentType, head)
			}
		}
	})

	t.Run("gzip", func(t *testing.T) {
		tr := &http.Transport{DisableCompression: true}
		defer tr.CloseIdleConnections()
		raw := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		for _, tc := range []struct {
			accept string
			gzip   bool
		}{
			{"gzip", true},
			{"br, gzip;q=0.5", true},
			{"gzip;q=0", false},
			{"identity", false},
		} {
			code, h, body := hardGet(t, raw, "GET", base+"/metrics", http.Header{"Accept-Encoding": {tc.accept}})
			if code != 200 || h.Get("Content-Type") != contentType || !strings.Contains(h.Get("Vary"), "Accept-Encoding") {
				t.Errorf("Accept-Encoding %q: status %d, Content-Type %q, Vary %q", tc.accept, code, h.Get("Content-Type"), h.Get("Vary"))
			}
			if got := h.Get("Content-Encoding") == "gzip"; got != tc.gzip {
				t.Errorf("Accept-Encoding %q: Content-Encoding %q, want gzip %t", tc.accept, h.Get("Content-Encoding"), tc.gzip)
				continue
			}
			if tc.gzip {
				zr, err := gzip.NewReader(strings.NewReader(body))
				if err != nil {
					t.Fatalf("Accept-Encoding %q: %v", tc.accept, err)
				}
				plain, err := io.ReadAll(zr) // checks the trailer too
				if err != nil {
					t.Fatalf("Accept-Encoding %q: decompressing: %v", tc.accept, err)
				}
				body = string(plain)
			}
			if bad := hardComplete(body, ref); bad != "" {
				t.Errorf("Accept-Encoding %q: %s", tc.accept, bad)
			}
		}
	})

	t.Run("concurrent scrapes", func(t *testing.T) {
		const n = 50
		tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: n}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		errs := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				req, _ := http.NewRequest("GET", base+"/metrics", nil)
				if i%2 == 0 {
					req.Header.Set("Accept-Encoding", "gzip")
				}
				resp, err := c.Do(req)
				if err != nil {
					errs[i] = err.Error()
					return
				}
				defer resp.Body.Close()
				var r io.Reader = resp.Body
				if resp.Header.Get("Content-Encoding") == "gzip" {
					zr, err := gzip.NewReader(resp.Body)
					if err != nil {
						errs[i] = err.Error()
						return
					}
					r = zr
				}
				body, err := io.ReadAll(r)
				switch {
				case err != nil:
					errs[i] = err.Error()
				case resp.StatusCode != 200:
					errs[i] = fmt.Sprintf("status %d", resp.StatusCode)
				case (i%2 == 0) != (resp.Header.Get("Content-Encoding") == "gzip"):
					errs[i] = fmt.Sprintf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
				default:
					errs[i] = hardComplete(string(body), ref)
				}
			})
		}
		wg.Wait()
		for i, e := range errs {
			if e != "" {
				t.Errorf("scrape %d of %d: %s", i, n, e)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// TestChurnNoLeak

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
		t.Skip("needs root for a private network namespace (unshare -n): exact counts need tables that hold this test's sockets only")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, iproute2): %v", tool, err)
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
	base, own, logs := hardServe(t, "-source", source, "-interval", "50ms", "-duration", "1s", "-direction", "all")
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
		// The tracker remembers the client end of the scrape connection;
		// the exporter's own end is never tracked.
		if got := tracked(sc.get(t, "/metrics")); got != 1 {
			return fmt.Sprintf("%s %v, want 1", trackedName, got)
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

// hardChurn opens and closes n connections to addrs, workers at a time,
// and calls tick (when not nil) from the test goroutine every half second
// meanwhile. Each worker keeps its last two connections open, so that
// connections live across reads of the tables; every other one ends with
// a reset, the rest with a FIN.
func hardChurn(t *testing.T, addrs []string, n, workers int, tick func()) {
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
				t.Fatalf("churn: %v (%d of %d connections made); kernel counters: %s", err, done.Load(), n, hardTCPStats())
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

// hardSink is a listener whose server side reads each connection until
// the client closes it.
type hardSink struct {
	ln   net.Listener
	port int
	v6   bool
	wg   sync.WaitGroup
	open atomic.Int64 // connections accepted and not yet closed
}

func hardListenSink(t *testing.T, addr string) *hardSink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr)
	s := &hardSink{ln: ln, port: a.Port, v6: a.IP.To4() == nil}
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
func (s *hardSink) close() {
	s.ln.Close()
	s.wg.Wait()
}

// series is the label text of the sink's port in the given direction.
func (s *hardSink) series(dir string) string {
	v := "4"
	if s.v6 {
		v = "6"
	}
	return fmt.Sprintf(`direction="%s",port="%d",tcp_version="%s"`, dir, s.port, v)
}

// hardScraper scrapes over one kept-alive connection, so that exactly one
// client end of a scrape connection is in the tables at any time.
type hardScraper struct {
	c    net.Conn
	r    *bufio.Reader
	host string
}

func hardKeepAlive(t *testing.T, base string) *hardScraper {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	c := dial(t, 1, "tcp", host)[0]
	return &hardScraper{c: c, r: bufio.NewReader(c), host: host}
}

func (s *hardScraper) get(t *testing.T, path string) string {
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

// hardHeap returns the live heap after a full collection.
func hardHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func hardFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// ---------------------------------------------------------------------------
// TestSignalsAndPorts

func TestSignalsAndPorts(t *testing.T) {
	t.Run("SIGTERM during a scrape", func(t *testing.T) {
		// Thousands of listening ports make a body of megabytes, more than
		// the socket buffers hold: while the client does not read, the
		// scrape's handler is still writing. (A request whose header is
		// not complete when the shutdown begins is dropped by net/http.)
		procfs := t.TempDir()
		if err := os.Mkdir(filepath.Join(procfs, "net"), 0o755); err != nil {
			t.Fatal(err)
		}
		good4, err := os.ReadFile("testdata/hostile/tcp")
		if err != nil {
			t.Fatal(err)
		}
		tcp := good4[:bytes.IndexByte(good4, '\n')+1]
		for i := range 6000 {
			tcp = fmt.Appendf(tcp, "%4d: 0100007F:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000c41000 100 0 0 10 0\n", i, 20000+i, 60000+i)
		}
		if err := os.WriteFile(filepath.Join(procfs, "net", "tcp"), tcp, 0o644); err != nil {
			t.Fatal(err)
		}
		p := startBinary(t, nil, "-procfs", procfs, "-interval", "1s")
		ref := hardFamilies(scrape(t, p.url))
		addr := strings.TrimPrefix(p.url, "http://")
		const rcvbuf = 4096
		d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			return errors.Join(err, serr)
		}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, rcvbuf), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		signalled := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the exporter to stop accepting connections", func() bool {
			c2, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c2.Close()
			}
			return err != nil
		})
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("the scrape in flight: status %d, %v after %d bytes", resp.StatusCode, err, len(body))
		}
		if bad := hardComplete(string(body), ref); bad != "" {
			t.Errorf("the scrape in flight: %s", bad)
		}
		if max := 4<<20 + 2*rcvbuf; len(body) < 2*max {
			t.Errorf("a body of %d bytes: the socket buffers (at most %d bytes) may have held it all, so the scrape was not in flight", len(body), max)
		}
		if got := len(samples(string(body), longtermName)); got != 6000 {
			t.Errorf("%d series of %s, want 6000: one for each listening port", got, longtermName)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the exporter still runs 10s after the scrape in flight ended:\n%s", p.stderr)
		}
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit status %d after SIGTERM, want 0; log:\n%s", code, p.stderr)
		}
		if strings.Contains(p.stderr.String(), "tcp_established_exporter: ") {
			t.Errorf("an error at shutdown:\n%s", p.stderr)
		}
		t.Logf("a %d-byte scrape in flight completed; exited %s after SIGTERM", len(body), time.Since(signalled).Round(time.Millisecond))
	})

	t.Run("listen address in use", func(t *testing.T) {
		bin := buildBinary(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		for _, listen := range []string{"127.0.0.1:" + port, port} {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			var stdout, stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, bin, "-listen", listen)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			cancel()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("-listen %s in use: %v, want exit status 1", listen, err)
			}
			out := stderr.String()
			if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") ||
				!strings.HasPrefix(out, "tcp_established_exporter: ") || !strings.Contains(out, "address already in use") {
				t.Errorf("-listen %s in use: stderr %q, want one line saying the address is in use", listen, out)
			}
			if stdout.Len() > 0 {
				t.Errorf("-listen %s in use: stdout %q, want nothing", listen, stdout.String())
			}
		}
	})

	t.Run("loopback only", func(t *testing.T) {
		hosts := hardHostAddrs(t)
		if len(hosts) == 0 {
			t.Skip("the host has no non-loopback address to dial")
		}
		// A listener on all addresses answers on each host address: a
		// refusal below is the exporter's doing.
		ctl := listenLoopback(t, "tcp", ":0")
		for _, h := range hosts {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(h, strconv.Itoa(ctl.port)), 5*time.Second)
			if err != nil {
				t.Fatalf("control: dialling a listener on all addresses via %s: %v", h, err)
			}
			c.Close()
		}
		lo := startBinary(t, nil, "-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		all := startBinary(t, nil, "-listen", fmt.Sprintf(":%d", freePort(t)))
		client := &http.Client{Timeout: 5 * time.Second}
		for _, h := range hosts {
			_, err := net.DialTimeout("tcp", net.JoinHostPort(h, strconv.Itoa(lo.port)), 5*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("-listen 127.0.0.1:%d, dialling %s: %v, want connection refused", lo.port, h, err)
			}
			if code, _, _ := hardGet(t, client, "GET", "http://"+net.JoinHostPort(h, strconv.Itoa(all.port))+"/healthz", nil); code != 200 {
				t.Errorf("-listen :%d, /healthz via %s: status %d, want 200", all.port, h, code)
			}
		}
		if code, _, _ := hardGet(t, client, "GET", lo.url+"/healthz", nil); code != 200 {
			t.Errorf("-listen 127.0.0.1:%d, /healthz via loopback: status %d", lo.port, code)
		}
		t.Logf("refused on %v", hosts)
	})
}

// hardHostAddrs returns the host's unicast addresses that are neither
// loopback nor link-local (which would need a zone).
func hardHostAddrs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() || n.IP.IsLinkLocalUnicast() || !n.IP.IsGlobalUnicast() {
			continue
		}
		hosts = append(hosts, n.IP.String())
	}
	return hosts
}

// ---------------------------------------------------------------------------
// TestScratchImage

func TestScratchImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount /proc and chroot as the scratch image does")
	}
	for _, tool := range []string{"unshare", "chroot", "mount", "file"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	bin := buildBinary(t)
	info, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, info)
	}
	// -trimpath leaves -ldflags out of the build information; file says
	// whether -s stripped the symbols.
	for _, want := range []string{"\tbuild\tCGO_ENABLED=0\n", "\tbuild\t-trimpath=true\n"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("go version -m has no %q:\n%s", want, info)
		}
	}
	kind, err := exec.Command("file", "-L", bin).CombinedOutput()
	if err != nil || !strings.Contains(string(kind), "statically linked") || !strings.Contains(string(kind), "stripped") {
		t.Errorf("file: %v: %s; want statically linked and stripped", err, kind)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binary: %d bytes (%.2f MiB): %s", fi.Size(), float64(fi.Size())/(1<<20), strings.TrimSpace(string(kind)))

	// The image: the binary and an empty /proc, nothing else.
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
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"proc", "tcp_established_exporter"}, names); diff != "" {
		t.Errorf("root directory mismatch (-want +got):\n%s", diff)
	}
	// auto reads netlink sock_diag, as a deployment does; proc reads the
	// /proc mounted in the image.
	for _, source := range []string{"auto", "proc"} {
		t.Run(source, func(t *testing.T) { scratchRun(t, root, source) })
	}
}

// scratchRun runs the exporter alone in root as nobody, with a private
// mount of /proc, and checks what it serves about known connections.
func scratchRun(t *testing.T, root, source string) {
	port := freePort(t)
	stderr := new(syncBuffer)
	cmd := exec.Command("unshare", "--mount", "--fork", "sh", "-c",
		`mount -t proc proc "$1/proc" && exec chroot --userspec=65534:65534 "$1" /tcp_established_exporter -listen "127.0.0.1:$2" -source "$3" -duration 1s -interval 100ms`,
		"sh", root, strconv.Itoa(port), source)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // to kill all it starts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, 20*time.Second, "the exporter in the empty root to answer /healthz", func() bool {
		select {
		case <-done:
			t.Fatalf("exited early: %v\n%s", cmd.ProcessState, stderr)
		default:
		}
		resp, err := client.Get(url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// It runs as nobody, in the root that holds the binary alone.
	pid := hardChild(t, cmd.Process.Pid)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Errorf("the exporter (pid %d) does not run as 65534: %v\n%s", pid, err, status)
	}
	if dest, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err != nil || dest != root {
		t.Errorf("the exporter's root is %q (%v), want %q", dest, err, root)
	}

	ln4 := listenLoopback(t, "tcp", "127.0.0.1:0")
	dial(t, 3, "tcp", ln4.ln.Addr().String())
	ln6 := listenLoopback(t, "tcp6", "[::1]:0")
	dial(t, 2, "tcp6", ln6.ln.Addr().String())
	want := map[string]float64{
		fmt.Sprintf(`port="%d",tcp_version="4"`, ln4.port): 3,
		fmt.Sprintf(`port="%d",tcp_version="6"`, ln6.port): 2,
	}
	hardWait(t, 30*time.Second, "the counts of the known connections", func() string {
		m := scrape(t, url)
		for _, name := range []string{longtermName, establishedName} {
			all := samples(m, name)
			got := make(map[string]float64)
			for k := range want {
				if v, ok := all[k]; ok {
					got[k] = v
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				return fmt.Sprintf("%s mismatch (-want +got):\n%s", name, diff)
			}
		}
		for _, name := range []string{"process_open_fds", "process_resident_memory_bytes", "process_start_time_seconds"} {
			if v, ok := samples(m, name)[""]; !ok || v <= 0 {
				return fmt.Sprintf("%s: %v, %t", name, v, ok)
			}
		}
		return ""
	})

	// SIGTERM reaches it through the chroot: it exits 0.
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatalf("still running 15s after SIGTERM:\n%s", stderr)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0:\n%s", code, stderr)
	}
	for line := range strings.Lines(stderr.String()) {
		if strings.Contains(line, "reading connections from") || strings.Contains(line, "unavailable") {
			t.Logf("-source %s: %s", source, strings.TrimSpace(line))
		}
	}
}

// hardChild returns the only child of process pid.
func hardChild(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) != 1 {
		t.Fatalf("process %d has children %q, want one", pid, f)
	}
	child, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return child
}

// hardTCPStats returns the kernel's TCP counters that tell why connections
// fail (drops, overflows, reuse of TIME_WAIT ports), those not zero.
func hardTCPStats() string {
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
