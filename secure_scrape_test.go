package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Scrapes of a secure exporter by each kind of client (SPEC section 10).

var tlsVersions = []struct {
	name    string
	version uint16
}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}}

// TestSecureScrape scrapes an exporter that asks for a client certificate
// and a token, with each kind of client.
func TestSecureScrape(t *testing.T) {
	p := writeTestPKI(t, t.TempDir())
	addr, logs := serveSecure(t, "-tls-cert", p.certFile, "-tls-key", p.keyFile,
		"-tls-client-ca", p.caFile, "-auth-token-file", p.tokenFile)
	base := "https://" + addr
	secureWait(t, 10*time.Second, "the start-up line says "+base, func() (bool, string) {
		l := logs.String()
		return strings.Contains(l, "listening on "+base+";"), l
	})
	type want struct {
		code          int
		authenticate  string // WWW-Authenticate
		metrics       bool   // the body holds the metrics
		handshakeFail string // the error's text, when the handshake fails
	}
	tests := []struct {
		name              string
		certFile, keyFile string
		token             string
		sendAnyway        bool // the client certificate, whatever CAs the server names
		metrics, healthz  want
	}{
		{name: "client certificate and token", certFile: p.clientCert, keyFile: p.clientKey, token: p.token,
			metrics: want{code: 200, metrics: true}, healthz: want{code: 200}},
		{name: "client certificate, no token", certFile: p.clientCert, keyFile: p.clientKey,
			metrics: want{code: 401, authenticate: "Bearer"}, healthz: want{code: 200}},
		{name: "client certificate, wrong token", certFile: p.clientCert, keyFile: p.clientKey, token: p.token + "x",
			metrics: want{code: 401, authenticate: "Bearer"}, healthz: want{code: 200}},
		{name: "client certificate, token prefix", certFile: p.clientCert, keyFile: p.clientKey, token: p.token[:4],
			metrics: want{code: 401, authenticate: "Bearer"}, healthz: want{code: 200}},
		{name: "no client certificate", token: p.token,
			metrics: want{code: 403}, healthz: want{code: 200}},
		// A Go client sends no certificate that the server's list of
		// acceptable CAs does not name, as if it had none.
		{name: "untrusted client certificate", certFile: p.untrustedCert, keyFile: p.untrustedKey, token: p.token,
			metrics: want{code: 403}, healthz: want{code: 200}},
		// VerifyClientCertIfGiven verifies a certificate that is sent
		// (as curl does, whatever the list): the handshake fails,
		// whatever the path.
		{name: "untrusted client certificate sent anyway", certFile: p.untrustedCert, keyFile: p.untrustedKey, token: p.token,
			sendAnyway: true,
			metrics:    want{handshakeFail: "remote error: tls: unknown certificate authority"},
			healthz:    want{handshakeFail: "remote error: tls: unknown certificate authority"}},
		{name: "expired client certificate", certFile: p.expiredCert, keyFile: p.expiredKey, token: p.token,
			metrics: want{handshakeFail: "remote error: tls: expired certificate"},
			healthz: want{handshakeFail: "remote error: tls: expired certificate"}},
	}
	for _, v := range tlsVersions {
		for _, tt := range tests {
			t.Run(v.name+"/"+tt.name, func(t *testing.T) {
				c := p.tlsClient(t, v.version, tt.certFile, tt.keyFile, false)
				if tt.sendAnyway {
					sendAnyway(c)
				}
				for _, path := range []struct {
					path string
					want want
				}{{"/metrics", tt.metrics}, {"/healthz", tt.healthz}} {
					got, err := secureGet(c, base+path.path, tt.token)
					checkSecureResponse(t, path.path, got, err, path.want.code, path.want.authenticate,
						path.want.metrics, path.want.handshakeFail)
				}
			})
		}
	}
	t.Run("index without certificate or token", func(t *testing.T) {
		got, err := secureGet(p.tlsClient(t, tls.VersionTLS13, "", "", false), base+"/", "")
		checkSecureResponse(t, "/", got, err, 200, "", false, "")
	})
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS 1.0", tls.VersionTLS10}, {"TLS 1.1", tls.VersionTLS11}} {
		t.Run(v.name+" refused", func(t *testing.T) {
			c := p.tlsClient(t, v.version, p.clientCert, p.clientKey, false)
			got, err := secureGet(c, base+"/healthz", "")
			checkSecureResponse(t, "/healthz", got, err, 0, "", false, "remote error: tls: protocol version not supported")
		})
	}
	for _, v := range tlsVersions {
		t.Run(v.name+" HTTP/2", func(t *testing.T) {
			c := p.tlsClient(t, v.version, p.clientCert, p.clientKey, true)
			got, err := secureGet(c, base+"/metrics", p.token)
			checkSecureResponse(t, "/metrics", got, err, 200, "", true, "")
			if got.proto != 2 {
				t.Errorf("HTTP/%d, want HTTP/2", got.proto)
			}
		})
	}
	t.Run("plain HTTP", func(t *testing.T) {
		got, err := secureGet(&http.Client{Timeout: 20 * time.Second}, "http://"+addr+"/healthz", "")
		checkSecureResponse(t, "/healthz", got, err, 400, "", false, "")
	})
	if l := logs.String(); strings.Contains(l, p.token) {
		t.Errorf("the log shows the token:\n%s", l)
	}
}

func checkSecureResponse(t *testing.T, path string, got secureResponse, err error, code int, authenticate string, metrics bool, handshakeFail string) {
	t.Helper()
	switch {
	case handshakeFail != "":
		if err == nil || !strings.Contains(err.Error(), handshakeFail) {
			t.Errorf("GET %s: status %d, error %v; want the handshake to fail with %q", path, got.code, err, handshakeFail)
		}
		return
	case err != nil:
		t.Errorf("GET %s: %v", path, err)
		return
	}
	if got.code != code {
		t.Errorf("GET %s: status %d, want %d; body %q", path, got.code, code, got.body)
	}
	if h := got.header.Get("WWW-Authenticate"); h != authenticate {
		t.Errorf("GET %s: WWW-Authenticate %q, want %q", path, h, authenticate)
	}
	if h := got.header.Get("X-Content-Type-Options"); h != "nosniff" && code != 400 {
		t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", path, h)
	}
	if has := strings.Contains(got.body, "\n"+reloadErrsName+" 0\n") && strings.Contains(got.body, longtermName); has != metrics {
		t.Errorf("GET %s: the body holds the metrics: %t, want %t; body:\n%s", path, has, metrics, got.body)
	}
}

// TestSecureTokenWithoutTLS checks the bearer token over plain HTTP, and
// TLS without a client CA, where a client needs no certificate.
func TestSecureTokenWithoutTLS(t *testing.T) {
	p := writeTestPKI(t, t.TempDir())
	plain, _ := serveSecure(t, "-auth-token-file", p.tokenFile)
	tlsOnly, _ := serveSecure(t, "-tls-cert", p.certFile, "-tls-key", p.keyFile)
	plainClient := &http.Client{Timeout: 20 * time.Second}
	tlsClient := p.tlsClient(t, tls.VersionTLS13, "", "", false)
	tests := []struct {
		name          string
		c             *http.Client
		url, token    string
		code          int
		authenticate  string
		wantsMetrics  bool
		authorization string // instead of token, when set
	}{
		{name: "plain, token", c: plainClient, url: "http://" + plain + "/metrics", token: p.token, code: 200, wantsMetrics: true},
		{name: "plain, no token", c: plainClient, url: "http://" + plain + "/metrics", code: 401, authenticate: "Bearer"},
		{name: "plain, lower-case scheme", c: plainClient, url: "http://" + plain + "/metrics", authorization: "bearer " + p.token, code: 200, wantsMetrics: true},
		{name: "plain, basic auth", c: plainClient, url: "http://" + plain + "/metrics", authorization: "Basic " + p.token, code: 401, authenticate: "Bearer"},
		{name: "plain, healthz", c: plainClient, url: "http://" + plain + "/healthz", code: 200},
		{name: "plain, unknown path", c: plainClient, url: "http://" + plain + "/nope", code: 404},
		{name: "TLS, no certificate", c: tlsClient, url: "https://" + tlsOnly + "/metrics", code: 200, wantsMetrics: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tt.url, nil)
			switch {
			case tt.authorization != "":
				req.Header.Set("Authorization", tt.authorization)
			case tt.token != "":
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := tt.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			checkSecureResponse(t, req.URL.Path, secureResponse{resp.StatusCode, resp.Header, string(body), resp.ProtoMajor},
				nil, tt.code, tt.authenticate, tt.wantsMetrics, "")
		})
	}
}

// TestSecureInFlightLimit holds 100 concurrent scrapes in a slow handler:
// 40 are served, 60 refused at once, and none hangs.
func TestSecureInFlightLimit(t *testing.T) {
	const n = 100
	p := writeTestPKI(t, t.TempDir())
	s, err := loadSettings([]string{"-tls-cert", p.certFile, "-tls-key", p.keyFile, "-auth-token-file", p.tokenFile},
		func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGuard(s, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	inside := 0
	release := make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inside++
		mu.Unlock()
		<-release
		io.WriteString(w, "served\n")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: nosniff(g.metrics(slow)), TLSConfig: g.tlsConfig(),
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	c := p.tlsClient(t, tls.VersionTLS13, "", "", false)
	c.Timeout = 60 * time.Second
	codes := make(map[int]int)
	var errs []string
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			got, err := secureGet(c, "https://"+ln.Addr().String()+"/metrics", p.token)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			codes[got.code]++
		})
	}
	secureWait(t, 60*time.Second, "40 scrapes in the handler and 60 refused", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return inside == maxInFlight && codes[503] == n-maxInFlight || len(errs) > 0,
			fmt.Sprintf("%d in the handler, answered %v, errors %q", inside, codes, errs)
	})
	close(release)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		t.Fatal("scrapes still hang 60s after the handler let them go")
	}
	if diff := cmp.Diff(map[int]int{200: maxInFlight, 503: n - maxInFlight}, codes); diff != "" || len(errs) > 0 {
		t.Errorf("statuses mismatch (-want +got):\n%s\nerrors: %q", diff, errs)
	}
	mu.Lock()
	defer mu.Unlock()
	if inside != maxInFlight {
		t.Errorf("%d scrapes reached the handler, want %d", inside, maxInFlight)
	}
}
