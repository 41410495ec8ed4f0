package main

import (
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
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

// TestScanSkipsWhileTasksUnchanged scans a procfs of its own making: a
// scan that loadavg says would find what the last one found is skipped,
// one after a change in either of its figures is not, nor the scan after
// fullScanEvery skipped ones, nor any where procfs is of another PID
// namespace than the reader's.
func TestScanSkipsWhileTasksUnchanged(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("self/status", "Name:\texporter\nPid:\t7\nNSpid:\t7\nNSpgid:\t7\n")
	write("loadavg", "0.00 0.01 0.05 1/100 4567\n")
	write("1/cmdline", "")
	x := &exporter{s: &settings{procfs: dir}, log: log.New(io.Discard, "", 0)}
	n := newNode(x, trackConfig{})
	if !n.watch {
		t.Fatal("procfs/self/status shows one pid, but the node does not watch loadavg")
	}
	scan := func(want int, why string) {
		t.Helper()
		if err := n.scan(); err != nil {
			t.Fatal(err)
		}
		if len(n.pids) != want {
			t.Errorf("%s: the scan lists %d processes, want %d", why, len(n.pids), want)
		}
	}
	scan(1, "first scan")
	write("2/cmdline", "")
	scan(1, "loadavg unchanged") // skipped: the list is the last one's
	write("loadavg", "0.00 0.01 0.05 1/100 4569\n")
	scan(2, "a new last pid")
	write("3/cmdline", "")
	write("loadavg", "0.00 0.01 0.05 1/101 4569\n")
	scan(3, "another count of tasks")
	write("4/cmdline", "")
	for i := range fullScanEvery {
		scan(3, "skipped scan "+strconv.Itoa(i+1))
	}
	scan(4, "after fullScanEvery skipped scans")

	write("self/status", "Name:\texporter\nPid:\t7\nNSpid:\t9\t7\n")
	if newNode(x, trackConfig{}).watch {
		t.Error("procfs of the parent PID namespace (NSpid of two pids): the node watches loadavg, whose last pid is of another")
	}
}

// TestTaskCountMoves checks on the real /proc what the skipping rests on:
// a new process moves loadavg's last pid.
func TestTaskCountMoves(t *testing.T) {
	before, err := readTaskCount("/proc/loadavg")
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("true").Run(); err != nil {
		t.Fatal(err)
	}
	after, err := readTaskCount("/proc/loadavg")
	if err != nil {
		t.Fatal(err)
	}
	if after.lastPid == before.lastPid {
		t.Errorf("a process was started, but /proc/loadavg's last pid stayed %d", after.lastPid)
	}
}

func TestParseTaskCount(t *testing.T) {
	for in, want := range map[string]taskCount{
		"0.00 0.01 0.05 1/123 4567\n":   {123, 4567},
		"12.50 3.00 1.00 17/2146 11251": {2146, 11251},
		"0.00 0.01 0.05 1/4194304 0\n":  {4194304, 0},
		"0.00 0.01 0.05 1/123\n":        {},
		"0.00 0.01 0.05 123 4567\n":     {},
		"0.00 0.01 0.05 1/x 4567\n":     {},
		"0.00 0.01 0.05 1/0 4567\n":     {},
		"0.00 0.01 0.05 1/123 45x67\n":  {},
		"":                              {},
	} {
		got, err := parseTaskCount([]byte(in))
		if got != want || (err != nil) != (want == taskCount{}) {
			t.Errorf("parseTaskCount(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}
