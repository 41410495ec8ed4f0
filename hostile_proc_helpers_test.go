package main

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The checks and the garbage of TestHostileProc.

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
