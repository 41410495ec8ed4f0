package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// The binary alone in an empty root, as the scratch image (the Dockerfile's) runs it.

func TestScratchImage(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to mount /proc and chroot as the scratch image does")
	}
	for _, tool := range []string{"unshare", "chroot", "mount", "file"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipWithout(t, "needs %s: %v", tool, err)
		}
	}
	bin := buildBinary(t)
	info, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, info)
	}
	// -trimpath leaves -ldflags out of the build information; file says
	// whether -s stripped the symbols.
	for _, want := range []string{"\tbuild\tCGO_ENABLED=0\n", "\tbuild\t-trimpath=true\n"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("go version -m has no %q:\n%s", want, info)
		}
	}
	kind, err := exec.Command("file", "-L", bin).CombinedOutput()
	if err != nil || !strings.Contains(string(kind), "statically linked") || !strings.Contains(string(kind), "stripped") {
		t.Errorf("file: %v: %s; want statically linked and stripped", err, kind)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binary: %d bytes (%.2f MiB): %s", fi.Size(), float64(fi.Size())/(1<<20), strings.TrimSpace(string(kind)))

	// The image: the binary and an empty /proc, nothing else.
	root := scratchRoot(t, bin)
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"proc", "tcp_established_exporter"}, names); diff != "" {
		t.Errorf("root directory mismatch (-want +got):\n%s", diff)
	}
	// auto reads netlink sock_diag, as a deployment does; proc reads the
	// /proc mounted in the image.
	for _, source := range []string{"auto", "proc"} {
		t.Run(source, func(t *testing.T) { scratchRun(t, root, source) })
	}
}

// scratchRun runs the exporter alone in root as nobody, with a private
// mount of /proc, and checks what it serves about known connections.
func scratchRun(t *testing.T, root, source string) {
	port := freePort(t)
	stderr := new(syncBuffer)
	cmd := exec.Command("unshare", "--mount", "--fork", "sh", "-c",
		`mount -t proc proc "$1/proc" && exec chroot --userspec=65534:65534 "$1" /tcp_established_exporter -listen "127.0.0.1:$2" -source "$3" -duration 1s -interval 100ms`,
		"sh", root, strconv.Itoa(port), source)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // to kill all it starts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Timeout: 5 * time.Second}
	testnet.WaitFor(t, 20*time.Second, "the exporter in the empty root to answer /healthz", func() bool {
		select {
		case <-done:
			t.Fatalf("exited early: %v\n%s", cmd.ProcessState, stderr)
		default:
		}
		resp, err := client.Get(url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// It runs as nobody, in the root that holds the binary alone.
	pid := onlyChild(t, cmd.Process.Pid)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Errorf("the exporter (pid %d) does not run as 65534: %v\n%s", pid, err, status)
	}
	if dest, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err != nil || dest != root {
		t.Errorf("the exporter's root is %q (%v), want %q", dest, err, root)
	}

	ln4 := testnet.Listen(t, "tcp", "127.0.0.1:0")
	testnet.Dial(t, 3, "tcp", ln4.Listener.Addr().String())
	ln6 := testnet.Listen(t, "tcp6", "[::1]:0")
	testnet.Dial(t, 2, "tcp6", ln6.Listener.Addr().String())
	want := map[string]float64{
		fmt.Sprintf(`port="%d",tcp_version="4"`, ln4.Port): 3,
		fmt.Sprintf(`port="%d",tcp_version="6"`, ln6.Port): 2,
	}
	waitCheck(t, 30*time.Second, "the counts of the known connections", func() string {
		m := testnet.Scrape(t, url)
		for _, name := range []string{longtermName, establishedName} {
			all := testnet.Samples(m, name)
			got := make(map[string]float64)
			for k := range want {
				if v, ok := all[k]; ok {
					got[k] = v
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				return fmt.Sprintf("%s mismatch (-want +got):\n%s", name, diff)
			}
		}
		for _, name := range []string{"process_open_fds", "process_resident_memory_bytes", "process_start_time_seconds"} {
			if v, ok := testnet.Samples(m, name)[""]; !ok || v <= 0 {
				return fmt.Sprintf("%s: %v, %t", name, v, ok)
			}
		}
		return ""
	})

	// SIGTERM reaches it through the chroot: it exits 0.
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatalf("still running 15s after SIGTERM:\n%s", stderr)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0:\n%s", code, stderr)
	}
	for line := range strings.Lines(stderr.String()) {
		if strings.Contains(line, "reading connections from") || strings.Contains(line, "unavailable") {
			t.Logf("-source %s: %s", source, strings.TrimSpace(line))
		}
	}
}

// onlyChild returns the only child of process pid.
func onlyChild(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	if len(f) != 1 {
		t.Fatalf("process %d has children %q, want one", pid, f)
	}
	child, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return child
}
