package main

import (
	"fmt"
	"log"
	"math"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// nodeExporter is one exporter of the node rows, measured by turns.
type nodeExporter struct {
	name    string // for the log
	at      place
	cmd     *exec.Cmd
	pid     int
	windows []time.Duration // its CPU per read in each
	nodeFigures
}

// startNodeExporter starts the exporter with -namespaces all, listening
// on addr in the bench's namespace, as cred's user when not nil.
func startNodeExporter(bins binaries, cfg runConfig, name, addr string, cred *syscall.Credential) (*nodeExporter, error) {
	e := &nodeExporter{name: name, at: place{transport: http.DefaultTransport, addr: addr}}
	args := append([]string{"-listen", addr, "-namespaces", "all"}, cfg.args...)
	e.cmd = exec.Command(bins.exporter, args...)
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if err := startUp(e.at, e.cmd); err != nil {
		return nil, fmt.Errorf("%s exporter: %v", name, err)
	}
	e.pid = e.cmd.Process.Pid
	return e, nil
}

// nodeStatus is what the exporter's own metrics say of its reads.
type nodeStatus struct {
	polls         float64 // reads of the whole node
	lastRead      float64 // seconds
	netlink, proc int     // namespaces read each way by the last read
}

// status scrapes the exporter. Every namespace a read reads over netlink
// counts in reads_total{file="netlink"}, so the reads of the node are that
// over the namespaces read so (at least the exporter's own, which needs no
// privilege), a number that holds while the namespaces do.
func (e *nodeExporter) status() (nodeStatus, error) {
	var s nodeStatus
	_, body, err := get(e.at, "/metrics", false)
	if err != nil {
		return s, err
	}
	var netlinkReads float64
	for line := range strings.SplitSeq(string(body), "\n") {
		name, v, ok := strings.Cut(line, " ")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			continue
		}
		switch name {
		case readsName + `{file="netlink"}`:
			netlinkReads = f
		case nsName + `{source="netlink"}`:
			s.netlink = int(f)
		case nsName + `{source="proc"}`:
			s.proc = int(f)
		case "tcp_established_exporter_last_read_duration_seconds":
			s.lastRead = f
		}
	}
	if s.netlink == 0 {
		return s, fmt.Errorf("%s exporter reads no namespace over netlink", e.name)
	}
	s.polls = math.Round(netlinkReads / float64(s.netlink))
	return s, nil
}

const (
	readsName = "tcp_established_exporter_reads_total"
	nsName    = "tcp_established_exporter_namespaces"
)

// settle waits for n reads to end: after SIGCONT, the one the stop cut
// or the tick missed while stopped fires at once, on caches the floors
// took; none of them is measured.
func (e *nodeExporter) settle(n int) error {
	s, err := e.status()
	if err != nil {
		return err
	}
	_, err = e.waitPolls(s.polls+float64(n), 100*time.Millisecond, s.lastRead)
	return err
}

// waitPolls polls the exporter every poll until it has read the node at
// least n times, and returns how many; bounded by the time those reads
// take, read as long as lastRead seconds, and a margin.
func (e *nodeExporter) waitPolls(n float64, poll time.Duration, lastRead float64) (float64, error) {
	s, err := e.status()
	deadline := time.Now().Add(time.Duration((n-s.polls)*3*max(lastRead, 1)*1e9) + 30*time.Second)
	for err == nil && s.polls < n {
		if time.Now().After(deadline) {
			return s.polls, fmt.Errorf("%s exporter: %v reads of %v by the deadline", e.name, s.polls, n)
		}
		time.Sleep(poll)
		s, err = e.status()
	}
	return s.polls, err
}

// turn continues the exporter, lets it settle, measures a window of
// reads (fewer when a read is slow) into ws and stops it again.
func (e *nodeExporter) turn(per int, ws *[]time.Duration) error {
	e.cmd.Process.Signal(syscall.SIGCONT)
	defer e.cmd.Process.Signal(syscall.SIGSTOP)
	if err := e.settle(2); err != nil {
		return err
	}
	w, err := e.window(readsIn(per, e.lastRead))
	*ws = append(*ws, w)
	return err
}

// window measures the exporter's CPU time per read. While a read takes
// less than the interval, over a whole number of its 1 s intervals, as
// the other rows do, without scraping inside it. Else reads run back to
// back and such a window would cut one read at each end: it runs from
// the end of a read to the end of another, found by polling.
func (e *nodeExporter) window(reads int) (time.Duration, error) {
	s0, err := e.status()
	if err != nil {
		return 0, err
	}
	e.lastRead = s0.lastRead
	if s0.lastRead > 0.7 {
		return e.syncedWindow(reads)
	}
	cpu0 := cpuTime(e.pid)
	time.Sleep(time.Duration(reads) * time.Second)
	cpu1 := cpuTime(e.pid)
	s1, err := e.status()
	if err != nil {
		return 0, err
	}
	if done := s1.polls - s0.polls; done < float64(reads)-1 {
		log.Printf("%s exporter: only %v reads in %d s: measured again from read to read", e.name, done, reads)
		return e.syncedWindow(reads)
	}
	return time.Duration(cpu1-cpu0) / time.Duration(reads), nil
}

// syncedWindow measures from the end of a read to the end of the reads-th
// after it, found within a fiftieth of a read. The scrapes inside it are
// few: it sleeps through all but the last half read, then polls.
func (e *nodeExporter) syncedWindow(reads int) (time.Duration, error) {
	period := max(e.lastRead, 1)
	poll := max(20*time.Millisecond, time.Duration(period*2e7))
	s, err := e.status()
	if err != nil {
		return 0, err
	}
	c0, err := e.waitPolls(s.polls+1, poll, period)
	if err != nil {
		return 0, err
	}
	cpu0 := cpuTime(e.pid)
	time.Sleep(time.Duration((float64(reads) - 0.5) * period * 1e9))
	c1, err := e.waitPolls(c0+float64(reads), poll, period)
	cpu1 := cpuTime(e.pid)
	if err != nil {
		return 0, err
	}
	return time.Duration(float64(cpu1-cpu0) / (c1 - c0)), nil
}
