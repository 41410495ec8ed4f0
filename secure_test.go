package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Helpers of the secure scraping tests (SPEC section 10), which run
// in-process over real TLS handshakes on loopback with certificates made
// here. They are the tests' own, so that they move with secure.go;
// writeTestPKI writes files that the system tests can use as they are.

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

// readTestPEM returns the DER bytes of the first PEM block in path.
func readTestPEM(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	return block.Bytes
}

func readTestCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(readTestPEM(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readTestKey(t testing.TB, path string) *ecdsa.PrivateKey {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(readTestPEM(t, path))
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
	logs = new(secureLog)
	return runServe(t, log.New(logs, "", log.LstdFlags), append([]string{"-interval", "100ms"}, args...)...), logs
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

func readTestFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
