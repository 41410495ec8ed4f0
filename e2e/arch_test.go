package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// The binaries of other architectures: the release build is reproducible,
// the arm64, arm v7 and riscv64 binaries count real connections under
// qemu-user, the 386 binary (sockets through socketcall) runs natively
// where the kernel executes it, and the s390x parsers read big-endian
// fixtures under qemu.
//
// The helpers of this file alone are prefixed arch.

// archRepo is the top of the repository, the parent of e2e.
func archRepo(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// archRun runs a command in dir and returns its standard output.
func archRun(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s%s", name, strings.Join(args, " "), dir, err, out, stderr.Bytes())
	}
	return string(out)
}

// archBuild builds the exporter of the working tree for target (a name
// of dist.sh: arm64, armv7, 386 ...) into dir, with the release flags.
func archBuild(t *testing.T, dir, target string) string {
	t.Helper()
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + target}
	if v, ok := strings.CutPrefix(target, "armv"); ok {
		env = []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm", "GOARM=" + v}
	}
	bin := filepath.Join(dir, "tcp_established_exporter-"+target)
	archRun(t, archRepo(t), env, "go", "build", "-trimpath", "-buildvcs=false", "-gcflags=crypto/...=-l", "-ldflags=-s -w -buildid=", "-o", bin, ".")
	return bin
}

// archSHA256 is the hex SHA-256 of a file.
func archSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestArchReproducible runs dist.sh for amd64 and arm64 in two fresh clones
// of the repository, in directories of different names and depths; the
// second builds with an empty build cache, so that nothing the first
// compiled is reused. The binaries must be byte-identical. The clones hold
// the last commit, not uncommitted changes.
func TestArchReproducible(t *testing.T) {
	lookPath(t, "git")
	repo := archRepo(t)
	if _, err := os.Stat(filepath.Join(repo, ".git")); err != nil {
		skipWithout(t, "needs a git checkout to clone: %v", err)
	}
	if dirty := archRun(t, repo, nil, "git", "status", "--porcelain", "--untracked-files=no"); dirty != "" {
		t.Logf("uncommitted changes are not in the clones:\n%s", dirty)
	}
	top := t.TempDir()
	builds := []struct {
		dir string
		env []string
	}{
		{filepath.Join(top, "one"), nil},
		{filepath.Join(top, "two", "a", "deeper", "checkout"), []string{"GOCACHE=" + filepath.Join(top, "gocache")}},
	}
	sums := make([]map[string]string, len(builds))
	for i, b := range builds {
		archRun(t, top, nil, "git", "clone", "--quiet", repo, b.dir)
		start := time.Now()
		archRun(t, b.dir, b.env, "./dist.sh", "amd64", "arm64")
		t.Logf("dist.sh amd64 arm64 in %s: %v", b.dir, time.Since(start).Round(time.Second))
		sums[i] = make(map[string]string)
		paths, _ := filepath.Glob(filepath.Join(b.dir, "dist", "tcp_established_exporter-*"))
		for _, p := range paths {
			sums[i][filepath.Base(p)] = archSHA256(t, p)
		}
		if len(sums[i]) != 2 {
			t.Fatalf("%s/dist holds %v, want two binaries", b.dir, paths)
		}
		data, err := os.ReadFile(filepath.Join(b.dir, "dist", "SHA256SUMS"))
		if err != nil {
			t.Fatal(err)
		}
		for name, sum := range sums[i] {
			if !strings.Contains(string(data), sum+"  "+name+"\n") {
				t.Errorf("%s/dist/SHA256SUMS lacks %s  %s:\n%s", b.dir, sum, name, data)
			}
		}
	}
	for name, sum := range sums[0] {
		t.Logf("%s %s", sum, name)
		if other := sums[1][name]; other != sum {
			t.Errorf("%s: sha256 %s in the first clone, %q in the second", name, sum, other)
		}
	}
}

// archProc is an exporter started by a test.
type archProc struct {
	cmd    *exec.Cmd
	url    string
	stderr *syncBuffer
	done   chan struct{}
}

// archStart runs argv, the exporter listening on 127.0.0.1:port, in a
// process group of its own that the test kills at its end.
func archStart(t *testing.T, port int, argv ...string) *archProc {
	t.Helper()
	p := &archProc{url: fmt.Sprintf("http://127.0.0.1:%d", port), stderr: new(syncBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

// get fetches path; ok is false while the exporter does not answer.
func (p *archProc) get(t *testing.T, path string) (status int, body string, ok bool) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("the exporter exited: %v\n%s", p.cmd.ProcessState, p.stderr)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.url+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", false
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data), err == nil
}

// archCase is what one run of an exporter must show.
type archCase struct {
	file     string   // the table whose reads_total must rise: tcp or netlink
	logLine  string   // a start-up line that must be there exactly once
	noLog    []string // what the log must not have
	startFor time.Duration
}

// archCheck runs the core case against the exporter started by start on a
// free port: three long-lived loopback connections to a port of the
// test's, counted; /healthz ok; the source's read counter rising; the
// start-up line once; SIGTERM ends it with status 0.
func archCheck(t *testing.T, c archCase, start func(port int, args ...string) *archProc) {
	const conns = 3
	srv := testnet.Listen(t, "tcp4", "127.0.0.1:0")
	testnet.Dial(t, conns, "tcp4", srv.Listener.Addr().String())
	service := srv.Port
	port := freePort(t)
	p := start(port, "-listen", fmt.Sprintf("127.0.0.1:%d", port),
		"-port", strconv.Itoa(service), "-duration", "500ms", "-interval", "200ms")
	waitCheck(t, c.startFor, "/healthz to answer ok", func() string {
		status, body, ok := p.get(t, "/healthz")
		if !ok || status != http.StatusOK || body != "ok\n" {
			return fmt.Sprintf("status %d %q", status, body)
		}
		return ""
	})
	labels := fmt.Sprintf(`port="%d",tcp_version="4"`, service)
	reads := func(body string) float64 {
		return testnet.Samples(body, readsName)[`file="`+c.file+`"`]
	}
	var firstReads float64
	waitCheck(t, 30*time.Second, "the count of the test's connections", func() string {
		_, body, ok := p.get(t, "/metrics")
		if !ok {
			return "no answer"
		}
		firstReads = reads(body)
		for _, name := range []string{longtermName, establishedName} {
			if v, ok := testnet.Samples(body, name)[labels]; !ok || v != conns {
				return fmt.Sprintf("%s{%s} = %v (%t), want %d", name, labels, v, ok, conns)
			}
		}
		if firstReads < 1 {
			return fmt.Sprintf(`no read of file="%s" counted`, c.file)
		}
		return ""
	})
	waitCheck(t, 30*time.Second, fmt.Sprintf(`reads of file="%s" to rise`, c.file), func() string {
		_, body, _ := p.get(t, "/metrics")
		if n := reads(body); n <= firstReads {
			return fmt.Sprintf("%v reads, %v before", n, firstReads)
		}
		return ""
	})
	// To the group: unshare passes nothing on, but ignores SIGTERM itself
	// and exits with its child's status.
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM:\n%s", p.stderr)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	log := p.stderr.String()
	if n := strings.Count(log, c.logLine); n != 1 {
		t.Errorf("the log has %q %d times, want once:\n%s", c.logLine, n, log)
	}
	for _, bad := range c.noLog {
		if strings.Contains(log, bad) {
			t.Errorf("the log has %q:\n%s", bad, log)
		}
	}
	for line := range strings.Lines(log) {
		if strings.Contains(line, "reading connections from") || strings.Contains(line, "unavailable") {
			t.Logf("%s", strings.TrimSpace(line))
		}
	}
}

// TestArchQemu runs the arm64, arm v7 and riscv64 binaries under qemu-user.
// qemu refuses NETLINK_SOCK_DIAG (EPROTONOSUPPORT), so the exporter must
// say once that it reads /proc instead, and count from the host kernel's
// /proc/net/tcp, whose text is right for these little-endian targets.
func TestArchQemu(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ target, qemu string }{
		{"arm64", "qemu-aarch64-static"},
		{"armv7", "qemu-arm-static"},
		{"riscv64", "qemu-riscv64-static"},
	} {
		t.Run(c.target, func(t *testing.T) {
			qemu := lookPath(t, c.qemu)
			bin := archBuild(t, dir, c.target)
			archCheck(t, archCase{
				file:     "tcp",
				logLine:  "netlink sock_diag unavailable, reading /proc/net/tcp and /proc/net/tcp6 instead",
				noLog:    []string{"netlink sock_diag failed"},
				startFor: 60 * time.Second,
			}, func(port int, args ...string) *archProc {
				return archStart(t, port, append([]string{qemu, bin}, args...)...)
			})
		})
	}
}

// arch386KernelTests are the unit tests of package main that exercise the
// socketcall(2) receive path against the running kernel.
var arch386KernelTests = []string{
	"TestDiagDumpMatchesProc", "TestDiagDumpErrors", "TestDiagDumpRecovers", "TestDiagRecvWaits", "TestDiagDumpAllocs",
}

// TestArch386 checks the 386 build, whose sockets go through socketcall(2).
// Everywhere: the binary is a static, stripped 32-bit x86 ELF of a sane
// size, the 386-only code is vetted and the unit tests compile for 386.
// Where the kernel executes 32-bit x86 binaries (some machines of this
// kind do not, and Go's 386 runtime dies under qemu-i386), the binary also
// counts real connections with netlink and with /proc, and alone in an
// empty root as nobody, as the scratch image runs it; and the socketcall
// path's unit tests run against this kernel.
func TestArch386(t *testing.T) {
	dir := t.TempDir()
	bin := archBuild(t, dir, "386")
	arch386ELF(t, bin, 4<<20, 8<<20)
	repo := archRepo(t)
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=386"}
	archRun(t, repo, env, "go", "vet", ".")
	test := filepath.Join(dir, "main-386.test")
	archRun(t, repo, env, "go", "test", "-c", "-o", test, ".")
	arch386ELF(t, test, 1<<20, 64<<20)

	if err := exec.Command(bin, "--version").Run(); errors.Is(err, syscall.ENOEXEC) {
		t.Logf("this kernel does not execute 32-bit x86 binaries (%v): the 386 build was checked, vetted and its tests compiled, not run", err)
		return
	} else if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	out := archRun(t, repo, nil, test, "-test.v", "-test.count=1",
		"-test.run", "^("+strings.Join(arch386KernelTests, "|")+")$")
	for _, name := range arch386KernelTests {
		if !regexp.MustCompile(`(?m)^--- PASS: ` + name + ` `).MatchString(out) {
			t.Errorf("%s did not pass on 386:\n%s", name, out)
		}
	}
	arch386Run(t, bin)
}

// arch386ELF checks that path is a static 32-bit x86 ELF executable of
// between least and most bytes.
func arch386ELF(t *testing.T, path string, least, most int64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS32 || f.Machine != elf.EM_386 || f.Type != elf.ET_EXEC {
		t.Errorf("%s: %v %v %v, want ELFCLASS32 EM_386 ET_EXEC", path, f.Class, f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: not static", path, p.Type)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < least || fi.Size() > most {
		t.Errorf("%s: %d bytes, want %d to %d", path, fi.Size(), least, most)
	}
	t.Logf("%s: %d bytes (%.2f MiB), static %v %v", filepath.Base(path), fi.Size(), float64(fi.Size())/(1<<20), f.Class, f.Machine)
}

// arch386Run runs the 386 binary with netlink, with /proc, and in an empty
// root as nobody.
func arch386Run(t *testing.T, bin string) {
	netlink := archCase{file: "netlink", logLine: "reading connections from netlink sock_diag",
		noLog: []string{"netlink sock_diag unavailable", "netlink sock_diag failed"}, startFor: 20 * time.Second}
	t.Run("netlink", func(t *testing.T) {
		archCheck(t, netlink, func(port int, args ...string) *archProc {
			return archStart(t, port, append([]string{bin, "-source", "netlink"}, args...)...)
		})
	})
	t.Run("proc", func(t *testing.T) {
		archCheck(t, archCase{file: "tcp", logLine: "reading connections from /proc/net/tcp and /proc/net/tcp6",
			noLog: []string{"netlink"}, startFor: 20 * time.Second}, func(port int, args ...string) *archProc {
			return archStart(t, port, append([]string{bin, "-source", "proc"}, args...)...)
		})
	})
	t.Run("scratch", func(t *testing.T) {
		if os.Geteuid() != 0 {
			skipWithout(t, "needs root to mount /proc and chroot as the scratch image does")
		}
		for _, tool := range []string{"unshare", "chroot", "mount"} {
			lookPath(t, tool)
		}
		root := scratchRoot(t, bin)
		archCheck(t, netlink, func(port int, args ...string) *archProc {
			return archStart(t, port, append([]string{"unshare", "--mount", "--fork", "sh", "-c",
				`root=$1; shift; mount -t proc proc "$root/proc" && exec chroot --userspec=65534:65534 "$root" /tcp_established_exporter "$@"`,
				"sh", root, "-source", "auto"}, args...)...)
		})
	})
}

// archS390xTests are the parser tests of package main that read fixtures:
// on a big-endian host they turn the little-endian captures into the
// layout that host's kernel writes (see byteorder_test.go).
var archS390xTests = []string{
	"TestProcLayout", "TestParseFixtures", "TestParseAddrPort", "TestParseReaders", "TestParseLongLine",
	"TestParseDiagGolden", "TestParseDiagMessages", "TestParseReplyChecksSeq", "TestPortFilterBytecode",
}

// TestArchS390xParsers compiles the unit tests of package main for s390x
// and runs the parser tests under qemu-s390x-static. A big-endian binary
// cannot be checked against a live kernel here: qemu passes the host's
// little-endian /proc text through, and refuses NETLINK_SOCK_DIAG; so the
// s390x build of both parsers reads fixtures in the big-endian layout
// instead, and must give the goldens that amd64 gives.
func TestArchS390xParsers(t *testing.T) {
	qemu := lookPath(t, "qemu-s390x-static")
	test := filepath.Join(t.TempDir(), "main-s390x.test")
	repo := archRepo(t)
	archRun(t, repo, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=s390x"}, "go", "test", "-c", "-o", test, ".")
	head := make([]byte, 6)
	if f, err := os.Open(test); err != nil {
		t.Fatal(err)
	} else {
		_, err = io.ReadFull(f, head)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if string(head[:4]) != "\x7fELF" || head[5] != 2 { // EI_DATA: ELFDATA2MSB
		t.Fatalf("%s is not a big-endian ELF file: % x", test, head)
	}
	out := archRun(t, repo, nil, qemu, test, "-test.v", "-test.count=1",
		"-test.run", "^("+strings.Join(archS390xTests, "|")+")$")
	for _, name := range archS390xTests {
		if !regexp.MustCompile(`(?m)^--- PASS: ` + name + ` `).MatchString(out) {
			t.Errorf("%s did not pass under %s:\n%s", name, qemu, out)
		}
	}
	if strings.Contains(out, "--- SKIP") {
		t.Errorf("a parser test skipped on s390x:\n%s", out)
	}
}
