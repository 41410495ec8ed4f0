package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"tcp_established_exporter/internal/testnet"
)

// The exporter in network namespaces, as a sidecar runs in its pod's.

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
		testnet.WaitFor(t, waitLong, "the connections in "+ns.name, func() bool {
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
				return testnet.Samples(body, name), err
			})
		}
	}
}
