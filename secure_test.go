package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Secure scraping (SPEC section 10), in-process over real TLS handshakes
// on loopback, with certificates made here. The tests keep to their own
// helpers, so that they move with secure.go.

// testPKI are the paths of the files writeTestPKI writes, and what issues
// more certificates.
type testPKI struct {
	dir                         string
	caFile                      string // the CA bundle: one CA
	certFile, keyFile           string // the server's: 127.0.0.1, ::1 and localhost
	clientCert, clientKey       string // a client's, issued by the CA
	untrustedCert, untrustedKey string // a client's, issued by another CA
	expiredCert, expiredKey     string // a client's, issued by the CA, expired yesterday
	tokenFile, token            string

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

// writeTestPKI writes a CA, a server certificate, client certificates and
// a token file into dir. The system tests (curl, Prometheus) can use the
// files as they are.
func writeTestPKI(t testing.TB, dir string) *testPKI {
	t.Helper()
	p := &testPKI{dir: dir, token: "s3cr3t-token-for-tests"}
	var caPath string
	p.ca, p.caKey, caPath = newTestCA(t, dir, "ca")
	p.caFile = caPath
	p.certFile, p.keyFile, _ = p.issueServer(t, dir, "server")
	p.clientCert, p.clientKey = issueTestCert(t, dir, "client", clientTemplate("prometheus", 0), p.ca, p.caKey)
	other, otherKey, _ := newTestCA(t, dir, "other-ca")
	p.untrustedCert, p.untrustedKey = issueTestCert(t, dir, "untrusted", clientTemplate("stranger", 0), other, otherKey)
	p.expiredCert, p.expiredKey = issueTestCert(t, dir, "expired", clientTemplate("late", -48*time.Hour), p.ca, p.caKey)
	p.tokenFile = filepath.Join(dir, "token")
	writeTestFile(t, p.tokenFile, p.token+"\r\n")
	return p
}

// issueServer issues a server certificate for loopback as name.crt and
// name.key in dir.
func (p *testPKI) issueServer(t testing.TB, dir, name string) (certFile, keyFile string, serial *big.Int) {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "tcp_established_exporter"},
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
	}
	certFile, keyFile = issueTestCert(t, dir, name, tmpl, p.ca, p.caKey)
	return certFile, keyFile, tmpl.SerialNumber
}

func clientTemplate(cn string, age time.Duration) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		NotBefore:   time.Now().Add(age - time.Hour),
		NotAfter:    time.Now().Add(age + 24*time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

func newTestCA(t testing.TB, dir, name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	certFile, keyFile := issueTestCert(t, dir, name, tmpl, nil, nil)
	ca, key := readTestCert(t, certFile), readTestKey(t, keyFile)
	return ca, key, certFile
}

// issueTestCert signs tmpl with parent (itself when nil) and writes
// name.crt and name.key in dir. It sets tmpl's serial number.
func issueTestCert(t testing.TB, dir, name string, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62)); err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeTestFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeTestFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return certFile, keyFile
}

func readTestCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readTestKey(t testing.TB, path string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

func writeTestFile(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// secureLog is a log that tests read while the server writes it.
type secureLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *secureLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *secureLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveSecure runs serve in-process on an ephemeral port of 127.0.0.1
// with the given flags, and stops it at the end of the test.
func serveSecure(t *testing.T, args ...string) (addr string, logs *secureLog) {
	t.Helper()
	s, err := loadSettings(append([]string{"-interval", "100ms"}, args...), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = new(secureLog)
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
	return ln.Addr().String(), logs
}

// secureWait polls cond until it holds, or fails the test at the deadline
// with what cond last said.
func secureWait(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s; last: %s", timeout, what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsClient makes a client of one TLS version that trusts the test CA,
// with a client certificate when certFile is not empty.
func (p *testPKI) tlsClient(t *testing.T, version uint16, certFile, keyFile string, h2 bool) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	cfg := &tls.Config{RootCAs: pool, MinVersion: version, MaxVersion: version}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// sendAnyway makes a client send its certificate whatever CAs the server
// names as acceptable.
func sendAnyway(c *http.Client) {
	cfg := c.Transport.(*http.Transport).TLSClientConfig
	pair := cfg.Certificates[0]
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
}

// secureResponse is what a request got: a status or an error.
type secureResponse struct {
	code   int
	header http.Header
	body   string
	proto  int // major version of HTTP
}

func secureGet(c *http.Client, url, token string) (secureResponse, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return secureResponse{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return secureResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return secureResponse{resp.StatusCode, resp.Header, string(body), resp.ProtoMajor}, err
}

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

// kubeSecret lays out files as a Kubernetes Secret volume does, and as
// cert-manager's rotation changes them: dir/name is a symlink to
// ..data/name, ..data a symlink to the directory of the current version,
// and a new version is published by renaming a new ..data over the old.
type kubeSecret struct {
	dir      string
	versions int
}

// publish writes a new version of the files (name to contents) and swaps
// it in at once.
func (k *kubeSecret) publish(t *testing.T, files map[string]string) {
	t.Helper()
	k.versions++
	version := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", k.versions, k.versions)
	if err := os.Mkdir(filepath.Join(k.dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range files {
		writeTestFile(t, filepath.Join(k.dir, version, name), text)
	}
	tmp := filepath.Join(k.dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(k.dir, name)
		if _, err := os.Lstat(link); errors.Is(err, fs.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (k *kubeSecret) path(name string) string { return filepath.Join(k.dir, name) }

func readTestFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// presentedSerial is the serial number of the certificate the server at
// addr presents in a new handshake.
func (p *testPKI) presentedSerial(addr string) (*big.Int, error) {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	d := &tls.Dialer{Config: &tls.Config{RootCAs: pool}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// reloadErrors scrapes the reload error counter.
func reloadErrors(c *http.Client, url, token string) (string, error) {
	got, err := secureGet(c, url, token)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(got.body) {
		if v, ok := strings.CutPrefix(line, reloadErrsName+" "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("status %d, no %s in the body", got.code, reloadErrsName)
}

// scrapeLoop scrapes over new connections, each a new handshake, until
// stopped; it returns how many scrapes succeeded and the failures.
func scrapeLoop(c *http.Client, url string) (stop func() (ok int, failed []string)) {
	done := make(chan struct{})
	var ok int
	var failed []string
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			got, err := secureGet(c, url, "")
			switch {
			case err != nil:
				failed = append(failed, err.Error())
			case got.code != 200:
				failed = append(failed, fmt.Sprintf("status %d", got.code))
			default:
				ok++
			}
		}
	}()
	return func() (int, []string) {
		close(done)
		<-finished
		return ok, failed
	}
}

// TestSecureRotation rotates the server certificate as cert-manager and
// the kubelet do, while scrapes go on; then publishes a garbage
// certificate and a mismatched pair, which keep the last good pair.
func TestSecureRotation(t *testing.T) {
	pkiDir := t.TempDir()
	p := writeTestPKI(t, pkiDir)
	sec := &kubeSecret{dir: t.TempDir()}
	sec.publish(t, map[string]string{"tls.crt": readTestFile(t, p.certFile), "tls.key": readTestFile(t, p.keyFile)})
	addr, logs := serveSecure(t, "-tls-cert", sec.path("tls.crt"), "-tls-key", sec.path("tls.key"))
	metrics := "https://" + addr + "/metrics"
	c := p.tlsClient(t, tls.VersionTLS13, "", "", false)
	c.Transport.(*http.Transport).DisableKeepAlives = true

	waitSerial := func(want *big.Int) {
		t.Helper()
		defer func(start time.Time) {
			t.Logf("the handshake presented serial %v after %s", want, time.Since(start).Round(time.Millisecond))
		}(time.Now())
		secureWait(t, 10*time.Second, "the handshake presents serial "+want.String(), func() (bool, string) {
			got, err := p.presentedSerial(addr)
			return err == nil && got.Cmp(want) == 0, fmt.Sprintf("serial %v, %v", got, err)
		})
	}
	waitReloadErrors := func(want string) {
		t.Helper()
		secureWait(t, 10*time.Second, reloadErrsName+" "+want, func() (bool, string) {
			got, err := reloadErrors(c, metrics, "")
			return err == nil && got == want, fmt.Sprintf("%q, %v", got, err)
		})
	}
	waitSerial(readTestCert(t, p.certFile).SerialNumber)
	waitReloadErrors("0")

	stop := scrapeLoop(c, metrics)
	cert2, key2, serial2 := p.issueServer(t, pkiDir, "server2")
	sec.publish(t, map[string]string{"tls.crt": readTestFile(t, cert2), "tls.key": readTestFile(t, key2)})
	waitSerial(serial2)
	ok, failed := stop()
	if len(failed) > 0 || ok == 0 {
		t.Errorf("during the rotation %d scrapes succeeded and %d failed: %q", ok, len(failed), failed)
	}
	t.Logf("%d scrapes during the rotation, none failed", ok)
	if n := strings.Count(logs.String(), "reloaded the TLS and token files"); n != 1 {
		t.Errorf("the log says %d times that the files were reloaded, want once:\n%s", n, logs.String())
	}

	cert3, key3, serial3 := p.issueServer(t, pkiDir, "server3")
	const failure = "reloading the TLS and token files failed, keeping the last good ones: "
	for i, bad := range []struct {
		name, cert, key, logged string
	}{
		{"garbage certificate", "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", readTestFile(t, key2),
			fmt.Sprintf(`invalid value %q for tls-cert from flag -tls-cert: no PEM certificate in the file`, sec.path("tls.crt"))},
		{"mismatched pair", readTestFile(t, cert3), readTestFile(t, key2),
			fmt.Sprintf(`invalid value %q for tls-key from flag -tls-key: not the private key of tls-cert: private key does not match public key`, sec.path("tls.key"))},
	} {
		sec.publish(t, map[string]string{"tls.crt": bad.cert, "tls.key": bad.key})
		want := fmt.Sprint(i + 1)
		waitReloadErrors(want)
		// Once a second the files are looked at again: over three
		// seconds of handshakes, the old pair stays and nothing more counts.
		for start := time.Now(); time.Since(start) < 3*recheckEvery; {
			if got, err := p.presentedSerial(addr); err != nil || got.Cmp(serial2) != 0 {
				t.Fatalf("%s: the handshake presents serial %v (%v), want the last good %v", bad.name, got, err, serial2)
			}
		}
		if got, err := reloadErrors(c, metrics, ""); err != nil || got != want {
			t.Errorf("%s: %s %q (%v), want %s", bad.name, reloadErrsName, got, err, want)
		}
		if n := strings.Count(logs.String(), failure+bad.logged+"\n"); n != 1 {
			t.Errorf("%s: the log has %d lines %q, want 1:\n%s", bad.name, n, failure+bad.logged, logs.String())
		}
	}
	if n := strings.Count(logs.String(), failure); n != 2 {
		t.Errorf("the log has %d failed reloads, want 2:\n%s", n, logs.String())
	}

	sec.publish(t, map[string]string{"tls.crt": readTestFile(t, cert3), "tls.key": readTestFile(t, key3)})
	waitSerial(serial3)
	if got, err := reloadErrors(c, metrics, ""); err != nil || got != "2" {
		t.Errorf("after a good rotation %s %q (%v), want 2", reloadErrsName, got, err)
	}
}

// replaceTestFile replaces a file at once, as a careful writer does.
func replaceTestFile(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	writeTestFile(t, tmp, text)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestSecureTokenAndCARotation replaces the token file and the client CA
// bundle: the new ones are used without a restart, and an empty token file
// keeps the last token.
func TestSecureTokenAndCARotation(t *testing.T) {
	dir := t.TempDir()
	p := writeTestPKI(t, dir)
	caFile := filepath.Join(dir, "bundle.crt")
	writeTestFile(t, caFile, readTestFile(t, p.caFile))
	addr, logs := serveSecure(t, "-tls-cert", p.certFile, "-tls-key", p.keyFile,
		"-tls-client-ca", caFile, "-auth-token-file", p.tokenFile)
	metrics := "https://" + addr + "/metrics"
	c := p.tlsClient(t, tls.VersionTLS13, p.clientCert, p.clientKey, false)
	c.Transport.(*http.Transport).DisableKeepAlives = true
	code := func(c *http.Client, token string) func() (bool, string) {
		return func() (bool, string) {
			got, err := secureGet(c, metrics, token)
			return err == nil && got.code == 200, fmt.Sprintf("status %d, %v", got.code, err)
		}
	}
	secureWait(t, 10*time.Second, "a scrape with the first token", code(c, p.token))

	replaceTestFile(t, p.tokenFile, "a-new-token\n")
	secureWait(t, 10*time.Second, "a scrape with the new token", code(c, "a-new-token"))
	if got, err := secureGet(c, metrics, p.token); err != nil || got.code != 401 {
		t.Errorf("the old token after rotation: status %d, %v; want 401", got.code, err)
	}

	ca2, ca2Key, ca2File := newTestCA(t, dir, "ca2")
	client2, client2Key := issueTestCert(t, dir, "client2", clientTemplate("prometheus-2", 0), ca2, ca2Key)
	replaceTestFile(t, caFile, readTestFile(t, p.caFile)+readTestFile(t, ca2File))
	c2 := p.tlsClient(t, tls.VersionTLS13, client2, client2Key, false)
	c2.Transport.(*http.Transport).DisableKeepAlives = true // each try a new handshake
	secureWait(t, 10*time.Second, "a scrape with a client certificate of the added CA", code(c2, "a-new-token"))

	replaceTestFile(t, p.tokenFile, "\r\n")
	secureWait(t, 10*time.Second, "the empty token file counted", func() (bool, string) {
		got, err := reloadErrors(c, metrics, "a-new-token")
		return err == nil && got == "1", fmt.Sprintf("%q, %v", got, err)
	})
	if l := logs.String(); strings.Contains(l, "a-new-token") || strings.Contains(l, p.token) {
		t.Errorf("the log shows a token:\n%s", l)
	}
}

// TestBadSecureSettings runs the exporter with each bad setting of SPEC
// section 10: one line naming the setting, its value and its source, exit
// 2, before anything listens.
func TestBadSecureSettings(t *testing.T) {
	dir := t.TempDir()
	p := writeTestPKI(t, dir)
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	writeTestFile(t, garbage, "not PEM at all\n")
	badDER := filepath.Join(dir, "bad-der.pem")
	writeTestFile(t, badDER, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")})))
	keyOnly := filepath.Join(dir, "key-only.pem") // a key where a CA bundle should be
	writeTestFile(t, keyOnly, readTestFile(t, p.keyFile))
	empty := filepath.Join(dir, "empty-token")
	writeTestFile(t, empty, "")
	blank := filepath.Join(dir, "blank-token")
	writeTestFile(t, blank, " \t\r\nsecond-line\n")
	conf := filepath.Join(dir, "secure.conf")
	writeTestFile(t, conf, "# TLS\ntls-client-ca = "+p.caFile+"\n")
	pair := []string{"-tls-cert", p.certFile, "-tls-key", p.keyFile}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string // the line on stderr after "tcp_established_exporter: "
		wantErr error
	}{
		{"missing certificate", []string{"-tls-cert", missing, "-tls-key", p.keyFile}, nil,
			fmt.Sprintf(`invalid value %q for tls-cert from flag -tls-cert: open: no such file or directory`, missing), fs.ErrNotExist},
		{"missing key", nil, map[string]string{"TLS_CERT": p.certFile, "TLS_KEY": missing},
			fmt.Sprintf(`invalid value %q for tls-key from env TLS_KEY: open: no such file or directory`, missing), fs.ErrNotExist},
		{"unreadable key", []string{"-tls-cert", p.certFile, "--tls-key=" + dir}, nil,
			fmt.Sprintf(`invalid value %q for tls-key from flag -tls-key: read: is a directory`, dir), syscall.EISDIR},
		{"missing client CA", append(pair, "-tls-client-ca", missing), nil,
			fmt.Sprintf(`invalid value %q for tls-client-ca from flag -tls-client-ca: open: no such file or directory`, missing), fs.ErrNotExist},
		{"missing token file", nil, map[string]string{"AUTH_TOKEN_FILE": missing},
			fmt.Sprintf(`invalid value %q for auth-token-file from env AUTH_TOKEN_FILE: open: no such file or directory`, missing), fs.ErrNotExist},
		{"unreadable token file", []string{"-auth-token-file", dir}, nil,
			fmt.Sprintf(`invalid value %q for auth-token-file from flag -auth-token-file: read: is a directory`, dir), syscall.EISDIR},
		{"key without certificate", []string{"-tls-key", p.keyFile}, nil,
			fmt.Sprintf(`invalid value %q for tls-key from flag -tls-key: needs tls-cert too`, p.keyFile), errNeedsCert},
		{"certificate without key", nil, map[string]string{"TLS_CERT": p.certFile},
			fmt.Sprintf(`invalid value %q for tls-cert from env TLS_CERT: needs tls-key too`, p.certFile), errNeedsKey},
		{"client CA without TLS", []string{"-conf", conf}, nil,
			fmt.Sprintf(`%s:2: invalid value %q for tls-client-ca: needs tls-cert and tls-key`, conf, p.caFile), errNeedsTLS},
		{"client CA with a key only", []string{"-tls-key", p.keyFile, "-tls-client-ca", p.caFile}, nil,
			fmt.Sprintf(`invalid value %q for tls-key from flag -tls-key: needs tls-cert too`, p.keyFile), errNeedsCert},
		{"mismatched pair", []string{"-tls-cert", p.certFile, "-tls-key", p.clientKey}, nil,
			fmt.Sprintf(`invalid value %q for tls-key from flag -tls-key: not the private key of tls-cert: private key does not match public key`, p.clientKey), errKeyPair},
		{"garbage key", []string{"-tls-cert", p.certFile, "-tls-key", garbage}, nil,
			fmt.Sprintf(`invalid value %q for tls-key from flag -tls-key: not the private key of tls-cert: failed to find any PEM data in key input`, garbage), errKeyPair},
		{"garbage certificate", []string{"-tls-cert", garbage, "-tls-key", p.keyFile}, nil,
			fmt.Sprintf(`invalid value %q for tls-cert from flag -tls-cert: no PEM certificate in the file`, garbage), errNoCert},
		{"certificate that does not parse", []string{"-tls-cert", badDER, "-tls-key", p.keyFile}, nil,
			fmt.Sprintf(`invalid value %q for tls-cert from flag -tls-cert: not a certificate: x509: malformed certificate`, badDER), errBadCert},
		{"CA bundle without certificate", append(pair, "-tls-client-ca", keyOnly), nil,
			fmt.Sprintf(`invalid value %q for tls-client-ca from flag -tls-client-ca: no PEM certificate in the file`, keyOnly), errNoCert},
		{"empty token file", []string{"-auth-token-file", empty}, nil,
			fmt.Sprintf(`invalid value %q for auth-token-file from flag -auth-token-file: empty first line: no token`, empty), errEmptyToken},
		{"blank first line", []string{"-auth-token-file", blank}, nil,
			fmt.Sprintf(`invalid value %q for auth-token-file from flag -auth-token-file: empty first line: no token`, blank), errEmptyToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runFailing(t, tt.args, tt.env, tt.wantErr)
			if want := "tcp_established_exporter: " + tt.want; got != want {
				t.Errorf("stderr mismatch:\ngot  %s\nwant %s", got, want)
			}
		})
	}
}

// TestSecureSettings checks where the four settings come from, and that
// -h lists them.
func TestSecureSettings(t *testing.T) {
	p := writeTestPKI(t, t.TempDir())
	conf := filepath.Join(p.dir, "secure.conf")
	writeTestFile(t, conf, "tls-cert "+p.clientCert+"\ntls-key "+p.clientKey+"\nauth-token-file="+p.tokenFile+"\n")
	tests := []struct {
		name                              string
		args                              []string
		env                               map[string]string
		cert, key, ca, token              string
		certFrom, keyFrom, caFrom, tokFrm string
	}{
		{name: "none"},
		{name: "flags", args: []string{"-tls-cert", p.certFile, "-tls-key=" + p.keyFile, "--tls-client-ca", p.caFile, "-auth-token-file", p.tokenFile},
			cert: p.certFile, key: p.keyFile, ca: p.caFile, token: p.tokenFile,
			certFrom: "flag -tls-cert", keyFrom: "flag -tls-key", caFrom: "flag -tls-client-ca", tokFrm: "flag -auth-token-file"},
		{name: "env", env: map[string]string{"TLS_CERT": p.certFile, "TLS_KEY": p.keyFile, "TLS_CLIENT_CA": p.caFile, "AUTH_TOKEN_FILE": p.tokenFile},
			cert: p.certFile, key: p.keyFile, ca: p.caFile, token: p.tokenFile,
			certFrom: "env TLS_CERT", keyFrom: "env TLS_KEY", caFrom: "env TLS_CLIENT_CA", tokFrm: "env AUTH_TOKEN_FILE"},
		{name: "file, env and flag", args: []string{"-conf", conf, "-tls-key", p.keyFile}, env: map[string]string{"TLS_CERT": p.certFile},
			cert: p.certFile, key: p.keyFile, token: p.tokenFile,
			certFrom: "env TLS_CERT", keyFrom: "flag -tls-key", tokFrm: conf + ":3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := loadSettings(tt.args, settingsEnv(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			type file struct{ Path, From string }
			from := func(f fileSetting) file {
				if f.line > 0 {
					return file{f.path, fmt.Sprintf("%s:%d", f.source, f.line)}
				}
				return file{f.path, f.source}
			}
			want := []file{{tt.cert, tt.certFrom}, {tt.key, tt.keyFrom}, {tt.ca, tt.caFrom}, {tt.token, tt.tokFrm}}
			got := []file{from(s.tlsCert), from(s.tlsKey), from(s.tlsClientCA), from(s.authTokenFile)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("settings mismatch (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("usage", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"-h"}, settingsEnv(nil), &stdout, &stderr); code != 0 {
			t.Fatalf("run -h = %d, want 0", code)
		}
		for _, st := range [][2]string{{"tls-cert", "TLS_CERT"}, {"tls-key", "TLS_KEY"},
			{"tls-client-ca", "TLS_CLIENT_CA"}, {"auth-token-file", "AUTH_TOKEN_FILE"}} {
			if want := fmt.Sprintf("  -%s (env %s, default none)\n", st[0], st[1]); !strings.Contains(stdout.String(), want) {
				t.Errorf("usage lacks %q:\n%s", want, stdout.String())
			}
		}
	})
}
