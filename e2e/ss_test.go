package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// Integration: the exporter's counts against ss.

// TestCountsMatchSS compares, port by port, the exporter's counts of a few
// hundred connections of mixed age with what ss lists for the same ports.
func TestCountsMatchSS(t *testing.T) {
	ss := lookPath(t, "ss")
	servers := []*testnet.Server{
		testnet.Listen(t, "tcp", "127.0.0.1:0"),
		testnet.Listen(t, "tcp", "127.0.0.1:0"),
		testnet.Listen(t, "tcp", "[::1]:0"),
		testnet.Listen(t, "tcp", "[::1]:0"),
		testnet.Listen(t, "tcp", "[::]:0"), // dual-stack: IPv4 clients count as tcp_version 4
	}
	var ports []int
	for _, s := range servers {
		ports = append(ports, s.Port)
	}
	// One batch: 100 connections, a different number on each port.
	batch := []struct {
		server int
		host   string
		n      int
	}{
		{0, "127.0.0.1", 30},
		{1, "127.0.0.1", 10},
		{2, "::1", 25},
		{3, "::1", 15},
		{4, "127.0.0.1", 12},
		{4, "::1", 8},
	}
	openBatch := func() {
		for _, c := range batch {
			testnet.Dial(t, c.n, "tcp", hostPort(c.host, servers[c.server].Port))
		}
	}
	// want is the labelled samples after k batches: each connection counts
	// once in (the accepted end) and once out (the dialling end).
	want := func(k int) map[string]float64 {
		m := make(map[string]float64)
		for _, c := range batch {
			v := "4"
			if c.host == "::1" {
				v = "6"
			}
			for _, dir := range []string{"in", "out"} {
				m[fmt.Sprintf(`direction=%q,port="%d",tcp_version="%s"`, dir, servers[c.server].Port, v)] += float64(k * c.n)
			}
		}
		return m
	}

	openBatch() // first seen at the exporter's first read
	x := startBinary(t, nil, "-direction", "all", "-duration", "1s", "-interval", "100ms")
	openBatch() // first seen a read or so later
	waitForEqual(t, "the first two batches to be long-term", want(2),
		scrapeSamples(t, x.url, longtermName, ports...))
	openBatch() // younger than duration for a while

	waitForEqual(t, "all batches to be established", want(3),
		scrapeSamples(t, x.url, establishedName, ports...))
	matchSS(t, ss, x, establishedName, ports, 3*100)
	waitForEqual(t, "all batches to be long-term", want(3),
		scrapeSamples(t, x.url, longtermName, ports...))
	matchSS(t, ss, x, longtermName, ports, 3*100)
}

// matchSS checks, for each port P, that the exporter's inbound count of
// name is the number of established sockets ss lists with local port P,
// and its outbound count the number with remote port P; and that they add
// up to total connections each way. The two are taken back to back, a few
// times if they disagree.
func matchSS(t *testing.T, ss string, x *exporterProc, name string, ports []int, total int) {
	t.Helper()
	const attempts = 5
	var diff string
	for range attempts {
		got := make(map[string]int)
		for labels, v := range portSamples(testnet.Scrape(t, x.url), name, ports...) {
			dir, _, _ := strings.Cut(strings.TrimPrefix(labels, `direction="`), `"`)
			_, port, _ := strings.Cut(labels, `port="`)
			port, _, _ = strings.Cut(port, `"`)
			got[dir+" "+port] += int(v)
		}
		want := make(map[string]int)
		sum := 0
		for _, p := range ports {
			in := ssCount(t, ss, fmt.Sprintf("( sport = :%d )", p))
			out := ssCount(t, ss, fmt.Sprintf("( dport = :%d )", p))
			want[fmt.Sprintf("in %d", p)], want[fmt.Sprintf("out %d", p)] = in, out
			sum += in
		}
		if sum != total {
			t.Fatalf("ss lists %d established connections to our ports, want %d: %v", sum, total, want)
		}
		if diff = cmp.Diff(want, got); diff == "" {
			return
		}
		t.Logf("%s disagrees with ss (-ss +exporter), trying again after the next read:\n%s", name, diff)
		reads := testnet.Samples(testnet.Scrape(t, x.url), readsName)[`file="tcp"`]
		testnet.WaitFor(t, waitLong, "the next read", func() bool {
			return testnet.Samples(testnet.Scrape(t, x.url), readsName)[`file="tcp"`] > reads
		})
	}
	t.Fatalf("%s disagrees with ss %d times; last mismatch (-ss +exporter):\n%s", name, attempts, diff)
}

// ssCount counts the established TCP sockets that ss lists for filter.
func ssCount(t *testing.T, ss, filter string) int {
	t.Helper()
	out, err := exec.Command(ss, "-Htn", "state", "established", filter).Output()
	if err != nil {
		t.Fatalf("ss %s: %v", filter, err)
	}
	return strings.Count(string(out), "\n")
}
