package main

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The settings of secure scraping and the one-line errors of bad ones.

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
