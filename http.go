package main

// The HTTP surface: /metrics (gzipped when the scraper takes it), /healthz
// and the index page.

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"html"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

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
