package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// What run prints: the one-line error of bad settings, -h and -version.

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
		notPort = "is not a port number"
		notDur  = "not a positive number of seconds or Go duration"
		bad     = "testdata/conf/bad-"
	)
	var ports65 string
	for p := range 65 {
		ports65 += fmt.Sprintf("%d,", 1000+p)
	}
	ports65 = strings.TrimSuffix(ports65, ",")
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string // the line on stderr after "tcp_established_exporter: "
		wantErr error  // nil for the flag package's errors, which have no sentinel
	}{
		{"flag bool", []string{"-simple=yes"}, nil, `invalid value "yes" for simple from flag -simple: ` + notBool, errBool},
		{"flag --bool", []string{"--tcpv6=2"}, nil, `invalid value "2" for tcpv6 from flag -tcpv6: ` + notBool, errBool},
		{"flag int", []string{"-port", "abc"}, nil, `invalid value "abc" for port from flag -port: "abc" ` + notPort, errPortElem},
		{"flag port 0", []string{"-port=0"}, nil, `invalid value "0" for port from flag -port: "0" ` + notPort, errPortElem},
		{"flag port 65536", []string{"-port", "65536"}, nil, `invalid value "65536" for port from flag -port: "65536" ` + notPort, errPortElem},
		{"flag port -2", []string{"-port=-2"}, nil, `invalid value "-2" for port from flag -port: "-2" ` + notPort, errPortElem},
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
		{"env int", nil, map[string]string{"PORT": "http"}, `invalid value "http" for port from env PORT: "http" ` + notPort, errPortElem},
		{"env port 0", nil, map[string]string{"PORT": "0"}, `invalid value "0" for port from env PORT: "0" ` + notPort, errPortElem},
		{"env listen", nil, map[string]string{"LISTEN": "65536"}, `invalid value "65536" for listen from env LISTEN: not a port number (1 to 65535)`, errPortRange},
		{"flag port twice", []string{"-port", "3838,3838"}, nil, `invalid value "3838,3838" for port from flag -port: "3838" is listed twice`, errPortTwice},
		{"flag port empty element", []string{"-port", "3838,"}, nil, `invalid value "3838," for port from flag -port: "" ` + notPort, errPortElem},
		{"flag port list range", []string{"-port", "70000,1"}, nil, `invalid value "70000,1" for port from flag -port: "70000" ` + notPort, errPortElem},
		{"flag port -1 in a list", []string{"-port", "-1,80"}, nil, `invalid value "-1,80" for port from flag -port: -1 means all ports and stands alone`, errPortAll},
		{"flag port list of 65", []string{"-port", ports65}, nil, `invalid value "` + ports65 + `" for port from flag -port: lists more than 64 ports`, errPortMany},
		{"env port list", nil, map[string]string{"PORT": "3838,x"}, `invalid value "3838,x" for port from env PORT: "x" ` + notPort, errPortElem},
		{"env duration", nil, map[string]string{"DURATION": "-1s"}, `invalid value "-1s" for duration from env DURATION: ` + notDur, errDuration},
		{"env interval", nil, map[string]string{"INTERVAL": "0"}, `invalid value "0" for interval from env INTERVAL: ` + notDur, errDuration},
		{"env direction", nil, map[string]string{"DIRECTION": "up"}, `invalid value "up" for direction from env DIRECTION: not one of in, out, all`, errDirection},
		{"env source", nil, map[string]string{"SOURCE": "diag"}, `invalid value "diag" for source from env SOURCE: not one of auto, netlink, proc`, errSource},
		{"env under a good flag", []string{"-port", "80"}, map[string]string{"PORT": "abc"}, `invalid value "abc" for port from env PORT: "abc" ` + notPort, errPortElem},
		{"file unknown setting", []string{"-conf", bad + "unknown.conf"}, nil, bad + `unknown.conf:3: unknown setting "nope"`, errUnknownSetting},
		{"file no name", []string{"-conf", bad + "noname.conf"}, nil, bad + `noname.conf:3: unknown setting ""`, errUnknownSetting},
		{"file bare non-boolean", []string{"-conf", bad + "bare.conf"}, nil, bad + `bare.conf:3: setting port needs a value`, errNeedsValue},
		{"file bool", []string{"-conf", bad + "bool.conf"}, nil, bad + `bool.conf:3: invalid value "yes" for tcpv6: ` + notBool, errBool},
		{"file int", []string{"-conf", bad + "port.conf"}, nil, bad + `port.conf:3: invalid value "80a" for port: "80a" ` + notPort, errPortElem},
		{"file port range", nil, map[string]string{"CONF": bad + "port-range.conf"}, bad + `port-range.conf:3: invalid value "65536" for port: "65536" ` + notPort, errPortElem},
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
		{"namespaces", "NAMESPACES", "own"},
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
