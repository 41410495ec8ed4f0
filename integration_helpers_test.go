package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The integration tests hold the real binary against programs nobody on
// the project wrote: promtool, a Prometheus server, ss and the kernel's
// network namespaces. A test that needs a missing tool, or root, skips and
// says why; test.sh installs the tools, and CI runs as root. This file
// holds the helpers they share.

// waitLong bounds every wait on a process: the machine is shared and slow
// at times, and a test must not depend on its speed.
const waitLong = 60 * time.Second

// lookPath finds a tool or skips the test.
func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipWithout(t, "%s is not installed (test.sh installs it): %v", name, err)
	}
	return p
}

// process is a program other than the exporter under startBinary: a
// Prometheus server, or an exporter or helper inside a network namespace.
type process struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer // stdout and stderr
	done  chan struct{}
}

// startProcess starts name with args, and stops it at the end of the test.
func startProcess(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), out: new(syncBuffer), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

// checkRunning fails the test if the process has exited.
func (p *process) checkRunning(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("%s exited early: %v\n%s", p.cmd.Path, p.cmd.ProcessState, p.out)
	default:
	}
}

// stop closes stdin, asks the process to stop with SIGTERM and kills it if
// it has not within 10 s.
func (p *process) stop() {
	p.stdin.Close()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitForEqual polls got until it returns want, and on timeout shows the
// last difference and error.
func waitForEqual[T any](t *testing.T, what string, want T, got func() (T, error)) {
	t.Helper()
	var (
		last    T
		lastErr error
		ok      bool
	)
	defer func() {
		if !ok {
			t.Logf("%s: last error %v; mismatch (-want +got):\n%s", what, lastErr, cmp.Diff(want, last))
		}
	}()
	waitFor(t, waitLong, what, func() bool {
		last, lastErr = got()
		return lastErr == nil && cmp.Equal(want, last)
	})
	ok = true
}

// portSamples is samples(body, name) restricted to the series of the given
// ports, so that other sockets of the machine do not get in the way; the
// one sample of simple mode, without labels, stays.
func portSamples(body, name string, ports ...int) map[string]float64 {
	m := samples(body, name)
	for labels := range m {
		keep := labels == ""
		for _, p := range ports {
			keep = keep || strings.Contains(labels, fmt.Sprintf(`port="%d"`, p))
		}
		if !keep {
			delete(m, labels)
		}
	}
	return m
}

// scrapeSamples returns a got function for waitForEqual that scrapes the
// exporter at base for the samples of name on ports.
func scrapeSamples(t *testing.T, base, name string, ports ...int) func() (map[string]float64, error) {
	return func() (map[string]float64, error) {
		return portSamples(scrape(t, base), name, ports...), nil
	}
}

func hostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
