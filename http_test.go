package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

func TestHTTPEndpoints(t *testing.T) {
	base := startServer(t, "-interval", "100ms")
	tests := []struct {
		method, path string
		wantStatus   int
		wantType     string
		wantBody     string // a part of it
	}{
		{"GET", "/metrics", 200, contentType, "# TYPE " + longtermName + " gauge\n"},
		{"HEAD", "/metrics", 200, contentType, ""},
		{"GET", "/healthz", 200, "text/plain; charset=utf-8", "ok\n"},
		{"GET", "/", 200, "text/html; charset=utf-8", `<a href="/metrics">`},
		{"GET", "/nope", 404, "text/plain; charset=utf-8", "404 page not found"},
		{"POST", "/metrics", 405, "text/plain; charset=utf-8", "Method Not Allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, base+tt.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus || resp.Header.Get("Content-Type") != tt.wantType {
				t.Errorf("status %d, type %q; want %d, %q", resp.StatusCode, resp.Header.Get("Content-Type"), tt.wantStatus, tt.wantType)
			}
			if !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("body %q does not contain %q", body, tt.wantBody)
			}
			if tt.wantStatus == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("Allow = %q, want GET, HEAD", resp.Header.Get("Allow"))
			}
		})
	}
}

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"": false, "gzip": true, "gzip, deflate": true, "deflate, gzip;q=0.5": true,
		"gzip;q=0": false, "gzip; q=0.0": false, "br": false, "x-gzip": false,
	} {
		if got := acceptsGzip(header); got != want {
			t.Errorf("acceptsGzip(%q) = %t, want %t", header, got, want)
		}
	}
}

// TestGzipTail decodes what a gzipped scrape sends, the body compressed
// once and a tail of stored blocks for what each scrape adds, as a strict
// reader does: one gzip member, its CRC-32 and size checked.
func TestGzipTail(t *testing.T) {
	text := []byte(strings.Repeat(`netstat_tcp_longterm_connections_total{port="8080"} 3`+"\n", 500))
	for _, n := range []int{0, 1, 2000, math.MaxUint16, math.MaxUint16 + 1, 3*math.MaxUint16 + 7} {
		bd := &body{b: text}
		process := bytes.Repeat([]byte("x"), n)
		for i := range process {
			process[i] = byte(i * 7)
		}
		gz := bd.gzipped()
		if again := bd.gzipped(); &again[0] != &gz[0] {
			t.Errorf("%d bytes: the body was compressed twice", n)
		}
		got := gunzipOne(t, appendGzipTail(bytes.Clone(gz), bd.crc, len(bd.b), process))
		if want := append(bytes.Clone(text), process...); !bytes.Equal(got, want) {
			t.Errorf("%d bytes: decoded %d bytes, want %d", n, len(got), len(want))
		}
	}
}

// gunzipOne decodes wire as a strict reader does: one gzip member, its
// CRC-32 and size checked, and nothing after it.
func gunzipOne(t *testing.T, wire []byte) []byte {
	t.Helper()
	r := bytes.NewReader(wire)
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	text, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() > 0 {
		t.Errorf("%d bytes after the gzip member", r.Len())
	}
	return text
}

// TestMetricsGzip scrapes with and without gzip as a scraper that checks
// every byte does: the length announced, one gzip member and nothing
// after it, the process families at the end, and a later read's counts
// once the exporter has read again (a body compressed once per read must
// not outlive its read).
func TestMetricsGzip(t *testing.T) {
	base := startServer(t, "-interval", "50ms")
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	get := func(gzipped bool) string {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/metrics", nil)
		if gzipped {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		wire, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != int64(len(wire)) {
			t.Errorf("gzip %t: Content-Length %d, %d bytes sent", gzipped, resp.ContentLength, len(wire))
		}
		if got := resp.Header.Get("Content-Encoding") == "gzip"; got != gzipped {
			t.Fatalf("gzip %t: Content-Encoding %q", gzipped, resp.Header.Get("Content-Encoding"))
		}
		text := wire
		if gzipped {
			text = gunzipOne(t, wire)
		}
		if i := bytes.LastIndexByte(text[:max(len(text)-1, 0)], '\n'); !bytes.HasPrefix(text[i+1:], []byte("go_goroutines ")) {
			t.Errorf("gzip %t: the process families are not at the end:\n%s", gzipped, text)
		}
		return string(text)
	}
	reads := func(text string) (most float64) {
		for _, v := range testnet.Samples(text, readsName) {
			most = max(most, v)
		}
		return most
	}
	first := reads(get(true))
	if plain := reads(get(false)); plain < first {
		t.Errorf("a plain scrape after a gzipped one shows %v reads, fewer than its %v", plain, first)
	}
	testnet.WaitFor(t, 10*time.Second, "a gzipped scrape of a later read", func() bool {
		return reads(get(true)) >= first+2
	})
}
