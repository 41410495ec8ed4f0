package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// startServer runs serve in-process on an ephemeral loopback port with
// the given flags, as main does, and stops it at the end of the test,
// when serve must return nil.
func startServer(t testing.TB, args ...string) (base string, logs *syncBuffer) {
	t.Helper()
	s, err := loadSettings(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = new(syncBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, s, ln, log.New(logs, "", log.LstdFlags)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("serve did not return 20s after its context was cancelled")
		}
	})
	return "http://" + ln.Addr().String(), logs
}

// seriesOf picks the samples of one family for the given ports, keyed by
// their labels.
func seriesOf(body, name string, ports ...int) map[string]float64 {
	got := make(map[string]float64)
	for labels, v := range samples(body, name) {
		for _, p := range ports {
			if strings.Contains(labels, fmt.Sprintf(`port="%d"`, p)) {
				got[labels] = v
			}
		}
	}
	return got
}

func TestEndToEnd(t *testing.T) {
	v4 := listenLoopback(t, "tcp4", "127.0.0.1:0")
	v6 := listenLoopback(t, "tcp6", "[::1]:0")
	dual := listenLoopback(t, "tcp", "[::]:0")
	ports := []int{v4.port, v6.port, dual.port}
	base, _ := startServer(t, "-duration", "1s", "-interval", "100ms")
	label := func(port int, version string) string {
		return fmt.Sprintf(`port="%d",tcp_version="%s"`, port, version)
	}
	idle := map[string]float64{label(v4.port, "4"): 0, label(v6.port, "6"): 0, label(dual.port, "4"): 0, label(dual.port, "6"): 0}
	waitSeries(t, base, longtermName, ports, idle)

	opened := time.Now()
	v4Conns := dial(t, 3, "tcp4", fmt.Sprintf("127.0.0.1:%d", v4.port))
	dial(t, 2, "tcp6", fmt.Sprintf("[::1]:%d", v6.port))
	dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.port)) // IPv4 clients of a dual-stack listener
	dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.port))
	all := map[string]float64{label(v4.port, "4"): 3, label(v6.port, "6"): 2, label(dual.port, "4"): 2, label(dual.port, "6"): 1}
	body := waitSeries(t, base, establishedName, ports, all)
	if time.Since(opened) < time.Second { // else the connections may be long-term already
		if diff := cmp.Diff(idle, seriesOf(body, longtermName, ports...)); diff != "" {
			t.Errorf("long-term before the duration mismatch (-want +got):\n%s", diff)
		}
	}
	waitSeries(t, base, longtermName, ports, all)

	for _, c := range v4Conns {
		c.Close()
	}
	gone := map[string]float64{label(v4.port, "4"): 0, label(v6.port, "6"): 2, label(dual.port, "4"): 2, label(dual.port, "6"): 1}
	waitSeries(t, base, longtermName, ports, gone)
	v4.ln.Close()
	delete(gone, label(v4.port, "4"))
	waitSeries(t, base, longtermName, ports, gone)
}

func TestEndToEndSimpleWithPort(t *testing.T) {
	dual := listenLoopback(t, "tcp", "[::]:0")
	other := listenLoopback(t, "tcp", "127.0.0.1:0")
	base, _ := startServer(t, "-simple", "-port", fmt.Sprint(dual.port), "-duration", "1s", "-interval", "100ms")
	dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.port))
	dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.port))
	dial(t, 4, "tcp4", fmt.Sprintf("127.0.0.1:%d", other.port))
	waitFor(t, 30*time.Second, "three long-term connections in simple mode", func() bool {
		return cmp.Equal(map[string]float64{"": 3}, samples(scrape(t, base), longtermName))
	})
}

// waitSeries polls /metrics until the series of family name on ports are
// exactly want, and returns the body that matched.
func waitSeries(t *testing.T, base, name string, ports []int, want map[string]float64) string {
	t.Helper()
	var body string
	var got map[string]float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		body = scrape(t, base)
		if got = seriesOf(body, name, ports...); cmp.Equal(want, got) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: series mismatch after 30s (-want +got):\n%s", name, cmp.Diff(want, got))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	base, _ := startServer(t, "-interval", "100ms")
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

// TestSourcesAgree runs the exporter on /proc and on netlink side by side
// over the same real IPv4, IPv6 and IPv4-mapped connections: both must
// give the same counts, whatever the direction, with and without port.
func TestSourcesAgree(t *testing.T) {
	v4 := listenLoopback(t, "tcp4", "127.0.0.1:0")
	v6 := listenLoopback(t, "tcp6", "[::1]:0")
	dual := listenLoopback(t, "tcp", "[::]:0")
	dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", v4.port))
	dial(t, 2, "tcp6", fmt.Sprintf("[::1]:%d", v6.port))
	dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.port))
	dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.port))
	ports := []int{v4.port, v6.port, dual.port}
	series := func(dir string, port int, version string, n float64) (string, float64) {
		if dir != "" {
			dir = `direction="` + dir + `",`
		}
		return fmt.Sprintf(`%sport="%d",tcp_version="%s"`, dir, port, version), n
	}
	in := map[string]float64{}
	out := map[string]float64{}
	for _, s := range []struct {
		port    int
		version string
		n       float64
	}{{v4.port, "4", 2}, {v6.port, "6", 2}, {dual.port, "4", 2}, {dual.port, "6", 1}} {
		k, v := series("", s.port, s.version, s.n)
		in[k] = v
		k, v = series("out", s.port, s.version, s.n)
		out[k] = v
	}
	tests := []struct {
		name string
		args []string
		want map[string]float64
	}{
		{"in", nil, in},
		{"out", []string{"-direction", "out"}, out},
		{"all", []string{"-direction", "all"}, merge(prefixed(in, `direction="in",`), out)},
		{"in port", []string{"-port", fmt.Sprint(dual.port)}, only(in, dual.port)},
		{"out port", []string{"-direction", "out", "-port", fmt.Sprint(dual.port)}, only(out, dual.port)},
		{"all port", []string{"-direction", "all", "-port", fmt.Sprint(dual.port)},
			merge(prefixed(only(in, dual.port), `direction="in",`), only(out, dual.port))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, source := range []string{"proc", "netlink"} {
				base, _ := startServer(t, append([]string{"-source", source, "-duration", "1s", "-interval", "100ms"}, tt.args...)...)
				waitSeries(t, base, longtermName, ports, tt.want)
				waitSeries(t, base, establishedName, ports, tt.want)
			}
		})
	}
}

func prefixed(m map[string]float64, prefix string) map[string]float64 {
	out := make(map[string]float64)
	for k, v := range m {
		out[prefix+k] = v
	}
	return out
}

func merge(a, b map[string]float64) map[string]float64 {
	out := prefixed(a, "")
	for k, v := range b {
		out[k] = v
	}
	return out
}

// only keeps the series of port.
func only(m map[string]float64, port int) map[string]float64 {
	out := make(map[string]float64)
	for k, v := range m {
		if strings.Contains(k, fmt.Sprintf(`port="%d"`, port)) {
			out[k] = v
		}
	}
	return out
}
