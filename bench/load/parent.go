package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// event is a report from a worker: "ports", "ready", "stats" and "error"
// lines from its stdout, and "exit" when it has ended.
type event struct {
	worker int
	kind   string
	text   string
	err    error
}

// handle is one worker: a child process, or the parent itself when one
// process is enough.
type handle struct {
	pid   int
	stop  func() // asks it to close everything and exit
	kill  func()
	stdin io.Closer // child's stdin pipe, held open while the parent lives
}

type coordinator struct {
	cfg      config
	hs       []*handle
	events   chan event
	ports    [][]int
	ready    int
	exited   int
	stopping bool
	failure  error
	churnOK  int64
	churnErr int64
	heldFor  time.Duration
}

func runParent(c config) error {
	pp := planPorts(c)
	if err := checkSources(pp); err != nil {
		return err
	}
	limit := raiseNoFile(fdsNeeded(pp))
	parts, err := choosePlan(c, pp, limit)
	if err != nil {
		return err
	}
	if c.ready != "" {
		_ = os.Remove(c.ready) // a stale file must not look ready
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	co := &coordinator{cfg: c, events: make(chan event, 8*len(parts)), ports: make([][]int, len(parts))}
	start := time.Now()
	if err := co.start(parts); err != nil {
		co.shutdown()
		return err
	}
	err = co.waitReady(ctx)
	if err == nil {
		fmt.Fprintf(os.Stderr, "load: %s\n", co.summary(limit, parts, time.Since(start)))
		err = co.writeReady()
	}
	if err == nil {
		err = co.hold(ctx)
	}
	co.shutdown()
	if c.ready != "" {
		_ = os.Remove(c.ready)
	}
	if err == nil {
		err = co.failure
	}
	if err == nil {
		fmt.Fprintf(os.Stderr, "load: done after holding %v; churn: %d ok, %d failed\n", co.heldFor, co.churnOK, co.churnErr)
	}
	return err
}

// start launches one worker per part: in this process when there is one
// part, else as child processes sharing -churn in proportion to ports.
func (co *coordinator) start(parts [][]portPlan) error {
	for i, ps := range parts {
		spec := workerSpec{ports: ps, churn: co.cfg.churn * float64(len(ps)) / float64(co.cfg.ports), v6: co.cfg.v6}
		var h *handle
		var err error
		if len(parts) == 1 {
			h = startInProcess(i, spec, co.events)
		} else if h, err = startChild(i, spec, co.cfg.hold, co.events); err != nil {
			return err
		}
		co.hs = append(co.hs, h)
	}
	return nil
}

func startInProcess(id int, spec workerSpec, events chan<- event) *handle {
	ctx, cancel := context.WithCancel(context.Background())
	emit := func(kind, text string) { events <- event{worker: id, kind: kind, text: text} }
	go func() {
		err := runWorker(ctx, spec, emit)
		events <- event{worker: id, kind: "exit", err: err}
	}()
	return &handle{pid: os.Getpid(), stop: cancel, kill: cancel}
}

func startChild(id int, spec workerSpec, hold time.Duration, events chan<- event) (*handle, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-worker", "-plan", encodePlan(spec.ports),
		"-churn", strconv.FormatFloat(spec.churn, 'g', -1, 64),
		"-v6", strconv.FormatFloat(spec.v6, 'g', -1, 64),
		"-life", (setupTimeout + hold + stopTimeout).String())
	cmd.Stderr = os.Stderr
	// Own process group: a terminal's Ctrl-C reaches only the parent, which
	// stops the workers itself, instead of racing it to them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting worker %d: %w", id, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			kind, text, _ := strings.Cut(sc.Text(), " ")
			events <- event{worker: id, kind: kind, text: text}
		}
		events <- event{worker: id, kind: "exit", err: cmd.Wait()}
	}()
	p := cmd.Process
	return &handle{
		pid:   p.Pid,
		stop:  func() { _ = p.Signal(syscall.SIGTERM) },
		kill:  func() { _ = p.Kill() },
		stdin: in,
	}, nil
}

// handle records ev; a non-nil result means the run has failed.
func (co *coordinator) handle(ev event) error {
	switch ev.kind {
	case "ports":
		for _, s := range strings.Split(ev.text, ",") {
			if p, err := strconv.Atoi(s); err == nil {
				co.ports[ev.worker] = append(co.ports[ev.worker], p)
			}
		}
	case "ready":
		co.ready++
	case "stats":
		var ok, failed int64
		if _, err := fmt.Sscan(ev.text, &ok, &failed); err == nil {
			co.churnOK += ok
			co.churnErr += failed
		}
	case "error":
		return fmt.Errorf("worker %d (pid %d): %s", ev.worker, co.hs[ev.worker].pid, ev.text)
	case "exit":
		co.exited++
		if ev.err != nil {
			return fmt.Errorf("worker %d (pid %d): %w", ev.worker, co.hs[ev.worker].pid, ev.err)
		}
		if !co.stopping {
			return fmt.Errorf("worker %d (pid %d) exited early", ev.worker, co.hs[ev.worker].pid)
		}
	}
	return nil
}

func (co *coordinator) waitReady(ctx context.Context) error {
	timer := time.NewTimer(setupTimeout + 10*time.Second)
	defer timer.Stop()
	for co.ready < len(co.hs) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted after %d of %d processes were ready", co.ready, len(co.hs))
		case <-timer.C:
			return fmt.Errorf("only %d of %d processes ready after %v", co.ready, len(co.hs), setupTimeout)
		case ev := <-co.events:
			if err := co.handle(ev); err != nil {
				return err
			}
		}
	}
	return nil
}

// hold waits for -hold, a signal, or a failing worker.
func (co *coordinator) hold(ctx context.Context) error {
	timer := time.NewTimer(co.cfg.hold)
	defer timer.Stop()
	start := time.Now()
	defer func() { co.heldFor = time.Since(start).Round(time.Millisecond) }()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "load: signalled, stopping")
			return nil
		case <-timer.C:
			return nil
		case ev := <-co.events:
			if err := co.handle(ev); err != nil {
				return err
			}
		}
	}
}

// shutdown stops every worker and waits for them, killing any still
// running after stopTimeout. Failures are kept in co.failure.
func (co *coordinator) shutdown() {
	co.stopping = true
	for _, h := range co.hs {
		h.stop()
	}
	deadline := time.NewTimer(stopTimeout)
	defer deadline.Stop()
	killed := false
	for co.exited < len(co.hs) {
		select {
		case ev := <-co.events:
			if err := co.handle(ev); err != nil && co.failure == nil {
				co.failure = err
			}
		case <-deadline.C:
			if killed {
				co.failure = fmt.Errorf("%d workers did not exit", len(co.hs)-co.exited)
				return
			}
			for _, h := range co.hs {
				h.kill()
			}
			killed = true
			deadline.Reset(10 * time.Second)
		}
	}
	for _, h := range co.hs {
		if h.stdin != nil {
			h.stdin.Close()
		}
	}
}

func (co *coordinator) allPorts() []int {
	var all []int
	for _, ps := range co.ports {
		all = append(all, ps...)
	}
	slices.Sort(all)
	return all
}

func (co *coordinator) pids() []int {
	var pids []int
	for _, h := range co.hs {
		pids = append(pids, h.pid)
	}
	return pids
}

func (co *coordinator) summary(limit uint64, parts [][]portPlan, took time.Duration) string {
	var v4, v6 int
	for _, ps := range parts {
		for _, p := range ps {
			v4, v6 = v4+p.v4, v6+p.v6
		}
	}
	return fmt.Sprintf("holding %d connections (%d IPv4, %d IPv6) on %d ports [%s] in %d process(es) (pids %s, fd limit %d); established in %v",
		v4+v6, v4, v6, len(co.allPorts()), portRanges(co.allPorts()), len(co.hs), joinInts(co.pids(), ","), limit, took.Round(time.Millisecond))
}

// writeReady writes the -ready file atomically (temporary file, rename).
func (co *coordinator) writeReady() error {
	if co.cfg.ready == "" {
		return nil
	}
	nv6 := int(float64(co.cfg.n)*co.cfg.v6 + 0.5)
	body := fmt.Sprintf("pid=%d\nworkers=%s\nports=%s\nconnections=%d\nv4=%d\nv6=%d\n",
		os.Getpid(), joinInts(co.pids(), ","), joinInts(co.allPorts(), ","), co.cfg.n, co.cfg.n-nv6, nv6)
	tmp := co.cfg.ready + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, co.cfg.ready)
}

// portRanges renders sorted ports compactly: "1000-1009,2000".
func portRanges(ports []int) string {
	var b strings.Builder
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1] == ports[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(ports[i]))
		if j > i {
			fmt.Fprintf(&b, "-%d", ports[j])
		}
		i = j + 1
	}
	return b.String()
}

func joinInts(xs []int, sep string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, sep)
}
