package e2e

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// Hostile HTTP clients: stalled, oversized, odd methods and paths, many at once.

func TestHostileHTTP(t *testing.T) {
	x := startBinary(t, nil, "-interval", "100ms", "-duration", "1s")
	base, addr := x.url, strings.TrimPrefix(x.url, "http://")
	t.Cleanup(func() {
		// A panic in a handler, or a failing Accept, is logged by net/http.
		if l := x.stderr.String(); strings.Contains(l, "http: ") {
			t.Errorf("the HTTP server logged errors:\n%s", l)
		}
	})
	client := &http.Client{Timeout: 3 * time.Second}
	ref := families(testnet.Scrape(t, base))
	if !slices.Contains(ref, longtermName+" gauge") || !slices.Contains(ref, "go_goroutines gauge") {
		t.Fatalf("the reference scrape lacks families: %q", ref)
	}

	t.Run("stalled clients", func(t *testing.T) { hostileStalledClients(t, base, addr, client, ref) })
	t.Run("header sizes", func(t *testing.T) { hostileHeaderSizes(t, addr) })
	t.Run("methods", func(t *testing.T) { hostileMethods(t, base, client) })
	t.Run("unknown paths", func(t *testing.T) { hostileUnknownPaths(t, base, client) })
	t.Run("HEAD", func(t *testing.T) { hostileHEAD(t, addr) })
	t.Run("gzip", func(t *testing.T) { hostileGzip(t, base, ref) })
	t.Run("concurrent scrapes", func(t *testing.T) { hostileConcurrentScrapes(t, base, ref) })
}

// hostileStalledClients is the subtest "stalled clients" of TestHostileHTTP.
func hostileStalledClients(t *testing.T, base, addr string, client *http.Client, ref []string) {
	// Each sends half a request header and stalls.
	conns := testnet.Dial(t, 200, "tcp", addr)
	opened := time.Now()
	for _, c := range conns {
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sl"); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	code, _, body := get(t, client, "GET", base+"/metrics", nil)
	if code != 200 {
		t.Fatalf("scrape beside 200 stalled clients: status %d", code)
	}
	if bad := checkComplete(body, ref); bad != "" {
		t.Fatalf("scrape beside 200 stalled clients: %s", bad)
	}
	t.Logf("a scrape beside 200 stalled clients took %s", time.Since(start).Round(time.Millisecond))
	// The read-header timeout frees them: the server closes each
	// without an answer.
	for i, c := range conns {
		c.SetReadDeadline(opened.Add(30 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || len(got) > 0 {
			t.Fatalf("stalled client %d: read %q, %v; want the server to close the connection", i, got, err)
		}
	}
	t.Logf("the server closed 200 stalled clients %s after they connected", time.Since(opened).Round(100*time.Millisecond))
}

// hostileHeaderSizes is the subtest "header sizes" of TestHostileHTTP.
func hostileHeaderSizes(t *testing.T, addr string) {
	for _, tc := range []struct {
		size int
		want int
	}{
		{4 << 10, 200},
		{32 << 10, 431},
		{1 << 20, 431},
	} {
		c := testnet.Dial(t, 1, "tcp", addr)[0]
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// A write error is fine once the server has answered and
		// stopped reading.
		go fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", tc.size))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("a %d-byte header: %v", tc.size, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("a %d-byte header: status %d, want %d", tc.size, resp.StatusCode, tc.want)
		}
	}
}

// hostileMethods is the subtest "methods" of TestHostileHTTP.
func hostileMethods(t *testing.T, base string, client *http.Client) {
	for _, tc := range []struct{ method, path string }{
		{"POST", "/metrics"}, {"PUT", "/metrics"}, {"DELETE", "/metrics"}, {"PATCH", "/metrics"},
		{"POST", "/healthz"}, {"DELETE", "/"},
	} {
		code, h, _ := get(t, client, tc.method, base+tc.path, nil)
		allow := strings.Split(strings.ReplaceAll(h.Get("Allow"), " ", ""), ",")
		if code != 405 || !slices.Contains(allow, "GET") || !slices.Contains(allow, "HEAD") {
			t.Errorf("%s %s: status %d, Allow %q; want 405 allowing GET and HEAD", tc.method, tc.path, code, h.Get("Allow"))
		}
	}
}

// hostileUnknownPaths is the subtest "unknown paths" of TestHostileHTTP.
func hostileUnknownPaths(t *testing.T, base string, client *http.Client) {
	for _, path := range []string{"/nope", "/metrics/", "/metricsx", "/healthz/x", "/index.html", "/debug/pprof/", "/debug/vars"} {
		if code, _, _ := get(t, client, "GET", base+path, nil); code != 404 {
			t.Errorf("GET %s: status %d, want 404", path, code)
		}
	}
}

// hostileHEAD is the subtest "HEAD" of TestHostileHTTP.
func hostileHEAD(t *testing.T, addr string) {
	for _, enc := range []string{"", "Accept-Encoding: gzip\r\n"} {
		c := testnet.Dial(t, 1, "tcp", addr)[0]
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n", enc)
		raw, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		head, body, _ := strings.Cut(string(raw), "\r\n\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 200 ") || body != "" {
			t.Errorf("HEAD /metrics (%q): got %q, want 200 and no body", enc, raw)
		}
		if !strings.Contains(head, "\r\nContent-Type: "+contentType+"\r\n") {
			t.Errorf("HEAD /metrics (%q): no Content-Type %q in %q", enc, contentType, head)
		}
	}
}

// hostileGzip is the subtest "gzip" of TestHostileHTTP.
func hostileGzip(t *testing.T, base string, ref []string) {
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	raw := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for _, tc := range []struct {
		accept string
		gzip   bool
	}{
		{"gzip", true},
		{"br, gzip;q=0.5", true},
		{"gzip;q=0", false},
		{"identity", false},
	} {
		code, h, body := get(t, raw, "GET", base+"/metrics", http.Header{"Accept-Encoding": {tc.accept}})
		if code != 200 || h.Get("Content-Type") != contentType || !strings.Contains(h.Get("Vary"), "Accept-Encoding") {
			t.Errorf("Accept-Encoding %q: status %d, Content-Type %q, Vary %q", tc.accept, code, h.Get("Content-Type"), h.Get("Vary"))
		}
		if got := h.Get("Content-Encoding") == "gzip"; got != tc.gzip {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q, want gzip %t", tc.accept, h.Get("Content-Encoding"), tc.gzip)
			continue
		}
		if tc.gzip {
			zr, err := gzip.NewReader(strings.NewReader(body))
			if err != nil {
				t.Fatalf("Accept-Encoding %q: %v", tc.accept, err)
			}
			plain, err := io.ReadAll(zr) // checks the trailer too
			if err != nil {
				t.Fatalf("Accept-Encoding %q: decompressing: %v", tc.accept, err)
			}
			body = string(plain)
		}
		if bad := checkComplete(body, ref); bad != "" {
			t.Errorf("Accept-Encoding %q: %s", tc.accept, bad)
		}
	}
}

// hostileConcurrentScrapes is the subtest "concurrent scrapes" of TestHostileHTTP.
func hostileConcurrentScrapes(t *testing.T, base string, ref []string) {
	const n = 40 // the most served at once: more get 503 (secure.go)
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: n}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	errs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", base+"/metrics", nil)
			if i%2 == 0 {
				req.Header.Set("Accept-Encoding", "gzip")
			}
			resp, err := c.Do(req)
			if err != nil {
				errs[i] = err.Error()
				return
			}
			defer resp.Body.Close()
			var r io.Reader = resp.Body
			if resp.Header.Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(resp.Body)
				if err != nil {
					errs[i] = err.Error()
					return
				}
				r = zr
			}
			body, err := io.ReadAll(r)
			switch {
			case err != nil:
				errs[i] = err.Error()
			case resp.StatusCode != 200:
				errs[i] = fmt.Sprintf("status %d", resp.StatusCode)
			case (i%2 == 0) != (resp.Header.Get("Content-Encoding") == "gzip"):
				errs[i] = fmt.Sprintf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
			default:
				errs[i] = checkComplete(string(body), ref)
			}
		})
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Errorf("scrape %d of %d: %s", i, n, e)
		}
	}
}
