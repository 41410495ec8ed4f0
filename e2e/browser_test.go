package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// Users online, counted by the exporter with its default duration (6 s)
// behind two real servers, with real browsers as the users (SPEC §8).

// browserUsers each run a headless Chromium from an address of their own:
// user N connects from 127.0.0.N.
const browserUsers = 3

// chromiumFlags run Chromium headless as root, in a namespace without a
// display, a session bus or any traffic but the page's. Debian's wrapper
// fails its own /dev/shm test, hence --disable-dev-shm-usage.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio",
}

// webServer is one of the servers the browsers load their page from.
type webServer struct {
	name       string
	port       int
	keepAlive  string // what it does with idle keep-alive connections
	closesIdle bool   // within the default duration: one connection a user remains
	ready      string // what it logs once it listens
	upLine     string // what it logs, then the peer, once a user's WebSocket is up
	cmd        []string
	proc       *process
}

// webServers are Shiny's own server (httpuv) on the app in testdata/shiny,
// and node's http module running testdata/node/server.js.
func webServers(rscript, node, testdata string) []*webServer {
	app := strconv.Quote(filepath.Join(testdata, "shiny"))
	return []*webServer{{
		name: "shiny", port: 3838, keepAlive: "never closes idle connections",
		ready: "Listening on", upLine: "session up",
		cmd: []string{rscript, "-e", "shiny::runApp(" + app + ", port=3838, host='0.0.0.0', launch.browser=FALSE)"},
	}, {
		name: "node", port: 8080, keepAlive: "closes idle connections after 5 s", closesIdle: true,
		ready: "listening 8080", upLine: "ws up",
		cmd: []string{node, filepath.Join(testdata, "node", "server.js"), "8080"},
	}}
}

// browserLab is the namespace the servers, the exporter and the browsers
// share.
type browserLab struct {
	ip, ss, chromium, self string
	ns                     string
	metricsURL             string
	profiles               string // a new --user-data-dir each browser
}

// TestBrowsersOnShinyAndNode runs Shiny's own server and node's http server
// side by side, one exporter observing both ports (-port 3838,8080, the
// default duration), and three Chromium users on each server in turn: the
// clients gauge says 3, then 2 when one quits, behind both; the connection
// count says the same behind node, which closes idle keep-alive connections
// within the duration, and more behind Shiny, which keeps them.
func TestBrowsersOnShinyAndNode(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to create network namespaces")
	}
	lab := &browserLab{ip: lookPath(t, "ip"), ss: lookPath(t, "ss"), chromium: lookPath(t, "chromium")}
	node, rscript := lookPath(t, "node"), lookPath(t, "Rscript")
	if out, err := exec.Command(rscript, "-e", "library(shiny)").CombinedOutput(); err != nil {
		skipWithout(t, "R has no shiny package (test.sh installs r-cran-shiny): %v\n%s", err, out)
	}
	// A test that go test's -timeout stops runs no cleanup, and leaves
	// browsers and a namespace behind: better not to start.
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < 2*time.Minute {
		t.Fatalf("only %s left before the -timeout of go test; this test needs up to 2 minutes (-count=20: -timeout 40m)", time.Until(deadline).Round(time.Second))
	}
	var err error
	if lab.self, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	testdata, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	// Made before the namespace, so removed after what is left inside it is
	// killed at the end.
	lab.profiles = t.TempDir()
	lab.ns = newNetns(t, lab.ip, "browsers")
	lab.routes(t)

	servers := webServers(rscript, node, testdata)
	for _, srv := range servers {
		srv.proc = startProcessGroup(t, nil, lab.ip, append([]string{"netns", "exec", lab.ns}, srv.cmd...)...)
	}
	for _, srv := range servers {
		testnet.WaitFor(t, waitLong, srv.name+" to listen", func() bool {
			srv.proc.checkRunning(t)
			return strings.Contains(srv.proc.out.String(), srv.ready)
		})
	}
	const listen = "127.0.0.1:9690"
	lab.metricsURL = "http://" + listen + "/metrics"
	exporter := startProcess(t, nil, lab.ip, "netns", "exec", lab.ns, bin, "-listen", listen, "-port", "3838,8080")
	testnet.WaitFor(t, waitLong, "the exporter to answer in "+lab.ns, func() bool {
		exporter.checkRunning(t)
		_, err := scrapeInNetns(lab.ip, lab.ns, lab.self, lab.metricsURL)
		return err == nil
	})

	var table []string
	for i, srv := range servers {
		other := servers[1-i]
		t.Run(srv.name, func(t *testing.T) { table = append(table, lab.users(t, srv, other)...) })
	}
	t.Logf("users online, measured (default duration 6 s):\n"+
		"| server | keep-alive behaviour | connections | clients | true users | per user (.1/.2/.3) |\n"+
		"|---|---|---|---|---|---|\n%s", strings.Join(table, "\n"))
}

// routes make 127.0.0.N the source of connections to 127.0.0.N: by
// default all of 127/8 leaves from 127.0.0.1, and three users would be one
// client.
func (lab *browserLab) routes(t *testing.T) {
	t.Helper()
	for n := 1; n <= browserUsers; n++ {
		a := userAddr(n)
		if out, err := exec.Command(lab.ip, "-n", lab.ns, "route", "replace", "local", a, "dev", "lo", "src", a, "table", "local").CombinedOutput(); err != nil {
			t.Fatalf("route for %s: %v\n%s", a, err, out)
		}
		out, err := exec.Command(lab.ip, "-n", lab.ns, "route", "get", a).CombinedOutput()
		if err != nil || !strings.Contains(string(out), " src "+a+" ") {
			t.Fatalf("ip route get %s in %s does not leave from %s: %v\n%s", a, lab.ns, a, err, out)
		}
	}
}

func userAddr(n int) string { return fmt.Sprintf("127.0.0.%d", n) }

// users opens the server's page in three browsers, checks the gauges with
// all three and after the last one quits, and returns the table's rows.
func (lab *browserLab) users(t *testing.T, srv, other *webServer) []string {
	browsers := make([]*process, browserUsers)
	start := time.Now()
	for i := range browsers {
		profile, err := os.MkdirTemp(lab.profiles, srv.name+"-user")
		if err != nil {
			t.Fatal(err)
		}
		args := append([]string{"netns", "exec", lab.ns, lab.chromium}, chromiumFlags...)
		args = append(args, "--user-data-dir="+profile, fmt.Sprintf("http://%s:%d/", userAddr(i+1), srv.port))
		browsers[i] = startProcessGroup(t, nil, lab.ip, args...)
	}
	defer func() {
		if !t.Failed() {
			return
		}
		t.Logf("%s log:\n%s", srv.name, srv.proc.out)
		for i, b := range browsers {
			out := b.out.String()
			t.Logf("browser of user %d, its last output:\n%s", i+1, out[max(0, len(out)-2000):])
		}
	}()
	waitCheck(t, waitLong, fmt.Sprintf("%d WebSockets up on %s", browserUsers, srv.name), func() string {
		srv.proc.checkRunning(t)
		log := srv.proc.out.String()
		var missing []string
		for n := 1; n <= browserUsers; n++ {
			if !strings.Contains(log, srv.upLine+" "+userAddr(n)+"\n") {
				missing = append(missing, userAddr(n))
			}
		}
		if missing != nil {
			return "no WebSocket from " + strings.Join(missing, ", ")
		}
		return ""
	})
	t.Logf("%s: %d pages loaded, WebSockets up, in %s", srv.name, browserUsers, time.Since(start).Round(time.Millisecond))

	var rows []string
	for _, users := range []int{browserUsers, browserUsers - 1} {
		if users < browserUsers {
			quit := time.Now()
			browsers[users].stop()
			t.Logf("%s: user %d quit in %s", srv.name, users+1, time.Since(quit).Round(time.Millisecond))
		}
		f := lab.settle(t, srv, other, users)
		row := fmt.Sprintf("| %s | %s | %g | %g | %d | %s |", srv.name, srv.keepAlive, f.conns, f.clients, users, lab.perUser(t, srv.port))
		t.Log(row)
		rows = append(rows, row)
	}
	return rows
}

// figures are what the exporter says of a server's port, IPv4.
type figures struct {
	conns, clients, established float64
	otherConns, otherClients    float64 // of the other server's port, no browser on it
}

func (lab *browserLab) figures(t *testing.T, srv, other *webServer) figures {
	t.Helper()
	body, err := scrapeInNetns(lab.ip, lab.ns, lab.self, lab.metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, port int) float64 {
		key := fmt.Sprintf(`port="%d",tcp_version="4"`, port)
		v, ok := testnet.Samples(body, name)[key]
		if !ok {
			t.Fatalf("no %s{%s} in:\n%s", name, key, body)
		}
		return v
	}
	return figures{
		conns:        value(longtermName, srv.port),
		clients:      value(clientsName, srv.port),
		established:  value(establishedName, srv.port),
		otherConns:   value(longtermName, other.port),
		otherClients: value(clientsName, other.port),
	}
}

// settle waits until the figures are those of the given number of users,
// every connection long-term, then requires them unchanged over 3 of the
// exporter's polls (1 s apart by default): on the way they can pass by the
// right value. Behind node the keep-alive connections live a little longer
// than 6 s (load time plus 5 s idle), so they count for up to a second
// before they close.
func (lab *browserLab) settle(t *testing.T, srv, other *webServer, users int) figures {
	t.Helper()
	check := func(f figures) string {
		switch n := float64(users); {
		case f.conns != f.established:
			return "not every connection is long-term yet"
		case f.clients != n:
			return fmt.Sprintf("%g clients, want %d", f.clients, users)
		case srv.closesIdle && f.conns != n:
			return fmt.Sprintf("%g connections, want %d", f.conns, users)
		case !srv.closesIdle && f.conns <= f.clients:
			return fmt.Sprintf("%g connections, want more than the %g clients", f.conns, f.clients)
		case f.otherConns != 0 || f.otherClients != 0:
			return fmt.Sprintf("port %d has %g connections of %g clients, want none", other.port, f.otherConns, f.otherClients)
		}
		return ""
	}
	what := fmt.Sprintf("%s with %d users", srv.name, users)
	var f figures
	last := ""
	for deadline := time.Now().Add(waitLong); ; {
		if f = lab.figures(t, srv, other); check(f) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out after %s: %s (%+v)", what, waitLong, check(f), f)
		}
		if s := fmt.Sprintf("%+v", f); s != last {
			t.Logf("%s: on the way: %s", what, s)
			last = s
		}
		time.Sleep(250 * time.Millisecond)
	}
	for i := 1; i <= 3; i++ {
		time.Sleep(1100 * time.Millisecond)
		if g := lab.figures(t, srv, other); g != f {
			t.Fatalf("%s: %+v, then %d s later %+v", what, f, i, g)
		}
	}
	return f
}

// perUser counts the server's established connections per user, as the
// kernel lists them (ss): "7/7/7".
func (lab *browserLab) perUser(t *testing.T, port int) string {
	t.Helper()
	out, err := exec.Command(lab.ip, "netns", "exec", lab.ns, lab.ss, "-Htn", "state", "established", fmt.Sprintf("( sport = :%d )", port)).CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v\n%s", err, out)
	}
	counts := make(map[string]int)
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) >= 4 {
			peer := f[3][:strings.LastIndexByte(f[3], ':')]
			counts[peer]++
		}
	}
	var per []string
	for n := 1; n <= browserUsers; n++ {
		per = append(per, strconv.Itoa(counts[userAddr(n)]))
		delete(counts, userAddr(n))
	}
	if len(counts) > 0 {
		t.Errorf("connections to port %d from others than the users: %v", port, counts)
	}
	return strings.Join(per, "/")
}
