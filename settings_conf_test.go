package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The configuration file: its syntax, where its path comes from, fuzzing.

func TestConfFileSyntax(t *testing.T) {
	port80 := defaultSettings(func(s *settings) { s.ports = []uint16{80} })
	simple := defaultSettings(func(s *settings) { s.simple = true })
	long := "/" + strings.Repeat("p", 70000) // beyond bufio.Scanner's 64 KiB line
	tests := []struct {
		name    string
		fixture string // a file in testdata/conf, or "" to write text
		text    string
		want    settings
	}{
		{name: "name value", text: "port 80\n", want: port80},
		{name: "name=value", text: "port=80\n", want: port80},
		{name: "name = value", text: "port = 80\n", want: port80},
		{name: "tab", text: "port\t80\n", want: port80},
		{name: "tabs around =", text: "\tport\t=\t80\t\n", want: port80},
		{name: "spaces around", text: "   port   80   \n", want: port80},
		{name: "CRLF", text: "port 80\r\n", want: port80},
		{name: "no final newline", text: "port 80", want: port80},
		{name: "later line wins", text: "port 81\nport 80\n", want: port80},
		{name: "blank lines", text: "\n\n  \n\t\n\r\nport 80\n\n", want: port80},
		{name: "comments", text: "# port 81\nport 80\n#port 82\n", want: port80},
		{name: "indented comments", text: "  # port 81\n\t#port 82\nport 80\n", want: port80},
		{name: "upper-case name", text: "PORT 80\n", want: port80},
		{name: "bare simple", text: "simple\n", want: simple},
		{name: "bare simple CRLF", text: "simple\r\n", want: simple},
		{name: "bare tcpv6", text: "tcpv6 false\ntcpv6\n", want: defaultSettings(nil)},
		{name: "upper-case bare name", text: "SIMPLE\n", want: simple},
		{name: "empty file", text: "", want: defaultSettings(nil)},
		{name: "only comments", text: "# simple true\n", want: defaultSettings(nil)},
		{name: "long line", text: "procfs " + long + "\n",
			want: defaultSettings(func(s *settings) { s.procfs = long })},
		{name: "README sample.conf", fixture: "sample.conf",
			want: defaultSettings(func(s *settings) { s.simple, s.tcpv6 = true, true })},
		{name: "CRLF file", fixture: "crlf.conf",
			want: defaultSettings(func(s *settings) { s.simple, s.ports = true, []uint16{3838} })},
		{name: "UTF-8 BOM", fixture: "bom.conf", want: simple},
		{name: "every setting", fixture: "all.conf", want: allConf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join("testdata", "conf", tt.fixture)
			if tt.fixture == "" {
				path = writeConfFile(t, tt.text)
			}
			tt.want.conf = path
			checkLoadSettings(t, []string{"-conf", path}, nil, tt.want, nil)
		})
	}
}

func TestConfSources(t *testing.T) {
	const sample, crlf = "testdata/conf/sample.conf", "testdata/conf/crlf.conf"
	fromSample := defaultSettings(func(s *settings) { s.simple, s.conf = true, sample })
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want settings
	}{
		{"-conf", []string{"-conf", sample}, nil, fromSample},
		{"-config", []string{"-config", sample}, nil, fromSample},
		{"--conf=", []string{"--conf=" + sample}, nil, fromSample},
		{"--config", []string{"--config", sample}, nil, fromSample},
		{"env CONF", nil, map[string]string{"CONF": sample}, fromSample},
		{"env CONFIG", nil, map[string]string{"CONFIG": sample}, fromSample},
		{"-conf over -config", []string{"-config", crlf, "-conf", sample}, nil, fromSample},
		{"flag over env", []string{"-config", sample}, map[string]string{"CONF": crlf}, fromSample},
		{"CONF over CONFIG", nil, map[string]string{"CONF": sample, "CONFIG": crlf}, fromSample},
		{"empty CONF", nil, map[string]string{"CONF": "", "CONFIG": sample}, fromSample},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLoadSettings(t, tt.args, tt.env, tt.want, nil)
		})
	}
}

// locatedError is how every error of a configuration file starts.
var locatedError = regexp.MustCompile(`^fuzz\.conf:([1-9][0-9]*): `)

// FuzzConfigFile checks that applyConf never panics, and that it either
// yields valid settings or says on one line which line of the file is bad.
func FuzzConfigFile(f *testing.F) {
	paths, err := filepath.Glob("testdata/conf/*")
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seeds in testdata/conf: %v", err)
	}
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := defaultSettings(nil)
		err := s.applyConf("fuzz.conf", data)
		if err == nil {
			checkValidSettings(t, &s)
			return
		}
		m := locatedError.FindStringSubmatch(err.Error())
		if m == nil || strings.Contains(err.Error(), "\n") {
			t.Fatalf("error %q is not one line starting with fuzz.conf:LINE: ", err)
		}
		if n, _ := strconv.Atoi(m[1]); n > bytes.Count(data, []byte("\n"))+1 {
			t.Fatalf("error %q names line %d of a file of %d lines", err, n, bytes.Count(data, []byte("\n"))+1)
		}
	})
}

// checkValidSettings fails t when s holds what no valid input gives.
func checkValidSettings(t *testing.T, s *settings) {
	t.Helper()
	_, port, err := net.SplitHostPort(s.listen)
	n, _ := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || slices.Contains(s.ports, 0) || len(s.ports) > maxPorts ||
		s.duration <= 0 || s.interval <= 0 || s.procfs == "" ||
		!slices.Contains([]string{"in", "out", "all"}, s.direction) ||
		!slices.Contains([]string{"auto", "netlink", "proc"}, s.source) {
		t.Fatalf("applyConf took invalid settings: %v", s)
	}
}
