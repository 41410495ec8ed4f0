// Command bench measures what the exporter costs beside its floors, at
// several numbers of real established loopback connections, and prints
// tables. The floors are the least any reader of the tables spends,
// measured by a process of its own (./floor) that reads once a second as
// the exporter does and parses nothing: raw reads of /proc/net/tcp{,6},
// and the kernel's own sock_diag dump, asked for both ways: one request for
// both families in one walk of the socket hash (the exporter's way, and
// the floor its targets are set against, printed at the end), and one
// request a family, each walking the whole hash.
//
//	go run ./bench                  # N = 0, 1000, 10000, 50000, 200000; -busy 10000,100000
//	go run ./bench -n 0,1000 -reads 8 -scrapes 200 -busy ""
//	go run ./bench -n "" -busy 1000 -reads 8 -scrapes 200
//
// As root it runs in a network namespace of its own (unshare -n), so that
// only its own connections are in the tables. The -busy rows hold N
// connections there and measure the exporter and its floors in a second,
// empty namespace: once sharing the host's connection table, whose walks
// skip the 2N sockets, and once made after net.ipv4.tcp_child_ehash_entries
// is set to 1024 in the bench's namespace (the host's is never touched, and
// the bench's is restored at once), with a table of its own. The -node rows
// (off by default) measure the exporter of a node (-namespaces all) on K
// network namespaces of pods beside the bench's own (see nodemeasure.go);
// for them the bench runs in a PID namespace of its own too, so that the
// exporter's /proc lists the bench's processes alone, and everything the
// bench started ends with it. Figures drift between runs and machines:
// compare the ratios, which are taken in one run.
//
//	go run ./bench -n "" -busy "" -node 100,1000
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	var (
		ns      = flag.String("n", "0,1000,10000,50000,200000", "connection counts, comma-separated")
		ports   = flag.Int("ports", 100, "listening ports the connections spread over")
		reads   = flag.Int("reads", 20, "exporter reads to measure CPU over, in 4 windows")
		scrapes = flag.Int("scrapes", 1000, "scrapes to measure /metrics latency over, in bursts of 200")
		extra   = flag.String("args", "", "extra exporter flags, space-separated")
		busy    = flag.String("busy", "10000,100000", `connections held beside an empty namespace, comma-separated; "" for none`)
		node    = flag.String("node", "", `network namespaces of pods on a node, comma-separated (at most 1000); "" for none`)
	)
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("bench: ")
	nodeCounts, err := parseNode(*node)
	if err != nil {
		log.Fatal(err)
	}
	if reexecInNetns(len(nodeCounts) > 0) {
		return
	}
	counts, err := parseCounts(*ns, 0)
	if err != nil {
		log.Fatal(err)
	}
	busyCounts, err := parseCounts(*busy, 1)
	if err != nil {
		log.Fatal(err)
	}
	if len(busyCounts) > 0 && os.Getenv("TEE_BENCH_NETNS") == "" {
		log.Print("the empty-namespace rows need root and unshare: not measured")
		busyCounts = nil
	}
	if len(nodeCounts) > 0 && os.Getenv(pidnsEnv) == "" {
		log.Print("the node rows need root and unshare: not measured")
		nodeCounts = nil
	}
	dir, err := os.MkdirTemp("", "tee-bench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bins, err := buildAll(dir, len(nodeCounts) > 0)
	if err != nil {
		log.Fatal(err)
	}
	cfg := runConfig{ports: *ports, reads: *reads, scrapes: *scrapes, args: strings.Fields(*extra), dir: dir}
	last := 0
	rows := runRows(counts, &last, "", func(n int) ([]result, error) { return measure(bins, cfg, n) })
	busyRows := runRows(busyCounts, &last, "beside an empty namespace: ", func(n int) ([]result, error) {
		return measureBusy(bins, cfg, n)
	})
	printTable(os.Stdout, rows, busyRows, bins) // before the node rows, which take long
	printNode(os.Stdout, runNodeRows(bins, cfg, nodeCounts, last))
}

// runRows measures f at each of counts, waiting first for the TIME_WAIT
// sockets of the last load, of last connections, to expire.
func runRows(counts []int, last *int, what string, f func(n int) ([]result, error)) []result {
	var rows []result
	for _, n := range counts {
		if *last > 0 {
			waitTimeWait()
		}
		r, err := f(n)
		if err != nil {
			log.Fatalf("%sN=%d: %v", what, n, err)
		}
		rows = append(rows, r...)
		*last = n
		log.Printf("%sN=%d done", what, n)
	}
	return rows
}

// parseCounts parses a list of connection counts of at least least; "" is
// none.
func parseCounts(s string, least int) ([]int, error) {
	var counts []int
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < least || n > 200000 {
			return nil, fmt.Errorf("bad connection count %q", f)
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// Environment variables the bench passes to itself run again in
// namespaces of its own: the network namespaces it must never change (the
// one it was started in, and that of the machine's init), and that it is
// PID 1 of a PID namespace with its own /proc.
const (
	outerNetnsEnv = "TEE_BENCH_OUTER_NETNS"
	pidnsEnv      = "TEE_BENCH_PIDNS"
)

// parseNode parses the -node list of namespace counts, at most maxPods.
func parseNode(s string) ([]int, error) {
	counts, err := parseCounts(s, 1)
	for _, k := range counts {
		if k > maxPods {
			return nil, fmt.Errorf("-node %d: at most %d namespaces", k, maxPods)
		}
	}
	return counts, err
}

// reexecInNetns runs this program again in a new network namespace when
// root, with loopback up, and in a new PID namespace with a /proc of its
// own when pidns; it reports whether it did (and so is done).
func reexecInNetns(pidns bool) bool {
	if os.Geteuid() != 0 || os.Getenv("TEE_BENCH_NETNS") != "" {
		if os.Getenv("TEE_BENCH_NETNS") != "" {
			if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
				log.Fatalf("ip link set lo up: %v: %s", err, out)
			}
		}
		return false
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return false
	}
	self, err := os.Executable()
	if err != nil {
		return false
	}
	flags := []string{"-n"}
	env := []string{"TEE_BENCH_NETNS=1"}
	if pidns {
		flags = append(flags, "-p", "-f", "--mount-proc")
		env = append(env, pidnsEnv+"=1")
	}
	own, _ := os.Readlink("/proc/self/ns/net")
	first, _ := os.Readlink("/proc/1/ns/net")
	env = append(env, outerNetnsEnv+"="+own+" "+first)
	cmd := exec.Command("unshare", append(append(flags, self), os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatal(err)
	}
	return true
}

// binaries are the programs a run measures or uses.
type binaries struct {
	exporter, bare, load, floor, cadvisor string
}

// buildAll builds the exporter as the Dockerfile does, a bare net/http
// server with the same flags (the size the exporter cannot go below), the
// load tool and the floor; and cAdvisor's way of reading, for node rows.
func buildAll(dir string, node bool) (binaries, error) {
	b := binaries{
		exporter: filepath.Join(dir, "tcp_established_exporter"),
		bare:     filepath.Join(dir, "bare"),
		load:     filepath.Join(dir, "load"),
		floor:    filepath.Join(dir, "floor"),
	}
	bareSrc, err := writeBare(dir)
	if err != nil {
		return b, err
	}
	type pkg struct{ dir, out, pkg string }
	pkgs := []pkg{
		{".", b.exporter, "."}, {bareSrc, b.bare, "."}, {".", b.load, "./bench/load"},
		{".", b.floor, "./bench/floor"},
	}
	if node {
		b.cadvisor = filepath.Join(dir, "cadvisor")
		pkgs = append(pkgs, pkg{".", b.cadvisor, "./bench/cadvisor"})
	}
	for _, c := range pkgs {
		cmd := exec.Command("go", "build", "-trimpath", "-gcflags=crypto/...=-l", "-ldflags=-s -w", "-o", c.out, c.pkg)
		cmd.Dir = c.dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go build %s: %v\n%s", c.pkg, err, out)
		}
	}
	return b, nil
}

// writeBare writes the bare server's module under dir and returns its
// directory.
func writeBare(dir string) (string, error) {
	bareSrc := filepath.Join(dir, "baresrc")
	if err := os.MkdirAll(bareSrc, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(bareSrc, "go.mod"), []byte("module bare\n\ngo 1.26\n"), 0o644); err != nil {
		return "", err
	}
	return bareSrc, os.WriteFile(filepath.Join(bareSrc, "main.go"), []byte(bareServer), 0o644)
}

const bareServer = `package main

import "net/http"

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	http.ListenAndServe(":9690", nil)
}
`

// waitFor polls cond every 50 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// waitTimeWait waits, at most 70 s, for the TIME_WAIT sockets of the last
// load to expire: they stay in the kernel's socket hash for a minute and
// slow every dump and read meanwhile (see PERF-NOTES.md).
func waitTimeWait() {
	err := waitFor(70*time.Second, "TIME_WAIT sockets to expire", func() bool {
		data, err := os.ReadFile("/proc/net/sockstat")
		if err != nil {
			return true
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "TCP: "); ok {
				f := strings.Fields(rest)
				for i := 0; i+1 < len(f); i += 2 {
					if f[i] == "tw" {
						n, _ := strconv.Atoi(f[i+1])
						return n < 100
					}
				}
			}
		}
		return true
	})
	if err != nil {
		log.Print(err)
	}
}
