package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// Hardening: hostile /proc content, step by step in a fake procfs.

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
