package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// Tests of serve, in-process on loopback as main runs it, and the helpers
// the package's tests share: goldens, a server (internal/testnet holds
// those the system tests share too).

// update rewrites the *.golden files from what the code produces.
var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with the golden file path, or rewrites it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

// startServer runs serve in-process on an ephemeral loopback port with
// the given flags, as main does, and stops it at the end of the test,
// when serve must return nil. It returns the base URL, http://127.0.0.1:PORT.
func startServer(t testing.TB, args ...string) string {
	t.Helper()
	return "http://" + runServe(t, log.New(io.Discard, "", 0), args...)
}

// runServe is startServer logging to logger; it returns the address,
// 127.0.0.1:PORT.
func runServe(t testing.TB, logger *log.Logger, args ...string) string {
	t.Helper()
	s, err := loadSettings(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, s, ln, logger) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("serve did not return 20s after its context was cancelled")
		}
	})
	return ln.Addr().String()
}

// seriesOf picks the samples of one family for the given ports, keyed by
// their labels.
func seriesOf(body, name string, ports ...int) map[string]float64 {
	got := make(map[string]float64)
	for labels, v := range testnet.Samples(body, name) {
		for _, p := range ports {
			if strings.Contains(labels, fmt.Sprintf(`port="%d"`, p)) {
				got[labels] = v
			}
		}
	}
	return got
}

// waitSeries polls /metrics until the series of family name on ports are
// exactly want, and returns the body that matched.
func waitSeries(t *testing.T, base, name string, ports []int, want map[string]float64) string {
	t.Helper()
	var body string
	var got map[string]float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		body = testnet.Scrape(t, base)
		if got = seriesOf(body, name, ports...); cmp.Equal(want, got) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: series mismatch after 30s (-want +got):\n%s", name, cmp.Diff(want, got))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestServe(t *testing.T) {
	v4 := testnet.Listen(t, "tcp4", "127.0.0.1:0")
	v6 := testnet.Listen(t, "tcp6", "[::1]:0")
	dual := testnet.Listen(t, "tcp", "[::]:0")
	ports := []int{v4.Port, v6.Port, dual.Port}
	base := startServer(t, "-duration", "1s", "-interval", "100ms")
	label := func(port int, version string) string {
		return fmt.Sprintf(`port="%d",tcp_version="%s"`, port, version)
	}
	idle := map[string]float64{label(v4.Port, "4"): 0, label(v6.Port, "6"): 0, label(dual.Port, "4"): 0, label(dual.Port, "6"): 0}
	waitSeries(t, base, longtermName, ports, idle)

	opened := time.Now()
	v4Conns := testnet.Dial(t, 3, "tcp4", fmt.Sprintf("127.0.0.1:%d", v4.Port))
	testnet.Dial(t, 2, "tcp6", fmt.Sprintf("[::1]:%d", v6.Port))
	testnet.Dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.Port)) // IPv4 clients of a dual-stack listener
	testnet.Dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.Port))
	all := map[string]float64{label(v4.Port, "4"): 3, label(v6.Port, "6"): 2, label(dual.Port, "4"): 2, label(dual.Port, "6"): 1}
	body := waitSeries(t, base, establishedName, ports, all)
	if time.Since(opened) < time.Second { // else the connections may be long-term already
		if diff := cmp.Diff(idle, seriesOf(body, longtermName, ports...)); diff != "" {
			t.Errorf("long-term before the duration mismatch (-want +got):\n%s", diff)
		}
	}
	waitSeries(t, base, longtermName, ports, all)

	for _, c := range v4Conns {
		c.Close()
	}
	gone := map[string]float64{label(v4.Port, "4"): 0, label(v6.Port, "6"): 2, label(dual.Port, "4"): 2, label(dual.Port, "6"): 1}
	waitSeries(t, base, longtermName, ports, gone)
	v4.Listener.Close()
	delete(gone, label(v4.Port, "4"))
	waitSeries(t, base, longtermName, ports, gone)
}

func TestServeSimpleWithPort(t *testing.T) {
	dual := testnet.Listen(t, "tcp", "[::]:0")
	other := testnet.Listen(t, "tcp", "127.0.0.1:0")
	base := startServer(t, "-simple", "-port", fmt.Sprint(dual.Port), "-duration", "1s", "-interval", "100ms")
	testnet.Dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", dual.Port))
	testnet.Dial(t, 1, "tcp6", fmt.Sprintf("[::1]:%d", dual.Port))
	testnet.Dial(t, 4, "tcp4", fmt.Sprintf("127.0.0.1:%d", other.Port))
	testnet.WaitFor(t, 30*time.Second, "three long-term connections in simple mode", func() bool {
		return cmp.Equal(map[string]float64{"": 3}, testnet.Samples(testnet.Scrape(t, base), longtermName))
	})
}

func TestEstablishedCountsYoungConnections(t *testing.T) {
	srv := testnet.Listen(t, "tcp4", "127.0.0.1:0")
	base := startServer(t, "-port", strconv.Itoa(srv.Port), "-duration", "3s", "-interval", "100ms")
	key := fmt.Sprintf(`port="%d",tcp_version="4"`, srv.Port)
	idle6 := fmt.Sprintf(`port="%d",tcp_version="6"`, srv.Port) // kept at 0 by the port setting
	addr := fmt.Sprintf("127.0.0.1:%d", srv.Port)
	testnet.Dial(t, 2, "tcp4", addr)
	waitSeries(t, base, longtermName, []int{srv.Port}, map[string]float64{key: 2, idle6: 0})
	// Three young ones beside: seen within the duration of their opening,
	// they cannot be long-term. A machine too slow for that tries again.
	for attempt := 1; ; attempt++ {
		opened := time.Now()
		young := testnet.Dial(t, 3, "tcp4", addr)
		body := waitSeries(t, base, establishedName, []int{srv.Port}, map[string]float64{key: 5, idle6: 0})
		if time.Since(opened) < 3*time.Second {
			if got := testnet.Samples(body, longtermName)[key]; got != 2 {
				t.Errorf("long-term = %v beside 5 established of which 3 young, want 2", got)
			}
			return
		}
		if attempt == 3 {
			t.Fatal("three times the young connections took longer than the duration to be seen")
		}
		for _, c := range young {
			c.Close()
		}
		waitSeries(t, base, establishedName, []int{srv.Port}, map[string]float64{key: 2, idle6: 0})
	}
}
