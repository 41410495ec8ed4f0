package main

// The HTTP surface: /metrics (gzipped when the scraper takes it), /healthz
// and the index page.

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"html"
	"math"
	"net/http"
	"strconv"
	"strings"
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

// gzipped returns the start of a gzip member of bd.b: compressed once per
// read, by the first scrape that asks, for every scrape of the same read.
// What each scrape adds, the process families, ends the member
// (appendGzipTail).
//
// Level 2 compresses a hundred ports' 300 KB in 0.6 ms, as fast as
// BestSpeed and as small, with a writer of 0.8 MB instead of 1.2. The
// writer is made for the one use and left to the collector: Prometheus
// scrapes every 15 s or more, and a writer kept would stay in the heap
// between scrapes, and raise the collector's goal by as much again.
func (bd *body) gzipped() []byte {
	bd.gzOnce.Do(func() {
		// The header of RFC 1952: deflate, no name, no time, any OS.
		buf := bytes.NewBuffer(append(bd.gz[:0], 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff))
		w, _ := flate.NewWriter(buf, 2)
		w.Write(bd.b)
		w.Flush() // a sync flush: what follows starts on a byte, a block of its own
		bd.gz, bd.crc = buf.Bytes(), crc32.ChecksumIEEE(bd.b)
	})
	return bd.gz
}

// appendGzipTail ends a gzip member whose deflate stream so far holds size
// bytes with the CRC-32 crc, flushed: p as the last, stored blocks (the
// process families, a few hundred bytes that change every scrape), then
// the CRC-32 and the size of all.
func appendGzipTail(b []byte, crc uint32, size int, p []byte) []byte {
	le := binary.LittleEndian
	crc, size = crc32.Update(crc, crc32.IEEETable, p), size+len(p)
	for {
		n := min(len(p), math.MaxUint16)
		final := byte(0)
		if n == len(p) {
			final = 1
		}
		b = append(b, final) // BFINAL, and BTYPE 00: stored
		b = le.AppendUint16(le.AppendUint16(b, uint16(n)), ^uint16(n))
		b, p = append(b, p[:n]...), p[n:]
		if final == 1 {
			break
		}
	}
	return le.AppendUint32(le.AppendUint32(b, crc), uint32(size))
}

func (x *exporter) serveMetrics(w http.ResponseWriter, r *http.Request) {
	body := x.acquire()
	defer body.release()
	process := appendProcessMetrics(make([]byte, 0, 2048))
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Vary", "Accept-Encoding")
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h.Set("Content-Length", strconv.Itoa(len(body.b)+len(process)))
		w.Write(body.b)
		w.Write(process)
		return
	}
	gz := body.gzipped()
	tail := appendGzipTail(make([]byte, 0, len(process)+16), body.crc, len(body.b), process)
	h.Set("Content-Encoding", "gzip")
	h.Set("Content-Length", strconv.Itoa(len(gz)+len(tail)))
	w.Write(gz)
	w.Write(tail)
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
