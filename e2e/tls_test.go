package e2e

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// Secure scraping (SPEC section 10, docs/security.md): real handshakes
// against the binary by curl, Go's client and a Prometheus server of each
// release. The certificates come from the openssl commands of
// docs/security.md, so that a reader who copies them gets what the tests got;
// crypto/x509 makes what openssl cannot easily: an expired certificate
// (openssl 3.0's x509 -req cannot backdate), and a server certificate of a
// chosen serial for the rotation.

const reloadErrsName = "tcp_established_exporter_config_reload_errors_total"

// testPKI is what "A test CA with openssl" in docs/security.md makes in
// dir, under its names (ca.crt, ca.key, server.crt, server.key, client.crt,
// client.key, token), with the CA parsed to sign more.
type testPKI struct {
	dir   string
	token string
	ca    *x509.Certificate
	caKey crypto.Signer
}

func (p *testPKI) path(name string) string { return filepath.Join(p.dir, name) }

// readmeCAScript returns the sh block under "A test CA with openssl" in
// docs/security.md, the page the README links for securing the endpoint.
func readmeCAScript(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok1 := strings.Cut(string(data), "\n### A test CA with openssl\n")
	_, script, ok2 := strings.Cut(section, "\n```sh\n")
	script, _, ok3 := strings.Cut(script, "\n```\n")
	if !ok1 || !ok2 || !ok3 {
		t.Fatal("docs/security.md has no ```sh block under \"### A test CA with openssl\"")
	}
	return script
}

// newTestPKI runs the openssl commands of docs/security.md in dir, made if
// missing.
func newTestPKI(t testing.TB, dir string) *testPKI {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		skipWithout(t, "openssl is not installed (test.sh installs it): %v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-eu", "-c", readmeCAScript(t))
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl commands of docs/security.md: %v\n%s", err, out)
	}
	p := &testPKI{dir: dir}
	token, err := os.ReadFile(p.path("token"))
	if err != nil {
		t.Fatal(err)
	}
	p.token = strings.TrimSuffix(string(token), "\n")
	if b, err := hex.DecodeString(p.token); err != nil || len(b) != 32 {
		t.Fatalf("token %q is not 32 bytes in hex: %v", p.token, err)
	}
	p.ca = readCert(t, p.path("ca.crt"))
	block := readPEM(t, p.path("ca.key"), "PRIVATE KEY")
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("ca.key: %v", err)
	}
	p.caKey = key.(crypto.Signer)
	return p
}

func readPEM(t testing.TB, path, typ string) *pem.Block {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != typ {
		t.Fatalf("%s: no PEM %s block", path, typ)
	}
	return block
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	cert, err := x509.ParseCertificate(readPEM(t, path, "CERTIFICATE").Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

// sign has the CA sign tmpl for a new P-256 key, and writes them to
// dir/name.crt and dir/name.key.
func (p *testPKI) sign(t testing.TB, dir, name string, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// serverTemplate is a server certificate like docs/security.md's, of serial n.
func serverTemplate(n int64) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: big.NewInt(n),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// startTLSBinary runs the binary with args and waits for its start-up
// line to say https. startBinary's wait for /healthz speaks plain HTTP,
// which Go's TLS server answers with a 400: an answer all the same.
func startTLSBinary(t testing.TB, args ...string) *exporterProc {
	t.Helper()
	x := startBinary(t, nil, args...)
	testnet.WaitFor(t, 10*time.Second, "the start-up line to say https", func() bool {
		return strings.Contains(x.stderr.String(), " listening on https://")
	})
	return x
}

// tlsClient is a Go client that trusts the CA, presents cert (a path
// without .crt, "" for none), and makes a new connection for each request,
// so that each shows the handshake of the moment.
func tlsClient(t testing.TB, p *testPKI, cert string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	cfg := &tls.Config{RootCAs: pool}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert+".crt", cert+".key")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: true},
		Timeout:   10 * time.Second,
	}
}

// tlsScrape scrapes /metrics with client and the token, if any.
func tlsScrape(client *http.Client, base, token string) (*http.Response, string, error) {
	req, err := http.NewRequest("GET", base+"/metrics", nil)
	if err != nil {
		return nil, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return resp, string(body), err
}

// TestTLS holds the exporter, serving HTTPS with client certificates and a
// token, against curl, Go's client and a Prometheus server of each
// release, with three connections of its own held to a listed port.
func TestTLS(t *testing.T) {
	root := t.TempDir()
	pki := newTestPKI(t, filepath.Join(root, "tls")) // prometheus.yml's job names tls/...
	other := newTestPKI(t, filepath.Join(root, "other"))
	pki.sign(t, pki.dir, "expired", &x509.Certificate{
		SerialNumber: big.NewInt(1000),
		Subject:      pkix.Name{CommonName: "prometheus"},
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     time.Now().Add(-24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})

	held := testnet.Listen(t, "tcp", "127.0.0.1:0")
	testnet.Dial(t, 3, "tcp", held.Listener.Addr().String())
	// On [::], so that the certificate's ::1 is tried too.
	x := startTLSBinary(t, "-listen", fmt.Sprintf("[::]:%d", freePort(t)),
		"-port", strconv.Itoa(held.Port), "-duration", "1s", "-interval", "100ms",
		"-tls-cert", pki.path("server.crt"), "-tls-key", pki.path("server.key"),
		"-tls-client-ca", pki.path("ca.crt"), "-auth-token-file", pki.path("token"))
	bases := map[string]string{
		"127.0.0.1": fmt.Sprintf("https://127.0.0.1:%d", x.port),
		"::1":       fmt.Sprintf("https://[::1]:%d", x.port),
	}
	wantCounts := map[string]float64{
		fmt.Sprintf(`port="%d",tcp_version="4"`, held.Port): 3,
		fmt.Sprintf(`port="%d",tcp_version="6"`, held.Port): 0,
	}
	client := tlsClient(t, pki, pki.path("client"))
	waitForEqual(t, "the three connections to count, over mTLS", wantCounts, func() (map[string]float64, error) {
		_, body, err := tlsScrape(client, bases["127.0.0.1"], pki.token)
		return portSamples(body, longtermName, held.Port), err
	})

	t.Run("curl", func(t *testing.T) { tlsCurl(t, x, pki, other, bases, held.Port, wantCounts) })
	t.Run("go", func(t *testing.T) { tlsGo(t, pki, bases["127.0.0.1"]) })
	for _, v := range prometheusVersions(t) {
		t.Run("prometheus"+v.name, func(t *testing.T) { tlsPrometheus(t, v, root, x.port, held.Port) })
	}
}

// curlResult is what one run of curl got.
type curlResult struct {
	exit   int    // curl's exit status
	err    string // its "curl: (N) ..." line; "" when none
	alert  string // the TLS alert it received ("unknown CA (560)"); "" when none
	tls    string // the version it negotiated, "TLSv1.3"; "" when none
	status int    // 0 when no response
	local  string // its end of the connection, as the server logs it
	header http.Header
	body   string
}

// opensslVersion is the library's version in curl's messages: a Debian
// point release must not fail the tests.
var opensslVersion = regexp.MustCompile(`OpenSSL/3\.[0-9.]+`)

// runCurl runs curl -v with args and returns what it got.
func runCurl(t *testing.T, curl string, args ...string) curlResult {
	t.Helper()
	dir := t.TempDir()
	headerFile, bodyFile := filepath.Join(dir, "header"), filepath.Join(dir, "body")
	cmd := exec.Command(curl, append([]string{"-sSv", "--max-time", "20",
		"-D", headerFile, "-o", bodyFile, "-w", "%{http_code} %{local_ip} %{local_port}"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var r curlResult
	var exit *exec.ExitError
	if err := cmd.Run(); errors.As(err, &exit) {
		r.exit = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(stderr.String()) {
		if v, ok := strings.CutPrefix(line, "* SSL connection using "); ok {
			r.tls, _, _ = strings.Cut(v, " ")
		}
		if strings.HasPrefix(line, "curl: (") {
			r.err = opensslVersion.ReplaceAllString(strings.TrimSpace(line), "OpenSSL/3")
		}
		if _, alert, ok := strings.Cut(line, " (IN), TLS alert, "); ok {
			r.alert = strings.TrimSuffix(strings.TrimSpace(alert), ":")
		}
	}
	var code, ip, port string
	if _, err := fmt.Sscan(stdout.String(), &code, &ip, &port); err != nil {
		t.Fatalf("curl -w: %q: %v", stdout.String(), err)
	}
	r.status, _ = strconv.Atoi(code)
	r.local = net.JoinHostPort(ip, port)
	if data, err := os.ReadFile(headerFile); err == nil && len(data) > 0 {
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(data)))
		if _, err := tp.ReadLine(); err != nil {
			t.Fatalf("curl's header file: %v", err)
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			t.Fatalf("curl's header file: %v\n%s", err, data)
		}
		r.header = http.Header(h)
	}
	body, _ := os.ReadFile(bodyFile)
	r.body = string(body)
	return r
}

// handshakeError waits for the exporter's log line of the handshake it
// refused from client (host:port) and returns its cause, without the
// times an expiry names.
func handshakeError(t *testing.T, x *exporterProc, client string) string {
	t.Helper()
	prefix := "http: TLS handshake error from " + client + ": "
	var cause string
	testnet.WaitFor(t, 10*time.Second, "the exporter to log the refused handshake from "+client, func() bool {
		for line := range strings.Lines(x.stderr.String()) {
			if _, rest, ok := strings.Cut(line, prefix); ok {
				cause, _, _ = strings.Cut(strings.TrimSpace(rest), ": current time ")
				return true
			}
		}
		return false
	})
	return cause
}

const (
	// The other CA is made by docs/security.md's commands too, so it has the
	// same name as the exporter's: Go tries it, and its signature fails.
	unknownCA = `tls: failed to verify certificate: x509: certificate signed by unknown authority` +
		` (possibly because of "x509: ECDSA verification failure" while trying to verify candidate authority certificate "tcp_established_exporter test CA")`
	expired = "tls: failed to verify certificate: x509: certificate has expired or is not yet valid"
)

// tlsCurl runs curl over TLS 1.2 and 1.3, to both loopback addresses, with
// each client certificate and token, and TLS 1.1 once.
func tlsCurl(t *testing.T, x *exporterProc, pki, other *testPKI, bases map[string]string, port int, wantCounts map[string]float64) {
	curl := lookPath(t, "curl")
	join := func(parts ...[]string) []string {
		var all []string
		for _, p := range parts {
			all = append(all, p...)
		}
		return all
	}
	ca := []string{"--cacert", pki.path("ca.crt")}
	withCert := func(p *testPKI, name string) []string {
		return join(ca, []string{"--cert", p.path(name + ".crt"), "--key", p.path(name + ".key")})
	}
	bearer := func(token string) []string { return []string{"-H", "Authorization: Bearer " + token} }
	// What a case got, compared whole.
	type result struct {
		Exit         int
		Err          string // curl's "curl: (N) ..." line
		Alert        string // the TLS alert curl received
		Status       int
		Authenticate string // WWW-Authenticate
		Nosniff      string // X-Content-Type-Options
		ContentType  string
		Counts       map[string]float64 // the body's long-term connections of port
		Refused      string             // why the exporter refused the handshake, as it logs it
	}
	ok := func(status int) result { return result{Status: status, Nosniff: "nosniff"} }
	versions := []struct {
		name, tls string
		args      []string
	}{
		{"tls1.2", "TLSv1.2", []string{"--tlsv1.2", "--tls-max", "1.2"}},
		{"tls1.3", "TLSv1.3", []string{"--tlsv1.3"}},
	}
	for _, v := range versions {
		// Under TLS 1.2 the server refuses a client certificate within the
		// handshake, and curl reads its alert. Under 1.3 the client has
		// finished its part when the alert comes: curl meets the closed
		// connection sending the request or reading the answer, and what it
		// says depends on which came first (55 or 16 "Send failure", 56
		// "SSL_read" with the alert). The exporter's log says why either way.
		refused := func(why, exit12, alert string) result {
			if v.name == "tls1.3" {
				return result{Refused: why}
			}
			exit, _ := strconv.Atoi(exit12[len("curl: ("):strings.IndexByte(exit12, ')')])
			return result{Exit: exit, Err: exit12, Alert: alert, Refused: why}
		}
		metrics := ok(200)
		metrics.ContentType, metrics.Counts = contentType, wantCounts
		unauthorized := ok(401)
		unauthorized.Authenticate = "Bearer"
		cases := []struct {
			name string
			path string
			args []string
			want result
		}{
			{"cert and token", "/metrics", join(withCert(pki, "client"), bearer(pki.token)), metrics},
			{"no cert", "/metrics", join(ca, bearer(pki.token)), ok(403)},
			{"no cert at /healthz", "/healthz", ca, ok(200)},
			{"no cert at /", "/", ca, ok(200)},
			{"untrusted cert", "/metrics", join(withCert(other, "client"), bearer(pki.token)),
				refused(unknownCA, "curl: (35) OpenSSL/3: error:0A000418:SSL routines::tlsv1 alert unknown ca", "unknown CA (560)")},
			{"untrusted cert at /healthz", "/healthz", withCert(other, "client"),
				refused(unknownCA, "curl: (35) OpenSSL/3: error:0A000418:SSL routines::tlsv1 alert unknown ca", "unknown CA (560)")},
			// curl takes the certificate_expired alert for its own failure
			// to verify the server (60); its -v line says what came.
			{"expired cert", "/metrics", join(withCert(pki, "expired"), bearer(pki.token)),
				refused(expired, "curl: (60) SSL certificate verification failed", "certificate expired (557)")},
			{"wrong token", "/metrics", join(withCert(pki, "client"), bearer(other.token)), unauthorized},
			{"no token", "/metrics", withCert(pki, "client"), unauthorized},
		}
		for _, c := range cases {
			for _, host := range []string{"127.0.0.1", "::1"} {
				t.Run(v.name+"/"+c.name+"/"+host, func(t *testing.T) {
					r := runCurl(t, curl, join(v.args, c.args, []string{bases[host] + c.path})...)
					t.Logf("exit %d %q, alert %q, %s, status %d", r.exit, r.err, r.alert, r.tls, r.status)
					got := result{Exit: r.exit, Err: r.err, Alert: r.alert, Status: r.status,
						Authenticate: r.header.Get("WWW-Authenticate"),
						Nosniff:      r.header.Get("X-Content-Type-Options"),
					}
					if c.want.Counts != nil {
						got.ContentType = r.header.Get("Content-Type")
						got.Counts = portSamples(r.body, longtermName, port)
					}
					if c.want.Refused != "" {
						got.Refused = handshakeError(t, x, r.local)
						if v.name == "tls1.3" {
							if r.exit != 16 && r.exit != 55 && r.exit != 56 {
								t.Errorf("curl exit %d %q, want 16, 55 or 56: the connection closed after the handshake", r.exit, r.err)
							}
							got.Exit, got.Err, got.Alert = 0, "", ""
						}
					}
					if diff := cmp.Diff(c.want, got); diff != "" {
						t.Errorf("curl mismatch (-want +got):\n%s", diff)
					}
					// Under TLS 1.2 a refused handshake never completes.
					if want := v.tls; r.tls != want && (c.want.Refused == "" || v.name == "tls1.3") {
						t.Errorf("curl negotiated %q, want %s", r.tls, want)
					}
				})
			}
		}
	}
	// curl under OpenSSL 3.0 still offers TLS 1.1 when told to (its
	// ClientHello lists 1.1 and 1.0): the server refuses it, not curl.
	t.Run("tls1.1", func(t *testing.T) {
		r := runCurl(t, curl, join([]string{"--tlsv1.1", "--tls-max", "1.1"}, ca, []string{bases["127.0.0.1"] + "/healthz"})...)
		t.Logf("exit %d %q, alert %q", r.exit, r.err, r.alert)
		got := result{Exit: r.exit, Err: r.err, Alert: r.alert, Status: r.status, Refused: handshakeError(t, x, r.local)}
		want := result{Exit: 35, Err: "curl: (35) OpenSSL/3: error:0A00042E:SSL routines::tlsv1 alert protocol version",
			Alert: "protocol version (582)", Refused: "tls: client offered only unsupported versions: [302 301]"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("curl mismatch (-want +got):\n%s", diff)
		}
	})
}

// tlsGo holds Go's own client against the server: HTTP/2 over TLS 1.3
// with the client certificate, and TLS 1.1 refused.
func tlsGo(t *testing.T, pki *testPKI, base string) {
	resp, _, err := tlsScrape(tlsClient(t, pki, pki.path("client")), base, pki.token)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%s %s", resp.Proto, tls.VersionName(resp.TLS.Version)), "HTTP/2.0 TLS 1.3"; got != want {
		t.Errorf("Go's client got %s, want %s", got, want)
	}
	pool := x509.NewCertPool()
	pool.AddCert(pki.ca)
	conn, err := tls.Dial("tcp", strings.TrimPrefix(base, "https://"),
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
	}
	if got, want := fmt.Sprint(err), "remote error: tls: protocol version not supported"; got != want {
		t.Errorf("a TLS 1.1 handshake got %q, want %q", got, want)
	}
}

// shippedTLSJob is the job tcp_established_exporter_tls of
// deploy/prometheus/prometheus.yml, as shipped but for its target.
func shippedTLSJob(t *testing.T, target string) string {
	t.Helper()
	data, err := os.ReadFile("../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	const start = "\n  - job_name: tcp_established_exporter_tls\n"
	_, job, ok := strings.Cut(string(data), start)
	if !ok {
		t.Fatalf("prometheus.yml has no %q", strings.TrimSpace(start))
	}
	job, _, _ = strings.Cut(job, "\n  - job_name:")
	const shipped = `- targets: ["edge-host.example:9690"]`
	if n := strings.Count(job, shipped); n != 1 {
		t.Fatalf("the TLS job has %d of %s, want 1:\n%s", n, shipped, job)
	}
	return start[1:] + strings.Replace(job, shipped, fmt.Sprintf("- targets: [%q]", target), 1)
}

// tlsPrometheus has a Prometheus server of release v scrape the exporter
// on port with the TLS job that deploy/prometheus/prometheus.yml ships,
// written beside the tls/ files in root.
func tlsPrometheus(t *testing.T, v prometheusVersion, root string, port, heldPort int) {
	config := filepath.Join(root, "prometheus"+v.name+".yml")
	writeFile(t, config, []byte("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"+
		shippedTLSJob(t, fmt.Sprintf("127.0.0.1:%d", port))))
	// The storage is removed after the server is stopped: cleanups run last first.
	base := startPrometheus(t, v, config, t.TempDir())
	// The job relabels job to the name rules.yml and the dashboard expect.
	waitForEqual(t, "Prometheus to scrape the exporter over mTLS", map[string]float64{"": 1},
		promQuery(base, `up{job="tcp_established_exporter"}`))
	series := func(v string) string { return fmt.Sprintf("port=%d,tcp_version=%s", heldPort, v) }
	waitForEqual(t, "Prometheus to see the three connections", map[string]float64{series("4"): 3, series("6"): 0},
		promQuery(base, fmt.Sprintf(`netstat_tcp_longterm_connections_total{job="tcp_established_exporter",port="%d"}`, heldPort), "port", "tcp_version"))
	waitForEqual(t, "Prometheus to see no reload error", map[string]float64{"": 0},
		promQuery(base, reloadErrsName+`{job="tcp_established_exporter"}`))
	health, lastErr := promTarget(t, base)
	t.Logf("target health %q, last error %q", health, lastErr)
	if health != "up" || lastErr != "" {
		t.Errorf("target health %q, last scrape error %q; want up and none", health, lastErr)
	}
}

// secretVolume lays out files as the kubelet does a Secret volume: each
// name a symlink through ..data, a symlink to the directory of the moment,
// which an update replaces by renaming a new symlink over it.
type secretVolume struct {
	dir string
	n   int
}

func newSecretVolume(t *testing.T, names ...string) *secretVolume {
	t.Helper()
	v := &secretVolume{dir: t.TempDir()}
	for _, name := range names {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// next returns a new, empty directory of the volume, for swap.
func (v *secretVolume) next(t *testing.T) string {
	t.Helper()
	v.n++
	dir := filepath.Join(v.dir, fmt.Sprintf("..v%d", v.n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// swap points ..data at dir, atomically.
func (v *secretVolume) swap(t *testing.T, dir string) {
	t.Helper()
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(dir), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// scrapeLoop scrapes /metrics over a new connection each time until
// stopped, and records the serials the server presented and the failures.
type scrapeLoop struct {
	mu       sync.Mutex
	serials  []string // in order, each change once
	failures []string
	n        int
	body     string // the last

	stop, done chan struct{}
}

func startScrapeLoop(t *testing.T, client *http.Client, base string) *scrapeLoop {
	l := &scrapeLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(10 * time.Millisecond) // a pace, not a wait: spare the shared cores
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			resp, body, err := tlsScrape(client, base, "")
			l.mu.Lock()
			l.n++
			if err != nil {
				l.failures = append(l.failures, err.Error())
			} else {
				l.body = body
				serial := resp.TLS.PeerCertificates[0].SerialNumber.String()
				if len(l.serials) == 0 || l.serials[len(l.serials)-1] != serial {
					l.serials = append(l.serials, serial)
				}
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.halt)
	return l
}

func (l *scrapeLoop) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// state returns the last serial presented, the number of scrapes and
// the last body.
func (l *scrapeLoop) state() (serial string, n int, body string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.serials) > 0 {
		serial = l.serials[len(l.serials)-1]
	}
	return serial, l.n, l.body
}

// TestTLSRotation replaces the server's certificate and key by a symlink
// swap, as the kubelet updates a Secret, while a client scrapes in a loop,
// a handshake each time: the new serial comes within the deadline and no
// scrape fails. Then a garbage certificate: the last good pair stays, the
// reload error counter rises by one, and one line is logged.
func TestTLSRotation(t *testing.T) {
	pki := newTestPKI(t, t.TempDir())
	vol := newSecretVolume(t, "tls.crt", "tls.key")
	first := vol.next(t)
	for _, f := range [][2]string{{"server.crt", "tls.crt"}, {"server.key", "tls.key"}} {
		data, err := os.ReadFile(pki.path(f[0]))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(first, f[1]), data)
	}
	vol.swap(t, first)
	oldSerial := readCert(t, pki.path("server.crt")).SerialNumber.String()
	x := startTLSBinary(t, "-interval", "100ms",
		"-tls-cert", filepath.Join(vol.dir, "tls.crt"), "-tls-key", filepath.Join(vol.dir, "tls.key"))
	base := fmt.Sprintf("https://127.0.0.1:%d", x.port)
	loop := startScrapeLoop(t, tlsClient(t, pki, ""), base)
	testnet.WaitFor(t, 10*time.Second, "the first scrapes", func() bool { s, n, _ := loop.state(); return s != "" && n >= 3 })

	second := vol.next(t)
	newSerial := pki.sign(t, second, "tls", serverTemplate(4242)).SerialNumber.String()
	swapped := time.Now()
	vol.swap(t, second)
	// The exporter looks at the files once a second at most.
	const deadline = 10 * time.Second
	testnet.WaitFor(t, deadline, "the new serial", func() bool { s, _, _ := loop.state(); return s == newSerial })
	t.Logf("the new serial came %s after the swap", time.Since(swapped).Round(time.Millisecond))

	garbage := vol.next(t)
	writeFile(t, filepath.Join(garbage, "tls.crt"), []byte("-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"))
	key, err := os.ReadFile(filepath.Join(second, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(garbage, "tls.key"), key)
	vol.swap(t, garbage)
	var n int
	waitCheck(t, deadline, "the reload error to count", func() string {
		var body string
		_, n, body = loop.state()
		got := testnet.Samples(body, reloadErrsName)
		if diff := cmp.Diff(map[string]float64{"": 1}, got); diff != "" {
			return "mismatch (-want +got):\n" + diff
		}
		return ""
	})
	// More scrapes, past the next look at the files: it counts nothing
	// more, since the files stay as they are.
	counted := time.Now()
	testnet.WaitFor(t, deadline, "more scrapes", func() bool {
		_, m, _ := loop.state()
		return m >= n+5 && time.Since(counted) > 1500*time.Millisecond
	})
	loop.halt()
	if _, _, body := loop.state(); !cmp.Equal(map[string]float64{"": 1}, testnet.Samples(body, reloadErrsName)) {
		t.Errorf("the last scrape has %s %v, want 1", reloadErrsName, testnet.Samples(body, reloadErrsName))
	}

	if diff := cmp.Diff([]string{oldSerial, newSerial}, loop.serials); diff != "" {
		t.Errorf("serials presented mismatch (-want +got):\n%s", diff)
	}
	if len(loop.failures) != 0 {
		t.Errorf("%d of %d scrapes failed: %q", len(loop.failures), loop.n, loop.failures)
	}
	var logged []string
	for line := range strings.Lines(x.stderr.String()) {
		if strings.Contains(line, "reload") {
			_, msg, _ := strings.Cut(strings.TrimSpace(line), " reload") // after the time stamp
			logged = append(logged, "reload"+msg)
		}
	}
	want := []string{
		"reloaded the TLS and token files",
		fmt.Sprintf("reloading the TLS and token files failed, keeping the last good ones: invalid value %q for tls-cert from flag -tls-cert: not a certificate: x509: malformed certificate", filepath.Join(vol.dir, "tls.crt")),
	}
	if diff := cmp.Diff(want, logged); diff != "" {
		t.Errorf("reload log lines mismatch (-want +got):\n%s", diff)
	}
	t.Logf("%d scrapes, serials %s then %s", loop.n, oldSerial, newSerial)
}
