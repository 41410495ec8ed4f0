package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Tests of SPEC section 2: where settings come from, what each takes, and
// the one-line error that bad input gets.

// settingsEnv is a fake os.Getenv: a missing name and an empty value alike
// give "".
func settingsEnv(env map[string]string) func(string) string {
	return func(name string) string { return env[name] }
}

// defaultSettings are the settings when nothing is given, as SPEC section 2
// lists them, changed by edit unless it is nil.
func defaultSettings(edit func(s *settings)) settings {
	s := settings{tcpv6: true, ports: nil, listen: ":9690", duration: 6 * time.Second,
		interval: time.Second, direction: "in", procfs: "/proc", source: "auto"}
	if edit != nil {
		edit(&s)
	}
	return s
}

// checkLoadSettings loads settings from args and env and checks the error
// with errors.Is, then, when none is wanted, the settings.
func checkLoadSettings(t *testing.T, args []string, env map[string]string, want settings, wantErr error) {
	t.Helper()
	got, err := loadSettings(args, settingsEnv(env))
	if !errors.Is(err, wantErr) {
		t.Fatalf("loadSettings(%q, %v) error = %v, want %v", args, env, err, wantErr)
	}
	if wantErr != nil {
		return
	}
	if diff := cmp.Diff(want, *got, cmp.AllowUnexported(settings{})); diff != "" {
		t.Errorf("loadSettings(%q, %v) mismatch (-want +got):\n%s", args, env, diff)
	}
}

// writeConfFile writes a configuration file in a fresh directory and
// returns its path.
func writeConfFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSettingsPrecedence(t *testing.T) {
	tests := []struct {
		name, env string    // the setting and its environment variable
		values    [3]string // given by the file, then env, then a flag
		want      func(s *settings, level int)
	}{
		{"simple", "SIMPLE", [3]string{"true", "false", "true"},
			func(s *settings, i int) { s.simple = []bool{false, true, false, true}[i] }},
		{"tcpv6", "TCPV6", [3]string{"false", "true", "false"},
			func(s *settings, i int) { s.tcpv6 = []bool{true, false, true, false}[i] }},
		{"port", "PORT", [3]string{"80", "8080", "-1"},
			func(s *settings, i int) { s.ports = [][]uint16{nil, {80}, {8080}, nil}[i] }},
		{"listen", "LISTEN", [3]string{"127.0.0.1:9691", "9692", "[::1]:9693"},
			func(s *settings, i int) { s.listen = []string{":9690", "127.0.0.1:9691", ":9692", "[::1]:9693"}[i] }},
		{"duration", "DURATION", [3]string{"10", "1m30s", "500ms"},
			func(s *settings, i int) { s.duration = []time.Duration{6e9, 10e9, 90e9, 5e8}[i] }},
		{"interval", "INTERVAL", [3]string{"2", "3s", "250ms"},
			func(s *settings, i int) { s.interval = []time.Duration{1e9, 2e9, 3e9, 25e7}[i] }},
		{"direction", "DIRECTION", [3]string{"out", "all", "in"},
			func(s *settings, i int) { s.direction = []string{"in", "out", "all", "in"}[i] }},
		{"procfs", "PROCFS", [3]string{"/host/proc", "/env/proc", "/flag/proc"},
			func(s *settings, i int) { s.procfs = []string{"/proc", "/host/proc", "/env/proc", "/flag/proc"}[i] }},
		{"source", "SOURCE", [3]string{"proc", "netlink", "proc"},
			func(s *settings, i int) { s.source = []string{"auto", "proc", "netlink", "proc"}[i] }},
		{"namespaces", "NAMESPACES", [3]string{"all", "own", "all"},
			func(s *settings, i int) { s.nodeWide = []bool{false, true, false, true}[i] }},
	}
	for _, tt := range tests {
		conf := writeConfFile(t, tt.name+" "+tt.values[0]+"\n")
		env := map[string]string{tt.env: tt.values[1]}
		levels := []struct {
			name string
			args []string
			env  map[string]string
		}{
			{"default", nil, nil},
			{"file", []string{"-conf", conf}, nil},
			{"env over file", []string{"-conf", conf}, env},
			{"flag over env", []string{"-conf", conf, "-" + tt.name + "=" + tt.values[2]}, env},
		}
		for i, lv := range levels {
			t.Run(tt.name+"/"+lv.name, func(t *testing.T) {
				want := defaultSettings(func(s *settings) { tt.want(s, i) })
				if i > 0 {
					want.conf = conf
				}
				checkLoadSettings(t, lv.args, lv.env, want, nil)
			})
		}
	}
}

// allConf is what testdata/conf/all.conf sets: every setting.
var allConf = settings{simple: true, tcpv6: false, ports: []uint16{3838}, listen: "127.0.0.1:9691",
	duration: 90 * time.Second, interval: 500 * time.Millisecond, direction: "out",
	procfs: "/host/proc", source: "proc", conf: "testdata/conf/all.conf"}

func TestEnvEmptyIsUnset(t *testing.T) {
	empty := make(map[string]string)
	for _, name := range []string{"SIMPLE", "TCPV6", "PORT", "LISTEN", "DURATION",
		"INTERVAL", "DIRECTION", "PROCFS", "SOURCE", "CONF", "CONFIG"} {
		empty[name] = ""
	}
	tests := []struct {
		name string
		args []string
		want settings
	}{
		{"defaults", nil, defaultSettings(nil)},
		{"file", []string{"-conf", "testdata/conf/all.conf"}, allConf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLoadSettings(t, tt.args, empty, tt.want, nil)
		})
	}
}

func TestFlagForms(t *testing.T) {
	port80 := defaultSettings(func(s *settings) { s.ports = []uint16{80} })
	simple := defaultSettings(func(s *settings) { s.simple = true })
	tests := []struct {
		name string
		args []string
		want settings
	}{
		{"-name value", []string{"-port", "80"}, port80},
		{"-name=value", []string{"-port=80"}, port80},
		{"--name=value", []string{"--port=80"}, port80},
		{"--name value", []string{"--port", "80"}, port80},
		{"-- ends the flags", []string{"-port", "80", "--"}, port80},
		{"later flag wins", []string{"-port", "81", "-port", "80"}, port80},
		{"bare -simple", []string{"-simple"}, simple},
		{"bare --simple", []string{"--simple"}, simple},
		{"--simple=true", []string{"--simple=true"}, simple},
		{"-tcpv6=false", []string{"-tcpv6=false"}, defaultSettings(func(s *settings) { s.tcpv6 = false })},
		{"bare -tcpv6 after false", []string{"-tcpv6=false", "-tcpv6"}, defaultSettings(nil)},
		{"every setting", []string{"-simple", "-tcpv6=0", "-port", "3838", "-listen", "127.0.0.1:9691",
			"-duration", "1m30s", "-interval=500ms", "--direction=out", "-procfs", "/host/proc", "-source", "proc"},
			defaultSettings(func(s *settings) { *s = allConf; s.conf = "" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLoadSettings(t, tt.args, nil, tt.want, nil)
		})
	}
}

// TestSettingsREADME runs the three configurations of the original README.
func TestSettingsREADME(t *testing.T) {
	want := defaultSettings(func(s *settings) { s.simple, s.tcpv6 = true, true })
	tests := []struct {
		name string
		args []string
		env  map[string]string
		conf string
	}{
		{"env", nil, map[string]string{"SIMPLE": "true", "TCPV6": "true"}, ""},
		{"flags", []string{"--simple=true", "--tcpv6=true"}, nil, ""},
		{"config file", []string{"--conf", "testdata/conf/sample.conf"}, nil, "testdata/conf/sample.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want.conf = tt.conf
			checkLoadSettings(t, tt.args, tt.env, want, nil)
		})
	}
}
