package main

import (
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestListProcs lists a directory of more entries than one getdents call
// returns, numbered and not, as listProcs lists /proc: every decimal name
// and nothing else, over several calls into the buffer it keeps.
func TestListProcs(t *testing.T) {
	dir := t.TempDir()
	var want []int
	for i := 1; i <= 3000; i++ {
		name := strconv.Itoa(i * 7)
		if i%3 == 0 {
			name += "x" // not a process: skipped
		} else {
			want = append(want, i*7)
		}
		if err := os.Mkdir(dir+"/"+name, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"self", "thread-self", "sys", "0", "12345678901", "-1", "1e3"} {
		if err := os.Mkdir(dir+"/"+name, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n := &node{x: &exporter{s: &settings{procfs: dir}}}
	for range 2 { // the second reuses the buffer and the list
		if err := n.listProcs(); err != nil {
			t.Fatal(err)
		}
		got := slices.Sorted(slices.Values(n.pids))
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("pids listed (-want +got):\n%s", diff)
		}
	}
	if len(n.dirBuf) >= 3000*24 {
		t.Errorf("buffer of %d bytes holds the whole directory: one call, not several, was tested", len(n.dirBuf))
	}
}

// TestListProcsReal lists the real /proc: this process is in it.
func TestListProcsReal(t *testing.T) {
	n := &node{x: &exporter{s: &settings{procfs: "/proc"}}}
	if err := n.listProcs(); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(n.pids, os.Getpid()) {
		t.Errorf("/proc lists %d processes, not this one, %d", len(n.pids), os.Getpid())
	}
	n.x.s.procfs = t.TempDir() + "/missing"
	if err := n.listProcs(); !os.IsNotExist(err) {
		t.Errorf("listing a missing procfs: %v, want not exist", err)
	}
}

func TestParsePid(t *testing.T) {
	for name, want := range map[string]int{
		"1\x00": 1, "4194304\x00": 4194304, "2147483647\x00": 2147483647,
		"\x00": 0, "self\x00": 0, "1x\x00": 0, "12345678901\x00": 0, "1": 0, ".\x00": 0,
	} {
		if got := parsePid([]byte(name)); got != want {
			t.Errorf("parsePid(%q) = %d, want %d", name, got, want)
		}
	}
}
