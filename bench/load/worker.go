package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	dialWorkers   = 64 // concurrent dials while establishing
	dialAttempts  = 3
	dialTimeout   = 5 * time.Second
	churnInFlight = 64 // concurrent churn dials; beyond that a tick's dial counts as failed
	churnTick     = 10 * time.Millisecond
	// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h), missing
	// from package syscall: bind the source address but leave the port to
	// connect(), which may then reuse it towards other destinations.
	ipBindAddressNoPort = 24
)

// workerSpec is what one process holds.
type workerSpec struct {
	ports []portPlan
	churn float64 // this process's share of -churn
	v6    float64 // IPv6 fraction of churn connections
}

// holder owns one process's listeners and connections.
type holder struct {
	spec      workerSpec
	total     int
	lnPorts   []int // chosen port numbers, by index in spec.ports
	lns       []*net.TCPListener
	clients   []*net.TCPConn
	setup     atomic.Bool // accepted sockets are held while true, closed after
	accepted  atomic.Int64
	acceptErr chan error
	wg        sync.WaitGroup
}

// runWorker holds spec's connections until ctx ends, reporting progress
// through emit ("ports", "ready", "stats"). It closes everything before
// returning.
func runWorker(ctx context.Context, spec workerSpec, emit func(kind, text string)) error {
	need := fdsNeeded(spec.ports)
	if limit := raiseNoFile(need); need > limit {
		return fmt.Errorf("needs %d fds, limit is %d", need, limit)
	}
	h := &holder{spec: spec, acceptErr: make(chan error, 1)}
	for _, p := range spec.ports {
		h.total += p.v4 + p.v6
	}
	h.setup.Store(true)
	defer h.close()
	if err := h.listen(); err != nil {
		return err
	}
	emit("ports", joinInts(h.lnPorts, ","))
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := h.dialAll(sctx); err != nil {
		return fmt.Errorf("establishing %d connections: %w", h.total, err)
	}
	if err := h.waitAccepted(sctx); err != nil {
		return err
	}
	h.setup.Store(false)
	emit("ready", strconv.Itoa(h.total))
	ok, failed := h.churn(ctx)
	emit("stats", fmt.Sprintf("%d %d", ok, failed))
	return nil
}

// listen opens a 127.0.0.1 and a [::1] listener on each port, with the
// same port number for both.
func (h *holder) listen() error {
	for _, p := range h.spec.ports {
		port, lns, err := listenPair(p.port)
		if err != nil {
			return err
		}
		h.lnPorts = append(h.lnPorts, port)
		for _, ln := range lns {
			h.lns = append(h.lns, ln)
			h.wg.Add(1)
			go h.acceptLoop(ln)
		}
	}
	return nil
}

// listenPair listens on port, or on an ephemeral port free in both
// families when port is 0 (retrying a bounded number of times).
func listenPair(port int) (int, []*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	attempts := 1
	if port == 0 {
		attempts = 50
	}
	var err error
	for range attempts {
		var v4, v6 net.Listener
		if v4, err = lc.Listen(context.Background(), "tcp4", hostPort("127.0.0.1", port)); err != nil {
			continue
		}
		p := v4.Addr().(*net.TCPAddr).Port
		if v6, err = lc.Listen(context.Background(), "tcp6", hostPort("::1", p)); err != nil {
			v4.Close()
			continue
		}
		return p, []*net.TCPListener{v4.(*net.TCPListener), v6.(*net.TCPListener)}, nil
	}
	return 0, nil, fmt.Errorf("listening on port %d of 127.0.0.1 and [::1]: %w", port, err)
}

func hostPort(ip string, port int) string {
	return net.JoinHostPort(ip, strconv.Itoa(port))
}

// acceptLoop runs until its listener is closed. During setup it keeps the
// accepted sockets (closing them when it returns); after, it closes them
// at once (churn).
func (h *holder) acceptLoop(ln *net.TCPListener) {
	defer h.wg.Done()
	var held []*net.TCPConn
	defer func() { closeAll(held) }()
	for {
		c, err := ln.AcceptTCP()
		switch {
		case errors.Is(err, net.ErrClosed):
			return
		case err != nil && h.setup.Load():
			select {
			case h.acceptErr <- fmt.Errorf("accept: %w", err):
			default:
			}
			return
		case err != nil:
			time.Sleep(50 * time.Millisecond) // e.g. EMFILE under churn
		case h.setup.Load():
			held = append(held, c)
			h.accepted.Add(1)
		default:
			c.Close()
		}
	}
}

// closeAll closes conns with an RST (linger 0) so that ending a run does
// not leave tens of thousands of TIME_WAIT entries in /proc/net/tcp for
// the next run to parse.
func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		_ = c.SetLinger(0)
		c.Close()
	}
}

type dialJob struct {
	network string
	addr    string
	src     net.IP // nil: the default source address
}

// dialAll makes every held client connection, dialWorkers at a time.
func (h *holder) dialAll(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan dialJob, dialWorkers)
	results := make([][]*net.TCPConn, dialWorkers)
	var wg sync.WaitGroup
	for w := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[w] = dialLoop(ctx, cancel, jobs, h.total/dialWorkers+1)
		}()
	}
	h.produce(ctx, jobs)
	wg.Wait()
	for _, r := range results {
		h.clients = append(h.clients, r...)
	}
	return context.Cause(ctx)
}

// produce sends one job per held connection, then closes jobs.
func (h *holder) produce(ctx context.Context, jobs chan<- dialJob) {
	defer close(jobs)
	per := perSource()
	for i, p := range h.spec.ports {
		port := h.lnPorts[i]
		for k := range p.v4 + p.v6 {
			j := dialJob{network: "tcp6", addr: hostPort("::1", port)}
			if k < p.v4 {
				j = dialJob{network: "tcp4", addr: hostPort("127.0.0.1", port), src: v4Source(k / per)}
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	}
}

// v4Source is the i-th IPv4 client source address: the default for 0,
// then 127.0.0.2, 127.0.0.3...
func v4Source(i int) net.IP {
	if i == 0 {
		return nil
	}
	return net.IPv4(127, 0, 0, byte(1+i))
}

// dialLoop dials jobs until they run out; the first failure cancels the
// rest of the setup.
func dialLoop(ctx context.Context, cancel context.CancelCauseFunc, jobs <-chan dialJob, capHint int) []*net.TCPConn {
	held := make([]*net.TCPConn, 0, capHint)
	for j := range jobs {
		if ctx.Err() != nil {
			continue // drain
		}
		c, err := dialRetry(ctx, j)
		if err != nil {
			cancel(err)
			continue
		}
		held = append(held, c)
	}
	return held
}

func dialRetry(ctx context.Context, j dialJob) (*net.TCPConn, error) {
	if err := checkLoopback(j.addr); err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: -1}
	if j.src != nil {
		d.LocalAddr = &net.TCPAddr{IP: j.src}
		d.Control = bindNoPort
	}
	var err error
	for attempt := range dialAttempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
			}
		}
		var c net.Conn
		if c, err = d.DialContext(ctx, j.network, j.addr); err == nil {
			return c.(*net.TCPConn), nil
		}
	}
	return nil, err
}

// checkLoopback refuses any destination that is not a loopback address.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to dial non-loopback address %q", addr)
	}
	return nil
}

func bindNoPort(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	return errors.Join(err, serr)
}

// waitAccepted waits until the listeners hold every server side.
func (h *holder) waitAccepted(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for h.accepted.Load() < int64(h.total) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("accepted %d of %d connections: %w", h.accepted.Load(), h.total, ctx.Err())
		case err := <-h.acceptErr:
			return err
		case <-t.C:
		}
	}
	return nil
}

// churn opens and closes spec.churn connections a second to random ports
// of this process until ctx ends, then reports how many succeeded and
// failed. Without churn it just waits for ctx.
func (h *holder) churn(ctx context.Context) (ok, failed int64) {
	rate := h.spec.churn
	if rate <= 0 {
		<-ctx.Done()
		return 0, 0
	}
	var nOK, nFailed atomic.Int64
	sem := make(chan struct{}, churnInFlight)
	t := time.NewTicker(churnTick)
	defer t.Stop()
	last, budget := time.Now(), 0.0
	for {
		select {
		case <-ctx.Done():
			for range churnInFlight { // wait for the dials in flight
				sem <- struct{}{}
			}
			return nOK.Load(), nFailed.Load()
		case now := <-t.C:
			budget = min(budget+rate*now.Sub(last).Seconds(), rate)
			last = now
			for ; budget >= 1; budget-- {
				select {
				case sem <- struct{}{}:
					go func() {
						defer func() { <-sem }()
						if err := h.churnOnce(ctx); err == nil {
							nOK.Add(1)
						} else if ctx.Err() == nil {
							nFailed.Add(1)
						}
					}()
				default:
					nFailed.Add(1)
				}
			}
		}
	}
}

func (h *holder) churnOnce(ctx context.Context) error {
	port := h.lnPorts[rand.IntN(len(h.lnPorts))]
	j := dialJob{network: "tcp4", addr: hostPort("127.0.0.1", port)}
	if rand.Float64() < h.spec.v6 {
		j = dialJob{network: "tcp6", addr: hostPort("::1", port)}
	}
	if err := checkLoopback(j.addr); err != nil {
		return err
	}
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, j.network, j.addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// close releases everything: clients first, then the listeners, whose
// accept loops close the server sides they hold.
func (h *holder) close() {
	h.setup.Store(false)
	closeAll(h.clients)
	for _, ln := range h.lns {
		ln.Close()
	}
	h.wg.Wait()
}
