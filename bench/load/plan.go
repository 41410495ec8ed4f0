package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// maxV4Sources bounds the IPv4 client source addresses: 127.0.0.1, then
// 127.0.0.2 onwards, used only when one port needs more connections than
// one source address can make.
const maxV4Sources = 16

// portPlan is one service port and the held connections that go to it.
type portPlan struct {
	port   int // 0: let the worker pick an ephemeral port
	v4, v6 int
}

// planPorts spreads c.n connections evenly over c.ports ports, and the
// IPv6 share of them evenly too.
func planPorts(c config) []portPlan {
	k := c.ports
	nv6 := int(float64(c.n)*c.v6 + 0.5)
	pp := make([]portPlan, k)
	for j := range pp {
		if c.basePort > 0 {
			pp[j].port = c.basePort + j
		}
		total := c.n/k + b2i(j < c.n%k)
		pp[j].v6 = nv6/k + b2i(j < nv6%k)
		pp[j].v4 = total - pp[j].v6
	}
	return pp
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// partition gives each of procs workers a contiguous block of ports;
// procs <= len(pp), so no block is empty.
func partition(pp []portPlan, procs int) [][]portPlan {
	out := make([][]portPlan, procs)
	for j, p := range pp {
		w := j * procs / len(pp)
		out[w] = append(out[w], p)
	}
	return out
}

// fdsNeeded is what one process holding ps costs: 2 fds per connection,
// 2 listeners per port, and the margin.
func fdsNeeded(ps []portPlan) uint64 {
	n := uint64(fdMargin)
	for _, p := range ps {
		n += 2*uint64(p.v4+p.v6) + 2
	}
	return n
}

// choosePlan splits the ports among -procs workers, or among the fewest
// workers that each fit in limit fds.
func choosePlan(c config, pp []portPlan, limit uint64) ([][]portPlan, error) {
	if c.procs > 0 {
		parts := partition(pp, c.procs)
		for _, ps := range parts {
			if need := fdsNeeded(ps); need > limit {
				return nil, fmt.Errorf("a process needs %d fds, over the limit of %d: use more -procs", need, limit)
			}
		}
		return parts, nil
	}
	for procs := 1; procs <= len(pp) && procs <= maxProcs; procs++ {
		parts := partition(pp, procs)
		fit := true
		for _, ps := range parts {
			fit = fit && fdsNeeded(ps) <= limit
		}
		if fit {
			return parts, nil
		}
	}
	return nil, fmt.Errorf("%d connections over %d ports do not fit in %d processes of %d fds each: "+
		"each process needs ports of its own, raise -ports", c.n, c.ports, min(len(pp), maxProcs), limit)
}

// checkSources rejects plans that need more client source addresses than
// loopback offers: IPv6 has only ::1, IPv4 gets maxV4Sources addresses.
func checkSources(pp []portPlan) error {
	per := perSource()
	for _, p := range pp {
		if p.v6 > per {
			return fmt.Errorf("%d IPv6 connections to one port exceed the %d one source address can make: raise -ports", p.v6, per)
		}
		if p.v4 > per*maxV4Sources {
			return fmt.Errorf("%d IPv4 connections to one port exceed %d: raise -ports", p.v4, per*maxV4Sources)
		}
	}
	return nil
}

// raiseNoFile raises RLIMIT_NOFILE for want fds: above the hard limit if
// allowed (CAP_SYS_RESOURCE), else the soft limit up to the hard one. It
// returns the soft limit in force.
func raiseNoFile(want uint64) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	if nrOpen := readUint("/proc/sys/fs/nr_open", 1<<20); want > nrOpen {
		want = nrOpen
	}
	if want > rl.Max && syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
		return want
	}
	if rl.Cur < rl.Max {
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: rl.Max, Max: rl.Max})
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return rl.Cur
}

// perSource is how many connections one client source address can make to
// one destination: the ephemeral port range less a margin for ports taken
// by listeners and other sockets.
var perSource = sync.OnceValue(func() int {
	lo, hi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && h > l {
				lo, hi = l, h
			}
		}
	}
	return max(hi-lo+1-2000, 1000)
})

func readUint(path string, def uint64) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return def
	}
	return v
}

// encodePlan renders ports for a worker's -plan flag: "port:v4:v6,...".
func encodePlan(ps []portPlan) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%d:%d:%d", p.port, p.v4, p.v6)
	}
	return strings.Join(s, ",")
}

func decodePlan(s string) ([]portPlan, error) {
	var ps []portPlan
	for _, f := range strings.Split(s, ",") {
		var p portPlan
		if _, err := fmt.Sscanf(f, "%d:%d:%d", &p.port, &p.v4, &p.v6); err != nil {
			return nil, fmt.Errorf("bad -plan entry %q: %w", f, err)
		}
		if p.port < 0 || p.port > 65535 || p.v4 < 0 || p.v6 < 0 || p.v4+p.v6 > maxConns {
			return nil, fmt.Errorf("bad -plan entry %q", f)
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 || len(ps) > maxPorts {
		return nil, fmt.Errorf("bad -plan %q", s)
	}
	return ps, nil
}
