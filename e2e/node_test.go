package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// One exporter per node (SPEC 11): -namespaces all, against real network
// namespaces whose processes sit in real cgroup v2 directories named as
// the kubelet and the container runtimes name theirs.

// nodeNS is a network namespace of the test and what the exporter must
// say of it.
type nodeNS struct {
	what    string   // what it stands for
	cgroups []string // of its processes, relative to the test's cgroup; the first holds the connections, the others sleep
	conns   int      // long-term connections to the service port
	podUID  string   // the labels its cgroups give
	ctrID   string
	host    bool // the host's namespace, the exporter's own: made by no one
	name    string
	inode   uint64
}

// nodeID is a 64-hex container id, or from its first 32 digits a pod
// UID, that stays the same for seed.
func nodeID(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(sum[:])
}

func nodeUID(seed string) string {
	h := nodeID(seed)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// sliceUID is a UID as systemd's slice names spell it.
func sliceUID(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

// systemdPod is the cgroup of container scope in a pod of QoS class qos
// ("" for guaranteed) under the kubelet's systemd driver, prefix its
// --cgroup-root ("" or "kubelet").
func systemdPod(prefix, qos, uid, scope string) string {
	top := "kubepods"
	if prefix != "" {
		top = prefix + "-kubepods"
	}
	path := top + ".slice/"
	if prefix != "" {
		path = prefix + ".slice/" + path
	}
	if qos != "" {
		top += "-" + qos
		path += top + ".slice/"
	}
	return path + top + "-pod" + sliceUID(uid) + ".slice/" + scope
}

// cgroupfsPod is the cgroup of container id in a pod under the kubelet's
// cgroupfs driver.
func cgroupfsPod(qos, uid, id string) string {
	if qos == "" {
		return "kubepods/pod" + uid + "/" + id
	}
	return "kubepods/" + qos + "/pod" + uid + "/" + id
}

// nodeNamespaces lays out the namespaces: one per shape of cgroup path
// that gives a label or none, and the host's.
func nodeNamespaces() []*nodeNS {
	pod := func(what string, conns int, cgroups ...string) *nodeNS {
		return &nodeNS{what: what, conns: conns, cgroups: cgroups, podUID: nodeUID(what)}
	}
	ctr := func(what string, conns int, cgroup string) *nodeNS {
		return &nodeNS{what: what, conns: conns, cgroups: []string{cgroup}, ctrID: nodeID(what)}
	}
	none := func(what string, conns int, cgroup string) *nodeNS {
		return &nodeNS{what: what, conns: conns, cgroups: []string{cgroup}}
	}
	scope := func(runtime, seed string) string { return runtime + "-" + nodeID(seed) + ".scope" }
	const (
		burstable  = "containerd: burstable pod, app, pause and sidecar"
		guaranteed = "containerd: guaranteed pod"
		besteffort = "containerd: besteffort pod"
		kind       = "kind: kubelet --cgroup-root, burstable pod"
		crio       = "CRI-O: burstable pod, its conmon in the host's namespace"
		hostNet    = "the host's: a hostNetwork pod and CRI-O's conmon in it"
	)
	u := nodeUID
	return []*nodeNS{
		pod(burstable, 3, systemdPod("", "burstable", u(burstable), scope("cri-containerd", "app")),
			systemdPod("", "burstable", u(burstable), scope("cri-containerd", "pause")),
			systemdPod("", "burstable", u(burstable), scope("cri-containerd", "sidecar"))),
		pod(guaranteed, 1, systemdPod("", "", u(guaranteed), scope("cri-containerd", guaranteed))),
		pod(besteffort, 2, systemdPod("", "besteffort", u(besteffort), scope("cri-containerd", besteffort))),
		pod(kind, 3, systemdPod("kubelet", "burstable", u(kind), scope("cri-containerd", kind))),
		pod("cgroupfs driver: besteffort pod", 4, cgroupfsPod("besteffort", u("cgroupfs driver: besteffort pod"), nodeID("cgroupfs be"))),
		pod("cgroupfs driver: burstable pod", 5, cgroupfsPod("burstable", u("cgroupfs driver: burstable pod"), nodeID("cgroupfs bu"))),
		pod("cgroupfs driver: guaranteed pod", 6, cgroupfsPod("", u("cgroupfs driver: guaranteed pod"), nodeID("cgroupfs gu"))),
		pod(crio, 7, systemdPod("", "burstable", u(crio), scope("crio", crio))),
		ctr("Docker: systemd driver", 8, "system.slice/"+scope("docker", "Docker: systemd driver")),
		ctr("Docker: cgroupfs driver", 9, "docker/"+nodeID("Docker: cgroupfs driver")),
		ctr("Podman: systemd driver", 10, "machine.slice/"+scope("libpod", "Podman: systemd driver")),
		ctr("Podman: crun's payload cgroup", 11, "machine.slice/"+scope("libpod", "Podman: crun's payload cgroup")+"/container"),
		none("Podman pod: no label", 1, "machine.slice/machine-libpod_pod_"+nodeID("podman pod")+".slice/"+scope("libpod", "in pod")),
		none("no container: a login session", 2, "user.slice/user-1000.slice/session-2.scope"),
		none("no socket: a service that sleeps", 0, "system.slice/cron.service"),
		{what: hostNet, host: true, conns: 2, cgroups: []string{
			systemdPod("", "besteffort", u(hostNet), scope("cri-containerd", hostNet)),
			systemdPod("", "burstable", u(crio), scope("crio-conmon", crio))}},
	}
}

// cgroupTree is a cgroup v2 directory of the test's own, which it moves
// its processes under.
type cgroupTree struct {
	root string // absolute; "" where no cgroup2 hierarchy is writable
}

// newCgroupTree makes the test's directory in the first writable cgroup2
// hierarchy (on a hybrid host, /sys/fs/cgroup/unified), and removes it and
// all below at the end of the test, once the processes in it are gone.
func newCgroupTree(t *testing.T) *cgroupTree {
	t.Helper()
	mounts, err := cgroup2Mounts()
	name := fmt.Sprintf("tee-node-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	var tried []string
	for _, m := range mounts {
		dir := filepath.Join(m, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			tried = append(tried, err.Error())
			continue
		}
		c := &cgroupTree{root: dir}
		t.Cleanup(func() { c.remove(t) })
		return c
	}
	t.Logf("no writable cgroup2 hierarchy (mounts %v, %v; %v): the processes stay in the test's cgroup, and the counts are compared by netns alone", mounts, err, tried)
	return &cgroupTree{}
}

// cgroup2Mounts lists where cgroup2 is mounted, from /proc/self/mountinfo.
func cgroup2Mounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		i := slices.Index(fields, "-")
		if i > 4 && i+1 < len(fields) && fields[i+1] == "cgroup2" {
			mounts = append(mounts, fields[4])
		}
	}
	return mounts, sc.Err()
}

// move puts process pid in cgroup rel, made if need be, and checks that
// the kernel lists it there.
func (c *cgroupTree) move(t *testing.T, pid int, rel string) {
	t.Helper()
	dir := filepath.Join(c.root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("moving %d to %s: %v", pid, dir, err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if line := v2Line(string(data)); !strings.HasSuffix(line, "/"+filepath.Base(c.root)+"/"+rel) {
		t.Fatalf("/proc/%d/cgroup after moving it to %s has the v2 line %q:\n%s", pid, dir, line, data)
	}
}

// v2Line is the path of the "0::" line of a /proc/PID/cgroup, the one
// that parseCgroup prefers to a hybrid host's v1 lines.
func v2Line(cgroup string) string {
	for line := range strings.Lines(cgroup) {
		if path, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "0::"); ok {
			return path
		}
	}
	return ""
}

// remove kills what is still in the tree (nothing, when the test stopped
// its processes), then removes its directories, the deepest first.
func (c *cgroupTree) remove(t *testing.T) {
	var dirs []string
	filepath.WalkDir(c.root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if c.populated() {
		t.Logf("processes left in %s: killing them", c.root)
		os.WriteFile(filepath.Join(c.root, "cgroup.kill"), []byte("1"), 0)
		waitCheck(t, 10*time.Second, "the processes left in the test's cgroups to die", func() string {
			if c.populated() {
				return c.root + " is still populated"
			}
			return ""
		})
	}
	for _, d := range slices.Backward(dirs) {
		if err := os.Remove(d); err != nil {
			t.Errorf("removing cgroup %s: %v", d, err)
		}
	}
}

// populated reads cgroup.events, which counts the processes of the whole
// subtree.
func (c *cgroupTree) populated() bool {
	data, err := os.ReadFile(filepath.Join(c.root, "cgroup.events"))
	return err == nil && strings.Contains(string(data), "populated 1")
}

// tableInodeOf is the inode of /proc/PID/net/tcp: the namespace's name in
// the netns label.
func tableInodeOf(pid int) (uint64, error) {
	var st syscall.Stat_t
	err := syscall.Stat(fmt.Sprintf("/proc/%d/net/tcp", pid), &st)
	return st.Ino, err
}

// waitInNetns waits until process pid, started by `ip netns exec`, has
// left the host's namespace, and returns the one it is in.
func waitInNetns(t *testing.T, pid int, host uint64) uint64 {
	t.Helper()
	var inode uint64
	waitCheck(t, waitLong, fmt.Sprintf("process %d to enter its namespace", pid), func() string {
		var err error
		if inode, err = tableInodeOf(pid); err != nil || inode == host {
			return fmt.Sprintf("inode %d, error %v", inode, err)
		}
		return ""
	})
	return inode
}

// nodeLab is what the phases of the node test share.
type nodeLab struct {
	ip, ss, self string
	port         int    // the service port, the same in every namespace
	host         uint64 // the host's namespace, the test's and the exporters' own
	cg           *cgroupTree
}

func newNodeLab(t *testing.T) *nodeLab {
	t.Helper()
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to make network namespaces and cgroups")
	}
	lab := &nodeLab{ip: lookPath(t, "ip"), ss: lookPath(t, "ss")}
	lookPath(t, "setpriv")
	lookPath(t, "sleep")
	var err error
	if lab.self, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	if lab.host, err = tableInodeOf(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	// Free in the host's namespace, where the host's connections are held
	// too; the fresh namespaces have nothing on it.
	lab.port = freePort(t)
	lab.cg = newCgroupTree(t)
	return lab
}

func (lab *nodeLab) holdEnv(conns int) []string {
	return []string{helperEnv + "=hold", "TEE_TEST_PORT=" + strconv.Itoa(lab.port), "TEE_TEST_CONNS=" + strconv.Itoa(conns)}
}

// start makes ns (but the host's) with `ip netns add`, starts its
// processes inside with `ip netns exec`, and moves each into its cgroup.
// No exporter runs yet: it first sees each process where it stays.
func (lab *nodeLab) start(t *testing.T, ns *nodeNS) {
	t.Helper()
	var prefix []string
	ns.inode = lab.host
	if !ns.host {
		ns.name = newNetns(t, lab.ip, "node")
		prefix = []string{lab.ip, "netns", "exec", ns.name}
	}
	for i, cg := range ns.cgroups {
		argv := append(slices.Clip(prefix), "sleep", "600")
		var env []string
		if i == 0 && ns.conns > 0 {
			argv, env = append(slices.Clip(prefix), lab.self), lab.holdEnv(ns.conns)
		}
		p := startProcess(t, env, argv[0], argv[1:]...)
		if env != nil {
			testnet.WaitFor(t, waitLong, "the connections of "+ns.what, func() bool {
				p.checkRunning(t)
				return strings.Contains(p.out.String(), "ready\n")
			})
		}
		if !ns.host {
			inode := waitInNetns(t, p.cmd.Process.Pid, lab.host)
			if i > 0 && inode != ns.inode {
				t.Fatalf("%s: process %d is in namespace %d, its first in %d", ns.what, p.cmd.Process.Pid, inode, ns.inode)
			}
			ns.inode = inode
		}
		if lab.cg.root != "" {
			lab.cg.move(t, p.cmd.Process.Pid, cg)
		}
	}
}

// keyNames are the labels a series is told apart by. Without cgroups of
// its own, the test leaves its processes in its own, whatever that names,
// and compares the counts of each namespace alone.
func (lab *nodeLab) keyNames() []string {
	if lab.cg.root == "" {
		return []string{"netns", "tcp_version"}
	}
	return []string{"netns", "pod_uid", "container_id", "tcp_version"}
}

// key names a series of ns as promQuery does, by keyNames.
func (lab *nodeLab) key(ns *nodeNS, version string) string {
	return seriesKey(lab.keyNames(), map[string]string{
		"netns": strconv.FormatUint(ns.inode, 10), "pod_uid": ns.podUID, "container_id": ns.ctrID, "tcp_version": version})
}

func seriesKey(names []string, labels map[string]string) string {
	var parts []string
	for _, k := range names {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// want is every series of family on the service port in nss: the
// configured port has its IPv4 and IPv6 series in every namespace.
func (lab *nodeLab) want(nss []*nodeNS, family string) map[string]float64 {
	m := make(map[string]float64)
	for _, ns := range nss {
		n := float64(ns.conns)
		if family == clientsName { // every client is 127.0.0.1
			n = min(n, 1)
		}
		m[lab.key(ns, "4")], m[lab.key(ns, "6")] = n, 0
	}
	return m
}

func inodesOf(nss []*nodeNS) map[uint64]bool {
	m := make(map[uint64]bool)
	for _, ns := range nss {
		m[ns.inode] = true
	}
	return m
}

// parseLabels splits the label text of a sample the exporter wrote
// (values without quotes or escapes).
func parseLabels(s string) map[string]string {
	m := make(map[string]string)
	for s != "" {
		k, rest, _ := strings.Cut(s, `="`)
		v, rest, _ := strings.Cut(rest, `"`)
		m[k], s = v, strings.TrimPrefix(rest, ",")
	}
	return m
}

// samples are the samples of family name on the service port in the
// namespaces inodes, keyed as key keys them; labels beyond the five
// expected show in the key.
func (lab *nodeLab) samples(body, name string, inodes map[uint64]bool) map[string]float64 {
	m := make(map[string]float64)
	for labels, v := range testnet.Samples(body, name) {
		l := parseLabels(labels)
		inode, _ := strconv.ParseUint(l["netns"], 10, 64)
		if l["port"] != strconv.Itoa(lab.port) || !inodes[inode] {
			continue
		}
		key := seriesKey(lab.keyNames(), l)
		if len(l) != 5 {
			key += " (" + labels + ")"
		}
		m[key] = v
	}
	return m
}

const (
	nsGaugeName = "tcp_established_exporter_namespaces"
	nsErrsName  = "tcp_established_exporter_namespace_read_errors_total"
)

// nodeExporter is an exporter in node mode, run as root (reading other
// namespaces over netlink) or as nobody (from /proc).
type nodeExporter struct {
	who  string // "root" or "nobody"
	pid  int
	port int
	log  func() string
	sc   *keepAliveScraper // one connection: the exporter's descriptors stay put
}

// logOnFailure logs what x wrote, and how it ended if it has, when the
// test fails.
func (x *nodeExporter) logOnFailure(t *testing.T, cmd *exec.Cmd, done <-chan struct{}) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		state := "running"
		select {
		case <-done:
			state = cmd.ProcessState.String()
		default:
		}
		t.Logf("the %s exporter (%s) logged:\n%s", x.who, state, x.log())
	})
}

func (x *nodeExporter) metrics(t *testing.T) string {
	t.Helper()
	return x.sc.get(t, "/metrics")
}

func rootExporter(t *testing.T, args []string) *nodeExporter {
	t.Helper()
	p := startBinary(t, nil, args...)
	x := &nodeExporter{who: "root", pid: p.cmd.Process.Pid, port: p.port, log: p.stderr.String, sc: keepAlive(t, p.url)}
	x.logOnFailure(t, p.cmd, p.done)
	return x
}

// nobodyExporter runs the exporter as nobody, with no capability: it may
// enter no namespace, and reads the others' /proc/PID/net/tcp{,6}.
func (lab *nodeLab) nobodyExporter(t *testing.T, args []string) *nodeExporter {
	t.Helper()
	// The build's directory is root's alone.
	dir, err := os.MkdirTemp("", "tee-node-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "tcp_established_exporter")
	data, err := os.ReadFile(buildBinary(t))
	if err == nil {
		err = os.WriteFile(bin, data, 0o755)
	}
	if err := errors.Join(err, os.Chmod(dir, 0o755)); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	argv := append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups", bin, "-listen", hostPort("127.0.0.1", port)}, args...)
	p := startProcess(t, nil, lookPath(t, "setpriv"), argv...)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	testnet.WaitFor(t, 10*time.Second, "the exporter run as nobody to answer /healthz", func() bool {
		p.checkRunning(t)
		resp, err := client.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Fatalf("the exporter under setpriv is not nobody:\n%s", status)
	}
	x := &nodeExporter{who: "nobody", pid: p.cmd.Process.Pid, port: port, log: p.out.String, sc: keepAlive(t, url)}
	x.logOnFailure(t, p.cmd, p.done)
	return x
}

// checkCounts waits until x gives exactly the wanted series of the
// connection families in nss.
func (lab *nodeLab) checkCounts(t *testing.T, x *nodeExporter, nss []*nodeNS) {
	t.Helper()
	inodes := inodesOf(nss)
	for _, family := range []string{longtermName, establishedName, clientsName} {
		waitForEqual(t, family+" of the "+x.who+" exporter", lab.want(nss, family), func() (map[string]float64, error) {
			return lab.samples(x.metrics(t), family, inodes), nil
		})
	}
	// One series a label set, however many processes share the
	// namespace: a repeated one would hide in a map.
	body := x.metrics(t)
	for _, ns := range nss {
		if n := lab.sampleLines(body, longtermName, ns.inode); n != 2 {
			t.Errorf("%s exporter, %s: %d samples of %s on port %d, want 2 (IPv4 and IPv6)", x.who, ns.what, n, longtermName, lab.port)
		}
	}
}

// sampleLines counts the sample lines of family name on the service port
// in namespace inode.
func (lab *nodeLab) sampleLines(body, name string, inode uint64) int {
	netns, port := fmt.Sprintf(`netns="%d"`, inode), fmt.Sprintf(`port="%d"`, lab.port)
	n := 0
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, netns) && strings.Contains(line, port) {
			n++
		}
	}
	return n
}

// checkSources checks how x reads each namespace: as root every one over
// netlink, as nobody its own alone (sock_diag of one's own namespace needs
// no privilege) and the others from /proc; in the health gauge, and in
// the line it logged when it found each one.
func (lab *nodeLab) checkSources(t *testing.T, x *nodeExporter, nss []*nodeNS) {
	t.Helper()
	waitCheck(t, waitLong, "the "+x.who+" exporter's "+nsGaugeName, func() string {
		m := testnet.Samples(x.metrics(t), nsGaugeName)
		netlink, proc := m[`source="netlink"`], m[`source="proc"`]
		if x.who == "root" && (netlink < float64(len(nss)) || proc != 0) ||
			x.who == "nobody" && (netlink != 1 || proc < float64(len(nss)-1)) {
			return fmt.Sprintf("netlink %v, proc %v, with %d namespaces of the test", netlink, proc, len(nss))
		}
		return ""
	})
	for _, ns := range nss {
		want := "reading over netlink sock_diag"
		if x.who == "nobody" && !ns.host {
			want = "netlink sock_diag cannot be opened in it"
		}
		if line := foundLine(x.log(), ns.inode); !strings.Contains(line, want) {
			t.Errorf("%s exporter, %s: the line it logged on finding namespace %d is %q, want it to say %q", x.who, ns.what, ns.inode, line, want)
		}
	}
}

// foundLine is the line the exporter logged on finding namespace inode.
func foundLine(log string, inode uint64) string {
	prefix := fmt.Sprintf("network namespace %d (", inode)
	for line := range strings.Lines(log) {
		if strings.Contains(line, prefix) {
			return strings.TrimSuffix(line, "\n")
		}
	}
	return ""
}

// ssCount is what ss counts in ns: the established sockets whose local
// port is the service port, the accepted ends that the exporter counts.
func (lab *nodeLab) ssCount(t *testing.T, ns *nodeNS) int {
	t.Helper()
	args := []string{"-Htn", "state", "established", fmt.Sprintf("( sport = :%d )", lab.port)}
	cmd := exec.Command(lab.ss, args...)
	if !ns.host {
		cmd = exec.Command(lab.ip, append([]string{"netns", "exec", ns.name, lab.ss}, args...)...)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		if strings.TrimSpace(line) != "" {
			n++
		}
	}
	return n
}

// logTable logs what the test measured, by label set: the connections
// held, what ss counted, and each exporter's labels and long-term count.
// The two exporters must agree on the labels even where the test does not
// say what they are (without cgroups of its own).
func (lab *nodeLab) logTable(t *testing.T, nss []*nodeNS, xs []*nodeExporter) {
	t.Helper()
	got := make([]map[uint64]measured, len(xs))
	for i, x := range xs {
		got[i] = lab.measure(x.metrics(t))
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "namespace\tnetns\tpod_uid\tcontainer_id\theld\tss\troot (netlink)\tnobody (proc)")
	for _, ns := range nss {
		root, nobody := got[0][ns.inode], got[1][ns.inode]
		if root.podUID != nobody.podUID || root.ctrID != nobody.ctrID {
			t.Errorf("%s: root labels it pod_uid %q, container_id %q; nobody %q, %q", ns.what, root.podUID, root.ctrID, nobody.podUID, nobody.ctrID)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%d\t%v\t%v\n", ns.what, ns.inode, root.podUID, root.ctrID,
			ns.conns, lab.ssCount(t, ns), root.n, nobody.n)
	}
	w.Flush()
	t.Logf("long-term connections on port %d (tcp_version 4) by label set, as measured:\n%s", lab.port, b.String())
}

// measured is what an exporter said of a namespace: its labels and its
// long-term IPv4 count on the service port.
type measured struct {
	podUID, ctrID string
	n             float64
}

func (lab *nodeLab) measure(body string) map[uint64]measured {
	m := make(map[uint64]measured)
	for labels, v := range testnet.Samples(body, longtermName) {
		l := parseLabels(labels)
		inode, err := strconv.ParseUint(l["netns"], 10, 64)
		if err == nil && l["port"] == strconv.Itoa(lab.port) && l["tcp_version"] == "4" {
			m[inode] = measured{l["pod_uid"], l["container_id"], v}
		}
	}
	return m
}

// fdLevel is what a leak of descriptors would raise: x's open ones, less
// the two (socket and namespace file, kept for its life: SPEC 11) of each
// namespace but its own that it reads over netlink, which the machine's
// other namespaces also bring and take.
func (x *nodeExporter) fdLevel(t *testing.T) (level, fds int) {
	t.Helper()
	netlink := int(testnet.Samples(x.metrics(t), nsGaugeName)[`source="netlink"`])
	fds = openFDs(t, x.pid)
	if x.who == "root" {
		return fds - 2*(netlink-1), fds
	}
	return fds, fds
}

// fdBaseline is fdLevel at rest, from a few looks. A read holds a file
// open for a moment (as nobody, reading the namespaces' tables from /proc,
// for most of the interval), so the least is taken; but as root, a
// namespace that another process drops is closed a moment before the
// gauge says so, which makes a look too low, so the median is taken.
func (x *nodeExporter) fdBaseline(t *testing.T) (level, fds int) {
	t.Helper()
	var levels, all []int
	// Over more than a read interval (-interval 200ms), so that the
	// looks are not all within one read.
	for start := time.Now(); len(levels) < 11 || time.Since(start) < 500*time.Millisecond; {
		l, f := x.fdLevel(t)
		levels, all = append(levels, l), append(all, f)
	}
	slices.Sort(levels)
	slices.Sort(all)
	i := 0
	if x.who == "root" {
		i = len(levels) / 2
	}
	return levels[i], all[i]
}

// waitFDs waits until x's fdLevel is back to base.
func (x *nodeExporter) waitFDs(t *testing.T, base int) int {
	t.Helper()
	var fds int
	waitCheck(t, waitLong, "the "+x.who+" exporter's descriptors to be back", func() string {
		var level int
		if level, fds = x.fdLevel(t); level > base {
			return fmt.Sprintf("level %d (%d open), want %d", level, fds, base)
		}
		return ""
	})
	return fds
}

// startInNewNetns starts sleep in a network namespace that clone(2) makes
// as it is born. The exporter looks at a process once, when it first
// lists it: one that `ip netns exec` moves in later stays counted where it
// was, so while an exporter runs, the test makes namespaces this way and
// names them with `ip netns attach`.
func startInNewNetns(t *testing.T) *process {
	t.Helper()
	p := &process{cmd: exec.Command("sleep", "600"), out: new(syncBuffer), done: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
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

// ipBatch runs the commands in one `ip -batch`: one process for a round
// of namespaces.
func (lab *nodeLab) ipBatch(t *testing.T, commands []string) {
	t.Helper()
	cmd := exec.Command(lab.ip, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(commands, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch of %q: %v\n%s", commands, err, out)
	}
}

// attach names the namespaces of procs with `ip netns attach`, and
// deletes those names at the end of the test unless the test has.
func (lab *nodeLab) attach(t *testing.T, what string, procs []*process) []string {
	t.Helper()
	var names, commands []string
	for _, p := range procs {
		name := fmt.Sprintf("tee-test-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), what)
		names = append(names, name)
		commands = append(commands, fmt.Sprintf("netns attach %s %d", name, p.cmd.Process.Pid))
	}
	t.Cleanup(func() {
		for _, name := range names {
			if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
				exec.Command(lab.ip, "netns", "del", name).Run()
			}
		}
	})
	lab.ipBatch(t, commands)
	return names
}

// deleteDuring makes namespaces with connections while the exporters run,
// then kills their processes and deletes them: their series go, and each
// exporter's descriptors are back to what they were before.
func (lab *nodeLab) deleteDuring(t *testing.T, xs []*nodeExporter) {
	t.Helper()
	before := make([]int, len(xs))
	for i, x := range xs {
		var fds int
		before[i], fds = x.fdBaseline(t)
		t.Logf("%s exporter: %d descriptors open before the namespaces deleted during the run", x.who, fds)
	}
	nss, procs := lab.startDeleted(t)
	want := lab.want(nss, longtermName)
	for _, x := range xs {
		waitForEqual(t, "the "+x.who+" exporter to count the namespaces made while it runs", want, func() (map[string]float64, error) {
			return lab.samples(x.metrics(t), longtermName, inodesOf(nss)), nil
		})
		_, fds := x.fdLevel(t)
		t.Logf("%s exporter: %d descriptors open with them", x.who, fds)
	}
	var dels []string
	for _, p := range procs {
		p.stop()
	}
	for _, ns := range nss {
		dels = append(dels, "netns del "+ns.name)
	}
	lab.ipBatch(t, dels)
	deleted := time.Now()
	for i, x := range xs {
		waitForEqual(t, "the "+x.who+" exporter to drop the deleted namespaces", map[string]float64{}, func() (map[string]float64, error) {
			return lab.samples(x.metrics(t), longtermName, inodesOf(nss)), nil
		})
		t.Logf("%s exporter: the deleted namespaces' series gone within %v of their deletion, %d descriptors open",
			x.who, time.Since(deleted).Round(time.Millisecond), x.waitFDs(t, before[i]))
	}
}

// startDeleted makes the namespaces that deleteDuring deletes, each held
// by a process born in it, with connections held by a second one.
func (lab *nodeLab) startDeleted(t *testing.T) ([]*nodeNS, []*process) {
	t.Helper()
	holders := []*process{startInNewNetns(t), startInNewNetns(t), startInNewNetns(t)}
	names := lab.attach(t, "deleted", holders)
	var nss []*nodeNS
	procs := holders
	for i, p := range holders {
		ns := &nodeNS{what: "deleted " + strconv.Itoa(i), conns: 2 + i, name: names[i]}
		var err error
		if ns.inode, err = tableInodeOf(p.cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(lab.ip, "-n", ns.name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s link set lo up: %v\n%s", ns.name, err, out)
		}
		hold := startProcess(t, lab.holdEnv(ns.conns), lab.ip, "netns", "exec", ns.name, lab.self)
		testnet.WaitFor(t, waitLong, "the connections of "+ns.what, func() bool {
			hold.checkRunning(t)
			return strings.Contains(hold.out.String(), "ready\n")
		})
		nss, procs = append(nss, ns), append(procs, hold)
	}
	return nss, procs
}

// nodeFigures are what a leak would raise in an exporter.
type nodeFigures struct {
	fdLevel, fds, goroutines int
	rssMiB                   float64
}

func (x *nodeExporter) figures(t *testing.T) nodeFigures {
	t.Helper()
	var f nodeFigures
	f.fdLevel, f.fds = x.fdBaseline(t)
	m := x.metrics(t)
	f.goroutines = int(testnet.Samples(m, "go_goroutines")[""])
	f.rssMiB = testnet.Samples(m, "process_resident_memory_bytes")[""] / (1 << 20)
	return f
}

// Namespaces made and deleted in a loop, bounded in count and time.
const (
	churnRounds = 20
	churnBatch  = 10
	churnWarmUp = 2 // rounds before the baseline: maps and buffers reach their working size
)

// churn makes and deletes churnRounds batches of namespaces, each held by
// one process, while the exporters run; afterwards each exporter's
// descriptors and goroutines are what they were, and its resident memory
// within slack.
func (lab *nodeLab) churn(t *testing.T, xs []*nodeExporter) {
	t.Helper()
	start := time.Now()
	first := make([]nodeFigures, len(xs))
	base := make([]nodeFigures, len(xs))
	for round := range churnRounds {
		for i, x := range xs {
			switch round {
			case 0:
				first[i] = x.figures(t)
			case churnWarmUp:
				base[i] = x.figures(t)
			}
		}
		lab.churnRound(t, xs)
	}
	t.Logf("%d namespaces made and deleted in %d rounds in %v", churnRounds*churnBatch, churnRounds, time.Since(start).Round(time.Millisecond))
	for i, x := range xs {
		lab.checkFlat(t, x, first[i], base[i])
	}
}

// churnRound makes churnBatch namespaces, waits until every exporter lists
// them, kills their processes, deletes them, and waits until none does.
func (lab *nodeLab) churnRound(t *testing.T, xs []*nodeExporter) {
	t.Helper()
	var procs []*process
	inodes := make(map[uint64]bool)
	for range churnBatch {
		p := startInNewNetns(t)
		inode, err := tableInodeOf(p.cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		procs, inodes[inode] = append(procs, p), true
	}
	names := lab.attach(t, "churn", procs)
	lab.waitListed(t, xs, inodes, len(inodes))
	var dels []string
	for i, p := range procs {
		p.cmd.Process.Kill()
		<-p.done
		dels = append(dels, "netns del "+names[i])
	}
	lab.ipBatch(t, dels)
	lab.waitListed(t, xs, inodes, 0)
}

// waitListed waits until each exporter lists n of the namespaces inodes.
func (lab *nodeLab) waitListed(t *testing.T, xs []*nodeExporter, inodes map[uint64]bool, n int) {
	t.Helper()
	for _, x := range xs {
		waitCheck(t, waitLong, fmt.Sprintf("the %s exporter to list %d of the round's namespaces", x.who, n), func() string {
			listed := make(map[string]bool)
			for key := range lab.samples(x.metrics(t), longtermName, inodes) {
				netns, _, _ := strings.Cut(key, ",")
				listed[netns] = true
			}
			if len(listed) != n {
				return fmt.Sprintf("%d listed", len(listed))
			}
			return ""
		})
	}
}

// rssSlack is how much more resident memory than after the warm-up an
// exporter may hold after the churn: the heap's size moves with the
// collector's pacing, not only with what is live.
const rssSlack = 4 // MiB

// checkFlat checks x's figures after the churn against the baseline.
func (lab *nodeLab) checkFlat(t *testing.T, x *nodeExporter, first, base nodeFigures) {
	t.Helper()
	fds := x.waitFDs(t, base.fdLevel)
	var after nodeFigures
	waitCheck(t, waitLong, "the "+x.who+" exporter's goroutines and memory to settle", func() string {
		after = x.figures(t)
		if after.goroutines > base.goroutines || after.rssMiB > base.rssMiB+rssSlack {
			return fmt.Sprintf("%d goroutines, %.1f MiB resident; want at most %d and %.1f", after.goroutines, after.rssMiB, base.goroutines, base.rssMiB+rssSlack)
		}
		return ""
	})
	t.Logf("%s exporter, before the churn / after %d warm-up rounds / after all %d rounds: descriptors %d / %d / %d (less 2 a netlink namespace: %d / %d / %d), goroutines %d / %d / %d, resident %.1f / %.1f / %.1f MiB",
		x.who, churnWarmUp, churnRounds, first.fds, base.fds, fds, first.fdLevel, base.fdLevel, after.fdLevel,
		first.goroutines, base.goroutines, after.goroutines, first.rssMiB, base.rssMiB, after.rssMiB)
}

// prometheus has a real Prometheus server of each release scrape both
// node-mode exporters and asks it for the long-term counts of each label
// set; and promtool lints what each exporter serves.
func (lab *nodeLab) prometheus(t *testing.T, xs []*nodeExporter, nss []*nodeNS) {
	var netns []string
	for _, ns := range nss {
		netns = append(netns, strconv.FormatUint(ns.inode, 10))
	}
	for _, v := range prometheusVersions(t) {
		t.Run("prometheus"+v.name, func(t *testing.T) {
			dir := t.TempDir()
			config := "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
			for _, x := range xs {
				config += fmt.Sprintf("  - job_name: %s\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n", x.who, x.port)
			}
			if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
				t.Fatal(err)
			}
			base := startPrometheus(t, v, filepath.Join(dir, "prometheus.yml"), filepath.Join(dir, "data"))
			for _, x := range xs {
				waitForEqual(t, "Prometheus to scrape the "+x.who+" exporter", map[string]float64{"": 1},
					promQuery(base, fmt.Sprintf(`up{job=%q}`, x.who)))
				query := fmt.Sprintf(`%s{job=%q,port="%d",netns=~"%s"}`, longtermName, x.who, lab.port, strings.Join(netns, "|"))
				waitForEqual(t, "Prometheus to see the "+x.who+" exporter's counts", lab.want(nss, longtermName),
					promQuery(base, query, lab.keyNames()...))
				checkPromtool(t, v.tool(t, "promtool"), x.metrics(t))
			}
		})
	}
}

// checkPromtool lints body: promtool may find the kept name's line alone
// (exit 3), or nothing (SPEC 5).
func checkPromtool(t *testing.T, promtool, body string) {
	t.Helper()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	const kept = `netstat_tcp_longterm_connections_total non-counter metrics should not have "_total" suffix`
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); !(code == 0 && len(out) == 0 || code == 3 && len(lines) == 1 && lines[0] == kept) {
		t.Errorf("promtool check metrics: exit %d, want 0 with no output or 3 with only the lint line of the kept name; output:\n%s", code, out)
	}
}

// TestNodeExporter runs the exporter in node mode (-namespaces all) as
// root and as nobody over namespaces of every kind of container and pod
// the labels tell apart, and the host's: both give exactly the
// connections held in each, one series a label set, as ss counts them and
// as Prometheus stores them; namespaces deleted during the run leave no
// series and no descriptor behind, and 200 made and deleted leave the
// exporters' descriptors, goroutines and memory flat.
func TestNodeExporter(t *testing.T) {
	lab := newNodeLab(t)
	nss := nodeNamespaces()
	for _, ns := range nss {
		lab.start(t, ns)
	}
	for _, ns := range nss {
		if got := lab.ssCount(t, ns); got != ns.conns {
			t.Errorf("%s: ss counts %d established connections on port %d, the test holds %d", ns.what, got, lab.port, ns.conns)
		}
	}
	args := []string{"-namespaces", "all", "-duration", "1s", "-interval", "200ms", "-port", strconv.Itoa(lab.port)}
	xs := []*nodeExporter{rootExporter(t, args), lab.nobodyExporter(t, args)}
	for _, x := range xs {
		lab.checkCounts(t, x, nss)
		lab.checkSources(t, x, nss)
	}
	lab.logTable(t, nss, xs)
	for _, x := range xs {
		t.Logf("%s exporter: the last read of all namespaces took %vs", x.who, testnet.Samples(x.metrics(t), "tcp_established_exporter_last_read_duration_seconds")[""])
	}
	lab.deleteDuring(t, xs)
	lab.churn(t, xs)
	for _, x := range xs {
		lab.checkCounts(t, x, nss) // the namespaces that stayed are untouched
	}
	t.Run("prometheus", func(t *testing.T) { lab.prometheus(t, xs, nss) })
	root := xs[0].metrics(t)
	if errs := testnet.Samples(root, nsErrsName)[""]; errs != 0 {
		t.Errorf("the root exporter counts %v failed namespace reads, want 0: netlink reads do not fail", errs)
	}
	t.Logf("%s of the nobody exporter: %v", nsErrsName, testnet.Samples(xs[1].metrics(t), nsErrsName)[""])
	if log := xs[0].log(); strings.Contains(log, "failed") {
		t.Errorf("the root exporter logged a failure:\n%s", log)
	}
}
