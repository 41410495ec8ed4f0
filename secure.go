package main

// Secure scraping (SPEC section 10): HTTPS with a certificate, client
// certificates verified by a CA bundle, a bearer token, all re-read when
// their files change; and the limits every exporter has.

import (
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxInFlight bounds the /metrics requests served at once, as
	// node_exporter's --web.max-requests does by default.
	maxInFlight = 40
	// recheckEvery bounds how often the files are looked at.
	recheckEvery = time.Second
	// maxSecureFile bounds what is read of each file: a CA bundle of every
	// public root is some 200 KB.
	maxSecureFile = 4 << 20

	reloadErrsName = "tcp_established_exporter_config_reload_errors_total"
)

var (
	errNeedsCert  = errors.New("needs tls-cert too")
	errNeedsKey   = errors.New("needs tls-key too")
	errNeedsTLS   = errors.New("needs tls-cert and tls-key")
	errNoCert     = errors.New("no PEM certificate in the file")
	errBadCert    = errors.New("not a certificate")
	errKeyPair    = errors.New("not the private key of tls-cert")
	errEmptyToken = errors.New("empty first line: no token")
	errTooLarge   = errors.New("larger than 4 MiB")
)

// fileSetting is a setting that names a file, with where it was set, so
// that an error found when the file is read names its origin.
type fileSetting struct {
	name, path, source string
	line               int // of the configuration file; 0 for a flag or env
}

// Equal reports whether two settings name the same file, wherever they
// were set; go-cmp compares settings with it.
func (f fileSetting) Equal(g fileSetting) bool { return f.path == g.path }

func (f *fileSetting) fail(err error) error {
	return &settingError{name: f.name, value: f.path, source: f.source, line: f.line, err: err}
}

// read returns the file's contents, at most maxSecureFile bytes.
func (f *fileSetting) read() ([]byte, error) {
	file, err := os.Open(f.path)
	if err != nil {
		return nil, f.fail(unwrapPathError(err))
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxSecureFile+1))
	switch {
	case err != nil:
		return nil, f.fail(unwrapPathError(err))
	case len(data) > maxSecureFile:
		return nil, f.fail(errTooLarge)
	}
	return data, nil
}

// secureNames are the names of the settings that secureFiles returns.
var secureNames = [4]string{"tls-cert", "tls-key", "tls-client-ca", "auth-token-file"}

func (s *settings) secureFiles() [4]*fileSetting {
	return [4]*fileSetting{&s.tlsCert, &s.tlsKey, &s.tlsClientCA, &s.authTokenFile}
}

// noteSource records where a file setting was set.
func (s *settings) noteSource(name, source string, line int) {
	for i, f := range s.secureFiles() {
		if secureNames[i] == name {
			f.name, f.source, f.line = name, source, line
		}
	}
}

// credentials are what the files hold, read together and swapped as one
// value: a handshake never meets a certificate with another's key.
type credentials struct {
	tls   *tls.Config    // nil without TLS
	pool  *x509.CertPool // nil without a client CA
	token []byte         // nil without a token file
}

// loadCredentials reads and checks the files the settings name.
func loadCredentials(s *settings) (*credentials, error) {
	cert, key, ca, token := &s.tlsCert, &s.tlsKey, &s.tlsClientCA, &s.authTokenFile
	switch {
	case key.path != "" && cert.path == "":
		return nil, key.fail(errNeedsCert)
	case cert.path != "" && key.path == "":
		return nil, cert.fail(errNeedsKey)
	case ca.path != "" && cert.path == "":
		return nil, ca.fail(errNeedsTLS)
	}
	c := new(credentials)
	if ca.path != "" {
		data, err := ca.read()
		if err != nil {
			return nil, err
		}
		if err := checkCerts(data); err != nil {
			return nil, ca.fail(err)
		}
		c.pool = x509.NewCertPool()
		c.pool.AppendCertsFromPEM(data)
	}
	if cert.path != "" {
		pair, err := loadPair(cert, key)
		if err != nil {
			return nil, err
		}
		c.tls = &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2", "http/1.1"},
			Certificates: []tls.Certificate{pair},
		}
		if c.pool != nil {
			// Asked, not required: kubelet probes of /healthz have none.
			c.tls.ClientAuth = tls.VerifyClientCertIfGiven
			c.tls.ClientCAs = c.pool
		}
	}
	if token.path != "" {
		data, err := token.read()
		if err != nil {
			return nil, err
		}
		first, _, _ := bytes.Cut(data, []byte("\n"))
		if c.token = bytes.TrimRight(first, " \t\r\v\f"); len(c.token) == 0 {
			return nil, token.fail(errEmptyToken)
		}
	}
	return c, nil
}

func loadPair(cert, key *fileSetting) (tls.Certificate, error) {
	certPEM, err := cert.read()
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := key.read()
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := checkCerts(certPEM); err != nil {
		return tls.Certificate{}, cert.fail(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, key.fail(fmt.Errorf("%w: %s", errKeyPair, strings.TrimPrefix(err.Error(), "tls: ")))
	}
	return pair, nil
}

// checkCerts checks that PEM data holds certificates, all of which parse:
// tls.X509KeyPair would blame the key for a certificate it cannot read,
// and x509.CertPool skips what it cannot.
func checkCerts(data []byte) error {
	n := 0
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("%w: %v", errBadCert, err)
		}
		n++
	}
	if n == 0 {
		return errNoCert
	}
	return nil
}

// fileStamp is what tells that a file changed: Kubernetes replaces a
// Secret's files by swapping a symlink, so the path stays and the file it
// leads to is another.
type fileStamp struct {
	size, mtime int64
	dev, ino    uint64
}

func stamp(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	fi, err := os.Stat(path) // follows the symlinks
	if err != nil {
		return fileStamp{size: -1}
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.dev, st.ino = uint64(sys.Dev), sys.Ino
	}
	return st
}

// guard holds the credentials in use, re-reads their files when they
// change, and guards /metrics with them.
type guard struct {
	s     *settings
	log   *log.Logger
	cur   atomic.Pointer[credentials]
	slots chan struct{} // one per /metrics request in flight
	files bool          // any file is set

	reloadErrors atomic.Uint64 // failed reloads, which the exporter exports

	mu       sync.Mutex // serialises reloads and guards what follows
	checked  time.Time
	stamps   [4]fileStamp
	lastFail string // the last failure logged
}

// newGuard reads the files the settings name; loadSettings has checked
// them, so an error here means they changed since.
func newGuard(s *settings, logger *log.Logger) (*guard, error) {
	g := &guard{s: s, log: logger, slots: make(chan struct{}, maxInFlight)}
	for _, f := range s.secureFiles() {
		g.files = g.files || f.path != ""
	}
	g.stamps = g.stat()
	c, err := loadCredentials(s)
	if err != nil {
		return nil, err
	}
	g.cur.Store(c)
	g.checked = time.Now()
	return g, nil
}

func (g *guard) stat() (st [4]fileStamp) {
	for i, f := range g.s.secureFiles() {
		st[i] = stamp(f.path)
	}
	return st
}

// tlsConfig is the server's TLS configuration, nil without TLS. Each
// handshake takes the current credentials, so that a rotated certificate
// or CA bundle is used without a restart.
func (g *guard) tlsConfig() *tls.Config {
	if g.cur.Load().tls == nil {
		return nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return g.current().tls, nil
		},
	}
}

// scheme is what the server speaks.
func (g *guard) scheme() string {
	if g.cur.Load().tls != nil {
		return "https"
	}
	return "http"
}

// current returns the credentials in use, reloading them first when a
// file changed, looked at once a second at most.
func (g *guard) current() *credentials {
	if g.files && g.mu.TryLock() { // a reload under way: use what is there
		g.maybeReload()
		g.mu.Unlock()
	}
	return g.cur.Load()
}

// maybeReload reloads the credentials when a file changed. A file that
// does not parse keeps the last good set, counts, and is logged once.
func (g *guard) maybeReload() {
	if time.Since(g.checked) < recheckEvery {
		return
	}
	g.checked = time.Now()
	before := g.stat()
	if before == g.stamps {
		return
	}
	c, err := loadCredentials(g.s)
	if g.stat() != before {
		return // changing while read: the next look decides
	}
	g.stamps = before
	if err != nil {
		g.reloadErrors.Add(1)
		if msg := err.Error(); msg != g.lastFail {
			g.lastFail = msg
			g.log.Printf("reloading the TLS and token files failed, keeping the last good ones: %v", err)
		}
		return
	}
	g.lastFail = ""
	g.cur.Store(c)
	g.log.Printf("reloaded the TLS and token files")
}

// metrics guards /metrics: a verified client certificate when a client CA
// is set, the bearer token when one is set, and at most maxInFlight
// requests at once, the rest refused at once rather than queued.
func (g *guard) metrics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := g.current()
		if c.pool != nil && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
			http.Error(w, "a client certificate that tls-client-ca verifies is required", http.StatusForbidden)
			return
		}
		if c.token != nil && !bearerMatches(r.Header.Get("Authorization"), c.token) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "a bearer token is required", http.StatusUnauthorized)
			return
		}
		select {
		case g.slots <- struct{}{}:
			defer func() { <-g.slots }()
		default:
			http.Error(w, "too many scrapes in flight", http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerMatches reports whether an Authorization header carries the token,
// compared in constant time.
func bearerMatches(header string, token []byte) bool {
	scheme, cred, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimLeft(cred, " ")), token) == 1
}

// nosniff tells browsers to take every response for the type it says.
func nosniff(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}
