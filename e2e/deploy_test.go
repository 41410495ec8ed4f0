package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// Tests of what operators deploy: deploy/prometheus, deploy/grafana and
// deploy/kubernetes.

// TestPrometheusRules runs each release's promtool over the rules and the
// example configuration, and Debian's over the rules' unit tests. The
// configuration is checked in a copy beside the tls/ files its TLS job
// names, made by the openssl commands of docs/security.md: promtool fails on
// a missing one.
func TestPrometheusRules(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"prometheus.yml", "rules.yml", "rules_test.yml"} {
		data, err := os.ReadFile(filepath.Join("../deploy/prometheus", name))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), data)
	}
	newTestPKI(t, filepath.Join(dir, "tls"))
	for _, v := range prometheusVersions(t) {
		t.Run("promtool"+v.name, func(t *testing.T) {
			for _, args := range [][]string{
				{"check", "rules", "rules.yml"},
				{"check", "config", "prometheus.yml"},
				{"test", "rules", "rules_test.yml"},
			} {
				cmd := exec.Command(v.tool(t, "promtool"), args...)
				cmd.Dir = dir
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				if strings.Contains(strings.ToLower(string(out)), "warn") {
					t.Errorf("promtool %s warns:\n%s", strings.Join(args, " "), out)
				}
			}
		})
	}
}

// TestDashboardUsesExportedNames checks that every query of the dashboard
// names only metrics that the running exporter exports, Prometheus's own
// up, and the recording rules of rules.yml; and that its panels have ids
// of their own and do not overlap.
func TestDashboardUsesExportedNames(t *testing.T) {
	srv := testnet.Listen(t, "tcp", "127.0.0.1:0")
	testnet.Dial(t, 1, "tcp4", srv.Listener.Addr().String())
	x := startBinary(t, nil, "-direction", "all", "-interval", "100ms")
	exported := exportedNames(testnet.Scrape(t, x.url))
	exported["up"] = true
	rules, err := os.ReadFile("../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range recordLine.FindAllStringSubmatch(string(rules), -1) {
		exported[m[1]] = true
	}

	data, err := os.ReadFile("../deploy/grafana/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dashboard any
	if err := json.Unmarshal(data, &dashboard); err != nil {
		t.Fatalf("dashboard.json is not valid JSON: %v", err)
	}
	queries := promQueries(dashboard)
	if len(queries) < 10 {
		t.Fatalf("found %d queries in the dashboard, want at least 10", len(queries))
	}
	used := make(map[string]bool)
	for _, q := range queries {
		for _, name := range metricNames(q) {
			used[name] = true
			if !exported[name] {
				t.Errorf("query %q uses %s, which the exporter does not export nor rules.yml record", q, name)
			}
		}
	}
	for _, name := range []string{longtermName, establishedName, lifetimeName + "_bucket"} {
		if !used[name] {
			t.Errorf("the dashboard shows nothing of %s", name)
		}
	}
	checkLayout(t, data)
}

// recordLine is a recording rule's name in rules.yml.
var recordLine = regexp.MustCompile(`(?m)^\s*- record:\s*(\S+)\s*$`)

// checkLayout checks that the dashboard's panels have ids of their own and
// places in its 24 columns that no other panel takes.
func checkLayout(t *testing.T, data []byte) {
	t.Helper()
	var d struct {
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			GridPos struct {
				H, W, X, Y int
			} `json:"gridPos"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	ids := make(map[int]string)
	for i, p := range d.Panels {
		if other, ok := ids[p.ID]; ok {
			t.Errorf("panel %q has id %d, as %q has", p.Title, p.ID, other)
		} else if p.ID <= 0 {
			t.Errorf("panel %q has no id", p.Title)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q at %+v: not within the 24 columns", p.Title, g)
		}
		for _, q := range d.Panels[:i] {
			h := q.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panel %q at %+v overlaps %q at %+v", p.Title, g, q.Title, h)
			}
		}
	}
}

// exportedNames are the sample names of a text-format body.
func exportedNames(body string) map[string]bool {
	names := make(map[string]bool)
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		names[name] = true
	}
	return names
}

// promQueries collects the "expr" strings of the panels and the queries of
// the template variables.
func promQueries(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			if s, ok := child.(string); ok && (k == "expr" || k == "query" && strings.Contains(s, "(")) {
				out = append(out, s)
			}
			out = append(out, promQueries(child)...)
		}
	case []any:
		for _, child := range v {
			out = append(out, promQueries(child)...)
		}
	}
	return out
}

var (
	// What in a PromQL expression is not a metric name: strings, label
	// matchers, ranges, grouping clauses, numbers.
	promNoise = regexp.MustCompile(`"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\b\d+(\.\d+)?\b`)
	promIdent = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	// The PromQL functions, aggregations and keywords the queries may use.
	promWords = []string{"sum", "avg", "min", "max", "count", "rate", "irate", "increase", "delta",
		"histogram_quantile", "label_values", "and", "or", "unless", "bool", "offset", "absent",
		"clamp_min", "clamp_max", "topk", "bottomk", "time", "vector", "scalar", "job", "port"}
)

// metricNames picks the metric names out of a PromQL expression.
func metricNames(q string) []string {
	var names []string
	for _, id := range promIdent.FindAllString(promNoise.ReplaceAllString(q, " "), -1) {
		if !slices.Contains(promWords, id) {
			names = append(names, id)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	q := `histogram_quantile(0.9, sum by (le) (rate(netstat_tcp_connection_lifetime_seconds_bucket{job=~"$job", port=~"$port"}[$window]))) and on (job, instance) up`
	if got, want := metricNames(q), []string{"netstat_tcp_connection_lifetime_seconds_bucket", "up"}; !slices.Equal(got, want) {
		t.Errorf("metricNames = %q, want %q", got, want)
	}
}

// The Kubernetes manifests of deploy/kubernetes.

// gojqModule reads the manifests' YAML: a real YAML parser (gopkg.in/yaml.v3)
// behind a command that writes each document as JSON. It is built from the
// module proxy at a pinned version outside the project's go.mod, as test.sh
// builds Prometheus 3, and kept in the same cache directory.
const gojqModule = "github.com/itchyny/gojq/cmd/gojq@v0.12.17"

var (
	gojqOnce sync.Once
	gojqPath string
	gojqErr  error
)

// gojqTool returns the path of gojq, built once, or skips (fails in CI)
// where it cannot be built.
func gojqTool(t *testing.T) string {
	t.Helper()
	gojqOnce.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			gojqErr = err
			return
		}
		_, version, _ := strings.Cut(gojqModule, "@")
		dir := filepath.Join(cache, "tcp_established_exporter", "gojq-"+version)
		gojqPath = filepath.Join(dir, "gojq")
		if _, err := os.Stat(gojqPath); err == nil {
			return
		}
		cmd := exec.Command("go", "install", gojqModule)
		cmd.Dir = os.TempDir() // outside the module, whose go.mod gains nothing
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			gojqErr = fmt.Errorf("go install %s: %v\n%s", gojqModule, err, out)
		}
	})
	if gojqErr != nil {
		skipWithout(t, "cannot build gojq, which reads the manifests' YAML: %v", gojqErr)
	}
	return gojqPath
}

// k8sObject is what the tests read of a Kubernetes object: a Deployment,
// a DaemonSet or a PodMonitor.
type k8sObject struct {
	file     string
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec k8sPodSpec `json:"spec"`
		} `json:"template"`
		PodMetricsEndpoints []struct {
			Port        string          `json:"port"`
			Path        string          `json:"path"`
			Relabelings []k8sRelabeling `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type k8sRelabeling struct {
	SourceLabels []string `json:"sourceLabels"`
	TargetLabel  string   `json:"targetLabel"`
	Replacement  string   `json:"replacement"`
}

type k8sPodSpec struct {
	HostPID     bool           `json:"hostPID"`
	HostNetwork bool           `json:"hostNetwork"`
	Containers  []k8sContainer `json:"containers"`
	Volumes     []struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
		} `json:"hostPath"`
	} `json:"volumes"`
}

type k8sContainer struct {
	Name  string   `json:"name"`
	Image string   `json:"image"`
	Args  []string `json:"args"`
	Env   []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
	} `json:"ports"`
	ReadinessProbe *k8sProbe `json:"readinessProbe"`
	LivenessProbe  *k8sProbe `json:"livenessProbe"`
	Resources      struct {
		Limits map[string]string `json:"limits"`
	} `json:"resources"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
		ReadOnly  bool   `json:"readOnly"`
	} `json:"volumeMounts"`
	SecurityContext *struct {
		RunAsUser                *int64 `json:"runAsUser"`
		RunAsGroup               *int64 `json:"runAsGroup"`
		RunAsNonRoot             *bool  `json:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool  `json:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool  `json:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Add  []string `json:"add"`
			Drop []string `json:"drop"`
		} `json:"capabilities"`
		SeccompProfile struct {
			Type string `json:"type"`
		} `json:"seccompProfile"`
	} `json:"securityContext"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		Port any    `json:"port"` // a name or a number
	} `json:"httpGet"`
}

// readManifests reads every document of every file of deploy/kubernetes.
func readManifests(t *testing.T) []*k8sObject {
	t.Helper()
	files, err := filepath.Glob("../deploy/kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes: %v", err)
	}
	gojq := gojqTool(t)
	var objects []*k8sObject
	for _, file := range files {
		out, err := exec.Command(gojq, "--yaml-input", "-c", ".", file).Output()
		if err != nil {
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				err = fmt.Errorf("%v: %s", err, exit.Stderr)
			}
			t.Fatalf("%s is not valid YAML: %v", file, err)
		}
		dec := json.NewDecoder(bytes.NewReader(out))
		for {
			var o *k8sObject
			if err := dec.Decode(&o); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if o == nil {
				continue // a document of comments alone
			}
			o.file = filepath.Base(file)
			objects = append(objects, o)
		}
	}
	return objects
}

// exporterContainer is the exporter's container of a workload, or nil.
func (o *k8sObject) exporterContainer() *k8sContainer {
	for i, c := range o.Spec.Template.Spec.Containers {
		if strings.Contains(c.Image, "tcp_established_exporter") {
			return &o.Spec.Template.Spec.Containers[i]
		}
	}
	return nil
}

// setting is the value of the exporter's setting name (its flag; env, its
// environment variable) in c, or def: flags before the environment.
func (c *k8sContainer) setting(name, env, def string) string {
	for i, a := range c.Args {
		flag, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if flag != name || !strings.HasPrefix(a, "-") {
			continue
		}
		if hasValue {
			return value
		}
		if i+1 < len(c.Args) {
			return c.Args[i+1]
		}
	}
	for _, e := range c.Env {
		if e.Name == env {
			return e.Value
		}
	}
	return def
}

// listenPort is the port of the exporter's listen setting in c.
func (c *k8sContainer) listenPort() int {
	listen := c.setting("listen", "LISTEN", "9690")
	if _, port, err := net.SplitHostPort(listen); err == nil {
		listen = port
	}
	port, _ := strconv.Atoi(listen)
	return port
}

// portNumber resolves a probe's or PodMonitor's port, a name or a number,
// to a container port of c; 0 where c has none of that name.
func (c *k8sContainer) portNumber(port any) int {
	switch port := port.(type) {
	case float64:
		return int(port)
	case string:
		for _, p := range c.Ports {
			if p.Name == port {
				return p.ContainerPort
			}
		}
	}
	return 0
}

// TestDeployManifests holds every manifest of deploy/kubernetes to what
// Prometheus and the kubelet will find in it: each PodMonitor selects the
// pods of a workload of its namespace, on a named port where the exporter
// listens, under the job name rules.yml expects; the exporter container's
// probes ask /healthz there; it runs read-only, without privilege
// escalation, with a memory limit, as the API server admits it.
func TestDeployManifests(t *testing.T) {
	var workloads, monitors []*k8sObject
	for _, o := range readManifests(t) {
		switch {
		case (o.Kind == "Deployment" || o.Kind == "DaemonSet") && o.exporterContainer() != nil:
			workloads = append(workloads, o)
		case o.Kind == "PodMonitor":
			monitors = append(monitors, o)
		}
	}
	if len(workloads) < 4 || len(monitors) < 3 {
		t.Fatalf("found %d workloads with the exporter and %d PodMonitors, want at least 4 and 3", len(workloads), len(monitors))
	}
	for _, m := range monitors {
		checkPodMonitor(t, m, workloads)
	}
	for _, w := range workloads {
		checkExporterContainer(t, w.file, w.exporterContainer())
	}
}

// checkPodMonitor checks that m selects the pods of one of workloads at
// least, each on the port where its exporter listens, and names the job.
func checkPodMonitor(t *testing.T, m *k8sObject, workloads []*k8sObject) {
	t.Helper()
	selected := 0
	for _, w := range workloads {
		if w.Metadata.Namespace != m.Metadata.Namespace || !isSubset(m.Spec.Selector.MatchLabels, w.Spec.Template.Metadata.Labels) {
			continue
		}
		selected++
		c := w.exporterContainer()
		for _, e := range m.Spec.PodMetricsEndpoints {
			if got, want := c.portNumber(e.Port), c.listenPort(); got == 0 || got != want {
				t.Errorf("%s: PodMonitor %s scrapes port %q, container port %d of %s's exporter, which listens on %d",
					m.file, m.Metadata.Name, e.Port, got, w.file, want)
			}
		}
	}
	if selected == 0 || len(m.Spec.Selector.MatchLabels) == 0 {
		t.Errorf("%s: PodMonitor %s selects %v in namespace %q: no workload's pods", m.file, m.Metadata.Name, m.Spec.Selector.MatchLabels, m.Metadata.Namespace)
	}
	for _, e := range m.Spec.PodMetricsEndpoints {
		if !slices.ContainsFunc(e.Relabelings, func(r k8sRelabeling) bool {
			return r.TargetLabel == "job" && r.Replacement == "tcp_established_exporter" && len(r.SourceLabels) == 0
		}) {
			t.Errorf("%s: PodMonitor %s does not name the job tcp_established_exporter, which rules.yml and the dashboard expect", m.file, m.Metadata.Name)
		}
	}
}

// checkExporterContainer checks the exporter's probes, memory limit and
// securityContext in file.
func checkExporterContainer(t *testing.T, file string, c *k8sContainer) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *k8sProbe
	}{{"readiness", c.ReadinessProbe}, {"liveness", c.LivenessProbe}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != "/healthz" || c.portNumber(p.probe.HTTPGet.Port) != c.listenPort() {
			t.Errorf("%s: the exporter's %s probe is not GET /healthz on its port %d", file, p.name, c.listenPort())
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Errorf("%s: the exporter has no memory limit", file)
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: the exporter has no securityContext", file)
		return
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		!slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("%s: the exporter's securityContext lacks one of readOnlyRootFilesystem, allowPrivilegeEscalation: false, capabilities.drop [ALL], seccompProfile RuntimeDefault", file)
	}
	// The API server's own check (ValidateSecurityContext), which knows
	// this spelling alone.
	if slices.Contains(sc.Capabilities.Add, "CAP_SYS_ADMIN") && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		t.Errorf("%s: the API server refuses allowPrivilegeEscalation: false with capabilities.add CAP_SYS_ADMIN (spell it SYS_ADMIN)", file)
	}
}

// isSubset reports whether every label of sub is in labels.
func isSubset(sub, labels map[string]string) bool {
	for k, v := range sub {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestDeployDaemonSet runs each variant of the DaemonSet of one exporter
// per node as its manifest says: its args (but the listen address, and the
// host's /proc for the /host/proc it mounts from there), its environment,
// its user and group, its capabilities alone and no_new_privs, set by
// setpriv as a container runtime sets them. Beside it a network namespace
// of the test's, a pod's, holds connections. Each variant counts them,
// labelled with their namespace, and reads the namespaces the way its
// comment says: the unprivileged one every one from /proc, the netlink one
// over netlink in the namespaces it enters.
func TestDeployDaemonSet(t *testing.T) {
	if os.Geteuid() != 0 {
		skipWithout(t, "needs root to create a network namespace and to run the exporter as the manifests' users")
	}
	objects := readManifests(t)
	const port, conns = 7000, 3
	inode := holdInNetns(t, port, conns)
	want := map[string]float64{fmt.Sprintf(`netns="%d",port="%d",tcp_version="4"`, inode, port): conns}
	bin := binaryForAll(t)

	for _, tc := range []struct {
		file   string
		uid    int64
		add    []string // capabilities; every other one dropped
		source string   // how it reads every namespace: proc, or netlink where it may enter
	}{
		{file: "daemonset.yaml", uid: 65534, source: "proc"},
		{file: "daemonset-netlink.yaml", uid: 0, add: []string{"SYS_ADMIN", "SYS_PTRACE"}, source: "netlink"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			i := slices.IndexFunc(objects, func(o *k8sObject) bool {
				return o.file == tc.file && o.Kind == "DaemonSet" && o.exporterContainer() != nil
			})
			if i < 0 {
				t.Fatalf("%s holds no DaemonSet of the exporter", tc.file)
			}
			ds := objects[i]
			c := ds.exporterContainer()
			checkNodeMode(t, ds, c)
			sc := c.SecurityContext
			if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != tc.uid || sc.RunAsGroup == nil ||
				(tc.uid != 0) != (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || !slices.Equal(sc.Capabilities.Add, tc.add) {
				t.Fatalf("the exporter's securityContext is not runAsUser %d, runAsGroup, runAsNonRoot for a user but root, capabilities.add %q", tc.uid, tc.add)
			}
			url := startAsPod(t, bin, c)
			waitCheck(t, waitLong, "the exporter to count the namespace's connections", func() string {
				body := testnet.Scrape(t, url)
				got := make(map[string]float64)
				for labels, v := range testnet.Samples(body, establishedName) {
					if strings.Contains(labels, fmt.Sprintf(`netns="%d"`, inode)) {
						got[podLabels.ReplaceAllString(labels, "")] = v
					}
				}
				if diff := cmp.Diff(want, got); diff != "" {
					return fmt.Sprintf("%s mismatch (-want +got):\n%s", establishedName, diff)
				}
				read := testnet.Samples(body, "tcp_established_exporter_namespaces")
				netlink, proc := read[`source="netlink"`], read[`source="proc"`]
				if tc.source == "proc" && (netlink != 0 || proc < 2) || tc.source == "netlink" && netlink < 2 {
					return fmt.Sprintf("namespaces read over netlink %v, from /proc %v; want every one %s, and the test's", netlink, proc, tc.source)
				}
				return ""
			})
		})
	}
}

// podLabels are the labels of node mode that name a pod or a container,
// which depend on the cgroup the test runs in.
var podLabels = regexp.MustCompile(`,pod_uid="[^"]*",container_id="[^"]*"`)

// holdInNetns makes a network namespace, a pod's, where a helper holds
// conns connections to port, and returns the namespace's inode.
func holdInNetns(t *testing.T, port, conns int) uint64 {
	t.Helper()
	ip := lookPath(t, "ip")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t, ip, "daemonset")
	holder := startProcess(t, []string{helperEnv + "=hold", "TEE_TEST_PORT=" + strconv.Itoa(port), "TEE_TEST_CONNS=" + strconv.Itoa(conns)},
		ip, "netns", "exec", ns, self)
	testnet.WaitFor(t, waitLong, "the connections in "+ns, func() bool {
		holder.checkRunning(t)
		return strings.Contains(holder.out.String(), "ready\n")
	})
	var st syscall.Stat_t // ip netns exec execs the helper: its pid is the holder's
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/net/tcp", holder.cmd.Process.Pid), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// startAsPod runs bin with the settings of container c (but a free
// loopback port to listen on, and the host's /proc, which is what c mounts,
// as procfs) and the privileges of its securityContext, set by setpriv as
// a container runtime sets them: its user and group, its capabilities
// alone, no_new_privs. It waits until /healthz answers 200, checks the
// process's privileges, and returns the exporter's URL.
func startAsPod(t *testing.T, bin string, c *k8sContainer) string {
	t.Helper()
	sc := c.SecurityContext
	caps := "-all"
	var capEff uint64
	for _, name := range sc.Capabilities.Add {
		bit, ok := map[string]uint{"SYS_PTRACE": 19, "SYS_ADMIN": 21}[name]
		if !ok {
			t.Fatalf("capability %s: the test knows SYS_PTRACE and SYS_ADMIN alone", name)
		}
		caps += ",+" + strings.ToLower(name)
		capEff |= 1 << bit
	}
	argv := []string{"--reuid", strconv.FormatInt(*sc.RunAsUser, 10), "--regid", strconv.FormatInt(*sc.RunAsGroup, 10),
		"--clear-groups", "--inh-caps", "-all", "--bounding-set", caps}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		argv = append(argv, "--no-new-privs")
	}
	listen := hostPort("127.0.0.1", freePort(t))
	argv = append(append(argv, "--", bin), withArg(withArg(c.Args, "procfs", "/proc"), "listen", listen)...)
	var env []string
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	x := startProcess(t, env, lookPath(t, "setpriv"), argv...)
	url := "http://" + listen
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	waitCheck(t, waitLong, "/healthz to answer 200", func() string {
		x.checkRunning(t)
		resp, err := client.Get(url + "/healthz")
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return resp.Status
		}
		return ""
	})
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", x.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		fmt.Sprintf("Uid:\t%[1]d\t%[1]d\t%[1]d\t%[1]d", *sc.RunAsUser),
		fmt.Sprintf("Gid:\t%[1]d\t%[1]d\t%[1]d\t%[1]d", *sc.RunAsGroup),
		fmt.Sprintf("CapEff:\t%016x", capEff),
		fmt.Sprintf("CapBnd:\t%016x", capEff),
	} {
		if !strings.Contains(string(status), "\n"+line+"\n") {
			t.Fatalf("the exporter under setpriv has no line %q in its status:\n%s", line, status)
		}
	}
	return url
}

// checkNodeMode checks what one exporter per node needs of its DaemonSet:
// the host's PID namespace, a network namespace of its own, namespaces=all
// and the host's /proc mounted read-only where procfs says.
func checkNodeMode(t *testing.T, ds *k8sObject, c *k8sContainer) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostPID || spec.HostNetwork {
		t.Errorf("hostPID %t, hostNetwork %t; want true, false", spec.HostPID, spec.HostNetwork)
	}
	if got := c.setting("namespaces", "NAMESPACES", "own"); got != "all" {
		t.Errorf("namespaces %q, want all", got)
	}
	procfs := c.setting("procfs", "PROCFS", "/proc")
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if m.Name == v.Name && m.MountPath == procfs && m.ReadOnly && v.HostPath != nil && v.HostPath.Path == "/proc" {
				mounted = true
			}
		}
	}
	if procfs != "/host/proc" || !mounted {
		t.Errorf("procfs %q: want /host/proc, the host's /proc mounted read-only", procfs)
	}
}

// withArg sets flag name to value in args, or adds it.
func withArg(args []string, name, value string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		flag, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if flag != name || !strings.HasPrefix(a, "-") {
			continue
		}
		if hasValue {
			out[i] = "-" + name + "=" + value
		} else if i+1 < len(out) {
			out[i+1] = value
		}
		return out
	}
	return append(out, "-"+name, value)
}

// binaryForAll is the exporter's binary where every user may run it: the
// build's directory is root's alone.
func binaryForAll(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tee-daemonset-")
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
	return bin
}
