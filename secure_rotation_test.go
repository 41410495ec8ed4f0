package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Rotation of the TLS and token files without a restart (SPEC section 10).

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
