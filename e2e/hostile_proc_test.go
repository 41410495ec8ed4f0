package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// Hostile /proc content, step by step in a fake procfs.

// maxBadLogged is how many distinct malformed lines the exporter logs
// (poll.go's maxBadLogged); it says so when there are more.
const maxBadLogged = 256

// procStep is one state of the fake /proc and what the exporter must
// show while it lasts.
type procStep struct {
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

	garbage := garbageLines()
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

	unreadable := procStep{
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
		unreadable = procStep{
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

	steps := []procStep{{
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
		after := testnet.Samples(testnet.Scrape(t, p.url), readsName)[`file="tcp"`]
		checkProcStep(t, p, client, st, logPos, after)
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

// checkProcStep waits until the exporter shows what step st wants, then
// watches five more reads of tcp: the counters move by exactly what each
// read meets, and the log does not grow. readsAfter is the count of reads
// of tcp that a scrape showed after the change was made.
func checkProcStep(t *testing.T, p *exporterProc, client *http.Client, st procStep, logPos int, readsAfter float64) {
	t.Helper()
	state := func() (string, string) {
		code, _, body := get(t, client, "GET", p.url+"/healthz", nil)
		switch {
		case code != st.health:
			return "", fmt.Sprintf("/healthz: %d %q, want %d", code, body, st.health)
		case code == 200 && body != "ok\n":
			return "", fmt.Sprintf("/healthz: %d %q, want ok", code, body)
		case code == 503 && !strings.Contains(body, st.healthMsg):
			return "", fmt.Sprintf("/healthz: %d %q, want the error %q", code, body, st.healthMsg)
		}
		m := testnet.Scrape(t, p.url)
		if diff := cmp.Diff(st.longterm, testnet.Samples(m, longtermName)); diff != "" {
			return m, fmt.Sprintf("%s mismatch (-want +got):\n%s", longtermName, diff)
		}
		if diff := cmp.Diff(st.longterm, testnet.Samples(m, establishedName)); diff != "" {
			return m, fmt.Sprintf("%s mismatch (-want +got):\n%s", establishedName, diff)
		}
		if got := testnet.Samples(m, trackedName)[""]; got != st.tracked {
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
	waitCheck(t, 30*time.Second, st.name+": the exporter to show the step", func() string {
		m, bad := state()
		if bad != "" {
			return bad
		}
		if got := testnet.Samples(m, readsName)[`file="tcp"`]; got < readsAfter+1 {
			return fmt.Sprintf("%v reads of tcp, waiting for %v", got, readsAfter+1)
		}
		if n := len(newLog()); n < len(st.logs) {
			return fmt.Sprintf("%d new log lines, waiting for %d: %q", n, len(st.logs), newLog())
		}
		m1 = m
		return ""
	})
	logLen := len(p.stderr.String())
	counter := func(m, name, file string) float64 { return testnet.Samples(m, name)[`file="`+file+`"`] }
	r1 := counter(m1, readsName, "tcp")
	var m2 string
	testnet.WaitFor(t, 60*time.Second, st.name+": 5 more reads of tcp", func() bool {
		m2 = testnet.Scrape(t, p.url)
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

// garbageLines returns malformed lines, each ending in a newline and
// each different in its first 64 bytes (what a log line quotes): lines
// that look almost right, terminal escapes, NULs, and random bytes.
func garbageLines() []byte {
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
