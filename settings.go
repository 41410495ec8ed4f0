package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// settings are the effective settings of the exporter (SPEC section 2).
type settings struct {
	simple    bool
	tcpv6     bool
	ports     []uint16 // the service ports to observe; nil observes all
	listen    string   // host:port, host may be empty
	duration  time.Duration
	interval  time.Duration
	direction string // in, out or all
	procfs    string
	source    string // auto, netlink or proc
	nodeWide  bool   // namespaces=all: every network namespace under procfs
	conf      string

	// The files of secure scraping (SPEC section 10), with where each
	// was set; see secure.go.
	tlsCert, tlsKey, tlsClientCA, authTokenFile fileSetting
}

// String is the one-line form the start-up log and the index page show.
func (s *settings) String() string {
	namespaces := "own"
	if s.nodeWide {
		namespaces = "all"
	}
	return fmt.Sprintf("simple=%t tcpv6=%t port=%s listen=%s duration=%s interval=%s direction=%s procfs=%s source=%s namespaces=%s conf=%s"+
		" tls-cert=%s tls-key=%s tls-client-ca=%s auth-token-file=%s",
		s.simple, s.tcpv6, portsString(s.ports), s.listen, s.duration, s.interval, s.direction, s.procfs, s.source, namespaces, s.conf,
		s.tlsCert.path, s.tlsKey.path, s.tlsClientCA.path, s.authTokenFile.path)
}

// setting describes one setting: its names, default and how to take a value.
type setting struct {
	name, env, def, usage string
	isBool                bool
	set                   func(s *settings, v string) error
}

var allSettings = []setting{
	{"simple", "SIMPLE", "false", "one gauge without labels instead of one series per port and IP version", true,
		func(s *settings, v string) (err error) { s.simple, err = parseBool(v); return }},
	{"tcpv6", "TCPV6", "true", "also count IPv6 connections", true,
		func(s *settings, v string) (err error) { s.tcpv6, err = parseBool(v); return }},
	{"port", "PORT", "-1", "the service ports to observe, comma-separated (3838,8080; at most 64); -1 observes all", false,
		func(s *settings, v string) (err error) { s.ports, err = parsePorts(v); return }},
	{"listen", "LISTEN", "9690", "where the HTTP server listens: a port or host:port", false,
		func(s *settings, v string) (err error) { s.listen, err = parseListen(v); return }},
	{"duration", "DURATION", "6", "minimum age of a long-term connection: seconds or a Go duration", false,
		func(s *settings, v string) (err error) { s.duration, err = parseDuration(v); return }},
	{"interval", "INTERVAL", "1s", "how often the connection tables are read: seconds or a Go duration", false,
		func(s *settings, v string) (err error) { s.interval, err = parseDuration(v); return }},
	{"direction", "DIRECTION", "in", "which connections count: in, out or all", false,
		func(s *settings, v string) (err error) { s.direction, err = parseDirection(v); return }},
	{"procfs", "PROCFS", "/proc", "root of the proc filesystem, e.g. /host/proc", false,
		func(s *settings, v string) (err error) { s.procfs, err = parsePath(v); return }},
	{"source", "SOURCE", "auto", "where connections are read: netlink (sock_diag), proc (procfs/net/tcp{,6}), or auto: netlink when procfs is /proc", false,
		func(s *settings, v string) (err error) { s.source, err = parseSource(v); return }},
	{"namespaces", "NAMESPACES", "own", "which network namespaces are read: own, or all: every one a process under procfs is in (one exporter per node)", false,
		func(s *settings, v string) (err error) { s.nodeWide, err = parseNamespaces(v); return }},
	{"tls-cert", "TLS_CERT", "", "PEM certificate chain file; with tls-key, serve HTTPS only", false,
		func(s *settings, v string) error { s.tlsCert.path = v; return nil }},
	{"tls-key", "TLS_KEY", "", "PEM private key file of tls-cert", false,
		func(s *settings, v string) error { s.tlsKey.path = v; return nil }},
	{"tls-client-ca", "TLS_CLIENT_CA", "", "PEM CA bundle: /metrics requires a client certificate it verifies", false,
		func(s *settings, v string) error { s.tlsClientCA.path = v; return nil }},
	{"auth-token-file", "AUTH_TOKEN_FILE", "", "file whose first line is a bearer token: /metrics requires Authorization: Bearer <token>", false,
		func(s *settings, v string) error { s.authTokenFile.path = v; return nil }},
}

// confNames are the names of the configuration file setting, which can be
// given as a flag or in the environment only.
var confNames = [...]struct{ flag, env string }{{"conf", "CONF"}, {"config", "CONFIG"}}

// errVersion is returned by loadSettings when --version was asked for.
var errVersion = errors.New("version requested")

// settingError says which setting got which bad value from where: a flag,
// an environment variable, or a line of the configuration file, which then
// leads the message as file:line does in a compiler's.
type settingError struct {
	name, value, source string
	line                int // of the configuration file named by source; 0 for a flag or env
	err                 error
}

func (e *settingError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("%s:%d: invalid value %q for %s: %v", e.source, e.line, e.value, e.name, e.err)
	}
	return fmt.Sprintf("invalid value %q for %s from %s: %v", e.value, e.name, e.source, e.err)
}

func (e *settingError) Unwrap() error { return e.err }

// rawFlag keeps a flag's text; values are checked later, in precedence order.
type rawFlag struct {
	value  *string
	isBool bool
}

func (f rawFlag) String() string {
	if f.value == nil {
		return ""
	}
	return *f.value
}
func (f rawFlag) Set(v string) error { *f.value = v; return nil }
func (f rawFlag) IsBoolFlag() bool   { return f.isBool }

// loadSettings takes settings from args, then the environment, then the
// configuration file, then the defaults. It returns flag.ErrHelp for -h and
// errVersion for --version.
func loadSettings(args []string, getenv func(string) string) (*settings, error) {
	fs := flag.NewFlagSet("tcp_established_exporter", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := make(map[string]*string)
	for _, st := range allSettings {
		flags[st.name] = new(string)
		fs.Var(rawFlag{flags[st.name], st.isBool}, st.name, st.usage)
	}
	for _, c := range confNames {
		flags[c.flag] = new(string)
		fs.Var(rawFlag{value: flags[c.flag]}, c.flag, "path of a configuration file")
	}
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *version {
		return nil, errVersion
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w %q", errArgument, fs.Arg(0))
	}
	given := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	s := new(settings)
	for _, st := range allSettings {
		if err := st.set(s, st.def); err != nil {
			panic("bad default for " + st.name) // a bug, caught by the tests
		}
	}
	if err := s.readConf(given, flags, getenv); err != nil {
		return nil, err
	}
	for _, st := range allSettings {
		if v := getenv(st.env); v != "" {
			if err := st.set(s, v); err != nil {
				return nil, &settingError{name: st.name, value: v, source: "env " + st.env, err: err}
			}
			s.noteSource(st.name, "env "+st.env, 0)
		}
	}
	for _, st := range allSettings {
		if v := *flags[st.name]; given[st.name] {
			if err := st.set(s, v); err != nil {
				return nil, &settingError{name: st.name, value: v, source: "flag -" + st.name, err: err}
			}
			s.noteSource(st.name, "flag -"+st.name, 0)
		}
	}
	if _, err := loadCredentials(s); err != nil { // the files are read again when serving
		return nil, err
	}
	return s, nil
}

// readConf finds the configuration file (flag before environment, conf
// before its alias config) and applies it.
func (s *settings) readConf(given map[string]bool, flags map[string]*string, getenv func(string) string) error {
	var source string
	for _, c := range confNames {
		if given[c.flag] {
			s.conf, source = *flags[c.flag], "flag -"+c.flag
			break
		}
	}
	for _, c := range confNames {
		if source != "" {
			break
		}
		if v := getenv(c.env); v != "" {
			s.conf, source = v, "env "+c.env
		}
	}
	if source == "" {
		return nil
	}
	data, err := os.ReadFile(s.conf)
	if err != nil {
		return &settingError{name: "conf", value: s.conf, source: source, err: unwrapPathError(err)}
	}
	return s.applyConf(s.conf, data)
}

// unwrapPathError drops the path from an *os.PathError, which the message
// already names.
func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// applyConf applies a configuration file: `name value`, `name=value` or
// `name = value` a line, a bare boolean name meaning true, # comments. Every
// error it returns starts with path:line.
func (s *settings) applyConf(path string, data []byte) error {
	text := strings.TrimPrefix(string(data), "\ufeff") // the BOM some Windows editors write
	n := 0
	for line := range strings.Lines(text) { // no length limit, unlike bufio.Scanner
		n++
		name, value, bare, ok := splitConfLine(line)
		if !ok {
			continue
		}
		st := findSetting(name)
		if st == nil {
			return fmt.Errorf("%s:%d: %w %q", path, n, errUnknownSetting, name)
		}
		if bare {
			if !st.isBool {
				return fmt.Errorf("%s:%d: setting %s %w", path, n, st.name, errNeedsValue)
			}
			value = "true"
		}
		if err := st.set(s, value); err != nil {
			return &settingError{name: st.name, value: value, source: path, line: n, err: err}
		}
		s.noteSource(st.name, path, n)
	}
	return nil
}

// splitConfLine splits one line of a configuration file; ok is false for a
// blank or comment line, and bare is true when there is no value. An empty
// name (a line "=5") is left to the caller to reject.
func splitConfLine(line string) (name, value string, bare, ok bool) {
	line = strings.TrimSuffix(line, "\n")
	line = strings.TrimSuffix(line, "\r")
	line = strings.Trim(line, " \t")
	if line == "" || line[0] == '#' {
		return "", "", false, false
	}
	i := strings.IndexAny(line, " \t=")
	if i < 0 {
		return line, "", true, true
	}
	name, value = line[:i], strings.TrimLeft(line[i:], " \t")
	if strings.HasPrefix(value, "=") {
		value = strings.TrimLeft(value[1:], " \t")
	}
	return name, value, false, true
}

func findSetting(name string) *setting {
	for i := range allSettings {
		if strings.EqualFold(allSettings[i].name, name) {
			return &allSettings[i]
		}
	}
	return nil
}

// printUsage lists every setting with its environment variable and default.
func printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: tcp_established_exporter [flags]\n\n"+
		"Counts the TCP connections established for at least a minimum duration\n"+
		"and serves the counts to Prometheus. Every setting can be given as a flag,\n"+
		"an environment variable or a line of the configuration file, in that precedence.\n\n")
	for _, st := range allSettings {
		def := st.def
		if def == "" {
			def = "none"
		}
		fmt.Fprintf(w, "  -%s (env %s, default %s)\n    \t%s\n", st.name, st.env, def, st.usage)
	}
	fmt.Fprintf(w, "  -conf, -config (env CONF, CONFIG, default none)\n    \tpath of a configuration file: `name value` a line\n")
	fmt.Fprintf(w, "  -version\n    \tprint the version and exit\n")
}

var (
	errArgument       = errors.New("unexpected argument")
	errUnknownSetting = errors.New("unknown setting")
	errNeedsValue     = errors.New("needs a value")
	errPath           = errors.New("empty path")
	errBool           = errors.New("not a boolean (true, false, 1, 0, t, f)")
	errPortRange      = errors.New("not a port number (1 to 65535)")
	errPortElem       = errors.New("is not a port number")
	errPortAll        = errors.New("-1 means all ports and stands alone")
	errPortTwice      = errors.New("is listed twice")
	errPortMany       = fmt.Errorf("lists more than %d ports", maxPorts)
	errListen         = errors.New("not a port or host:port")
	errDuration       = errors.New("not a positive number of seconds or Go duration")
	errDirection      = errors.New("not one of in, out, all")
	errSource         = errors.New("not one of auto, netlink, proc")
	errNamespaces     = errors.New("not one of own, all")
)

func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "true", "t", "1":
		return true, nil
	case "false", "f", "0":
		return false, nil
	}
	return false, errBool
}

func parsePort(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return 0, errPortRange
	}
	return n, nil
}

// maxPorts bounds the port list: the kernel-side filter grows with it.
const maxPorts = 64

// parsePorts takes "-1" (all ports: nil) or a comma-separated list of
// distinct ports, and names the bad element of a bad list.
func parsePorts(v string) ([]uint16, error) {
	if v == "-1" {
		return nil, nil
	}
	var ports []uint16
	for elem := range strings.SplitSeq(v, ",") {
		elem = strings.TrimSpace(elem)
		n, err := parsePort(elem)
		switch {
		case elem == "-1":
			return nil, errPortAll
		case err != nil:
			return nil, fmt.Errorf("%q %w", elem, errPortElem)
		case slices.Contains(ports, uint16(n)):
			return nil, fmt.Errorf("%q %w", elem, errPortTwice)
		case len(ports) == maxPorts:
			return nil, errPortMany
		}
		ports = append(ports, uint16(n))
	}
	return ports, nil
}

// portsString writes a port list as the port setting takes it.
func portsString(ports []uint16) string {
	if ports == nil {
		return "-1"
	}
	var b []byte
	for i, p := range ports {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(p), 10)
	}
	return string(b)
}

// parseListen takes "9690" (all addresses) or "host:port".
func parseListen(v string) (string, error) {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		if strings.Contains(v, ":") {
			return "", errListen
		}
		host, port = "", v
	}
	n, err := parsePort(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil // "+80" and "080" become "80"
}

// parseDuration takes whole seconds ("6") or a Go duration ("1m30s").
func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if n, nerr := strconv.ParseInt(v, 10, 64); nerr == nil {
		d, err = time.Duration(n)*time.Second, nil
		if n < 1 || n > int64(math.MaxInt64/time.Second) { // the product would wrap
			err = errDuration
		}
	}
	if err != nil || d <= 0 {
		return 0, errDuration
	}
	return d, nil
}

// parsePath takes any path but an empty one, which would make the
// connection tables relative to the working directory.
func parsePath(v string) (string, error) {
	if v == "" {
		return "", errPath
	}
	return v, nil
}

func parseDirection(v string) (string, error) {
	switch v = strings.ToLower(v); v {
	case "in", "out", "all":
		return v, nil
	}
	return "", errDirection
}

func parseNamespaces(v string) (all bool, err error) {
	switch strings.ToLower(v) {
	case "own":
		return false, nil
	case "all":
		return true, nil
	}
	return false, errNamespaces
}

func parseSource(v string) (string, error) {
	switch v = strings.ToLower(v); v {
	case "auto", "netlink", "proc":
		return v, nil
	}
	return "", errSource
}
