package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Integration: network namespaces, and the test binary re-executed inside
// one as a helper.

// helperEnv makes the test binary, re-executed inside a network namespace,
// do one job of runHelper instead of running tests.
const helperEnv = "TEE_TEST_HELPER"

func init() {
	if job := os.Getenv(helperEnv); job != "" {
		os.Exit(runHelper(job, os.Stdin, os.Stdout, os.Stderr))
	}
}

// runHelper does a job for a test that cannot do it from its own network
// namespace:
//
//   - scrape: GET $TEE_TEST_URL and print the body;
//   - hold: listen on 127.0.0.1:$TEE_TEST_PORT, open $TEE_TEST_CONNS
//     connections to it, print "ready" and hold them until stdin closes.
func runHelper(job string, stdin io.Reader, stdout, stderr io.Writer) int {
	var err error
	switch job {
	case "scrape":
		err = helperScrape(os.Getenv("TEE_TEST_URL"), stdout)
	case "hold":
		err = helperHold(os.Getenv("TEE_TEST_PORT"), os.Getenv("TEE_TEST_CONNS"), stdin, stdout)
	default:
		err = fmt.Errorf("unknown job %q", job)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s=%s: %v\n", helperEnv, job, err)
		return 1
	}
	return 0
}

func helperScrape(u string, stdout io.Writer) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	_, err = io.Copy(stdout, resp.Body)
	return err
}

func helperHold(port, conns string, stdin io.Reader, stdout io.Writer) error {
	n, err := strconv.Atoi(conns)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return err
	}
	defer ln.Close()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// The backlog completes the handshakes; accepting afterwards is enough.
	for range n {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	for range n {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	fmt.Fprintln(stdout, "ready")
	// Until the test closes stdin, or dies: then the pipe closes too.
	_, err = io.Copy(io.Discard, stdin)
	return err
}

var netnsSeq atomic.Int64

// newNetns creates a network namespace with its loopback up, and deletes
// it at the end of the test, after the processes inside are stopped.
func newNetns(t *testing.T, ip, suffix string) string {
	t.Helper()
	name := fmt.Sprintf("tee-test-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), suffix)
	if out, err := exec.Command(ip, "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	if out, err := exec.Command(ip, "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v\n%s", name, err, out)
	}
	return name
}

// TestSidecarNetns runs the exporter in one network namespace of two, each
// with connections on the same port, as a sidecar shares its pod's: each
// exporter counts the connections of its own namespace only.
func TestSidecarNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to create network namespaces")
	}
	ip := lookPath(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	const (
		port   = 7000 // in fresh namespaces, nothing else holds it
		listen = "127.0.0.1:9690"
	)
	namespaces := []struct {
		suffix string
		conns  int
		name   string
	}{
		{suffix: "a", conns: 4},
		{suffix: "b", conns: 7},
	}
	for i := range namespaces {
		ns := &namespaces[i]
		ns.name = newNetns(t, ip, ns.suffix)
		holder := startProcess(t, []string{helperEnv + "=hold", "TEE_TEST_PORT=" + strconv.Itoa(port), "TEE_TEST_CONNS=" + strconv.Itoa(ns.conns)},
			ip, "netns", "exec", ns.name, self)
		waitFor(t, waitLong, "the connections in "+ns.name, func() bool {
			holder.checkRunning(t)
			return strings.Contains(holder.out.String(), "ready\n")
		})
		startProcess(t, nil, ip, "netns", "exec", ns.name, bin, "-listen", listen, "-duration", "1s", "-interval", "100ms")
	}
	for _, ns := range namespaces {
		// Everything the exporter counts: its own listener never shows,
		// and nothing of the other namespace does.
		want := map[string]float64{fmt.Sprintf(`port="%d",tcp_version="4"`, port): float64(ns.conns)}
		for _, name := range []string{longtermName, establishedName} {
			waitForEqual(t, name+" in "+ns.name, want, func() (map[string]float64, error) {
				body, err := scrapeInNetns(ip, ns.name, self, "http://"+listen+"/metrics")
				return samples(body, name), err
			})
		}
	}
}

// scrapeInNetns scrapes u from inside network namespace ns, by the test
// binary re-executed there.
func scrapeInNetns(ip, ns, self, u string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ip, "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), helperEnv+"=scrape", "TEE_TEST_URL="+u)
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		err = fmt.Errorf("%v: %s", err, exit.Stderr)
	}
	return string(out), err
}
