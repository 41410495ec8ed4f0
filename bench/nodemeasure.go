package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The node rows measure one exporter of a node (-namespaces all, SPEC
// section 11) on makeNode's pods, nodeHostConns connections in the host's
// namespace beside them, twice: the pods' namespaces sharing the host's
// connection table, and each with one of its own. Two exporters run by
// turns, each stopped (SIGSTOP) while the other or a floor is measured:
// as root, which reads every namespace over netlink from a socket opened
// inside it, and unprivileged (uid and gid 65534, no groups), which may
// enter none and reads the pods' /proc/PID/net/tcp and tcp6. Their floors:
// a bare one-walk sock_diag dump in each namespace (./floor -netns), and
// cAdvisor's way of reading the tables (./cadvisor), every container
// process's and the root container's, at the first and last stop only,
// for it is slow.

// nodeHostConns is the connections held in the host's namespace.
const nodeHostConns = 10000

// nodeResult is one row of the node table.
type nodeResult struct {
	k, conns, buckets int           // the pods' namespaces, connections each, and their tables' size
	procs, fewProcs   int           // on the node while measured; in the few-process windows
	floor, cadvisor   time.Duration // per read
	root, unpriv      nodeFigures
	few               time.Duration // the root exporter's CPU per read with fewProcs; 0 if not measured
	scanAlone         time.Duration // a copy of the exporter's scan, with procs processes
}

// nodeFigures are what is measured of one exporter.
type nodeFigures struct {
	cpu           time.Duration // per read
	lastRead      float64       // seconds: tcp_established_exporter_last_read_duration_seconds
	rss           int64
	netlink, proc int // namespaces its last read read each way
	p50, p99      time.Duration
	series        int
}

// runNodeRows measures a node of each of counts namespaces, shared tables
// then tables of their own, after the TIME_WAIT sockets of the rows
// before, of last connections, have gone.
func runNodeRows(bins binaries, cfg runConfig, counts []int, last int) []nodeResult {
	var rows []nodeResult
	for i, k := range counts {
		if last > 0 || i > 0 {
			waitTimeWait()
		}
		for _, own := range []bool{false, true} {
			start := time.Now()
			r, err := measureNode(bins, cfg, k, own)
			if err != nil {
				log.Fatalf("node of %d namespaces (own tables %t): %v", k, own, err)
			}
			rows = append(rows, r)
			log.Printf("node of %d namespaces, tcp_ehash_entries %d: done in %.0f s", k, r.buckets, time.Since(start).Seconds())
		}
	}
	return rows
}

// measureNode makes the node of k namespaces, own tables or not, beside
// the host's connections, and measures it.
func measureNode(bins binaries, cfg runConfig, k int, own bool) (nodeResult, error) {
	r := nodeResult{k: k, conns: podConns(k)}
	stopLoad, _, err := startLoad(bins.load, cfg, nodeHostConns)
	if err != nil {
		return r, err
	}
	defer stopLoad()
	start := time.Now()
	n, err := makeNode(k, r.conns, own)
	if err != nil {
		return r, err
	}
	defer n.remove()
	r.buckets = n.pods[0].buckets
	log.Printf("node: %d namespaces of %d connections (tcp_ehash_entries %d), %d processes each, made in %.1f s",
		k, r.conns, r.buckets, podProcs, time.Since(start).Seconds())
	run, err := startNodeRun(bins, cfg, n)
	if err != nil {
		return r, err
	}
	defer run.stop()
	if err := run.measure(&r); err != nil {
		return r, err
	}
	return r, run.finish(&r)
}

// nodeRun is the exporters of a node and their floors' inputs.
type nodeRun struct {
	bins               binaries
	cfg                runConfig
	n                  *node
	netnsList, pidList string // the floors' inputs
	root, unpriv       *nodeExporter
	per                int // reads a window, at most
	floors, cadvisors  []time.Duration
}

// startNodeRun writes the floors' inputs, makes up the node's processes
// and starts both exporters.
func startNodeRun(bins binaries, cfg runConfig, n *node) (*nodeRun, error) {
	run := &nodeRun{bins: bins, cfg: cfg, n: n, per: max(cfg.reads/rounds, 1),
		netnsList: filepath.Join(cfg.dir, "netns.txt"), pidList: filepath.Join(cfg.dir, "pids.txt")}
	netns := []string{fmt.Sprintf("/proc/%d/ns/net", os.Getpid())}
	// cAdvisor reads the root container's tables through PID 1 (its raw
	// handler's pid for "/"): here the bench, in the host's namespace.
	pids := []string{strconv.Itoa(os.Getpid())}
	for _, p := range n.pods {
		netns = append(netns, p.netns)
		for _, c := range p.procs {
			pids = append(pids, strconv.Itoa(c.Process.Pid))
		}
	}
	if err := os.WriteFile(run.netnsList, []byte(strings.Join(netns, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(run.pidList, []byte(strings.Join(pids, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.Chmod(cfg.dir, 0o755); err != nil { // for the unprivileged exporter's binary
		return nil, err
	}
	if err := n.startExtras(nodeProcs, 2); err != nil {
		return nil, err
	}
	var err error
	if run.root, err = startNodeExporter(bins, cfg, "root", "127.0.0.1:19691", nil); err != nil {
		return nil, err
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534} // no Groups: setgroups(0) clears them
	if run.unpriv, err = startNodeExporter(bins, cfg, "unprivileged", "127.0.0.1:19692", nobody); err != nil {
		run.stop()
		return nil, err
	}
	if err := run.warmUp(len(n.pods) + 1); err != nil {
		run.stop()
		return nil, err
	}
	return run, nil
}

// warmUp lets each exporter finish two reads, the first opening a socket
// in each namespace (the other may read meanwhile), and checks that each reads the node's namespaces
// and no other.
func (run *nodeRun) warmUp(namespaces int) error {
	for _, e := range []*nodeExporter{run.root, run.unpriv} {
		err := waitFor(3*time.Minute, e.name+" exporter's first read", func() bool {
			s, err := e.status()
			return err == nil && s.polls >= 1
		})
		if err == nil {
			err = e.settle(1)
		}
		if err != nil {
			return err
		}
		s, err := e.status()
		if err != nil {
			return err
		}
		if s.netlink+s.proc != namespaces {
			return fmt.Errorf("%s exporter reads %d namespaces (%d over netlink), not the node's %d", e.name, s.netlink+s.proc, s.netlink, namespaces)
		}
		log.Printf("node: %s exporter reads %d namespaces over netlink, %d from /proc; a read took %.3f s", e.name, s.netlink, s.proc, s.lastRead)
		e.lastRead = s.lastRead
		e.cmd.Process.Signal(syscall.SIGSTOP)
	}
	return nil
}

// measure takes rounds windows of each exporter, each floor between
// them; and, when the node was made up with sleeps, the root exporter's
// windows again without them, the cost of finding the namespaces among
// the processes.
func (run *nodeRun) measure(r *nodeResult) error {
	var few []time.Duration
	for i := 0; ; i++ {
		if err := run.takeFloors(i); err != nil {
			return err
		}
		if i == rounds {
			break
		}
		if i == 0 {
			r.scanAlone = scanAlone()
		}
		r.procs = countProcs()
		if err := run.root.turn(run.per, &run.root.windows); err != nil {
			return err
		}
		if len(run.n.extras) > 0 {
			run.n.stopExtras()
			r.fewProcs = countProcs()
			if err := run.root.turn(run.per, &few); err != nil {
				return err
			}
			if err := run.n.startExtras(nodeProcs, 0); err != nil {
				return err
			}
		}
		if err := run.unpriv.turn(run.per, &run.unpriv.windows); err != nil {
			return err
		}
	}
	r.floor, r.cadvisor, r.few = mean(run.floors), mean(run.cadvisors), mean(few)
	log.Printf("node: root %s, without the extra processes %s; unprivileged %s; one-walk floor %s; cAdvisor's way %s",
		mss(run.root.windows), mss(few), mss(run.unpriv.windows), mss(run.floors), mss(run.cadvisors))
	return nil
}

// takeFloors runs the floors of stop i of rounds+1, both exporters
// stopped: the dump in each namespace at every stop, cAdvisor's way at
// the first (after the dump) and the last (before it).
func (run *nodeRun) takeFloors(i int) error {
	dump := func() error {
		reads := readsIn(run.per, run.root.lastRead)
		d, err := cpuPerRead(exec.Command(run.bins.floor, "-reads", strconv.Itoa(reads), "-netns", run.netnsList))
		run.floors = append(run.floors, d)
		return err
	}
	cadvisor := func() error {
		if i != 0 && i != rounds {
			return nil
		}
		d, err := cpuPerRead(exec.Command(run.bins.cadvisor, "-reads", strconv.Itoa(run.per), "-budget", "20s", "-pids", run.pidList))
		run.cadvisors = append(run.cadvisors, d)
		return err
	}
	if i == rounds {
		dump, cadvisor = cadvisor, dump
	}
	if err := dump(); err != nil {
		return err
	}
	return cadvisor()
}

// finish takes each exporter's scrape latency, RSS after the scrapes, and
// its last read, the other stopped.
func (run *nodeRun) finish(r *nodeResult) error {
	for _, x := range []struct {
		e *nodeExporter
		f *nodeFigures
	}{{run.root, &r.root}, {run.unpriv, &r.unpriv}} {
		e := x.e
		e.cmd.Process.Signal(syscall.SIGCONT)
		err := e.settle(2)
		if err == nil {
			e.p50, e.p99, e.series, err = scrapeLatency(e.at, run.cfg.scrapes)
		}
		s, serr := e.status()
		e.rss = rss(e.pid)
		e.cmd.Process.Signal(syscall.SIGSTOP)
		if err = firstErr(err, serr); err != nil {
			return fmt.Errorf("%s exporter: %v", e.name, err)
		}
		e.cpu, e.lastRead, e.netlink, e.proc = mean(e.windows), s.lastRead, s.netlink, s.proc
		*x.f = e.nodeFigures
	}
	return nil
}

// firstErr is the first of errs that is not nil.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (run *nodeRun) stop() {
	for _, e := range []*nodeExporter{run.root, run.unpriv} {
		if e != nil {
			e.cmd.Process.Kill()
			e.cmd.Wait()
		}
	}
}

// readsIn is how many reads a window or a floor takes: per, or as many
// as fit in about 12 s when a read takes longer than the 1 s interval,
// 2 at least (1 when per is).
func readsIn(per int, lastRead float64) int {
	return min(per, max(2, int(12/max(lastRead, 1))))
}
