// Command load opens N real ESTABLISHED TCP connections on loopback and
// holds them, to benchmark the exporter against large /proc/net/tcp and
// /proc/net/tcp6 tables.
//
//	go build -o /tmp/load ./bench/load
//	/tmp/load -n 30000 -ports 100 -v6 0.5 -hold 5m -ready /tmp/load.ready &
//	while [ ! -e /tmp/load.ready ]; do sleep 0.2; done   # then measure
//
// Both ends of every connection live in this tool, so each connection is
// two ESTABLISHED sockets (two lines in /proc/net/tcp or tcp6, two in
// `ss -Htn state established`): the client side on an ephemeral port and
// the accepted side on one of the K service ports. Each service port is
// listened on twice, by 127.0.0.1 and by [::1] (two single-stack
// listeners on the same port number, so v4 and v6 stay visibly separate).
// Only loopback is ever used: ::1, 127.0.0.1, and 127.0.0.2 onwards as
// extra IPv4 client sources when one port needs more connections than the
// ephemeral range allows per source address.
//
// Processes: a loopback connection held by one process costs it 2 fds.
// The tool raises RLIMIT_NOFILE to its hard limit (and first tries above
// it, which needs CAP_SYS_RESOURCE) and, when N does not fit in one
// process, re-executes itself as workers. The K service ports are
// partitioned among the workers: a worker listens on its own ports and
// dials only those, so both ends of its connections are its own fds and
// its fd use is bounded by its share. (SO_REUSEPORT on shared ports would
// let the kernel hand a connection to another worker's listener and break
// that accounting.) The cost is that there can be no more workers than
// ports: large N over few ports fails with a message asking for more
// ports. The parent only coordinates: it starts the workers, writes the
// -ready file once all of them hold their share, stops them after -hold or
// on SIGTERM/SIGINT, and exits non-zero if any of them failed. Workers die
// with the parent (Pdeathsig, and EOF on their stdin pipe).
//
// The -ready file (written atomically, removed on exit) holds key=value
// lines: pid, workers, ports, connections, v4, v6.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	maxConns     = 1_000_000
	maxPorts     = 1000
	maxProcs     = 64
	maxChurn     = 10_000
	maxHold      = 30 * time.Minute
	setupTimeout = 2 * time.Minute // to listen, dial and accept everything
	stopTimeout  = 30 * time.Second
	// fdMargin is the fds a process keeps free besides 2 per connection
	// and 1 per listener: runtime, pipes, in-flight churn and retries.
	fdMargin = 300
)

type config struct {
	n        int
	ports    int
	basePort int
	v6       float64
	churn    float64
	hold     time.Duration
	ready    string
	procs    int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-worker" {
		os.Exit(workerMain(os.Args[2:]))
	}
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err == nil {
		err = runParent(c)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "load: %s\n", oneLine(err.Error()))
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.IntVar(&c.n, "n", 1000, "total connections to hold")
	fs.IntVar(&c.ports, "ports", 10, "listening ports to spread connections over")
	fs.IntVar(&c.basePort, "base-port", 0, "first listening port (0: ephemeral ports)")
	fs.Float64Var(&c.v6, "v6", 0.5, "fraction of connections over [::1], the rest over 127.0.0.1")
	fs.Float64Var(&c.churn, "churn", 0, "short connections opened and closed per second, besides the held ones")
	fs.DurationVar(&c.hold, "hold", 60*time.Second, "how long to hold once established (max 30m)")
	fs.StringVar(&c.ready, "ready", "", "file to write once all connections are established")
	fs.IntVar(&c.procs, "procs", 0, "worker processes (0: as many as the fd limit requires; 1: in-process)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return c, c.validate()
}

func (c config) validate() error {
	switch {
	case c.n < 1 || c.n > maxConns:
		return fmt.Errorf("-n %d: want 1..%d", c.n, maxConns)
	case c.ports < 1 || c.ports > maxPorts:
		return fmt.Errorf("-ports %d: want 1..%d", c.ports, maxPorts)
	case c.basePort < 0 || c.basePort > 0 && c.basePort+c.ports-1 > 65535:
		return fmt.Errorf("-base-port %d: ports %d..%d out of range", c.basePort, c.basePort, c.basePort+c.ports-1)
	case !(c.v6 >= 0 && c.v6 <= 1):
		return fmt.Errorf("-v6 %v: want a fraction in 0..1", c.v6)
	case !(c.churn >= 0 && c.churn <= maxChurn):
		return fmt.Errorf("-churn %v: want 0..%d per second", c.churn, maxChurn)
	case c.hold <= 0 || c.hold > maxHold:
		return fmt.Errorf("-hold %v: want more than 0 and at most %v", c.hold, maxHold)
	case c.procs < 0 || c.procs > maxProcs:
		return fmt.Errorf("-procs %d: want 0..%d", c.procs, maxProcs)
	case c.procs > c.ports:
		return fmt.Errorf("-procs %d exceeds -ports %d: each process needs ports of its own", c.procs, c.ports)
	}
	return nil
}

// oneLine flattens a message for the one-line outputs and the worker pipe.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// workerMain runs a child process started by startChild: it holds its
// share until SIGTERM/SIGINT, -life, or EOF on stdin (parent gone), and
// reports on stdout one "kind text" line per event.
func workerMain(args []string) int {
	var spec workerSpec
	var plan string
	var life time.Duration
	fs := flag.NewFlagSet("load -worker", flag.ContinueOnError)
	fs.StringVar(&plan, "plan", "", "port:v4:v6,...")
	fs.Float64Var(&spec.churn, "churn", 0, "churn per second")
	fs.Float64Var(&spec.v6, "v6", 0, "IPv6 fraction of churn")
	fs.DurationVar(&life, "life", 0, "exit after this long whatever happens")
	err := fs.Parse(args)
	if err == nil {
		spec.ports, err = decodePlan(plan)
	}
	var mu sync.Mutex
	emit := func(kind, text string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, "%s %s\n", kind, oneLine(text))
	}
	if err == nil && (life <= 0 || life > setupTimeout+maxHold+stopTimeout) {
		err = fmt.Errorf("-life %v out of range", life)
	}
	if err != nil {
		emit("error", err.Error())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, life)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	if err := runWorker(ctx, spec, emit); err != nil {
		emit("error", err.Error())
		return 1
	}
	return 0
}
