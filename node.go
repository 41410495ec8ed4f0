package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// One exporter per node (namespaces=all, SPEC section 11): every network
// namespace that a process under procfs is in, each read as the exporter
// reads its own, into a tracker of its own, its series labelled with the
// namespace.

// node finds the network namespaces under procfs and reads each one.
type node struct {
	x      *exporter
	cfg    trackConfig // of every namespace's tracker, but the exporter's own port
	own    uint64      // the exporter's own namespace
	procs  map[int]proc
	byNS   map[uint64]*namespace
	sorted []*namespace // by inode, the order they are written in
	gen    uint32       // of the last scan

	readErrors    uint64 // of single namespaces
	netlink, proc int    // namespaces read each way by the last read
	loggedOnlyOwn bool
	pids          []int  // the process list
	dirBuf        []byte // what getdents reads it into
	diagBuf       []byte // the receive buffer all namespaces' sources share

	// What /proc/loadavg said before the last full scan, and the scans
	// skipped since because it says the same (see unchanged); watch is
	// false where it cannot tell.
	watch   bool
	tasks   taskCount
	skipped int
}

// proc is a process that a scan has found, and its namespace.
type proc struct {
	netns uint64
	seen  uint32 // the scan that last listed it
}

// namespace is one network namespace and what reading it has met.
type namespace struct {
	nsReader
	pid    int // the process whose tables are read
	procs  int // known processes in it
	labels []byte
	// labelTries counts the reads that looked at the cgroup; labelTries
	// once it named a pod or container.
	labelTries int
	fams       [len(connFamilies)][]byte // its samples of the last good read
}

func newNode(x *exporter, cfg trackConfig) *node {
	n := &node{x: x, cfg: cfg, procs: make(map[int]proc), byNS: make(map[uint64]*namespace)}
	for _, self := range []string{filepath.Join(x.s.procfs, "self"), "/proc/self"} {
		if inode, err := tableInode(self); err == nil {
			n.own = inode
			break
		}
	}
	n.watch = samePIDNamespace(filepath.Join(x.s.procfs, "self", "status"))
	return n
}

// tableInode is the inode of dir/net/tcp: the identity of the network
// namespace of process dir, the same for every reader and mount of procfs.
func tableInode(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "net", "tcp"), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// checkInode fails when fd, an open tcp table, is not of r's namespace:
// the process read has gone, and its number is another's.
func (r *nsReader) checkInode(fd int) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Ino != r.inode {
		return fmt.Errorf("%w: inode %d, not %d", errOtherNamespace, st.Ino, r.inode)
	}
	return nil
}

var errOtherNamespace = errors.New("the process has left the namespace")

// gone reports, in node mode, whether the process of the table path, which
// does not exist, has gone: then its tcp6 is missing not because the
// kernel has no IPv6, and the read fails.
func (r *nsReader) gone(path string) bool {
	if r.inode == 0 {
		return false
	}
	_, err := os.Stat(filepath.Dir(path))
	return err != nil
}

// poll scans the processes, reads every namespace and writes their
// connection families. A namespace whose read fails keeps the samples of
// its last good read; only a failed scan is the read's error.
func (n *node) poll(b []byte) ([]byte, error) {
	err := n.scan()
	n.netlink, n.proc = 0, 0
	for _, ns := range n.sorted {
		if ns.diag != nil {
			n.netlink++
		} else {
			n.proc++
		}
		if ns.labelTries < labelTries && ns.pid != 0 {
			n.label(ns)
		}
		ns.tr.begin()
		err := n.x.read(&ns.nsReader)
		if err != nil && ns.diag == nil && n.repoint(ns, err) {
			ns.tr.begin()
			err = n.x.read(&ns.nsReader)
		}
		if err != nil {
			n.readErrors++
			continue
		}
		n.x.endRead(ns.tr)
		v := n.x.view(ns.tr, ns.labels)
		for f := range connFamilies {
			ns.fams[f] = appendConnSamples(ns.fams[f][:0], f, v)
		}
	}
	for f, fam := range connFamilies {
		b = appendHeader(b, fam.name, fam.help, fam.typ)
		for _, ns := range n.sorted {
			b = append(b, ns.fams[f]...)
		}
	}
	return b, err
}

// scan lists the processes under procfs, once, and looks only at those it
// has not seen before: a namespace is found with its first process and
// goes with its last.
func (n *node) scan() error {
	tasks, ok := n.unchanged()
	if ok {
		return nil
	}
	if err := n.listProcs(); err != nil {
		n.tasks = taskCount{}
		return fmt.Errorf("listing the processes, reading the namespaces known: %w", err)
	}
	n.tasks, n.skipped = tasks, 0
	n.gen++
	for _, pid := range n.pids {
		if p, ok := n.procs[pid]; ok {
			p.seen = n.gen
			n.procs[pid] = p
			continue
		}
		inode, err := tableInode(filepath.Join(n.x.s.procfs, strconv.Itoa(pid)))
		if err != nil {
			continue // gone already, or a process whose tables this reader may not see
		}
		n.procs[pid] = proc{netns: inode, seen: n.gen}
		ns := n.byNS[inode]
		if ns == nil {
			ns = n.add(inode, pid)
		}
		ns.procs++
	}
	n.forget()
	if !n.loggedOnlyOwn && len(n.sorted) == 1 && n.sorted[0].inode == n.own {
		n.x.log.Printf("no network namespace but the exporter's own is visible under %s: is it the host's /proc, and the exporter in the host's PID namespace (hostPID)?", n.x.s.procfs)
		n.loggedOnlyOwn = true
	}
	return nil
}

// fullScanEvery bounds the scans in a row that unchanged may skip.
const fullScanEvery = 10

// unchanged reports whether no process or thread has begun or ended since
// the last scan began, so that a scan would find the processes it found
// then; and what /proc/loadavg says now, read before the scan that the
// caller makes otherwise. A new task, of any process in the reader's PID
// namespace or one below it, moves the last pid that loadavg shows in it;
// without a new one, the count of tasks falls with every one that ends.
// The count is of the whole system: in the host's PID namespace this is
// exact; in one below it (the exporter's procfs then lists that
// namespace's processes alone), a task ending in it while one begins
// outside within one read goes unseen until the next full scan, at most
// fullScanEvery reads later. A scan of a node of thousands of processes
// costs milliseconds, mostly the kernel's listing of /proc; a node's
// processes rarely change from one second to the next.
func (n *node) unchanged() (taskCount, bool) {
	if !n.watch {
		return taskCount{}, false
	}
	t, err := readTaskCount(filepath.Join(n.x.s.procfs, "loadavg"))
	if err != nil || t != n.tasks || n.skipped >= fullScanEvery {
		return t, false
	}
	n.skipped++
	return t, true
}

// taskCount is what the last two fields of /proc/loadavg say of the tasks:
// how many there are on the system, and the pid last given out in the
// reader's PID namespace.
type taskCount struct{ tasks, lastPid uint64 }

// readTaskCount reads path, a /proc/loadavg, without allocating:
// "0.00 0.01 0.05 1/123 4567\n".
func readTaskCount(path string) (taskCount, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return taskCount{}, err
	}
	var buf [128]byte
	size, err := syscall.Read(fd, buf[:])
	syscall.Close(fd)
	if err != nil {
		return taskCount{}, err
	}
	return parseTaskCount(buf[:max(size, 0)])
}

var errLoadavg = errors.New("not a /proc/loadavg")

func parseTaskCount(b []byte) (taskCount, error) {
	var f [5][]byte // the fourth is running/tasks, the fifth the last pid
	for i := range f {
		f[i], b = nextField(b)
	}
	_, tasks, _ := bytes.Cut(f[3], []byte("/"))
	n, ok1 := parseDecimal(tasks)
	last, ok2 := parseDecimal(bytes.TrimSuffix(f[4], []byte("\n")))
	if !ok1 || !ok2 || n == 0 {
		return taskCount{}, errLoadavg
	}
	return taskCount{n, last}, nil
}

// samePIDNamespace reports whether the proc_pid_status(5) file at path,
// the reader's own under procfs, shows one pid: procfs is then of the
// reader's PID namespace, the one whose last pid /proc/loadavg shows.
// Where procfs is of another (the host's /proc mounted in a container of
// a PID namespace of its own), the line lists a pid in each.
func samePIDNamespace(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	_, rest, ok := bytes.Cut(data, []byte("\nNSpid:"))
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	return ok && len(bytes.Fields(line)) == 1
}

// listProcs reads the process ids under procfs into n.pids. It reads the
// directory with getdents(2) into a buffer kept from read to read, not
// with Readdirnames, which makes a string of every entry: on a node of
// thousands of processes that is most of the garbage a read makes.
func (n *node) listProcs() error {
	fd, err := syscall.Open(n.x.s.procfs, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: n.x.s.procfs, Err: err}
	}
	defer syscall.Close(fd)
	if n.dirBuf == nil {
		n.dirBuf = make([]byte, 32<<10)
	}
	n.pids = n.pids[:0]
	for {
		size, err := syscall.Getdents(fd, n.dirBuf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "getdents", Path: n.x.s.procfs, Err: err}
		}
		if size <= 0 {
			return nil
		}
		n.pids = appendPids(n.pids, n.dirBuf[:size])
	}
}

// appendPids appends the process ids that the entries of buf, a
// getdents64 reply, name: the entries whose names are decimal numbers.
// An entry is struct linux_dirent64, the same on every architecture: the
// inode and offset (8 bytes each), its length (2), its type (1), and its
// name, ended by a NUL.
func appendPids(pids []int, buf []byte) []int {
	const nameAt = 19
	for len(buf) > nameAt {
		size := int(binary.NativeEndian.Uint16(buf[16:]))
		if size <= nameAt || size > len(buf) {
			break // not a dirent: the kernel does not write this
		}
		if pid := parsePid(buf[nameAt:size]); pid > 0 {
			pids = append(pids, pid)
		}
		buf = buf[size:]
	}
	return pids
}

// parsePid is the number that name, ended by a NUL, spells in decimal, or
// 0 where it spells none (".", "self", "sys", ...) or more than a pid
// can be.
func parsePid(name []byte) int {
	pid := 0
	for i, c := range name {
		switch {
		case c == 0 && i > 0:
			return pid
		case c < '0' || c > '9' || i >= 10:
			return 0
		}
		pid = pid*10 + int(c-'0')
	}
	return 0
}

// forget drops the processes the last scan did not list and the
// namespaces left without one, and reads a namespace whose process went
// through another of its processes.
func (n *node) forget() {
	orphans := false
	for pid, p := range n.procs {
		if p.seen != n.gen {
			orphans = n.lose(pid) || orphans
		}
	}
	for i := len(n.sorted) - 1; i >= 0; i-- {
		if ns := n.sorted[i]; ns.procs == 0 {
			n.remove(ns)
		}
	}
	if !orphans {
		return
	}
	for pid, p := range n.procs {
		if ns := n.byNS[p.netns]; ns.pid == 0 {
			ns.pid = pid
			ns.paths = namespacePaths(n.x.s.procfs, pid)
		}
	}
}

// lose forgets process pid; it reports whether its namespace, which has
// others, was read through it.
func (n *node) lose(pid int) bool {
	p := n.procs[pid]
	delete(n.procs, pid)
	ns := n.byNS[p.netns]
	ns.procs--
	if ns.pid != pid {
		return false
	}
	ns.pid = 0
	return ns.procs > 0
}

// repoint reads ns through another of its processes after the read
// through ns.pid failed because that process has gone, or its number is
// now another's; it reports whether there is one.
func (n *node) repoint(ns *namespace, err error) bool {
	if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, errOtherNamespace) || !n.lose(ns.pid) {
		return false
	}
	for pid, p := range n.procs {
		if p.netns == ns.inode {
			ns.pid, ns.paths = pid, namespacePaths(n.x.s.procfs, pid)
			return true
		}
	}
	return false
}

func namespacePaths(procfs string, pid int) [2]string {
	dir := filepath.Join(procfs, strconv.Itoa(pid), "net")
	return [2]string{filepath.Join(dir, "tcp"), filepath.Join(dir, "tcp6")}
}

// add starts reading the namespace inode, through process pid.
func (n *node) add(inode uint64, pid int) *namespace {
	cfg := n.cfg
	if inode != n.own {
		cfg.ownPort = 0 // the exporter listens in its own namespace alone
	}
	tr := newTracker(cfg, monotonic())
	ns := &namespace{nsReader: nsReader{inode: inode, tr: tr, observe: tr.observe}, pid: pid}
	ns.paths = namespacePaths(n.x.s.procfs, pid)
	n.label(ns)
	n.openNetlink(ns)
	n.byNS[inode] = ns
	i, _ := slices.BinarySearchFunc(n.sorted, inode, func(ns *namespace, inode uint64) int { return cmpUint(ns.inode, inode) })
	n.sorted = slices.Insert(n.sorted, i, ns)
	return ns
}

// labelTries is how many reads look again at the cgroup of a namespace
// that none names: a runtime moves a container's first process into its
// cgroup only after it has started, and a scan can come between.
const labelTries = 5

// label reads the labels of ns from the cgroup of its process.
func (n *node) label(ns *namespace) {
	var l cgroupLabels
	if data, err := os.ReadFile(filepath.Join(n.x.s.procfs, strconv.Itoa(ns.pid), "cgroup")); err == nil {
		l = parseCgroup(data)
	}
	ns.labels = appendLabel(appendLabel(appendLabel(ns.labels[:0], "netns", strconv.FormatUint(ns.inode, 10)),
		"pod_uid", l.podUID), "container_id", l.containerID)
	ns.name = fmt.Sprintf("network namespace %d (pod_uid %q, container_id %q, process %d): ", ns.inode, l.podUID, l.containerID, ns.pid)
	ns.labelTries++
	if l != (cgroupLabels{}) {
		ns.labelTries = labelTries
	}
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// remove stops reading ns, whose last process has gone: its series go
// with it.
func (n *node) remove(ns *namespace) {
	if ns.diag != nil {
		ns.diag.Close()
	}
	delete(n.byNS, ns.inode)
	i, _ := slices.BinarySearchFunc(n.sorted, ns.inode, func(ns *namespace, inode uint64) int { return cmpUint(ns.inode, inode) })
	n.sorted = slices.Delete(n.sorted, i, i+1)
}

// openNetlink opens a sock_diag socket inside ns unless the settings ask
// for /proc, and logs which way ns is read. The exporter's own namespace
// needs no entering; another needs CAP_SYS_ADMIN, and CAP_SYS_PTRACE to
// open another user's ns/net.
func (n *node) openNetlink(ns *namespace) {
	if n.x.s.source == "proc" {
		n.x.log.Printf("%sreading %s and tcp6", ns.name, ns.paths[0])
		return
	}
	var d *diagSource
	var err error
	if ns.inode == n.own {
		d, err = newDiagSource()
	} else {
		var fd int
		fd, err = syscall.Open(filepath.Join(n.x.s.procfs, strconv.Itoa(ns.pid), "ns", "net"), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == nil {
			if n.diagBuf == nil {
				n.diagBuf = make([]byte, diagBufSize)
			}
			d, err = newDiagSourceIn(fd, n.diagBuf)
		}
	}
	if err != nil {
		n.x.log.Printf("%sreading %s and tcp6: netlink sock_diag cannot be opened in it: %v", ns.name, ns.paths[0], err)
		return
	}
	ns.diag = d
	n.x.log.Printf("%sreading over netlink sock_diag", ns.name)
}

// close closes every namespace's socket.
func (n *node) close() {
	for _, ns := range n.sorted {
		if ns.diag != nil {
			ns.diag.Close()
		}
	}
}

var (
	netlinkLabel = appendLabel(nil, "source", "netlink")
	procLabel    = appendLabel(nil, "source", "proc")
)

// appendHealth writes node mode's own families.
func (n *node) appendHealth(b []byte) []byte {
	b = appendHeader(b, nsName, "Network namespaces read by the last read, by how they are read", "gauge")
	b = appendIntSample(b, nsName, netlinkLabel, n.netlink)
	b = appendIntSample(b, nsName, procLabel, n.proc)
	b = appendHeader(b, nsErrsName, "Reads of single network namespaces that failed and kept their last good counts", "counter")
	return appendIntSample(b, nsErrsName, nil, int(n.readErrors))
}

// tracked is the connections the namespaces' trackers remember.
func (n *node) tracked() int {
	sum := 0
	for _, ns := range n.sorted {
		sum += ns.tr.tracked()
	}
	return sum
}
