package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"tcp_established_exporter/internal/testnet"
)

// The exporter in network namespaces, as a sidecar runs in its pod's.

// TestSidecarNetns runs the exporter in one network namespace of three,
// each with connections on the same port, as a sidecar shares its pod's:
// each exporter counts the connections of its own namespace only, and
// reports the connection table it reads in: the host's, shared (negative),
// or one of the namespace's own where the kernel makes one (Linux 6.1).
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
		suffix  string
		conns   int
		buckets int // of a table of its own; 0: the host's
		name    string
	}{
		{suffix: "a", conns: 4},
		{suffix: "b", conns: 7},
	}
	if _, err := os.Stat("/proc/sys/net/ipv4/tcp_child_ehash_entries"); err != nil {
		t.Logf("no namespace with a table of its own: this kernel cannot make one (before 6.1): %v", err)
	} else {
		namespaces = append(namespaces, namespaces[0])
		namespaces[2].suffix, namespaces[2].conns, namespaces[2].buckets = "own", 2, 1024
	}
	for i := range namespaces {
		ns := &namespaces[i]
		if ns.buckets != 0 {
			ns.name = newNetnsOwnTable(t, ip, ns.suffix, ns.buckets)
		} else {
			ns.name = newNetns(t, ip, ns.suffix)
		}
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
		checkBuckets(t, ip, ns.name, self, "http://"+listen+"/metrics", ns.buckets)
	}
}

// checkBuckets checks the connection table's size that the exporter in ns
// reports: the kernel's net.ipv4.tcp_ehash_entries there, own (buckets)
// or the host's (negative); none where the kernel has no such setting.
func checkBuckets(t *testing.T, ip, ns, self, url string, buckets int) {
	t.Helper()
	out, err := exec.Command(ip, "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/tcp_ehash_entries").Output()
	body, scrapeErr := scrapeInNetns(ip, ns, self, url)
	if scrapeErr != nil {
		t.Fatal(scrapeErr)
	}
	got, ok := testnet.Samples(body, bucketsName)[""]
	if err != nil {
		t.Logf("%s: no net.ipv4.tcp_ehash_entries (%v): a kernel before 6.1, whose table is always the host's", ns, err)
		if ok {
			t.Errorf("%s = %v without the kernel's setting", bucketsName, got)
		}
		return
	}
	kernel, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	if buckets != 0 && kernel != buckets || buckets == 0 && kernel >= 0 {
		t.Errorf("%s: the kernel says %d buckets, want %d (0: shared, negative)", ns, kernel, buckets)
	}
	if !ok || got != float64(kernel) {
		t.Errorf("%s: %s = %v (%t), want %d", ns, bucketsName, got, ok, kernel)
	}
}
