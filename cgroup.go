package main

import "bytes"

// cgroupLabels are the labels of SPEC §11 that a process's cgroup gives its
// network namespace. At most one is set; one not known is empty.
type cgroupLabels struct {
	podUID      string // 8-4-4-4-12 lowercase hex digits, dashed
	containerID string // 64 lowercase hex digits
}

// parseCgroup reads the labels from the contents of /proc/PID/cgroup, lines
// of "hierarchy-ID:controller-list:path". It never fails: what the file does
// not tell is left empty, and a malformed line is skipped. The labels are
// those of the first line that gives any, taken in this order: the cgroup v2
// line ("0::"), the v1 hierarchies name=systemd, memory and cpu, then any
// other. On a hybrid host a runtime may leave the unified hierarchy to
// systemd, and not every runtime uses every v1 controller.
//
// The labels are the namespace's only if the process is: a hostNetwork
// pod's processes, or conmon's, are in the host's namespace. Which process
// stands for a namespace is the caller's choice.
//
// The components of a path are read outermost first. These name a
// Kubernetes pod, and the innermost gives pod_uid:
//
//	kubepods-burstable-pod<uid>.slice    kubelet, systemd driver; the UID's
//	kubepods-besteffort-pod<uid>.slice   dashes are escaped as _, since
//	kubepods-pod<uid>.slice              systemd nests slices at dashes; a
//	                                     guaranteed pod sits in kubepods.slice
//	<prefix>-kubepods-...-pod<uid>.slice the same under a --cgroup-root, as
//	                                     kind's kubelet-kubepods.slice
//	pod<uid> in kubepods, burstable or besteffort   kubelet, cgroupfs driver
//
// The containers of a pod share its network namespace, so inside a pod no
// container is a label, even when the path names one (the pause container or
// any other): the pod's UID is the one value all its processes agree on. A
// path in a kubepods tree without a UID of that shape, such as a static pod's
// (the kubelet's 32-digit hash, not the UID that kube-state-metrics reports),
// gives no label at all.
//
// Outside a pod these name a container, and the innermost gives
// container_id:
//
//	docker-<id>.scope            Docker (rootless too), systemd driver
//	docker/<id>                  Docker, cgroupfs driver
//	cri-containerd-<id>.scope    containerd's CRI plugin, systemd driver
//	crio-<id>.scope, crio-<id>   CRI-O, systemd and cgroupfs drivers
//	libpod-<id>.scope, libpod-<id>  Podman, systemd and cgroupfs; crun may
//	                             put the payload in a child, "container"
//
// These hold processes of no container's namespace, and give no label:
// crio-conmon-<id>.scope (and crio-conmon-<id>), libpod-conmon-<id>.scope and
// libpod-<id>/conmon are the runtimes' monitors, which live in the host's
// network namespace; machine-libpod_pod_<id>.slice and <pod id>/libpod-<id>
// are a Podman pod, whose containers share a namespace.
//
// A reader in a cgroup namespace of its own sees paths relative to its
// root: "/" for its own cgroup, "/../../kubepods.slice/..." for others. A
// pod's component names itself, but a container's is taken only under a
// visible parent: in "/../cri-containerd-<id>.scope" the hidden parent is the
// reader's own parent, perhaps its own pod.
func parseCgroup(b []byte) cgroupLabels {
	for rank := range rankCount {
		for rest := b; len(rest) > 0; {
			var line []byte
			line, rest, _ = bytes.Cut(rest, newline)
			r, path, ok := cgroupLine(line)
			if !ok || r != rank {
				continue
			}
			if l := pathLabels(path); l != (cgroupLabels{}) {
				return l
			}
		}
	}
	return cgroupLabels{}
}

// lineRank orders the lines of a cgroup file by how far their paths are
// trusted: the ones runtimes always manage first.
type lineRank int

const (
	rankV2      lineRank = iota // 0::path, the unified hierarchy
	rankSystemd                 // name=systemd, where systemd puts its scopes
	rankMemory
	rankCPU
	rankOther
	rankCount
)

var (
	newline = []byte{'\n'}
	colon   = []byte{':'}
	slash   = []byte{'/'}
	comma   = []byte{','}
	dash    = []byte{'-'}
)

// cgroupLine splits a line "hierarchy-ID:controller-list:path"; the path
// may hold colons. The v2 hierarchy alone has ID 0 and no controllers.
func cgroupLine(line []byte) (rank lineRank, path []byte, ok bool) {
	id, rest, ok1 := bytes.Cut(line, colon)
	controllers, path, ok2 := bytes.Cut(rest, colon)
	if _, isNum := parseDecimal(id); !ok1 || !ok2 || !isNum {
		return 0, nil, false
	}
	v2, none := string(id) == "0", len(controllers) == 0
	switch {
	case v2 && none:
		return rankV2, path, true
	case v2 || none:
		return 0, nil, false
	}
	rank = rankOther
	for rest := controllers; len(rest) > 0; {
		var c []byte
		c, rest, _ = bytes.Cut(rest, comma)
		switch string(c) {
		case "name=systemd":
			rank = min(rank, rankSystemd)
		case "memory":
			rank = min(rank, rankMemory)
		case "cpu":
			rank = min(rank, rankCPU)
		}
	}
	return rank, path, true
}

// pathLabels reads the labels from one cgroup path. A path the kernel
// would not print (not absolute, "//", "." or ".." past its start) gives
// none.
func pathLabels(path []byte) cgroupLabels {
	path = bytes.TrimSuffix(path, []byte(" (deleted)")) // a removed v2 cgroup
	if len(path) == 0 || path[0] != '/' {
		return cgroupLabels{}
	}
	var (
		parent     []byte // the component above c; nil where hidden
		uid        []byte // the innermost pod's UID, as the path spells it
		id         []byte // the innermost container's id
		idAtParent bool   // id is the parent's
		inPod      bool   // in a tree of pods, Kubernetes' or Podman's
	)
	for rest := path[1:]; len(rest) > 0; {
		var c []byte
		c, rest, _ = bytes.Cut(rest, slash)
		switch {
		case string(c) == "..":
			if parent != nil {
				return cgroupLabels{}
			}
			continue
		case len(c) == 0 || string(c) == ".":
			return cgroupLabels{}
		case isMonitor(c) || idAtParent && string(c) == "conmon": // Podman, cgroupfs
			return cgroupLabels{}
		}
		if u := podUID(c, parent); u != nil {
			uid = u
		}
		inPod = inPod || isPodTree(c, parent)
		x := containerID(c, parent)
		if idAtParent = x != nil; idAtParent {
			id = x
		}
		parent = c
	}
	switch {
	case uid != nil:
		return cgroupLabels{podUID: dashedUID(uid)}
	case id != nil && !inPod:
		return cgroupLabels{containerID: string(id)}
	}
	return cgroupLabels{}
}

// podUID returns the UID a pod's cgroup c names, or nil. The parent of a
// cgroupfs pod<uid> must be the kubelet's or hidden; a systemd slice names
// its parents itself.
func podUID(c, parent []byte) []byte {
	if name, ok := cutAffixes(c, "", ".slice"); ok {
		i := bytes.LastIndexByte(name, '-')
		if i < 0 || !isKubepodsSlice(name[:i]) {
			return nil
		}
		if uid, ok := cutAffixes(name[i+1:], "pod", ""); ok && isUID(uid, '_') {
			return uid
		}
		return nil
	}
	uid, ok := cutAffixes(c, "pod", "")
	if !ok || !isUID(uid, '-') {
		return nil
	}
	switch string(parent) {
	case "", "kubepods", "burstable", "besteffort":
		return uid
	}
	return nil
}

// isKubepodsSlice reports whether name is the kubelet's slice of all pods
// or of a QoS class: kubepods, kubepods-burstable, kubepods-besteffort,
// perhaps prefixed by a --cgroup-root ("kubelet-kubepods").
func isKubepodsSlice(name []byte) bool {
	for _, qos := range []string{"-burstable", "-besteffort"} {
		if n, ok := cutAffixes(name, "", qos); ok {
			name = n
			break
		}
	}
	_, prefixed := cutAffixes(name, "", "-kubepods")
	return string(name) == "kubepods" || prefixed
}

// isPodTree reports whether c is a pod's cgroup or a tree of them: a
// kubepods directory or slice, or a Podman pod's slice
// (machine-libpod_pod_<id>.slice) or cgroupfs directory (<id> above a
// libpod-<id>).
func isPodTree(c, parent []byte) bool {
	if string(c) == "kubepods" {
		return true
	}
	if _, ok := cutAffixes(c, "libpod-", ""); ok && isContainerID(parent) {
		return true
	}
	name, ok := cutAffixes(c, "", ".slice")
	if !ok {
		return false
	}
	for rest := name; len(rest) > 0; {
		var part []byte
		part, rest, _ = bytes.Cut(rest, dash)
		if _, podman := cutAffixes(part, "libpod_pod_", ""); podman || string(part) == "kubepods" {
			return true
		}
	}
	return false
}

// containerShapes are the container cgroups of the runtimes, as a prefix
// and a suffix around the id.
var containerShapes = [...]struct{ prefix, suffix string }{
	{"docker-", ".scope"},         // Docker, systemd driver
	{"cri-containerd-", ".scope"}, // containerd's CRI plugin, systemd driver
	{"crio-", ".scope"},           // CRI-O, systemd driver
	{"crio-", ""},                 // CRI-O, cgroupfs driver
	{"libpod-", ".scope"},         // Podman, systemd driver
	{"libpod-", ""},               // Podman, cgroupfs driver
}

// containerID returns the id a container's cgroup c names, or nil. A
// container under a hidden parent is not taken (see parseCgroup).
func containerID(c, parent []byte) []byte {
	if parent == nil {
		return nil
	}
	if string(parent) == "docker" && isContainerID(c) { // Docker, cgroupfs driver
		return c
	}
	for _, s := range containerShapes {
		if id, ok := cutAffixes(c, s.prefix, s.suffix); ok && isContainerID(id) {
			return id
		}
	}
	return nil
}

// isMonitor reports whether c is the cgroup of a runtime's monitor, conmon,
// which lives in the host's network namespace: CRI-O's crio-conmon-<id>
// (.scope with systemd) or Podman's libpod-conmon-<id>.scope. (Podman's
// cgroupfs driver puts it in libpod-<id>/conmon.)
func isMonitor(c []byte) bool {
	for _, prefix := range []string{"crio-conmon-", "libpod-conmon-"} {
		for _, suffix := range []string{".scope", ""} {
			if id, ok := cutAffixes(c, prefix, suffix); ok && isContainerID(id) {
				return true
			}
		}
	}
	return false
}

// cutAffixes returns b without prefix and suffix, if it has both and more.
func cutAffixes(b []byte, prefix, suffix string) ([]byte, bool) {
	n := len(prefix) + len(suffix)
	if len(b) <= n || string(b[:len(prefix)]) != prefix || string(b[len(b)-len(suffix):]) != suffix {
		return nil, false
	}
	return b[len(prefix) : len(b)-len(suffix)], true
}

// isContainerID reports whether b is 64 lowercase hex digits, as every
// runtime names a container.
func isContainerID(b []byte) bool {
	return len(b) == 64 && isLowerHex(b)
}

// uidDashes are where a UID's groups of 8-4-4-4-12 hex digits are separated.
var uidDashes = [...]int{8, 13, 18, 23}

// isUID reports whether b is a UID as the API server makes them, lowercase,
// its groups separated by sep.
func isUID(b []byte, sep byte) bool {
	if len(b) != 36 {
		return false
	}
	prev := 0
	for _, i := range uidDashes {
		if b[i] != sep || !isLowerHex(b[prev:i]) {
			return false
		}
		prev = i + 1
	}
	return isLowerHex(b[prev:])
}

// dashedUID returns a UID of isUID's shape with its dashes restored.
func dashedUID(uid []byte) string {
	var b [36]byte
	copy(b[:], uid)
	for _, i := range uidDashes {
		b[i] = '-'
	}
	return string(b[:])
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
