package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The unit of deploy/systemd under a real systemd: the machine's own,
// booted by systemd-nspawn on a throw-away root (--volatile=yes: a tmpfs
// root, the machine's /usr read-only), never on the machine's root, whose
// boot would empty /tmp and start every installed service.

const (
	unitName   = "tcp_established_exporter"
	stagePath  = "/tee-stage" // the staged checkout, inside the container
	confListen = 9690         // the port the shipped configuration listens on
	heldPort   = 3838         // the port of the connection held inside
)

// TestSystemdUnit installs the exporter inside a booted container with the
// install commands the documentation gives, and checks what the unit
// promises: it counts a connection of its network namespace, runs as a
// dynamic user with no capability, under seccomp and NoNewPrivileges, stops
// cleanly, and the journal has its log lines and no seccomp trouble.
func TestSystemdUnit(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to boot a container with systemd-nspawn")
	}
	nspawn := lookPath(t, "systemd-nspawn")
	lookPath(t, "nsenter")
	if _, err := os.Stat("/usr/lib/systemd/systemd"); err != nil {
		skipWithout(t, "needs systemd installed (test.sh installs it): %v", err)
	}
	cmds := installCommands(t)
	stage := stageCheckout(t, cmds)
	c := bootContainer(t, nspawn, stage)

	// The container's /etc starts empty and presets enable nothing, so the
	// directory a host has from its package is made here.
	c.must(t, "mkdir", "-p", "/etc/systemd/system")
	for _, cmd := range cmds {
		c.must(t, "sh", "-ec", "cd "+stagePath+" && "+cmd)
	}
	if got := strings.TrimSpace(c.must(t, "systemctl", "is-enabled", unitName)); got != "enabled" {
		t.Errorf("systemctl is-enabled %s: %q, want enabled", unitName, got)
	}
	pid := c.waitRunning(t)
	checkConfined(t, c, pid)
	checkCounted(t, c)
	c.must(t, "systemctl", "stop", unitName)
	checkStopped(t, c)
	checkJournal(t, c)
	c.poweroff(t)
}

// installCommands returns the commands of the documentation's "Install on
// a host (systemd)" section, without sudo: the test runs what an operator
// is told to run. The section is in README.md or, once split, in docs/.
func installCommands(t *testing.T) []string {
	t.Helper()
	heading := regexp.MustCompile(`(?m)^#+ Install on a host \(systemd\)[ \t]*$`)
	docs, _ := filepath.Glob("../docs/*.md")
	for _, doc := range append([]string{"../README.md"}, docs...) {
		data, err := os.ReadFile(doc)
		if err != nil {
			continue
		}
		loc := heading.FindIndex(data)
		if loc == nil {
			continue
		}
		_, block, ok := strings.Cut(string(data[loc[1]:]), "\n```sh\n")
		block, _, closed := strings.Cut(block, "\n```")
		if !ok || !closed {
			t.Fatalf("%s: no ```sh block after the section %q", doc, data[loc[0]:loc[1]])
		}
		var cmds []string
		for line := range strings.Lines(block) {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			cmd, ok := strings.CutPrefix(line, "sudo ")
			if !ok {
				t.Fatalf("%s: install command %q is not run with sudo", doc, line)
			}
			cmds = append(cmds, cmd)
		}
		t.Logf("%s: %d install commands", doc, len(cmds))
		return cmds
	}
	t.Fatal(`no section "Install on a host (systemd)" in README.md or docs/*.md`)
	return nil
}

// stageCheckout makes what the install commands expect in the working
// directory: the checkout's files they name, and the release binary under
// the name they give it (the one installed into /usr/local/bin).
func stageCheckout(t *testing.T, cmds []string) string {
	t.Helper()
	stage := t.TempDir()
	if err := os.Chmod(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	binary := false
	for _, cmd := range cmds {
		args := strings.Fields(cmd)
		for i, arg := range args {
			src := filepath.Join("..", arg)
			if fi, err := os.Stat(src); err == nil && fi.Mode().IsRegular() && !filepath.IsAbs(arg) {
				copyFile(t, src, filepath.Join(stage, arg), 0o644)
			} else if i == len(args)-2 && strings.HasPrefix(args[i+1], "/usr/local/bin/") {
				copyFile(t, buildBinary(t), filepath.Join(stage, arg), 0o755)
				binary = true
			}
		}
	}
	if !binary {
		t.Fatalf("no install command puts the binary into /usr/local/bin: %q", cmds)
	}
	return stage
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

// container is a systemd booted by systemd-nspawn; commands run inside by
// nsenter into the namespaces of its init (leader), as it is registered
// with no machine manager.
type container struct {
	nspawn *process
	leader int
}

// bootContainer boots the machine's systemd in a container of its own
// network namespace, with the staged checkout at stagePath, and waits
// until its manager has finished starting up. Where the machine cannot
// boot one (no namespaces, no cgroups for it), the test says why and skips.
func bootContainer(t *testing.T, nspawn, stage string) *container {
	t.Helper()
	preset := filepath.Join(t.TempDir(), "00-tee-test.preset")
	// An empty /etc is a first boot, which enables every unit that the
	// presets enable: the machine's servers too. Here none.
	writeFile(t, preset, []byte("disable *\n"))
	notify, msgs := listenNotify(t)
	args := []string{nspawn, "-D", "/", "--volatile=yes", "--register=no", "--keep-unit",
		"--private-network", "--notify-ready=yes", "--console=read-only",
		"--machine=" + fmt.Sprintf("tee-test-%d-%d", os.Getpid(), netnsSeq.Add(1)),
		// /usr is the machine's, read-only: the binary needs a writable
		// /usr/local/bin, as a host has.
		"--tmpfs=/usr/local/bin:mode=0755",
		"--bind-ro=" + stage + ":" + stagePath,
		"--bind-ro=" + preset + ":/etc/systemd/system-preset/00-tee-test.preset",
		// The first-boot wizard would wait for answers on the console.
		"--boot", "systemd.firstboot=off", "systemd.log_color=0"}
	script := `while [ "$1" != -- ]; do echo $$ >"$1/cgroup.procs" || exit 1; shift; done; shift; exec "$@"`
	shArgs := append(append([]string{"-c", script, "sh"}, ownCgroups(t)...), "--")
	start := time.Now()
	c := &container{nspawn: startProcess(t, []string{"NOTIFY_SOCKET=" + notify}, "sh", append(shArgs, args...)...)}
	t.Cleanup(c.kill)
	c.waitReady(t, msgs, strings.Join(args, " "))
	state, err := c.run("systemctl", "is-system-running", "--wait")
	analyze, _ := c.run("systemd-analyze")
	analyze, _, _ = strings.Cut(analyze, "\n")
	t.Logf("container booted in %s: %s (%v); %s", time.Since(start).Round(time.Millisecond),
		strings.TrimSpace(state), err, strings.TrimSpace(analyze))
	if s := strings.TrimSpace(state); s != "running" {
		failed, _ := c.run("systemctl", "list-units", "--failed", "--no-legend")
		t.Logf("systemctl is-system-running: %s; failed units:\n%s", s, failed)
	}
	return c
}

// waitReady waits for nspawn's READY=1, which --notify-ready sends once
// the container's manager is up, and for the leader's pid it tells.
func (c *container) waitReady(t *testing.T, msgs <-chan string, cmdline string) {
	t.Helper()
	deadline := time.After(waitLong)
	for ready := false; !ready || c.leader == 0; {
		select {
		case m := <-msgs:
			if v, ok := strings.CutPrefix(m, "X_NSPAWN_LEADER_PID="); ok {
				c.leader, _ = strconv.Atoi(v)
			}
			ready = ready || m == "READY=1"
		case <-c.nspawn.done:
			t.Skipf("systemd-nspawn cannot boot a container on this machine: %s: %v: %s",
				cmdline, c.nspawn.cmd.ProcessState, lastLines(c.nspawn.out.String(), 3))
		case <-deadline:
			t.Fatalf("the container did not boot within %s: %s\n%s", waitLong, cmdline, c.nspawn.out)
		}
	}
}

// listenNotify listens where nspawn sends its sd_notify messages and
// passes them on, one assignment at a time.
func listenNotify(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 64)
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for line := range strings.Lines(string(buf[:n])) {
				select {
				case msgs <- strings.TrimSpace(line):
				default: // nobody waits any more
				}
			}
		}
	}()
	return path, msgs
}

// ownCgroups makes a cgroup of the test's own, in each hierarchy that
// nspawn puts the container in (the v2 one, and name=systemd where the
// machine is hybrid), and removes them at the end. nspawn --keep-unit
// makes its payload and supervisor cgroups beside itself: in the machine's
// root cgroup they would be left there, and shared by two runs at once.
func ownCgroups(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	// One name in both: nspawn makes the path it finds in one in the other.
	name := fmt.Sprintf("tee-test-%d-%d", os.Getpid(), netnsSeq.Add(1))
	var dirs []string
	for line := range strings.Lines(string(data)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) != 3 || (f[1] != "" && f[1] != "name=systemd") || cgroupMount(f[1]) == "" {
			continue
		}
		dir := filepath.Join(cgroupMount(f[1]), f[2], name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeCgroup(t, dir) })
		dirs = append(dirs, dir)
	}
	if len(dirs) == 0 {
		t.Fatalf("no cgroup v2 or name=systemd hierarchy in /proc/self/cgroup:\n%s", data)
	}
	return dirs
}

// cgroupMount is where a hierarchy ("" for v2, or "name=systemd") is
// mounted in the layouts that nspawn knows (unified, hybrid, legacy), ""
// where it is not.
func cgroupMount(hierarchy string) string {
	dirs := []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
	if hierarchy == "name=systemd" {
		dirs = []string{"/sys/fs/cgroup/systemd"}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
			return d
		}
	}
	return ""
}

// removeCgroup removes a cgroup and those the container left in it,
// deepest first, once their last process has gone.
func removeCgroup(t *testing.T, dir string) {
	t.Helper()
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		waitCheck(t, 10*time.Second, "removing cgroup "+d, func() string {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err.Error()
			}
			return ""
		})
	}
}

// run runs a command inside the container (all its namespaces) with a
// plain environment and a deadline, and returns its output.
func (c *container) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.leader), "-a", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must is run that fails the test on an error.
func (c *container) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.run(args...)
	if err != nil {
		t.Fatalf("in the container: %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// show returns properties of the unit, as systemctl show gives them.
func (c *container) show(t *testing.T, props ...string) map[string]string {
	t.Helper()
	out := c.must(t, "systemctl", "show", unitName, "-p", strings.Join(props, ","))
	m := make(map[string]string)
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}

// waitRunning waits until the service runs the exporter, and returns its
// main pid (in the container's pid namespace). A Type=simple unit is
// running from the fork on: until the exec, the process is systemd's
// child, still root and setting up the sandbox.
func (c *container) waitRunning(t *testing.T) int {
	t.Helper()
	var pid int
	waitCheck(t, 30*time.Second, "the service to run the exporter", func() string {
		m := c.show(t, "ActiveState", "SubState", "MainPID")
		pid, _ = strconv.Atoi(m["MainPID"])
		if m["ActiveState"] != "active" || m["SubState"] != "running" || pid == 0 {
			return fmt.Sprint(m)
		}
		exe, err := c.run("readlink", fmt.Sprintf("/proc/%d/exe", pid))
		if exe = strings.TrimSpace(exe); err != nil || exe != "/usr/local/bin/"+unitName {
			return fmt.Sprintf("%v: /proc/%d/exe is %q (%v)", m, pid, exe, err)
		}
		return ""
	})
	return pid
}

// checkConfined checks the service's process: a dynamic user (systemd's
// range for them, 61184-65519, neither root nor nobody), no capability in
// any set, no new privileges, and a seccomp filter.
func checkConfined(t *testing.T, c *container, pid int) {
	t.Helper()
	status := make(map[string]string)
	for line := range strings.Lines(c.must(t, "cat", fmt.Sprintf("/proc/%d/status", pid))) {
		if k, v, ok := strings.Cut(line, ":"); ok {
			status[k] = strings.TrimSpace(v)
		}
	}
	// Real, effective, saved and file-system uids: the one DynamicUser made.
	uids := strings.Fields(status["Uid"])
	uid := -1
	if len(uids) == 4 && len(slices.Compact(slices.Clone(uids))) == 1 {
		uid, _ = strconv.Atoi(uids[0])
	}
	if uid < 61184 || uid > 65519 {
		t.Errorf("the service runs as Uid %q, want one uid of the dynamic range 61184-65519", status["Uid"])
	}
	if shown := c.show(t, "UID")["UID"]; shown != strconv.Itoa(uid) {
		t.Errorf("the service runs as uid %d, systemctl show says UID=%s", uid, shown)
	}
	want := map[string]string{"CapInh": "0000000000000000", "CapPrm": "0000000000000000",
		"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2"}
	got := make(map[string]string)
	for k := range want {
		got[k] = status[k]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/proc/%d/status mismatch (-want +got):\n%s", pid, diff)
	}
	t.Logf("service pid %d: Uid %s, Gid %s, CapEff %s, CapBnd %s, NoNewPrivs %s, Seccomp %s (%s filters)", pid,
		status["Uid"], status["Gid"], status["CapEff"], status["CapBnd"], status["NoNewPrivs"], status["Seccomp"], status["Seccomp_filters"])
}

// checkCounted holds a loopback connection inside the container's network
// namespace and waits until the service counts it, established and then
// long-term (the shipped configuration's duration).
func checkCounted(t *testing.T, c *container) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	netns := []string{"-t", strconv.Itoa(c.leader), "-n", "--", self}
	hold := startProcess(t, []string{helperEnv + "=hold", "TEE_TEST_PORT=" + strconv.Itoa(heldPort), "TEE_TEST_CONNS=1"}, "nsenter", netns...)
	waitCheck(t, 30*time.Second, "the connection inside to open", func() string {
		hold.checkRunning(t)
		if out := hold.out.String(); out != "ready\n" {
			return fmt.Sprintf("the helper said %q, not ready", out)
		}
		return ""
	})
	opened := time.Now()
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", confListen)
	want := map[string]float64{fmt.Sprintf(`port="%d",tcp_version="4"`, heldPort): 1}
	for _, name := range []string{establishedName, longtermName} {
		waitForEqual(t, name+" inside the container", want, func() (map[string]float64, error) {
			cmd := exec.Command("nsenter", netns...)
			cmd.Env = append(os.Environ(), helperEnv+"=scrape", "TEE_TEST_URL="+url)
			out, err := cmd.Output()
			return portSamples(string(out), name, heldPort), err
		})
		t.Logf("%s{port=\"%d\"} 1 after %s", name, heldPort, time.Since(opened).Round(time.Millisecond))
	}
	hold.stop()
}

// checkStopped checks that the service stopped as a clean exit on SIGTERM.
func checkStopped(t *testing.T, c *container) {
	t.Helper()
	want := map[string]string{"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
	got := c.show(t, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after systemctl stop (ExecMainCode 1 is exited, 2 killed) mismatch (-want +got):\n%s", diff)
	}
	t.Logf("systemctl stop: %v", got)
}

// checkJournal checks the unit's journal: the exporter's own start-up
// lines are there, and nothing of seccomp, a SIGSYS kill, an audit denial,
// or a setpriority that the filter refused.
func checkJournal(t *testing.T, c *container) {
	t.Helper()
	var journal string
	waitCheck(t, 30*time.Second, "the exporter's lines in the journal", func() string {
		journal = c.must(t, "journalctl", "-u", unitName, "--no-pager", "-o", "short-monotonic")
		for _, want := range []string{"reading connections from netlink sock_diag", " listening on http://", "Stopped " + unitName} {
			if !strings.Contains(journal, want) {
				return fmt.Sprintf("no %q in:\n%s", want, journal)
			}
		}
		return ""
	})
	bad := regexp.MustCompile(`(?i)seccomp|sigsys|status=31|audit|denied|same priority`)
	for line := range strings.Lines(journal) {
		if bad.MatchString(line) {
			t.Errorf("journalctl -u %s: %s", unitName, strings.TrimSpace(line))
		}
	}
	if t.Failed() {
		t.Logf("journalctl -u %s:\n%s", unitName, journal)
	}
}

// poweroff shuts the container down as nspawn does on SIGTERM (an orderly
// poweroff of its systemd) and waits for nspawn to exit, with status 0.
func (c *container) poweroff(t *testing.T) {
	t.Helper()
	start := time.Now()
	c.nspawn.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.nspawn.done:
	case <-time.After(waitLong):
		t.Fatalf("systemd-nspawn did not exit within %s of SIGTERM:\n%s", waitLong, c.nspawn.out)
	}
	if st := c.nspawn.cmd.ProcessState; !st.Success() {
		t.Errorf("systemd-nspawn exited with %v:\n%s", st, c.nspawn.out)
	}
	t.Logf("container powered off in %s", time.Since(start).Round(time.Millisecond))
}

// kill ends a container the test left running, nspawn and its init.
func (c *container) kill() {
	select {
	case <-c.nspawn.done:
	default:
		c.nspawn.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.nspawn.done:
		case <-time.After(30 * time.Second):
			// The init first, while nspawn, its parent, holds its pid.
			if c.leader != 0 {
				syscall.Kill(c.leader, syscall.SIGKILL)
			}
			c.nspawn.cmd.Process.Kill()
			<-c.nspawn.done
		}
	}
}

// lastLines joins the last n non-blank lines of s into one.
func lastLines(s string, n int) string {
	var lines []string
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
