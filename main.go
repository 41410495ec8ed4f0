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
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version string

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

func (s *settings) String() string {
	return fmt.Sprintf("simple=%t tcpv6=%t port=%d listen=%s duration=%s interval=%s direction=%s procfs=%s source=%s conf=%s"+
		" tls-cert=%s tls-key=%s tls-client-ca=%s auth-token-file=%s",
		s.simple, s.tcpv6, s.port, s.listen, s.duration, s.interval, s.direction, s.procfs, s.source, s.conf,
		s.tlsCert.path, s.tlsKey.path, s.tlsClientCA.path, s.authTokenFile.path)
}

// loop reads the tables every interval until ctx is done. It owns the
// netlink socket, which it closes when done.
func (x *exporter) loop(ctx context.Context) {
	t := time.NewTicker(x.s.interval)
	defer t.Stop()
	defer func() {
		if x.diag != nil {
			x.diag.Close()
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

// handler serves the routes; g guards /metrics alone, so that kubelet
// probes of /healthz need neither client certificate nor token.
func (x *exporter) handler(g *guard) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", g.metrics(http.HandlerFunc(x.serveMetrics)))
	mux.HandleFunc("GET /healthz", x.serveHealth)
	mux.HandleFunc("GET /{$}", x.serveIndex)
	return nosniff(mux)
}

// compressor is the one gzip writer of the process: each costs 1.2 MB,
// which a pool would allocate per concurrent scrape. It compresses at
// BestSpeed: with a histogram per port a hundred ports make some 300 KB,
// which the default level takes 4 ms on, and BestSpeed under 1.
type compressor struct {
	mu sync.Mutex
	w  *gzip.Writer
}

// compress writes the parts, gzipped, to dst.
func (c *compressor) compress(dst *bytes.Buffer, parts ...[]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil {
		c.w, _ = gzip.NewWriterLevel(dst, gzip.BestSpeed)
	} else {
		c.w.Reset(dst)
	}
	for _, p := range parts {
		c.w.Write(p)
	}
	c.w.Close()
	c.w.Reset(nil)
}

var gzipped = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (x *exporter) serveMetrics(w http.ResponseWriter, r *http.Request) {
	body := x.acquire()
	defer body.release()
	process := appendProcessMetrics(make([]byte, 0, 2048))
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Vary", "Accept-Encoding")
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Write(body.b)
		w.Write(process)
		return
	}
	h.Set("Content-Encoding", "gzip")
	buf := gzipped.Get().(*bytes.Buffer)
	defer gzipped.Put(buf)
	buf.Reset()
	x.gzip.compress(buf, body.b, process)
	w.Write(buf.Bytes())
}

// acceptsGzip reports whether an Accept-Encoding header takes gzip.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(part, ";")
		if strings.TrimSpace(coding) != "gzip" {
			continue
		}
		if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			f, err := strconv.ParseFloat(q, 64)
			return err == nil && f > 0
		}
		return true
	}
	return false
}

func (x *exporter) serveHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := x.lastError(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (x *exporter) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, `<!DOCTYPE html>
<html><head><title>tcp_established_exporter</title></head>
<body><h1>tcp_established_exporter</h1>
<p>Counts TCP connections established for at least %s. <a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a></p>
<h2>Settings</h2>
<pre>%s</pre>
<p>Version %s</p>
</body></html>
`, html.EscapeString(x.s.duration.String()),
		html.EscapeString(strings.ReplaceAll(x.s.String(), " ", "\n")),
		html.EscapeString(buildVersion()))
}
