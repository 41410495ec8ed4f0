package main

import (
	"encoding/binary"
	"math"
	"math/bits"
	"slices"
	"time"
)

// trackConfig is what the tracker needs of the settings.
type trackConfig struct {
	duration time.Duration // minimum age of a long-term connection
	ports    *portSet      // the service ports to count; nil counts all
	in, out  bool          // which directions count
	tcpv6    bool          // count IPv6 connections too
	ownPort  uint16        // the exporter's own listening port, never counted
	simple   bool          // clients are counted over all series, not per series
}

// hasPort reports whether the service port p is one the settings count.
func (c *trackConfig) hasPort(p uint16) bool { return c.ports == nil || c.ports.has(p) }

// own reports whether a connection is one end of a connection to or from
// the exporter's own listening socket: a scrape, never counted. A remote
// end on the own port is the exporter itself only when it is on this host:
// a loopback address or the connection's own local address.
func (c *trackConfig) own(k *connKey) bool {
	return k.lport == c.ownPort ||
		k.rport == c.ownPort && (isLoopback(&k.remote) || k.remote == k.local)
}

// isLoopback reports whether a 16-byte address is ::1 or in 127.0.0.0/8,
// also as ::ffff:127.x.y.z.
func isLoopback(a *[16]byte) bool {
	return *a == [16]byte{15: 1} || [13]byte(a[:13]) == [13]byte{10: 0xff, 11: 0xff, 12: 127}
}

// connKey is a connection's identity: its 4-tuple and socket inode.
// Addresses are kept as 16 bytes (IPv4 as ::ffff:a.b.c.d).
type connKey struct {
	local, remote [16]byte
	lport, rport  uint16
	inode         uint64
}

// fold hashes the 4-tuple into 32 bits. The tracker finds a connection by
// its inode, which no two live sockets share, and keeps the fold to tell
// the same socket from a new one that got a recycled inode number.
func (k *connKey) fold() uint32 {
	const m1, m2, m3, m4 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5
	ne := binary.NativeEndian
	h := ne.Uint64(k.local[:8])*m1 ^ ne.Uint64(k.local[8:])*m2 ^
		ne.Uint64(k.remote[:8])*m3 ^ ne.Uint64(k.remote[8:])*m4 ^
		(uint64(k.lport)<<16|uint64(k.rport))*m1
	return uint32(h>>32 ^ h)
}

// v4 reports whether the connection is IPv4, also when tcp6 lists it.
func (k *connKey) v4() bool {
	return [12]byte(k.local[:12]) == [12]byte{10: 0xff, 11: 0xff}
}

// connEntry is what the tracker keeps of a connection: 32 bytes, no
// pointers for the garbage collector to follow. A series outlives every
// connection it counts (see end), and a client every connection it has, so
// an entry can keep their indices.
type connEntry struct {
	first  time.Duration // first seen established, monotonic
	inode  uint32        // its inode, or 0 when not in conns (see narrow)
	fold   uint32        // of its connKey
	seen   uint32        // generation of the last read that listed it
	series int32         // index of its series, or -1 when it does not count
	client int32         // index of its client, or -1 when it does not count
	at     int32         // its place in the order of the read that last listed it, or -1
}

// narrow reports whether a connection is found by its inode, in conns: the
// kernel numbers socket inodes in 32 bits. Inode 0 is a connection waiting
// in an accept queue; a wider one only a forged table shows.
func (k *connKey) narrow() bool { return k.inode != 0 && k.inode <= math.MaxUint32 }

// portSet is a set of TCP ports.
type portSet [65536 / 64]uint64

func (s *portSet) add(p uint16)      { s[p/64] |= 1 << (p % 64) }
func (s *portSet) has(p uint16) bool { return s[p/64]&(1<<(p%64)) != 0 }

func (s *portSet) each(fn func(p uint16)) {
	for i, w := range s {
		for ; w != 0; w &= w - 1 {
			fn(uint16(i*64 + bits.TrailingZeros64(w)))
		}
	}
}

// listenKind is where a port's LISTEN sockets were seen: bits of listen4,
// listen6 and listenAny.
type listenKind uint8

const (
	listen4   listenKind = 1 << iota // in tcp, or tcp6 on a v4-mapped address
	listen6                          // in tcp6, on an IPv6 address
	listenAny                        // in tcp6 on ::, which takes IPv4 too
)

// tracker turns successive reads of the connection tables into ages and
// counts. A read is begin, observe for every socket, then end; a read that
// fails half-way is simply not ended, and the next begin starts afresh.
type tracker struct {
	cfg trackConfig
	now func() time.Duration // monotonic clock

	// Indices into entries: by inode, and by the whole key for the others
	// (see narrow), the few connections waiting in an accept queue.
	conns   map[uint32]int32
	byKey   map[connKey]int32
	entries slots[connEntry]

	// The kernel lists sockets in the order of its hash table, which moves
	// only where sockets come and go: the entries in the order of the last
	// ended read, those of the current one, and where the current read is
	// expected to be in the former. See find.
	order, next []int32
	cursor      int

	gen     uint32        // the current read
	readAt  time.Duration // when the current read began
	lastAt  time.Duration // when the last ended read began
	seenN   int           // entries listed by the current read
	pending []connKey     // connections first seen in the current read
	recheck []connKey     // first seen by the last ended read, as outbound
	// burstEnded says that the last end dropped the buffer of a read that
	// saw many new connections: memory the process may give back.
	burstEnded bool

	// listen holds the local ports with a LISTEN socket, and of which
	// kinds. A map, not three portSets: a node's exporter keeps a tracker
	// for each namespace, most of which listen on a port or two, and
	// 24 KiB of bitmaps each, cleared at every read, would be most of its
	// memory; a lookup is only made for a new connection.
	listen map[uint16]listenKind
	// lastListen is the port and kind observeListen added last: the
	// listeners of one port (SO_REUSEPORT's, one a worker; one an address)
	// are listed one after the other, and a repeat costs no map write.
	lastListen struct {
		port uint16
		kind listenKind
	}

	series      slots[*series] // nil where free
	seriesByKey map[seriesKey]int32
	sorted      []*series // the series after the last end, sorted
	total       histogram // all lifetimes, for simple mode: it outlives every series

	clients      slots[client]
	clientsByKey map[clientKey]int32
	allClients   int // distinct remote addresses over all series, this read
}

func newTracker(cfg trackConfig, now func() time.Duration) *tracker {
	return &tracker{
		cfg:         cfg,
		now:         now,
		conns:       make(map[uint32]int32),
		byKey:       make(map[connKey]int32),
		seriesByKey: make(map[seriesKey]int32),

		clientsByKey: make(map[clientKey]int32),
		listen:       make(map[uint16]listenKind),
	}
}

// begin starts a read.
func (t *tracker) begin() {
	t.gen++
	t.readAt = t.now()
	t.seenN = 0
	t.next, t.cursor = t.next[:0], 0
	t.pending = t.pending[:0]
	clear(t.listen)
	t.lastListen.kind = 0
	for _, s := range t.series.items {
		if s != nil {
			s.longterm, s.established, s.clients, s.keep = 0, 0, 0, false
		}
	}
	t.allClients = 0
}

// observe takes one socket of the current read.
func (t *tracker) observe(s *socket) {
	switch s.State {
	case stateListen:
		t.observeListen(s)
	case stateEstablished:
		t.observeEstablished(s)
	}
}

func (t *tracker) observeListen(s *socket) {
	p := s.Local.Port()
	a := s.Local.Addr()
	kind := listen6
	switch {
	case a.Is4() || a.Is4In6():
		kind = listen4
	case a.IsUnspecified():
		kind = listenAny
	}
	if t.lastListen.port == p && t.lastListen.kind == kind {
		return
	}
	t.listen[p] |= kind
	t.lastListen.port, t.lastListen.kind = p, kind
}

func (t *tracker) observeEstablished(s *socket) {
	k := connKey{
		local:  s.Local.Addr().As16(),
		remote: s.Remote.Addr().As16(),
		lport:  s.Local.Port(),
		rport:  s.Remote.Port(),
		inode:  s.Inode,
	}
	c := &t.cfg
	if c.own(&k) || !c.tcpv6 && !k.v4() || !c.hasPort(k.lport) && !c.hasPort(k.rport) {
		return // can never count: not worth remembering
	}
	i, ok := t.find(&k)
	if !ok {
		t.pending = append(t.pending, k)
		return
	}
	e := &t.entries.items[i]
	if e.seen == t.gen {
		return // listed twice in one read
	}
	e.seen = t.gen
	t.seenN++
	if k.narrow() {
		e.at = int32(len(t.next))
		t.next = append(t.next, i)
	}
	if e.series >= 0 {
		t.count(e)
	}
}

// find is lookup for a socket of the current read. It first tries the
// entry that the last ended read listed next, whose cache lines arrive in
// order where the map's are cold after the kernel's walk, and falls back
// to the map when the order breaks: it then continues after the entry the
// map found.
func (t *tracker) find(k *connKey) (int32, bool) {
	if !k.narrow() {
		return t.lookup(k)
	}
	fold := k.fold()
	if t.cursor < len(t.order) {
		i := t.order[t.cursor]
		if e := &t.entries.items[i]; e.inode == uint32(k.inode) && e.fold == fold {
			t.cursor++
			return i, true
		}
	}
	i, ok := t.conns[uint32(k.inode)]
	if !ok {
		return 0, false
	}
	e := &t.entries.items[i]
	if e.fold != fold {
		return 0, false
	}
	if at := uint(e.at); at < uint(len(t.order)) && t.order[at] == i {
		t.cursor = int(at) + 1
	}
	return i, true
}

// lookup finds the entry of a connection.
func (t *tracker) lookup(k *connKey) (int32, bool) {
	if !k.narrow() {
		i, ok := t.byKey[*k]
		return i, ok
	}
	i, ok := t.conns[uint32(k.inode)]
	return i, ok && t.entries.items[i].fold == k.fold()
}

func (t *tracker) listening(p uint16) bool {
	return t.listen[p] != 0
}

// end finishes the current read: it classifies the new connections,
// forgets the ones that are gone and brings the series up to date.
func (t *tracker) end() {
	t.recheckOutbound()
	for _, k := range t.pending {
		t.add(k)
	}
	t.burstEnded = cap(t.pending) > 4*len(t.pending)+1024
	if t.burstEnded {
		t.pending = nil // the first read's, or a burst's: not worth keeping
	}
	if cap(t.recheck) > 4*len(t.recheck)+1024 { // likewise, but for the next read
		t.recheck = append([]connKey(nil), t.recheck...)
		t.burstEnded = true
	}
	if t.seenN < t.tracked() {
		t.forgetGone()
	}
	t.order, t.next = t.next, t.order
	t.keepIdleSeries()
	t.sorted = t.sorted[:0]
	for i, s := range t.series.items {
		switch {
		case s == nil:
		case s.established == 0 && !s.keep: // no connection refers to it
			delete(t.seriesByKey, s.key)
			t.series.remove(int32(i))
		default:
			t.sorted = append(t.sorted, s)
		}
	}
	slices.SortFunc(t.sorted, func(a, b *series) int { return a.key.compare(b.key) })
	t.lastAt = t.readAt
}

// add starts tracking a connection first seen in the current read.
func (t *tracker) add(k connKey) {
	if i, ok := t.lookup(&k); ok && t.entries.items[i].seen == t.gen {
		return // listed twice in one read
	}
	e, ok := t.accepted(k)
	if !ok {
		e = t.classify(k)
		if !t.listening(k.lport) {
			t.recheck = append(t.recheck, k)
		}
	}
	if old, ok := t.conns[uint32(k.inode)]; ok && k.narrow() {
		t.drop(old) // its inode number was recycled: that socket is gone
	}
	i := t.entries.add(e)
	if k.narrow() {
		t.conns[uint32(k.inode)] = i
	} else {
		t.byKey[k] = i
	}
	t.seenN++
	if e.series >= 0 {
		t.count(&t.entries.items[i])
	}
}

// accepted takes over the entry of a connection that waited in the accept
// queue, where the kernel lists it with inode 0 until accept(2) gives it a
// socket: it is the same connection, not a new one.
func (t *tracker) accepted(k connKey) (connEntry, bool) {
	if k.inode == 0 || len(t.byKey) == 0 {
		return connEntry{}, false
	}
	k0 := k
	k0.inode = 0
	i, ok := t.byKey[k0]
	if !ok {
		return connEntry{}, false
	}
	e := t.entries.items[i]
	if e.seen == t.gen {
		t.seenN-- // it stands for this very connection
		t.uncount(&e)
	}
	delete(t.byKey, k0)
	t.entries.remove(i)
	e.seen, e.fold, e.inode = t.gen, k.fold(), entryInode(&k)
	return e, true
}

// entryInode is the inode an entry keeps of k: 0 unless conns finds it.
func entryInode(k *connKey) uint32 {
	if k.narrow() {
		return uint32(k.inode)
	}
	return 0
}

// classify decides a new connection's direction and whether it counts.
func (t *tracker) classify(k connKey) connEntry {
	e := connEntry{first: t.readAt, inode: entryInode(&k), fold: k.fold(), seen: t.gen, series: t.seriesOf(&k), client: -1, at: -1}
	if e.series >= 0 {
		e.client = t.clientFor(e.series, &k.remote)
	}
	return e
}

// seriesOf returns the index of the series a connection counts in, by the
// listeners of the current read, or -1 when it does not count.
func (t *tracker) seriesOf(k *connKey) int32 {
	key := seriesKey{dirOut, k.rport, !k.v4()}
	if t.listening(k.lport) {
		key.dir, key.port = dirIn, k.lport
	}
	if (key.dir == dirIn && t.cfg.in || key.dir == dirOut && t.cfg.out) && t.cfg.hasPort(key.port) {
		return t.seriesFor(key)
	}
	return -1
}

// recheckOutbound takes a second look at the connections that the last
// ended read saw first, as outbound. A read is not atomic: the kernel lists
// the listeners before the connections, so a listener opened during a read
// is missed while the connections it accepted meanwhile are listed. This
// read lists the listener: those connections are inbound. It runs before
// the new connections are added, so that one accepted from the queue (see
// accepted) takes over the corrected entry.
func (t *tracker) recheckOutbound() {
	for _, k := range t.recheck {
		i, ok := t.lookup(&k)
		if !ok || !t.listening(k.lport) {
			continue // gone, or outbound indeed
		}
		e := &t.entries.items[i]
		counted := e.seen == t.gen
		if counted {
			t.uncount(e)
		}
		t.releaseClient(e)
		if e.series = t.seriesOf(&k); e.series >= 0 {
			e.client = t.clientFor(e.series, &k.remote)
		}
		if counted && e.series >= 0 {
			t.count(e)
		}
	}
	t.recheck = t.recheck[:0]
}

// forgetGone drops the connections the current read did not list, and
// records how long the counted ones lived: from first seen to the last
// read that listed them.
func (t *tracker) forgetGone() {
	for k, i := range t.conns {
		if t.entries.items[i].seen != t.gen {
			t.drop(i)
			delete(t.conns, k)
		}
	}
	for k, i := range t.byKey {
		if t.entries.items[i].seen != t.gen {
			t.drop(i)
			delete(t.byKey, k)
		}
	}
}

// drop frees the entry of a connection that is gone, after recording its
// lifetime. The caller removes it from its map.
func (t *tracker) drop(i int32) {
	if e := &t.entries.items[i]; e.series >= 0 {
		v := (t.lastAt - e.first).Seconds()
		t.series.items[e.series].lifetimes.observe(v)
		t.total.observe(v)
		t.releaseClient(e)
	}
	t.entries.remove(i)
}

// tracked is the number of connections the tracker remembers.
func (t *tracker) tracked() int { return len(t.conns) + len(t.byKey) }
