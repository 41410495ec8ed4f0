package main

import (
	"errors"
	"fmt"
	"log"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// exporter reads the connection tables into the tracker, one read at a
// time from one goroutine, and publishes what a scrape writes as a snapshot.
type exporter struct {
	s *settings
	nsReader
	log     *log.Logger
	node    *node // namespaces=all; nil for the exporter's own alone
	parser  tableParser
	table   tableReader  // the table being read
	files   [3]tableFile // tcp, tcp6, netlink: what the reads of all namespaces met
	lastErr error        // of the previous read
	buckets tableBuckets // of the namespace's connection table
	badSeen map[string]bool
	back    *body     // the body the last read replaced; reused when free
	freedAt time.Time // when memory was last given back to the OS

	mu    sync.Mutex // guards front and err
	front *body      // what /metrics serves, but the process families
	err   error      // the last read's error, nil when it succeeded

	reloadErrors *atomic.Uint64 // of the TLS and token files, counted by the guard; nil without
}

// body is a rendered /metrics body. Scrapes hold a reference while they
// write it, so that the poll loop reuses only a buffer no one reads.
type body struct {
	b     []byte
	conns int // the connection families are b[:conns]
	refs  atomic.Int32

	// b gzipped but for its end, and b's CRC-32: made by the first
	// scrape that asks for gzip (see gzipped).
	gzOnce sync.Once
	gz     []byte
	crc    uint32
}

// nsReader reads the sockets of one network namespace into its tracker.
type nsReader struct {
	name    string // what log lines of the namespace start with; "" for the exporter's own
	inode   uint64 // in node mode, of its tcp table: the namespace's identity
	tr      *tracker
	observe func(*socket) // tr.observe, bound once
	paths   [2]string     // its tcp and tcp6 tables
	diag    *diagSource   // nil when reading /proc
	backoff time.Duration // since netlink last failed; 0 while it works
	retryAt time.Time     // when a failed netlink is tried again
}

func newNSReader(tr *tracker, procfs string) nsReader {
	return nsReader{tr: tr, observe: tr.observe,
		paths: [2]string{filepath.Join(procfs, "net", "tcp"), filepath.Join(procfs, "net", "tcp6")}}
}

// tableFile is one source of sockets and what reading it has met.
type tableFile struct {
	name                         string // tcp, tcp6 or netlink
	label                        []byte // file="name", made once
	optional                     bool   // a kernel without IPv6 has no tcp6
	missing                      bool   // logged as missing
	reads, readErrors, malformed uint64
}

// freeEvery bounds how often a read gives memory back to the OS: a forced
// collection costs milliseconds, and traffic that swings between bursts
// and lulls would otherwise pay it every other read.
const freeEvery = time.Minute

// maxBadLogged bounds the distinct malformed lines remembered for logging.
const maxBadLogged = 256

func newExporter(s *settings, ownPort uint16, logger *log.Logger) *exporter {
	cfg := newTrackConfig(s, ownPort)
	x := &exporter{
		s:        s,
		nsReader: newNSReader(newTracker(cfg, monotonic()), s.procfs),
		log:      logger,
		badSeen:  make(map[string]bool),
		files: [3]tableFile{
			{name: "tcp"},
			{name: "tcp6", optional: true},
			{name: "netlink"},
		},
	}
	for i := range x.files {
		x.files[i].label = appendLabel(nil, "file", x.files[i].name)
	}
	if s.nodeWide {
		x.node = newNode(x, cfg)
	} else {
		x.openSource()
	}
	x.buckets = readBuckets(filepath.Join(s.procfs, "sys", "net", "ipv4", "tcp_ehash_entries"))
	if x.buckets.known {
		x.log.Print(x.buckets)
	}
	return x
}

// monotonic is a clock of the time since it was made, on the monotonic
// clock, for trackers.
func monotonic() func() time.Duration {
	start := time.Now()
	return func() time.Duration { return time.Since(start) }
}

// newTrackConfig is what the settings ask of every tracker.
func newTrackConfig(s *settings, ownPort uint16) trackConfig {
	cfg := trackConfig{
		duration: s.duration,
		in:       s.direction != "out",
		out:      s.direction != "in",
		tcpv6:    s.tcpv6,
		ownPort:  ownPort,
		simple:   s.simple,
	}
	if s.ports != nil {
		cfg.ports = new(portSet)
		for _, p := range s.ports {
			cfg.ports.add(p)
		}
	}
	return cfg
}

// openSource opens the netlink socket when the source setting asks for it
// (auto: when procfs is the exporter's own /proc) and says which source
// the exporter reads.
func (x *exporter) openSource() {
	tables := x.paths[0] + " and " + x.paths[1]
	if x.s.source == "netlink" || x.s.source == "auto" && filepath.Clean(x.s.procfs) == "/proc" {
		d, err := newDiagSource()
		if err == nil {
			x.diag = d
			if d.refused != nil {
				x.log.Printf("reading connections from netlink sock_diag, a dump per family: the kernel refused TCPDIAG_GETSOCK, which dumps both in one walk: %v", d.refused)
				return
			}
			x.log.Printf("reading connections from netlink sock_diag, both families in one walk")
			return
		}
		x.log.Printf("netlink sock_diag unavailable, reading %s instead: %v", tables, err)
		return
	}
	x.log.Printf("reading connections from %s", tables)
}

// poll reads the connections once and publishes what a scrape serves. A failed
// read keeps the last good counts; the error shows in /healthz and the
// counters. Buffers are reused, so that the steady state makes no garbage.
func (x *exporter) poll() {
	start := time.Now()
	next := x.back
	if next == nil || next.refs.Load() > 0 { // a slow scrape still writes it
		next = new(body)
	}
	var err error
	if x.node != nil {
		next.b, err = x.node.poll(next.b[:0])
	} else {
		next.b, err = x.pollOwn(next.b[:0])
	}
	next.conns = len(next.b)
	x.noteError(err)
	next.b = x.appendHealth(next.b, time.Since(start))
	next.gz, next.gzOnce = next.gz[:0], sync.Once{}
	x.mu.Lock()
	x.front, x.back, x.err = next, x.front, err
	x.mu.Unlock()
}

// pollOwn reads the exporter's own namespace and writes its connection
// families; after a failed read, those of the last good one.
func (x *exporter) pollOwn(b []byte) ([]byte, error) {
	x.tr.begin()
	err := x.read(&x.nsReader)
	switch {
	case err == nil:
		x.endRead(x.tr)
		return appendConnMetrics(b, x.view(x.tr, nil)), nil
	case x.front != nil: // only this goroutine changes front
		return append(b, x.front.b[:x.front.conns]...), err
	}
	return b, err
}

// endRead ends a good read of tr. The garbage of a burst (the first
// read's, say) is collected and returned now: the steady state makes
// almost none, and the heap would keep its peak size.
func (x *exporter) endRead(tr *tracker) {
	tr.end()
	if tr.burstEnded && time.Since(x.freedAt) >= freeEvery {
		debug.FreeOSMemory()
		x.freedAt = time.Now()
	}
}

// view is what the connection families of tr are written from.
func (x *exporter) view(tr *tracker, labels []byte) connView {
	return connView{
		labels:  labels,
		simple:  x.s.simple,
		withDir: x.s.direction != "in",
		series:  tr.sorted,
		total:   &tr.total,
		clients: tr.allClients,
	}
}

// lastError is the last read's error, nil when it succeeded.
func (x *exporter) lastError() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}

// acquire returns what the last read published; the caller releases the
// body when done writing it.
func (x *exporter) acquire() *body {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.front.refs.Add(1)
	return x.front
}

func (b *body) release() { b.refs.Add(-1) }

// maxBackoff bounds the wait before a failed netlink is tried again.
const maxBackoff = time.Minute

// read lists the sockets of one read to the tracker. A netlink read that
// fails is done again from /proc, and the reads use /proc until netlink is
// tried again, after a wait that doubles from a second to maxBackoff while
// it fails: never given up for good, since /proc costs several times more.
// One log line when it fails, one when it works again.
func (x *exporter) read(r *nsReader) error {
	if r.diag != nil && !time.Now().Before(r.retryAt) {
		f := &x.files[2]
		f.reads++
		err := r.diag.dump(x.s.ports, r.observe)
		if err == nil {
			if r.backoff > 0 {
				x.log.Printf("%snetlink sock_diag works again", r.name)
				r.backoff = 0
			}
			return nil
		}
		f.readErrors++
		if r.backoff == 0 {
			x.log.Printf("%snetlink sock_diag failed, reading %s until it works again (tried after 1s, then up to every %v): %v",
				r.name, r.paths[0], maxBackoff, err)
		}
		r.backoff = min(max(2*r.backoff, time.Second), maxBackoff)
		r.retryAt = time.Now().Add(r.backoff)
		r.tr.begin() // what netlink listed before failing was part of a read
	}
	for i := range x.files[:2] {
		if err := x.readTable(&x.files[i], r, i); err != nil {
			return err
		}
	}
	return nil
}

// readTable reads the table r.paths[i] of the kind of f into r.
func (x *exporter) readTable(f *tableFile, r *nsReader, i int) error {
	f.reads++
	path := r.paths[i]
	var err error
	x.table, err = openTable(path)
	if errors.Is(err, syscall.ENOENT) && f.optional && !r.gone(path) {
		if !f.missing {
			x.log.Printf("%s does not exist: IPv6 connections are not counted", path)
			f.missing = true
		}
		return nil
	}
	if err == nil && i == 0 && r.inode != 0 {
		if err = r.checkInode(x.table.fd); err != nil {
			syscall.Close(x.table.fd)
		}
	}
	if err != nil {
		f.readErrors++
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer syscall.Close(x.table.fd)
	f.missing = false
	err = x.parser.parse(&x.table, path, r.observe, func(err error) {
		f.malformed++
		x.logBadLine(err)
	})
	if err != nil {
		f.readErrors++
	}
	return err
}

// logBadLine logs a malformed line the first time it is met, ignoring its
// line number, which moves as sockets come and go.
func (x *exporter) logBadLine(err error) {
	key := err.Error()
	if pe, ok := err.(*ParseError); ok {
		key = pe.Path + pe.Err.Error() + pe.Text
	}
	if x.badSeen[key] || len(x.badSeen) > maxBadLogged {
		return
	}
	x.badSeen[key] = true
	if len(x.badSeen) > maxBadLogged {
		x.log.Printf("more than %d distinct malformed lines: no longer logging new ones", maxBadLogged)
		return
	}
	x.log.Printf("skipped malformed line: %v", err)
}

// noteError logs a read error when it first appears and when it clears.
func (x *exporter) noteError(err error) {
	switch {
	case err != nil && (x.lastErr == nil || err.Error() != x.lastErr.Error()):
		x.log.Printf("reading the connection tables failed, serving the last good counts: %v", err)
	case err == nil && x.lastErr != nil:
		x.log.Printf("reading the connection tables works again")
	}
	x.lastErr = err
}

const (
	buildInfoName = "tcp_established_exporter_build_info"
	readsName     = "tcp_established_exporter_reads_total"
	readErrsName  = "tcp_established_exporter_read_errors_total"
	malformedName = "tcp_established_exporter_malformed_lines_total"
	lastReadName  = "tcp_established_exporter_last_read_duration_seconds"
	trackedName   = "tcp_established_exporter_tracked_connections"
	bucketsName   = "tcp_established_exporter_connection_table_buckets"
	nsName        = "tcp_established_exporter_namespaces"
	nsErrsName    = "tcp_established_exporter_namespace_read_errors_total"
)

// appendHealth writes the exporter's own families.
func (x *exporter) appendHealth(b []byte, took time.Duration) []byte {
	b = appendHeader(b, buildInfoName, "A metric with a constant '1' value labeled by version and goversion from which tcp_established_exporter was built", "gauge")
	b = appendIntSample(b, buildInfoName, buildLabels(), 1)
	for _, c := range []struct {
		name, help string
		value      func(*tableFile) uint64
	}{
		{readsName, "Reads of each connection table", func(f *tableFile) uint64 { return f.reads }},
		{readErrsName, "Reads of each connection table that failed", func(f *tableFile) uint64 { return f.readErrors }},
		{malformedName, "Malformed lines skipped in each connection table", func(f *tableFile) uint64 { return f.malformed }},
	} {
		b = appendHeader(b, c.name, c.help, "counter")
		for i := range x.files {
			if f := &x.files[i]; f.reads > 0 {
				b = appendIntSample(b, c.name, f.label, int(c.value(f)))
			}
		}
	}
	b = appendHeader(b, lastReadName, "How long the last read of the connection tables took", "gauge")
	b = appendFloatSample(b, lastReadName, nil, took.Seconds())
	b = appendHeader(b, trackedName, "Connections the exporter remembers the first-seen time of", "gauge")
	tracked := x.tr.tracked()
	if x.node != nil {
		tracked = x.node.tracked()
	}
	b = appendIntSample(b, trackedName, nil, tracked)
	if x.node != nil {
		b = x.node.appendHealth(b)
	}
	if x.buckets.known {
		b = appendHeader(b, bucketsName, "Buckets of the kernel's TCP connection table that each read walks (net.ipv4.tcp_ehash_entries), negative when shared with the host", "gauge")
		b = appendIntSample(b, bucketsName, nil, x.buckets.n)
	}
	b = appendHeader(b, reloadErrsName, "Reloads of the TLS and token files that failed and kept the last good ones", "counter")
	var reloadErrors uint64
	if x.reloadErrors != nil {
		reloadErrors = x.reloadErrors.Load()
	}
	return appendIntSample(b, reloadErrsName, nil, int(reloadErrors))
}

// buildLabels are the labels of the build info, made once.
var buildLabels = sync.OnceValue(func() []byte {
	return appendLabel(appendLabel(nil, "version", buildVersion()), "goversion", runtime.Version())
})

// readNice is how much nicer than the process the reads run (see loop).
const readNice = 10

// lowerPriority raises the calling thread's nice value by n, to 19 at
// most, the least priority there is. Linux keeps a nice value per thread.
func lowerPriority(n int) error {
	tid := syscall.Gettid()
	// The system call returns 20 - nice, to keep clear of errors.
	prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
	if err != nil {
		return fmt.Errorf("getpriority: %w", err)
	}
	if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, min(20-prio+n, 19)); err != nil {
		return fmt.Errorf("setpriority: %w", err)
	}
	return nil
}
