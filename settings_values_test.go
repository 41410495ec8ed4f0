package main

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// The values each setting takes, by flag, environment and file alike.

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
	ports := func(n int) ([]uint16, string) { // 1..n and its text
		var ps []uint16
		var text []string
		for i := range n {
			ps = append(ps, uint16(1000+i))
			text = append(text, strconv.Itoa(1000+i))
		}
		return ps, strings.Join(text, ",")
	}
	many, manyText := ports(maxPorts)
	_, tooManyText := ports(maxPorts + 1)
	tests := []valueTest[[]uint16]{
		{"1", []uint16{1}, nil}, {"80", []uint16{80}, nil}, {"65535", []uint16{65535}, nil}, {"-1", nil, nil},
		{"+80", []uint16{80}, nil}, {"080", []uint16{80}, nil},
		{"3838,8080", []uint16{3838, 8080}, nil}, {"8080, 3838", []uint16{8080, 3838}, nil},
		{manyText, many, nil},
		{"0", nil, errPortElem}, {"65536", nil, errPortElem}, {"-2", nil, errPortElem},
		{"abc", nil, errPortElem}, {"80a", nil, errPortElem}, {"0x50", nil, errPortElem},
		{"3838,3838", nil, errPortTwice}, {"3838,", nil, errPortElem}, {",3838", nil, errPortElem},
		{"70000,1", nil, errPortElem}, {"-1,80", nil, errPortAll}, {"80,-1", nil, errPortAll},
		{tooManyText, nil, errPortMany},
	}
	checkValues(t, "port", func(s *settings) *[]uint16 { return &s.ports }, tests)
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

func TestNamespacesSetting(t *testing.T) {
	tests := []valueTest[bool]{
		{"own", false, nil}, {"all", true, nil}, {"ALL", true, nil},
		{"some", false, errNamespaces}, {"host", false, errNamespaces},
	}
	checkValues(t, "namespaces", func(s *settings) *bool { return &s.nodeWide }, tests)
}

func TestProcfsSetting(t *testing.T) {
	tests := []valueTest[string]{{"/host/proc", "/host/proc", nil}, {"proc", "proc", nil}}
	checkValues(t, "procfs", func(s *settings) *string { return &s.procfs }, tests)
}
