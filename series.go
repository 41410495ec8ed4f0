package main

import (
	"cmp"
	"slices"
)

// The series the tracker counts connections in, and what each one
// accumulates. A series outlives every connection it counts: it is dropped
// only when no connection, listener or setting keeps it.

// direction tells whether a connection was accepted by a local listener (in)
// or opened from here (out).
type direction uint8

const (
	dirIn direction = iota
	dirOut
)

func (d direction) String() string {
	if d == dirIn {
		return "in"
	}
	return "out"
}

// seriesKey names one series: direction, service port and IP version.
type seriesKey struct {
	dir  direction
	port uint16
	v6   bool
}

func (k seriesKey) compare(o seriesKey) int {
	return cmp.Or(cmp.Compare(k.port, o.port), cmp.Compare(b2i(k.v6), b2i(o.v6)), cmp.Compare(k.dir, o.dir))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// series holds what one series counts. The counts are those of the last
// read; the histogram accumulates for as long as the series exists.
type series struct {
	key         seriesKey
	longterm    int // established for at least duration
	clients     int // distinct remote addresses of the long-term ones
	established int // established, any age
	lifetimes   histogram
	keep        bool // a listener or the port setting keeps it at zero
}

// count counts e in its series for the current read.
func (t *tracker) count(e *connEntry) {
	s := t.series.items[e.series]
	s.established++
	if t.readAt-e.first < t.cfg.duration {
		return
	}
	s.longterm++
	c := &t.clients.items[e.client]
	if c.gen != t.gen {
		c.gen, c.longterm = t.gen, 0
	}
	if c.longterm++; c.longterm == 1 {
		*t.clientCount(s)++
	}
}

// seriesFor returns the index of the series k, made if need be.
func (t *tracker) seriesFor(k seriesKey) int32 {
	if i, ok := t.seriesByKey[k]; ok {
		return i
	}
	i := t.series.add(&series{key: k})
	t.seriesByKey[k] = i
	return i
}

// uncount takes back what count added for e in the current read.
func (t *tracker) uncount(e *connEntry) {
	if e.series < 0 {
		return
	}
	s := t.series.items[e.series]
	s.established--
	if t.readAt-e.first < t.cfg.duration {
		return
	}
	s.longterm--
	c := &t.clients.items[e.client]
	if c.longterm--; c.longterm == 0 {
		*t.clientCount(s)--
	}
}

// A client is a remote address in a series (in simple mode, over all
// series), kept while a connection has it. It counts its long-term
// connections of the current read, so that a series counts each address
// once however many connections it holds: a browser holds several.
type client struct {
	key      clientKey
	conns    int32  // entries that have it
	gen      uint32 // the read that longterm counts in
	longterm int32  // its long-term connections counted in read gen
}

type clientKey struct {
	series int32 // -1 in simple mode
	addr   [16]byte
}

// clientFor returns the index of the client of a new entry of series with
// remote address addr, made if need be.
func (t *tracker) clientFor(series int32, addr *[16]byte) int32 {
	k := clientKey{series, *addr}
	if t.cfg.simple {
		k.series = -1
	}
	i, ok := t.clientsByKey[k]
	if !ok {
		i = t.clients.add(client{key: k})
		t.clientsByKey[k] = i
	}
	t.clients.items[i].conns++
	return i
}

// releaseClient lets go of e's client, which is dropped with its last entry.
func (t *tracker) releaseClient(e *connEntry) {
	if e.client < 0 {
		return
	}
	c := &t.clients.items[e.client]
	if c.conns--; c.conns == 0 {
		delete(t.clientsByKey, c.key)
		t.clients.remove(e.client)
	}
	e.client = -1
}

// clientCount is where the distinct clients of s are counted.
func (t *tracker) clientCount(s *series) *int {
	if t.cfg.simple {
		return &t.allClients
	}
	return &s.clients
}

// keepIdleSeries marks the series that exist at zero: inbound series of
// listening ports, and those of the port setting.
func (t *tracker) keepIdleSeries() {
	c := &t.cfg
	keep := func(dir direction, p uint16, v6 bool) {
		if p == c.ownPort || v6 && !c.tcpv6 || !c.hasPort(p) {
			return
		}
		t.series.items[t.seriesFor(seriesKey{dir, p, v6})].keep = true
	}
	if c.in {
		for p, kind := range t.listen {
			if kind&(listen4|listenAny) != 0 {
				keep(dirIn, p, false)
			}
			if kind&(listen6|listenAny) != 0 {
				keep(dirIn, p, true)
			}
		}
	}
	if c.ports != nil {
		for _, d := range []direction{dirIn, dirOut} {
			if d == dirIn && c.in || d == dirOut && c.out {
				c.ports.each(func(p uint16) { keep(d, p, false); keep(d, p, true) })
			}
		}
	}
}

// lifetimeBuckets are the upper bounds of the lifetime histogram (SPEC 6).
var lifetimeBuckets = [...]float64{1, 6, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400}

// histogram counts observations per bucket, not cumulated.
type histogram struct {
	counts [len(lifetimeBuckets) + 1]uint64 // the last is +Inf
	sum    float64
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(lifetimeBuckets[:], v)
	h.counts[i]++
	h.sum += v
}

// slots is a slice whose freed indices are reused, so that an index stays
// valid for as long as its item is there.
type slots[T any] struct {
	items []T
	free  []int32
}

func (s *slots[T]) add(v T) int32 {
	if n := len(s.free); n > 0 {
		i := s.free[n-1]
		s.free = s.free[:n-1]
		s.items[i] = v
		return i
	}
	s.items = append(s.items, v)
	return int32(len(s.items) - 1)
}

func (s *slots[T]) remove(i int32) {
	var zero T
	s.items[i] = zero
	s.free = append(s.free, i)
}
