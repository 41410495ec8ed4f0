package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cgroupDir holds /proc/PID/cgroup files: .v2 of hosts with the unified
// hierarchy alone, .v1 of v1 and hybrid hosts, and malformed variants.
const cgroupDir = "testdata/cgroup"

// The pod UIDs and container ids of the fixtures.
const (
	uidBurstable  = "8cd86883-a7c4-4798-a385-78174ee52cce"
	uidBestEffort = "b6b7e3ae-afb9-465e-9c64-b08f69d46746"
	uidGuaranteed = "1f43a7c1-b909-4e91-823e-c41a51f053e9"
	uidCRIO       = "935a8bfb-23ad-4671-9aa3-6b199e08a0b2"
	uidCgroupfs   = "3112f988-f783-443a-9d4a-9a3443aa6b90"
	uidKind       = "a48eafa5-0042-476a-a000-c8c9b4318cf1"

	idCRIO       = "78290d6ff3211fb6e5a20eb7f1e4f20ec835bc9016f4c0886c8f5b75a975f0a9"
	idDocker     = "fd58247a70b4e40ec4901ad80824cb411d21790ccce3ee714bfec9686f995e37"
	idDocker2    = "cb295e133ab9aa6fda70bf0630b763cce640cf7d801e41c7363bde2a87aac3ab"
	idContainerd = "b1d1a226fc41775bffd08cbdcf29220525c88dc87bea126080bab2aa42d250ec"
	idKindNode   = "200b025a728b6e4b739cf6ad0f6fa1d8f759ca32099a0c7c3e57efaac6449b0e"
	idPodman     = "af3116f0050ec3f579e8df1418e95936538f350c904ed102b2276bbf37303be1"
)

var allowCgroupLabels = cmp.AllowUnexported(cgroupLabels{})

func podLabels(uid string) cgroupLabels { return cgroupLabels{podUID: uid} }
func ctrLabels(id string) cgroupLabels  { return cgroupLabels{containerID: id} }

var noLabels cgroupLabels

func TestParseCgroupFixtures(t *testing.T) {
	tests := []struct {
		name string
		file string // under cgroupDir
		want cgroupLabels
	}{
		{"containerd, burstable pod", "k8s-systemd-containerd-burstable.v2", podLabels(uidBurstable)},
		{"containerd, best-effort pod", "k8s-systemd-containerd-besteffort.v2", podLabels(uidBestEffort)},
		{"containerd, guaranteed pod", "k8s-systemd-containerd-guaranteed.v2", podLabels(uidGuaranteed)},
		{"CRI-O pod", "k8s-systemd-crio-burstable.v2", podLabels(uidCRIO)},
		{"CRI-O pod, payload subgroup", "k8s-systemd-crio-subgroup.v2", podLabels(uidCRIO)},
		{"CRI-O's conmon in the pod's slice", "k8s-systemd-crio-conmon.v2", noLabels},
		{"cri-dockerd pod", "k8s-systemd-cri-dockerd.v2", podLabels(uidBestEffort)},
		{"static pod: the kubelet's hash", "k8s-systemd-static-pod.v2", noLabels},
		{"QoS slice itself", "k8s-systemd-qos-slice.v2", noLabels},
		{"cgroupfs, best-effort pod", "k8s-cgroupfs-besteffort.v2", podLabels(uidCgroupfs)},
		{"cgroupfs, burstable pod", "k8s-cgroupfs-burstable.v2", podLabels(uidCgroupfs)},
		{"cgroupfs, guaranteed pod", "k8s-cgroupfs-guaranteed.v2", podLabels(uidCgroupfs)},
		{"cgroupfs, CRI-O's conmon", "k8s-cgroupfs-crio-conmon.v2", noLabels},
		{"relative, pod of another QoS class", "k8s-relative-other-qos.v2", podLabels(uidBestEffort)},
		{"relative, pod of the same QoS class", "k8s-relative-same-qos.v2", podLabels(uidBurstable)},
		{"relative, cgroupfs pod", "k8s-relative-cgroupfs.v2", podLabels(uidCgroupfs)},
		{"relative, container of the reader's pod", "k8s-relative-sibling.v2", noLabels},
		{"relative, Docker container seen from a pod", "k8s-relative-docker.v2", ctrLabels(idDocker)},
		{"relative, pod seen from a container", "docker-relative-kubepods.v2", podLabels(uidGuaranteed)},
		{"own cgroup namespace", "own-cgroupns.v2", noLabels},
		{"kind, pod in a node", "kind-pod.v2", podLabels(uidKind)},
		{"kind, the node's containerd", "kind-node.v2", ctrLabels(idKindNode)},
		{"Docker, systemd driver", "docker-systemd.v2", ctrLabels(idDocker)},
		{"Docker, cgroupfs driver", "docker-cgroupfs.v2", ctrLabels(idDocker)},
		{"Docker, rootless", "docker-rootless.v2", ctrLabels(idDocker)},
		{"Docker, cgroup removed", "docker-deleted.v2", ctrLabels(idDocker)},
		{"Docker in Docker, the inner one", "docker-in-docker.v2", ctrLabels(idPodman)}, // an id Podman's fixtures share
		{"containerd's CRI plugin, no pod", "containerd-no-pod.v2", ctrLabels(idContainerd)},
		{"CRI-O, no pod", "crio-no-pod.v2", ctrLabels(idCRIO)},
		{"Podman, systemd", "podman-systemd.v2", ctrLabels(idPodman)},
		{"Podman, rootless", "podman-rootless.v2", ctrLabels(idPodman)},
		{"Podman, cgroupfs", "podman-cgroupfs.v2", ctrLabels(idPodman)},
		{"Podman's conmon", "podman-conmon.v2", noLabels},
		{"Podman's conmon, cgroupfs", "podman-cgroupfs-conmon.v2", noLabels},
		{"Podman pod", "podman-pod.v2", noLabels},
		{"Podman pod, cgroupfs", "podman-cgroupfs-pod.v2", noLabels},
		{"host, init", "host-init.v2", noLabels},
		{"host, service", "host-service.v2", noLabels},
		{"host, session", "host-session.v2", noLabels},
		{"v1, cgroupfs pod", "k8s-cgroupfs-burstable.v1", podLabels(uidCgroupfs)},
		{"hybrid, systemd pod", "k8s-systemd-hybrid.v1", podLabels(uidBurstable)},
		{"hybrid, cgroupfs pod, unified left to systemd", "k8s-cgroupfs-hybrid.v1", podLabels(uidCgroupfs)},
		{"v1, Docker cgroupfs", "docker-cgroupfs.v1", ctrLabels(idDocker)},
		{"hybrid, Docker cgroupfs, unified left to systemd", "docker-cgroupfs-hybrid.v1", ctrLabels(idDocker)},
		{"hybrid, Docker systemd", "docker-systemd-hybrid.v1", ctrLabels(idDocker)},
		{"v1, memory alone names the container", "docker-memory-only.v1", ctrLabels(idDocker)},
		{"v1, name=systemd before memory", "prefer-systemd.v1", ctrLabels(idDocker)},
		{"hybrid, host", "host.v1", noLabels},
		{"empty", "empty", noLabels},
		{"garbage", "garbage", noLabels},
		{"truncated in the UID", "truncated.v2", noLabels},
		{"no newline at end", "no-newline.v2", ctrLabels(idDocker)},
		{"CRLF", "crlf.v2", noLabels},
		{"UID one digit short", "bad-uid-short.v2", noLabels},
		{"UID upper case", "bad-uid-upper.v2", noLabels},
		{"UID with dashes in a slice", "bad-uid-dashes.v2", noLabels},
		{"UID dash moved", "bad-uid-moved.v2", noLabels},
		{"pod<uid> outside kubepods", "bad-pod-parent.v2", noLabels},
		{"id one digit short", "bad-id-short.v2", noLabels},
		{"id upper case", "bad-id-upper.v2", noLabels},
		{".. inside the path", "bad-dotdot.v2", noLabels},
		{". inside the path", "bad-dot.v2", noLabels},
		{"//", "bad-double-slash.v2", noLabels},
		{"path not absolute", "bad-not-absolute.v2", noLabels},
		{"hierarchy ID not a number", "bad-hierarchy.v2", noLabels},
		{"two fields", "bad-fields.v2", noLabels},
		{"ID 0 with controllers, v1 without", "bad-v2-controllers.v1", noLabels},
		{"malformed lines, then a good one", "bad-lines-then-good.v1", ctrLabels(idDocker)},
	}
	listed := make(map[string]bool)
	for _, tt := range tests {
		listed[tt.file] = true
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(cgroupDir, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got := parseCgroup(data)
			if diff := cmp.Diff(tt.want, got, allowCgroupLabels); diff != "" {
				t.Errorf("parseCgroup(%s) mismatch (-want +got):\n%s", tt.file, diff)
			}
		})
	}
	for _, path := range cgroupFixtures(t) {
		if !listed[filepath.Base(path)] {
			t.Errorf("%s is in no test case", path)
		}
	}
}

// TestParseCgroupPaths holds the rules that no whole file shows apart.
func TestParseCgroupPaths(t *testing.T) {
	const (
		slicedUID = "8cd86883_a7c4_4798_a385_78174ee52cce"
		podSlice  = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + slicedUID + ".slice"
	)
	tests := []struct {
		name  string
		input string
		want  cgroupLabels
	}{
		{"v2 before v1", "4:memory:/docker/" + idDocker + "\n0::" + podSlice + "\n", podLabels(uidBurstable)},
		{"memory before cpu", "3:cpu,cpuacct:/docker/" + idDocker2 + "\n4:memory:/docker/" + idDocker + "\n", ctrLabels(idDocker)},
		{"cpu before cpuset", "2:cpuset:/docker/" + idDocker2 + "\n3:cpu,cpuacct:/docker/" + idDocker + "\n", ctrLabels(idDocker)},
		{"any v1 line", "6:pids:/docker/" + idDocker + "\n", ctrLabels(idDocker)},
		{"empty v1 path", "4:memory:\n", noLabels},
		{"colon in the path", "0::/system.slice/a:b/docker-" + idDocker + ".scope\n", ctrLabels(idDocker)},
		{"NUL in the path", "0::/system.slice/\x00/docker-" + idDocker + ".scope\n", ctrLabels(idDocker)},
		{"innermost pod", "0::" + podSlice + "/cri-containerd-" + idDocker + ".scope/kubepods/burstable/pod" + uidCgroupfs + "/" + idDocker2 + "\n", podLabels(uidCgroupfs)},
		{"container in a pod's container", "0::/kubepods/burstable/pod" + uidCgroupfs + "/" + idDocker + "/docker/" + idDocker2 + "\n", podLabels(uidCgroupfs)},
		{"pod's child cgroup", "0::" + podSlice + "/cri-containerd-" + idDocker + ".scope/init.scope\n", podLabels(uidBurstable)},
		{"container at the namespace's root", "0::/docker-" + idDocker + ".scope\n", noLabels},
		{"bare id under a hidden parent", "0::/../" + idDocker + "\n", noLabels},
		{"bare id outside docker", "0::/system.slice/" + idDocker + "\n", noLabels},
		{"CRI-O cgroupfs, no pod", "0::/machine/crio-" + idCRIO + "\n", ctrLabels(idCRIO)},
		{"Podman cgroupfs payload", "0::/libpod_parent/libpod-" + idPodman + "/ctr\n", ctrLabels(idPodman)},
		{"conmon under Docker", "0::/system.slice/docker-" + idDocker + ".scope/conmon\n", noLabels},
		{"conmon.service in a container", "0::/system.slice/docker-" + idDocker + ".scope/system.slice/conmon.service\n", ctrLabels(idDocker)},
		{"libpod-conmon, cgroupfs name", "0::/libpod_parent/libpod-conmon-" + idPodman + "\n", noLabels},
		{"empty id", "0::/system.slice/docker-.scope\n", noLabels},
		{"scope alone", "0::/system.slice/.scope\n", noLabels},
		{"pod without UID", "0::/kubepods.slice/kubepods-pod.slice\n", noLabels},
		{"pod slice outside kubepods", "0::/burstable.slice/burstable-pod" + slicedUID + ".slice\n", noLabels},
		{"QoS class the kubelet has not", "0::/kubepods.slice/kubepods-guaranteed-pod" + slicedUID + ".slice\n", noLabels},
		{"a root's prefix alone", "0::/-kubepods-pod" + slicedUID + ".slice\n", noLabels},
		{"UID separators mixed", "0::/kubepods.slice/kubepods-pod8cd86883_a7c4_4798_a385-78174ee52cce.slice\n", noLabels},
		{"UID with a non-hex digit", "0::/kubepods/pod8cd86883-a7c4-4798-a385-78174ee52cg\n", noLabels},
		{"pod<uid> escaped as in a slice", "0::/kubepods/pod" + slicedUID + "\n", noLabels},
		{"pod<uid> at the namespace's root", "0::/pod" + uidCgroupfs + "/" + idDocker + "\n", podLabels(uidCgroupfs)},
		{"deleted, v1", "4:memory:/docker/" + idDocker + " (deleted)\n", ctrLabels(idDocker)},
		{"deleted twice", "0::/docker/" + idDocker + " (deleted) (deleted)\n", noLabels},
		{"deep path", "0::/docker/" + idDocker + strings.Repeat("/x", 10000) + "\n", ctrLabels(idDocker)},
		{"long line", "0::/" + strings.Repeat("y", 1<<20) + "\n0::/docker/" + idDocker + "\n", ctrLabels(idDocker)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseCgroup([]byte(tt.input))
			if diff := cmp.Diff(tt.want, got, allowCgroupLabels); diff != "" {
				t.Errorf("parseCgroup(%.200q) mismatch (-want +got):\n%s", tt.input, diff)
			}
		})
	}
}

// TestParseCgroupAllocs: only the returned label is allocated.
func TestParseCgroupAllocs(t *testing.T) {
	for _, c := range []struct {
		file  string
		allow float64
	}{
		{"k8s-systemd-containerd-burstable.v2", 1},
		{"k8s-cgroupfs-hybrid.v1", 1},
		{"docker-cgroupfs.v1", 1},
		{"host.v1", 0},
		{"garbage", 0},
	} {
		data, err := os.ReadFile(filepath.Join(cgroupDir, c.file))
		if err != nil {
			t.Fatal(err)
		}
		if allocs := testing.AllocsPerRun(100, func() { parseCgroup(data) }); allocs > c.allow {
			t.Errorf("parseCgroup(%s): %v allocations, want at most %v", c.file, allocs, c.allow)
		}
	}
}

var (
	uidShape = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	idShape  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func FuzzParseCgroup(f *testing.F) {
	for _, path := range cgroupFixtures(f) {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := parseCgroup(data)
		if got.podUID != "" && got.containerID != "" {
			t.Errorf("%q: both labels set: %+v", data, got)
		}
		if u := got.podUID; u != "" && (!uidShape.MatchString(u) ||
			!bytes.Contains(data, []byte(u)) && !bytes.Contains(data, []byte(strings.ReplaceAll(u, "-", "_")))) {
			t.Errorf("%q: pod UID %q is no UID of the input", data, u)
		}
		if id := got.containerID; id != "" && (!idShape.MatchString(id) || !bytes.Contains(data, []byte(id))) {
			t.Errorf("%q: container id %q is no id of the input", data, id)
		}
		// A malformed line is skipped wherever it is.
		if again := parseCgroup(append([]byte("not:a line\n"), data...)); again != got {
			t.Errorf("%q: %+v, after a malformed line %+v", data, got, again)
		}
	})
}

func BenchmarkParseCgroup(b *testing.B) {
	for _, file := range []string{"k8s-systemd-containerd-burstable.v2", "k8s-cgroupfs-hybrid.v1", "host.v1"} {
		data, err := os.ReadFile(filepath.Join(cgroupDir, file))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(file, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				parseCgroup(data)
			}
		})
	}
}

// cgroupFixtures returns the paths of the files in cgroupDir.
func cgroupFixtures(tb testing.TB) []string {
	tb.Helper()
	paths, err := filepath.Glob(cgroupDir + "/*")
	if err != nil || len(paths) == 0 {
		tb.Fatalf("no fixtures in %s: %v", cgroupDir, err)
	}
	return paths
}
