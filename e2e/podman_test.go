package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// The image, built from the Dockerfile and run by a real container engine:
// podman, with a storage and configuration of the test's own, no registry,
// and a stand-in for the builder image made of this machine's Go toolchain.

const (
	podmanMaxSize      = 6_500_000 // bytes: the image is the stripped binary alone
	podmanServicePort  = 7000      // in a fresh namespace, nothing else holds it
	podmanConns        = 3
	podmanBuildTimeout = 5 * time.Minute // a build compiles the standard library
	podmanLimit        = 1024            // nofile and nproc, within this machine's hard limits
)

// podmanArches are the images built: the machine's own runs as a
// container, the other's binary under qemu-user.
var podmanArches = []struct {
	arch    string
	machine elf.Machine
	qemu    string // "" to run natively
}{
	{"amd64", elf.EM_X86_64, ""},
	{"arm64", elf.EM_AARCH64, "qemu-aarch64-static"},
}

// TestPodmanImage builds the Dockerfile for amd64 and arm64 with podman,
// checks what the images hold, and runs the amd64 one as the sidecar it is
// meant to be: in a network namespace it shares with an application,
// read-only, without capabilities.
func TestPodmanImage(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root: podman builds and runs the images as root here")
	}
	if runtime.GOARCH != "amd64" {
		skipWithout(t, "runs the amd64 image natively and the arm64 one under qemu: this machine is %s", runtime.GOARCH)
	}
	for _, tool := range []string{"runc", "ip", "qemu-aarch64-static"} {
		lookPath(t, tool)
	}
	if fi, err := os.Stat("/bin/busybox"); err != nil || fi.Mode()&0o111 == 0 {
		skipWithout(t, "needs /bin/busybox (busybox-static) for the builder image's /bin/sh: %v", err)
	}
	pm := newPodman(t, lookPath(t, "podman"))
	goVersion := pm.builderImage(t)
	version := fmt.Sprintf("v0.0.0-podman-%d", os.Getpid())
	refs := pm.buildAll(t, version)
	for _, a := range podmanArches {
		t.Run("image-"+a.arch, func(t *testing.T) {
			root := pm.checkImage(t, refs[a.arch], a.arch)
			podmanCheckBinary(t, filepath.Join(root, "tcp_established_exporter"), a.machine, a.qemu, version, goVersion)
		})
	}
	t.Run("sidecar", func(t *testing.T) { pm.sidecar(t, refs["amd64"], version, goVersion) })
}

// podman runs podman on a storage and configuration of the test's own,
// so that the machine's are neither read nor changed.
type podman struct {
	bin          string
	dir          string
	env          []string
	global       []string // --root and the like, before the command
	cgroupParent string
}

func newPodman(t *testing.T, bin string) *podman {
	t.Helper()
	dir := t.TempDir()
	pm := &podman{bin: bin, dir: dir, cgroupParent: fmt.Sprintf("tee-test-%d-podman", os.Getpid())}
	for _, sub := range []string{"tmp", "engine", "networks"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// No systemd runs here: cgroupfs and a file for events. File locks,
	// not a segment in /dev/shm that would outlive the test.
	conf := fmt.Sprintf(`[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
runtime = "runc"
tmp_dir = %q
[network]
network_config_dir = %q
`, filepath.Join(dir, "engine"), filepath.Join(dir, "networks"))
	files := map[string]string{
		"containers.conf": conf,
		"registries.conf": "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
		"storage.conf":    fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(dir, "root"), filepath.Join(dir, "runroot")),
	}
	for name, text := range files {
		writeFile(t, filepath.Join(dir, name), []byte(text))
	}
	pm.env = []string{"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf"),
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf"),
		"TMPDIR=" + filepath.Join(dir, "tmp")}
	pm.global = []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "runroot"), "--storage-driver", "vfs"}
	podmanTraces(t)
	t.Cleanup(func() { pm.cleanup(t) })
	return pm
}

// run runs podman with args and returns its standard output; it fails the
// test with both outputs if podman fails.
func (pm *podman) run(t *testing.T, timeout time.Duration, stdin io.Reader, args ...string) string {
	t.Helper()
	out, err := pm.try(timeout, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// try is run for a caller that goes on when podman fails: a cleanup, a
// build beside another.
func (pm *podman) try(timeout time.Duration, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := pm.command(ctx, args...)
	cmd.Stdin = stdin
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("podman %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, &stdout, &stderr)
	}
	return stdout.String(), nil
}

func (pm *podman) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, pm.bin, append(slices.Clone(pm.global), args...)...)
	cmd.Env = append(os.Environ(), pm.env...)
	return cmd
}

// cleanup removes the containers, then what they leave outside the
// storage: their cgroups, and mounts under the storage that would keep
// t.TempDir from removing it.
func (pm *podman) cleanup(t *testing.T) {
	if _, err := pm.try(waitLong, nil, "rm", "--all", "--force"); err != nil {
		t.Error(err)
	}
	podmanRemoveCgroups(t, pm.cgroupParent)
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], pm.dir+"/") {
			t.Errorf("podman left %s mounted", f[4])
			syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}

// podmanTraces removes at the end of the test what podman and runc make
// outside the storage whatever they are told, unless it was there before:
// the blob-info cache of containers/image, the short-name alias lock, and
// runc's state directory.
func podmanTraces(t *testing.T) {
	var made []string
	for _, p := range []string{"/var/lib/containers", "/var/cache/containers", "/run/runc"} {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			made = append(made, p)
		}
	}
	t.Cleanup(func() {
		for _, p := range made {
			if _, err := os.Lstat(p); err == nil {
				t.Logf("removing %s, which podman made outside its storage", p)
				if err := os.RemoveAll(p); err != nil {
					t.Error(err)
				}
			}
		}
	})
}

// podmanRemoveCgroups removes the cgroups that podman made under parent
// in every hierarchy (the machine mixes v1 and v2), the deepest first,
// once conmon has left them.
func podmanRemoveCgroups(t *testing.T, parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	if d := filepath.Join("/sys/fs/cgroup", parent); dirExists(d) {
		dirs = append(dirs, d)
	}
	waitCheck(t, waitLong, "the removal of cgroups "+parent, func() string {
		var left []string
		for _, top := range dirs {
			var sub []string
			filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					sub = append(sub, p)
				}
				return nil
			})
			for _, p := range slices.Backward(sub) {
				if err := syscall.Rmdir(p); err != nil && err != syscall.ENOENT {
					left = append(left, fmt.Sprintf("%s: %v", p, err))
				}
			}
		}
		return strings.Join(left, "; ")
	})
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// builderImage makes the image the Dockerfile builds with, golang:1.26,
// since no registry is reachable: busybox for /bin/sh and this machine's
// Go toolchain, with the official image's GOPATH, PATH and
// GOTOOLCHAIN=local, a writable cache, and no proxy. It returns the
// toolchain's version.
func (pm *podman) builderImage(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOROOT", "GOVERSION").Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) != 2 {
		t.Fatalf("go env GOROOT GOVERSION: %v: %q", err, out)
	}
	goroot, goVersion := f[0], f[1]
	applets, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeBuilderTar(pw, goroot, strings.Fields(string(applets)))) }()
	defer pr.Close() // if podman stops reading, the writer stops too
	args := []string{"import"}
	for _, env := range []string{"PATH=/go/bin:/usr/local/go/bin:/bin", "GOROOT=/usr/local/go", "GOPATH=/go",
		"HOME=/root", "GOCACHE=/root/.cache/go-build", "GOTOOLCHAIN=local", "GOFLAGS=", "CGO_ENABLED=0",
		"GOPROXY=off"} { // no proxy is reachable: fail at once, not after a DNS timeout
		args = append(args, "--change", "ENV="+env)
	}
	start := time.Now()
	pm.run(t, podmanBuildTimeout, pr, append(args, "-", "docker.io/library/golang:1.26")...)
	t.Logf("builder image golang:1.26 (busybox, %s from %s) imported in %v", goVersion, goroot, time.Since(start).Round(time.Millisecond))
	return goVersion
}

// writeBuilderTar writes the builder image's root: busybox and its applets
// in /bin, the Go tree at /usr/local/go, a /tmp for all and root's home.
func writeBuilderTar(w io.Writer, goroot string, applets []string) error {
	tw := tar.NewWriter(w)
	for _, d := range []struct {
		name string
		mode int64
	}{{"bin/", 0o755}, {"tmp/", 0o1777}, {"root/", 0o700}, {"go/", 0o755}, {"usr/", 0o755}, {"usr/local/", 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode}); err != nil {
			return err
		}
	}
	if err := addTree(tw, "/bin/busybox", "bin/busybox"); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	if err := addTree(tw, goroot, "usr/local/go"); err != nil {
		return err
	}
	return tw.Close()
}

// addTree adds the file or tree src to tw as dst, owned by root. A
// symbolic link src (Debian's /usr/lib/go) is followed, links inside are
// kept.
func addTree(tw *tar.Writer, src, dst string) error {
	src, err := filepath.EvalSymlinks(src)
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		h.Name = filepath.ToSlash(filepath.Join(dst, rel))
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil || !fi.Mode().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

// buildAll builds the Dockerfile for each of podmanArches, side by side:
// a build waits on copies of the builder's root as much as on the
// compiler. It returns the images' names by architecture.
//
// Podman 4.3 does not set BUILDPLATFORM itself. --layers=false keeps the
// build stage's steps from being committed: vfs copies the whole root for
// each layer.
func (pm *podman) buildAll(t *testing.T, version string) map[string]string {
	t.Helper()
	ctxDir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	type built struct {
		arch, ref string
		took      time.Duration
		err       error
	}
	done := make(chan built)
	start := time.Now()
	for _, a := range podmanArches {
		go func() {
			b := built{arch: a.arch, ref: "localhost/tcp_established_exporter:test-" + a.arch}
			_, b.err = pm.try(podmanBuildTimeout, nil, "build", "--pull=never", "--isolation", "chroot", "--layers=false", "--force-rm",
				"--platform", "linux/"+a.arch, "--build-arg", "BUILDPLATFORM=linux/"+runtime.GOARCH,
				"--build-arg", "VERSION="+version, "-t", b.ref, "-f", filepath.Join(ctxDir, "Dockerfile"), ctxDir)
			b.took = time.Since(start)
			done <- b
		}()
	}
	refs := make(map[string]string)
	for range podmanArches {
		b := <-done
		if b.err != nil {
			t.Error(b.err)
			continue
		}
		t.Logf("built linux/%s in %v (the builds run side by side)", b.arch, b.took.Round(time.Millisecond))
		refs[b.arch] = b.ref
	}
	if t.Failed() {
		t.FailNow()
	}
	return refs
}

// podmanImage is what podman image inspect says that the test checks.
type podmanImage struct {
	Size         int64
	Os           string
	Architecture string
	RootFS       struct{ Layers []string }
	Config       struct{ User string }
}

// checkImage checks the image's size, layers, user and files, and returns
// the directory its file system is mounted on until the test ends.
func (pm *podman) checkImage(t *testing.T, ref, arch string) string {
	t.Helper()
	var imgs []podmanImage
	out := pm.run(t, waitLong, nil, "image", "inspect", ref)
	if err := json.Unmarshal([]byte(out), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("podman image inspect %s: %v: %s", ref, err, out)
	}
	img := imgs[0]
	t.Logf("%s: %s/%s, %d bytes (%.2f MB), %d layer(s), user %q", ref, img.Os, img.Architecture, img.Size, float64(img.Size)/1e6, len(img.RootFS.Layers), img.Config.User)
	if img.Os != "linux" || img.Architecture != arch {
		t.Errorf("platform %s/%s, want linux/%s", img.Os, img.Architecture, arch)
	}
	if img.Size > podmanMaxSize {
		t.Errorf("size %d bytes, want at most %d", img.Size, podmanMaxSize)
	}
	if len(img.RootFS.Layers) != 1 {
		t.Errorf("layers %q, want one", img.RootFS.Layers)
	}
	if img.Config.User != "65534:65534" {
		t.Errorf("user %q, want 65534:65534 (nobody)", img.Config.User)
	}
	root := strings.TrimSpace(pm.run(t, waitLong, nil, "image", "mount", ref))
	t.Cleanup(func() { pm.run(t, waitLong, nil, "image", "unmount", ref) })
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// No shell, no libc, nothing but the exporter.
	if diff := cmp.Diff([]string{"tcp_established_exporter"}, files); diff != "" {
		t.Errorf("files of the image mismatch (-want +got):\n%s", diff)
	}
	return root
}

// podmanCheckBinary checks that the image's binary is a 64-bit ELF for
// machine, and that it runs (under qemu, unless it is "") and says the
// version it was built with.
func podmanCheckBinary(t *testing.T, bin string, machine elf.Machine, qemu, version, goVersion string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine || f.Class != elf.ELFCLASS64 {
		t.Errorf("%s is %v %v, want %v %v", bin, f.Class, f.Machine, elf.ELFCLASS64, machine)
	}
	argv := []string{bin, "--version"}
	if qemu != "" {
		argv = append([]string{lookPath(t, qemu)}, argv...)
	}
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	want := fmt.Sprintf("tcp_established_exporter %s %s\n", version, goVersion)
	if err != nil || string(out) != want {
		t.Errorf("%s: %v: %q, want %q", strings.Join(argv, " "), err, out, want)
	}
	t.Logf("%v %v; %s --version: %s", f.Class, f.Machine, strings.TrimSpace(qemu+" /tcp_established_exporter"), strings.TrimSpace(string(out)))
}

// sidecar runs the image in a network namespace where an application holds
// connections, as a pod's sidecar container runs, and checks that it counts
// those, as nobody, without capabilities, on a read-only root; and that
// podman stop ends it cleanly.
func (pm *podman) sidecar(t *testing.T, ref, version, goVersion string) {
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Logf("the kernel has no network namespaces (%v): the images are checked, not run as a sidecar", err)
		return
	}
	ip := lookPath(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t, ip, "podman")
	podmanHold(t, ip, ns, self)
	name := ns // unique, and says where it runs
	limit := podmanLimits(t)
	pm.run(t, waitLong, nil, "run", "--detach", "--name", name, "--runtime", "runc", "--network", "ns:/run/netns/"+ns,
		"--read-only", "--cap-drop", "ALL", "--cgroup-parent", "/"+pm.cgroupParent,
		"--ulimit", fmt.Sprintf("nofile=%d:%d", limit, limit), "--ulimit", fmt.Sprintf("nproc=%d:%d", limit, limit),
		ref, "-duration", "1s", "-interval", "200ms", "-port", strconv.Itoa(podmanServicePort))
	t.Cleanup(func() {
		if t.Failed() { // the exporter logs to stderr, which podman logs writes to its own
			out, err := pm.command(context.Background(), "logs", name).CombinedOutput()
			t.Logf("podman logs %s: %v\n%s", name, err, out)
		}
		pm.run(t, waitLong, nil, "rm", "--force", name)
	})
	pm.checkContainerProcess(t, name, ns)
	var got map[string]float64
	waitForEqual(t, "the samples scraped in "+ns, podmanWantSamples(version, goVersion, limit), func() (map[string]float64, error) {
		body, err := scrapeInNetns(ip, ns, self, "http://127.0.0.1:9690/metrics")
		got = make(map[string]float64)
		for _, family := range []string{longtermName, establishedName, "tcp_established_exporter_build_info", "process_max_fds"} {
			for labels, v := range testnet.Samples(body, family) {
				got[family+"{"+labels+"}"] = v
			}
		}
		return got, err
	})
	t.Logf("counted %v of %d connections on port %d in %s", got[fmt.Sprintf(`%s{port="%d",tcp_version="4"}`, longtermName, podmanServicePort)], podmanConns, podmanServicePort, ns)
	pm.stop(t, name)
}

// podmanHold holds podmanConns loopback connections to podmanServicePort
// in network namespace ns, by the test binary (self) re-executed there.
func podmanHold(t *testing.T, ip, ns, self string) {
	t.Helper()
	holder := startProcess(t, []string{helperEnv + "=hold", "TEE_TEST_PORT=" + strconv.Itoa(podmanServicePort), "TEE_TEST_CONNS=" + strconv.Itoa(podmanConns)},
		ip, "netns", "exec", ns, self)
	waitCheck(t, waitLong, "the connections in "+ns, func() string {
		holder.checkRunning(t)
		if !strings.Contains(holder.out.String(), "ready\n") {
			return "not ready: " + holder.out.String()
		}
		return ""
	})
}

// podmanLimits is the open-files and processes limit of the container:
// podman's defaults for root are above this machine's hard limits, which
// root cannot raise without CAP_SYS_RESOURCE.
func podmanLimits(t *testing.T) int {
	t.Helper()
	const rlimitNproc = 6 // RLIMIT_NPROC, which package syscall does not name
	limit := uint64(podmanLimit)
	for _, resource := range []int{syscall.RLIMIT_NOFILE, rlimitNproc} {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(resource, &lim); err != nil {
			t.Fatal(err)
		}
		limit = min(limit, lim.Max)
	}
	return int(limit)
}

// podmanWantSamples is everything the sidecar serves of the families it
// is checked on: the namespace's connections and nothing else, its build,
// and the open-files limit podman gave it.
func podmanWantSamples(version, goVersion string, limit int) map[string]float64 {
	want := map[string]float64{
		fmt.Sprintf(`tcp_established_exporter_build_info{version=%q,goversion=%q}`, version, goVersion): 1,
		"process_max_fds{}": float64(limit),
	}
	for _, family := range []string{longtermName, establishedName} {
		want[fmt.Sprintf(`%s{port="%d",tcp_version="4"}`, family, podmanServicePort)] = podmanConns
		want[fmt.Sprintf(`%s{port="%d",tcp_version="6"}`, family, podmanServicePort)] = 0
	}
	return want
}

// checkContainerProcess checks the container's process from outside: it
// runs as nobody, without capabilities, in namespace ns, on a read-only
// root.
func (pm *podman) checkContainerProcess(t *testing.T, name, ns string) {
	t.Helper()
	pid := strings.TrimSpace(pm.run(t, waitLong, nil, "inspect", "--format", "{{.State.Pid}}", name))
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatalf("the container's process %s: %v", pid, err)
	}
	var got []string
	for line := range strings.Lines(string(status)) {
		if k, _, _ := strings.Cut(line, ":"); k == "Uid" || k == "Gid" || k == "CapEff" || k == "CapBnd" {
			got = append(got, strings.TrimSpace(line))
		}
	}
	want := []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534",
		"CapEff:\t0000000000000000", "CapBnd:\t0000000000000000"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/proc/%s/status mismatch (-want +got):\n%s", pid, diff)
	}
	t.Logf("the container's process %s: %s", pid, strings.Join(got, ", "))
	if a, b := podmanInode(t, "/proc/"+pid+"/ns/net"), podmanInode(t, "/run/netns/"+ns); a != b {
		t.Errorf("the container's network namespace is %d, want %d (%s)", a, b, ns)
	}
	if opts := podmanRootOptions(t, pid); !slices.Contains(strings.Split(opts, ","), "ro") {
		t.Errorf("the container's root is mounted %q, want ro", opts)
	}
}

func podmanInode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// podmanRootOptions returns the mount options of process pid's root.
func podmanRootOptions(t *testing.T, pid string) string {
	t.Helper()
	f, err := os.Open("/proc/" + pid + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 5 && fields[4] == "/" {
			return fields[5]
		}
	}
	t.Fatalf("no root in /proc/%s/mountinfo: %v", pid, sc.Err())
	return ""
}

// stop stops the container as a kubelet or podman user does, with SIGTERM:
// it exits 0 well before podman would kill it.
func (pm *podman) stop(t *testing.T, name string) {
	t.Helper()
	start := time.Now()
	pm.run(t, waitLong, nil, "stop", "--time", "30", name)
	took := time.Since(start)
	state := strings.TrimSpace(pm.run(t, waitLong, nil, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name))
	if state != "exited 0" {
		t.Errorf("after podman stop: %s, want exited 0", state)
	}
	t.Logf("podman stop: %s after %v", state, took.Round(time.Millisecond))
}
