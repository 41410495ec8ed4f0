package main

import (
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"
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
