// Command tcp_established_exporter counts the TCP connections that have
// stayed ESTABLISHED for at least a minimum duration and serves the counts
// to Prometheus. Next to a WebSocket or Shiny application, where one user
// session is one long-lived connection, the count is the users online now.
//
// It reads /proc/net/tcp and tcp6 of its own network namespace every
// interval, keeps the first-seen time of each connection, and serves counts
// made by the last read: a scrape does no /proc work.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"
)

// gcPercent is the collector's GOGC unless the environment sets one. Almost
// all of the heap is the tracker's tables, which live as long as their
// connections, and a read makes no garbage: what scrapes make is collected
// when it reaches a quarter of the heap instead of all of it. At 10,000
// connections, after 3,000 scrapes, RSS is 2-3 MB lower, for a collection
// of about half a millisecond every 50 scrapes (every scrape, when each one
// compresses a new read).
const gcPercent = 25

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version string

// init keeps the main thread for the main goroutine, which only waits: the
// poll loop lowers the priority of the thread it runs in (see loop), and
// ps and top show the main thread's as the process's.
func init() { runtime.LockOSThread() }

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the whole program; it returns the exit status: 2 for bad settings,
// 1 when it cannot listen or serve.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	s, err := loadSettings(args, getenv)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(stdout)
		return 0
	case errors.Is(err, errVersion):
		fmt.Fprintf(stdout, "tcp_established_exporter %s %s\n", buildVersion(), runtime.Version())
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "tcp_established_exporter: %v\n", err)
		return 2
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	ln, err := net.Listen("tcp", s.listen)
	if err != nil {
		fmt.Fprintf(stderr, "tcp_established_exporter: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := serve(ctx, s, ln, log.New(stderr, "", log.LstdFlags)); err != nil {
		fmt.Fprintf(stderr, "tcp_established_exporter: %v\n", err)
		return 1
	}
	return 0
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// serve reads the tables every interval and serves HTTP on ln until ctx is
// done; then it lets the scrapes in flight finish.
func serve(ctx context.Context, s *settings, ln net.Listener, logger *log.Logger) error {
	g, err := newGuard(s, logger) // TLS and token, read again: they may have changed since loadSettings
	if err != nil {
		return err
	}
	own := uint16(ln.Addr().(*net.TCPAddr).Port)
	x := newExporter(s, own, logger)
	x.reloadErrors = &g.reloadErrors
	x.poll() // the first scrape finds counts
	loopDone := make(chan struct{})
	loopCtx, stopLoop := context.WithCancel(ctx)
	go func() {
		defer close(loopDone)
		x.loop(loopCtx)
	}()
	defer func() { stopLoop(); <-loopDone }()

	srv := &http.Server{
		Handler:           x.handler(g),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          logger,
		TLSConfig:         g.tlsConfig(), // nil without TLS
	}
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(ln, "", "") // the certificate comes from TLSConfig
			return
		}
		errc <- srv.Serve(ln)
	}()
	logger.Printf("tcp_established_exporter %s listening on %s://%s; %s", buildVersion(), g.scheme(), ln.Addr(), s)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// loop reads the tables every interval until ctx is done. It owns the
// netlink socket, which it closes when done.
//
// It reads in a thread of its own, at a lower priority (readNice), so that
// a scrape, or the application beside the exporter, that wants a core
// while a read of tens of milliseconds holds it gets it as soon as the
// read next returns from the kernel (with a page of /proc or a datagram of
// the dump), instead of after the scheduler's time slice. The thread ends
// with the loop: it stays locked, so that no other goroutine ever runs on
// it.
func (x *exporter) loop(ctx context.Context) {
	runtime.LockOSThread()
	if err := lowerPriority(readNice); err != nil {
		x.log.Printf("reading at the same priority as the scrapes: %v", err)
	}
	t := time.NewTicker(x.s.interval)
	defer t.Stop()
	defer func() {
		if x.diag != nil {
			x.diag.Close()
		}
		if x.node != nil {
			x.node.close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			x.poll()
		}
	}
}
