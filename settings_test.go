package main

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	s := settings{tcpv6: true, port: -1, listen: ":9690", duration: 6 * time.Second,
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
			func(s *settings, i int) { s.port = []int{-1, 80, 8080, -1}[i] }},
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
var allConf = settings{simple: true, tcpv6: false, port: 3838, listen: "127.0.0.1:9691",
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

func TestConfFileSyntax(t *testing.T) {
	port80 := defaultSettings(func(s *settings) { s.port = 80 })
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
			want: defaultSettings(func(s *settings) { s.simple, s.port = true, 3838 })},
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

func TestFlagForms(t *testing.T) {
	port80 := defaultSettings(func(s *settings) { s.port = 80 })
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

// valueTest is one value of a setting and the field it gives, or the error.
type valueTest[T any] struct {
	value   string
	want    T
	wantErr error
}

// checkValues gives each value to the setting name by a flag, the
// environment and a file in turn; field points at the setting's field.
func checkValues[T any](t *testing.T, name string, field func(*settings) *T, tests []valueTest[T]) {
	for _, tt := range tests {
		for _, source := range []string{"flag", "env", "file"} {
			t.Run(name+"/"+source+"/"+tt.value, func(t *testing.T) {
				want := defaultSettings(nil)
				*field(&want) = tt.want
				var args []string
				var env map[string]string
				switch source {
				case "flag":
					args = []string{"-" + name + "=" + tt.value}
				case "env":
					env = map[string]string{strings.ToUpper(name): tt.value}
				case "file":
					want.conf = writeConfFile(t, name+" "+tt.value+"\n")
					args = []string{"-conf", want.conf}
				}
				checkLoadSettings(t, args, env, want, tt.wantErr)
			})
		}
	}
}

func TestBoolSetting(t *testing.T) {
	tests := []valueTest[bool]{
		{"true", true, nil}, {"false", false, nil},
		{"1", true, nil}, {"0", false, nil},
		{"t", true, nil}, {"f", false, nil},
		{"TRUE", true, nil}, {"tRuE", true, nil}, {"False", false, nil},
		{"T", true, nil}, {"F", false, nil},
		{"yes", false, errBool}, {"no", false, errBool}, {"on", false, errBool},
		{"2", false, errBool}, {"-1", false, errBool}, {"truee", false, errBool},
	}
	checkValues(t, "simple", func(s *settings) *bool { return &s.simple }, tests)
	tests = []valueTest[bool]{{"F", false, nil}, {"yes", false, errBool}}
	checkValues(t, "tcpv6", func(s *settings) *bool { return &s.tcpv6 }, tests)
}

func TestDurationSetting(t *testing.T) {
	tests := []valueTest[time.Duration]{
		{"6", 6 * time.Second, nil},
		{"1", time.Second, nil},
		{"86400", 24 * time.Hour, nil},
		{"9223372036", 9223372036 * time.Second, nil}, // the largest whole seconds
		{"1m30s", 90 * time.Second, nil},
		{"500ms", 500 * time.Millisecond, nil},
		{"1.5s", 1500 * time.Millisecond, nil},
		{"1h", time.Hour, nil},
		{"0", 0, errDuration},
		{"0s", 0, errDuration},
		{"-1", 0, errDuration},
		{"-1s", 0, errDuration},
		{"abc", 0, errDuration},
		{"1.5", 0, errDuration},
		{"9223372037", 0, errDuration},  // overflows
		{"-9223372037", 0, errDuration}, // wraps round to +292 years
	}
	checkValues(t, "duration", func(s *settings) *time.Duration { return &s.duration }, tests)
	checkValues(t, "interval", func(s *settings) *time.Duration { return &s.interval }, tests)
}

func TestListenSetting(t *testing.T) {
	tests := []valueTest[string]{
		{"9690", ":9690", nil},
		{"1", ":1", nil},
		{"65535", ":65535", nil},
		{":80", ":80", nil},
		{"+80", ":80", nil},
		{"127.0.0.1:9690", "127.0.0.1:9690", nil},
		{"[::1]:9690", "[::1]:9690", nil},
		{"[::]:9690", "[::]:9690", nil},
		{"localhost:80", "localhost:80", nil},
		{"0", "", errPortRange},
		{"65536", "", errPortRange},
		{"-1", "", errPortRange},
		{"abc", "", errPortRange},
		{"localhost", "", errPortRange},
		{"localhost:0", "", errPortRange},
		{"localhost:http", "", errPortRange},
		{"127.0.0.1:", "", errPortRange},
		{"::1", "", errListen},
		{"[::1]", "", errListen},
	}
	checkValues(t, "listen", func(s *settings) *string { return &s.listen }, tests)
}

func TestPortSetting(t *testing.T) {
	tests := []valueTest[int]{
		{"1", 1, nil}, {"80", 80, nil}, {"65535", 65535, nil}, {"-1", -1, nil},
		{"+80", 80, nil}, {"080", 80, nil},
		{"0", 0, errPortAll}, {"65536", 0, errPortAll}, {"-2", 0, errPortAll},
		{"abc", 0, errPortAll}, {"80a", 0, errPortAll}, {"0x50", 0, errPortAll},
	}
	checkValues(t, "port", func(s *settings) *int { return &s.port }, tests)
}

func TestDirectionSetting(t *testing.T) {
	tests := []valueTest[string]{
		{"in", "in", nil}, {"out", "out", nil}, {"all", "all", nil}, {"OUT", "out", nil},
		{"both", "", errDirection}, {"inbound", "", errDirection},
	}
	checkValues(t, "direction", func(s *settings) *string { return &s.direction }, tests)
}

func TestSourceSetting(t *testing.T) {
	tests := []valueTest[string]{
		{"auto", "auto", nil}, {"netlink", "netlink", nil}, {"proc", "proc", nil}, {"Netlink", "netlink", nil},
		{"sock_diag", "", errSource}, {"none", "", errSource},
	}
	checkValues(t, "source", func(s *settings) *string { return &s.source }, tests)
}

func TestProcfsSetting(t *testing.T) {
	tests := []valueTest[string]{{"/host/proc", "/host/proc", nil}, {"proc", "proc", nil}}
	checkValues(t, "procfs", func(s *settings) *string { return &s.procfs }, tests)
}

// runFailing runs the exporter on bad input, which must not start it, and
// returns the one line it writes on stderr.
func runFailing(t *testing.T, args []string, env map[string]string, wantErr error) string {
	t.Helper()
	if _, err := loadSettings(args, settingsEnv(env)); err == nil {
		t.Fatalf("loadSettings(%q, %v) took bad input; run would serve", args, env)
	} else if wantErr != nil && !errors.Is(err, wantErr) {
		t.Errorf("loadSettings(%q, %v) error = %v, want %v", args, env, err, wantErr)
	}
	var stdout, stderr bytes.Buffer
	if code := run(args, settingsEnv(env), &stdout, &stderr); code != 2 {
		t.Errorf("run(%q, %v) = %d, want 2", args, env, code)
	}
	if stdout.Len() > 0 {
		t.Errorf("stdout = %q, want nothing", stdout.String())
	}
	line, ok := strings.CutSuffix(stderr.String(), "\n")
	if !ok || strings.Contains(line, "\n") {
		t.Errorf("stderr = %q, want one line", stderr.String())
	}
	return line
}

func TestBadSettings(t *testing.T) {
	const (
		notBool = "not a boolean (true, false, 1, 0, t, f)"
		notPort = "not a port number (1 to 65535, or -1 for all)"
		notDur  = "not a positive number of seconds or Go duration"
		bad     = "testdata/conf/bad-"
	)
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string // the line on stderr after "tcp_established_exporter: "
		wantErr error  // nil for the flag package's errors, which have no sentinel
	}{
		{"flag bool", []string{"-simple=yes"}, nil, `invalid value "yes" for simple from flag -simple: ` + notBool, errBool},
		{"flag --bool", []string{"--tcpv6=2"}, nil, `invalid value "2" for tcpv6 from flag -tcpv6: ` + notBool, errBool},
		{"flag int", []string{"-port", "abc"}, nil, `invalid value "abc" for port from flag -port: ` + notPort, errPortAll},
		{"flag port 0", []string{"-port=0"}, nil, `invalid value "0" for port from flag -port: ` + notPort, errPortAll},
		{"flag port 65536", []string{"-port", "65536"}, nil, `invalid value "65536" for port from flag -port: ` + notPort, errPortAll},
		{"flag port -2", []string{"-port=-2"}, nil, `invalid value "-2" for port from flag -port: ` + notPort, errPortAll},
		{"flag listen -1", []string{"-listen=-1"}, nil, `invalid value "-1" for listen from flag -listen: not a port number (1 to 65535)`, errPortRange},
		{"flag listen 0", []string{"-listen", "0"}, nil, `invalid value "0" for listen from flag -listen: not a port number (1 to 65535)`, errPortRange},
		{"flag listen 65536", []string{"-listen", "127.0.0.1:65536"}, nil, `invalid value "127.0.0.1:65536" for listen from flag -listen: not a port number (1 to 65535)`, errPortRange},
		{"flag listen no port", []string{"-listen", "::1"}, nil, `invalid value "::1" for listen from flag -listen: not a port or host:port`, errListen},
		{"flag duration 0", []string{"-duration=0"}, nil, `invalid value "0" for duration from flag -duration: ` + notDur, errDuration},
		{"flag duration -1s", []string{"-duration", "-1s"}, nil, `invalid value "-1s" for duration from flag -duration: ` + notDur, errDuration},
		{"flag duration abc", []string{"--duration=abc"}, nil, `invalid value "abc" for duration from flag -duration: ` + notDur, errDuration},
		{"flag interval 0", []string{"-interval=0"}, nil, `invalid value "0" for interval from flag -interval: ` + notDur, errDuration},
		{"flag interval -1s", []string{"-interval=-1s"}, nil, `invalid value "-1s" for interval from flag -interval: ` + notDur, errDuration},
		{"flag interval abc", []string{"-interval", "abc"}, nil, `invalid value "abc" for interval from flag -interval: ` + notDur, errDuration},
		{"flag direction", []string{"-direction=both"}, nil, `invalid value "both" for direction from flag -direction: not one of in, out, all`, errDirection},
		{"flag procfs empty", []string{"-procfs="}, nil, `invalid value "" for procfs from flag -procfs: empty path`, errPath},
		{"unknown flag", []string{"-verbose"}, nil, `flag provided but not defined: -verbose`, nil},
		{"flag without value", []string{"-port"}, nil, `flag needs an argument: -port`, nil},
		{"bad -version", []string{"-version=maybe"}, nil, `invalid boolean value "maybe" for -version: parse error`, nil},
		{"positional", []string{"-port", "80", "extra"}, nil, `unexpected argument "extra"`, errArgument},
		{"value after bare bool", []string{"-simple", "true"}, nil, `unexpected argument "true"`, errArgument},
		{"env bool", nil, map[string]string{"SIMPLE": "yes"}, `invalid value "yes" for simple from env SIMPLE: ` + notBool, errBool},
		{"env int", nil, map[string]string{"PORT": "http"}, `invalid value "http" for port from env PORT: ` + notPort, errPortAll},
		{"env port 0", nil, map[string]string{"PORT": "0"}, `invalid value "0" for port from env PORT: ` + notPort, errPortAll},
		{"env listen", nil, map[string]string{"LISTEN": "65536"}, `invalid value "65536" for listen from env LISTEN: not a port number (1 to 65535)`, errPortRange},
		{"env duration", nil, map[string]string{"DURATION": "-1s"}, `invalid value "-1s" for duration from env DURATION: ` + notDur, errDuration},
		{"env interval", nil, map[string]string{"INTERVAL": "0"}, `invalid value "0" for interval from env INTERVAL: ` + notDur, errDuration},
		{"env direction", nil, map[string]string{"DIRECTION": "up"}, `invalid value "up" for direction from env DIRECTION: not one of in, out, all`, errDirection},
		{"env source", nil, map[string]string{"SOURCE": "diag"}, `invalid value "diag" for source from env SOURCE: not one of auto, netlink, proc`, errSource},
		{"env under a good flag", []string{"-port", "80"}, map[string]string{"PORT": "abc"}, `invalid value "abc" for port from env PORT: ` + notPort, errPortAll},
		{"file unknown setting", []string{"-conf", bad + "unknown.conf"}, nil, bad + `unknown.conf:3: unknown setting "nope"`, errUnknownSetting},
		{"file no name", []string{"-conf", bad + "noname.conf"}, nil, bad + `noname.conf:3: unknown setting ""`, errUnknownSetting},
		{"file bare non-boolean", []string{"-conf", bad + "bare.conf"}, nil, bad + `bare.conf:3: setting port needs a value`, errNeedsValue},
		{"file bool", []string{"-conf", bad + "bool.conf"}, nil, bad + `bool.conf:3: invalid value "yes" for tcpv6: ` + notBool, errBool},
		{"file int", []string{"-conf", bad + "port.conf"}, nil, bad + `port.conf:3: invalid value "80a" for port: ` + notPort, errPortAll},
		{"file port range", nil, map[string]string{"CONF": bad + "port-range.conf"}, bad + `port-range.conf:3: invalid value "65536" for port: ` + notPort, errPortAll},
		{"file listen", []string{"-conf", bad + "listen.conf"}, nil, bad + `listen.conf:3: invalid value "[::1]" for listen: not a port or host:port`, errListen},
		{"file duration", []string{"-conf", bad + "duration.conf"}, nil, bad + `duration.conf:3: invalid value "0" for duration: ` + notDur, errDuration},
		{"file interval", []string{"-conf", bad + "interval.conf"}, nil, bad + `interval.conf:3: invalid value "-1s" for interval: ` + notDur, errDuration},
		{"file direction", []string{"-conf", bad + "direction.conf"}, nil, bad + `direction.conf:3: invalid value "sideways" for direction: not one of in, out, all`, errDirection},
		{"missing file", []string{"-conf", "testdata/conf/missing.conf"}, nil, `invalid value "testdata/conf/missing.conf" for conf from flag -conf: open: no such file or directory`, fs.ErrNotExist},
		{"missing file env", nil, map[string]string{"CONFIG": "testdata/conf/missing.conf"}, `invalid value "testdata/conf/missing.conf" for conf from env CONFIG: open: no such file or directory`, fs.ErrNotExist},
		{"unreadable file", []string{"-config", "testdata/conf"}, nil, `invalid value "testdata/conf" for conf from flag -config: read: is a directory`, syscall.EISDIR},
		{"unreadable file env", nil, map[string]string{"CONF": "testdata/conf"}, `invalid value "testdata/conf" for conf from env CONF: read: is a directory`, syscall.EISDIR},
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

// usageWords returns the words of the line of out that lists flag -name.
func usageWords(out, name string) []string {
	for line := range strings.Lines(out) {
		words := strings.FieldsFunc(line, func(r rune) bool { return strings.ContainsRune(" \t\n,()", r) })
		if slices.Contains(words, "-"+name) {
			return words
		}
	}
	return nil
}

func TestUsage(t *testing.T) {
	rows := [][3]string{ // name, env, default
		{"simple", "SIMPLE", "false"}, {"tcpv6", "TCPV6", "true"}, {"port", "PORT", "-1"},
		{"listen", "LISTEN", "9690"}, {"duration", "DURATION", "6"}, {"interval", "INTERVAL", "1s"},
		{"direction", "DIRECTION", "in"}, {"procfs", "PROCFS", "/proc"}, {"source", "SOURCE", "auto"},
		{"conf", "CONF", "none"}, {"config", "CONFIG", "none"},
	}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"-port", "80", "-h"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(args, settingsEnv(nil), &stdout, &stderr); code != 0 || stderr.Len() > 0 {
				t.Errorf("run(%q) = %d, stderr %q; want 0 and nothing", args, code, stderr.String())
			}
			for _, st := range rows {
				if words := usageWords(stdout.String(), st[0]); !slices.Contains(words, st[1]) || !slices.Contains(words, st[2]) {
					t.Errorf("usage line of -%s = %q, want env %s and default %s; usage:\n%s", st[0], words, st[1], st[2], stdout.String())
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"-version=true"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(args, settingsEnv(nil), &stdout, &stderr); code != 0 || stderr.Len() > 0 {
				t.Errorf("run(%q) = %d, stderr %q; want 0 and nothing", args, code, stderr.String())
			}
			line, ok := strings.CutSuffix(stdout.String(), "\n")
			if !ok || strings.Contains(line, "\n") || !strings.HasPrefix(line, "tcp_established_exporter ") ||
				!strings.Contains(line, runtime.Version()) {
				t.Errorf("stdout = %q, want one line: tcp_established_exporter VERSION %s", stdout.String(), runtime.Version())
			}
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
	if err != nil || n < 1 || n > 65535 || s.port != -1 && (s.port < 1 || s.port > 65535) ||
		s.duration <= 0 || s.interval <= 0 || s.procfs == "" ||
		!slices.Contains([]string{"in", "out", "all"}, s.direction) ||
		!slices.Contains([]string{"auto", "netlink", "proc"}, s.source) {
		t.Fatalf("applyConf took invalid settings: %v", s)
	}
}
