package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// sock makes a socket from text addresses.
func sock(local, remote string, st tcpState, inode uint64) socket {
	return socket{netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote), st, inode}
}

func listener(local string, inode uint64) socket {
	if netip.MustParseAddrPort(local).Addr().Is4() {
		return sock(local, "0.0.0.0:0", stateListen, inode)
	}
	return sock(local, "[::]:0", stateListen, inode)
}

// portsOf is the port set of the port setting's list.
func portsOf(ports ...uint16) *portSet {
	s := new(portSet)
	for _, p := range ports {
		s.add(p)
	}
	return s
}

// row is one series as the tracker counts it.
type row struct {
	Key                   string // direction/port/version
	Longterm, Established int
}

func rows(tr *tracker) []row {
	var got []row
	for _, s := range tr.sorted {
		got = append(got, row{rowKey(s.key), s.longterm, s.established})
	}
	return got
}

// step is one read of the tables at a time on the fake clock.
type step struct {
	at      time.Duration
	sockets []socket
	want    []row
}

// fakeClock is the tracker's monotonic clock, moved by the test.
type fakeClock struct{ now time.Duration }

func (c *fakeClock) read() time.Duration { return c.now }

// readOnce is one whole read of sockets.
func readOnce(tr *tracker, sockets []socket) {
	tr.begin()
	for _, s := range sockets {
		tr.observe(&s)
	}
	tr.end()
}

var defaultCfg = trackConfig{duration: 6 * time.Second, in: true, tcpv6: true, ownPort: 9690}

func runSteps(t *testing.T, cfg trackConfig, steps []step) *tracker {
	t.Helper()
	clock := new(fakeClock)
	tr := newTracker(cfg, clock.read)
	for i, st := range steps {
		clock.now = st.at
		readOnce(tr, st.sockets)
		if diff := cmp.Diff(st.want, rows(tr)); diff != "" {
			t.Fatalf("step %d (at %s): series mismatch (-want +got):\n%s", i, st.at, diff)
		}
	}
	return tr
}

var (
	lis80   = listener("127.0.0.1:80", 1)
	lis80v6 = listener("[::1]:80", 2)
	lisAny  = listener("[::]:3838", 3)
	in1     = sock("127.0.0.1:80", "127.0.0.1:40001", stateEstablished, 11)
	in1Out  = sock("127.0.0.1:40001", "127.0.0.1:80", stateEstablished, 12) // the client end of in1
	in2     = sock("127.0.0.1:80", "127.0.0.1:40002", stateEstablished, 13)
	in6     = sock("[::1]:80", "[::1]:40003", stateEstablished, 14)
	mapped  = sock("[::ffff:127.0.0.1]:3838", "[::ffff:127.0.0.1]:40004", stateEstablished, 15)
	v6Any   = sock("[::1]:3838", "[::1]:40005", stateEstablished, 16)
	timeW   = sock("127.0.0.1:80", "127.0.0.1:40006", stateTimeWait, 0)
	own     = sock("127.0.0.1:9690", "127.0.0.1:40007", stateEstablished, 17)
)

func TestTrackerAgeThreshold(t *testing.T) {
	socks := []socket{lis80, in1, timeW, own, listener("127.0.0.1:9690", 4)}
	runSteps(t, defaultCfg, []step{
		{at: 10 * time.Second, sockets: socks, want: []row{{"in/80/4", 0, 1}}},
		{at: 15999 * time.Millisecond, sockets: socks, want: []row{{"in/80/4", 0, 1}}},
		{at: 16 * time.Second, sockets: socks, want: []row{{"in/80/4", 1, 1}}}, // exactly duration
		{at: 17 * time.Second, sockets: socks, want: []row{{"in/80/4", 1, 1}}},
	})
}

func TestTrackerNewInodeStartsAtZero(t *testing.T) {
	reopened := in1
	reopened.Inode = 99
	runSteps(t, defaultCfg, []step{
		{at: 0, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 0, 1}}},
		{at: 7 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 1, 1}}},
		{at: 8 * time.Second, sockets: []socket{lis80, reopened}, want: []row{{"in/80/4", 0, 1}}},
		{at: 14 * time.Second, sockets: []socket{lis80, reopened}, want: []row{{"in/80/4", 1, 1}}},
	})
}

// A connection waiting in the accept queue is listed with inode 0; once
// accepted it gets its socket's inode. It is the same connection: it keeps
// its age and ends no lifetime, even when one read lists it both ways.
func TestTrackerAcceptKeepsAge(t *testing.T) {
	queued := in1
	queued.Inode = 0
	tr := runSteps(t, defaultCfg, []step{
		{at: 0, sockets: []socket{lis80, queued}, want: []row{{"in/80/4", 0, 1}}},
		{at: 3 * time.Second, sockets: []socket{lis80, queued, in1}, want: []row{{"in/80/4", 0, 1}}},
		{at: 6 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 1, 1}}},
	})
	if got := tr.total.counts; got != ([14]uint64{}) {
		t.Errorf("lifetimes observed for an accepted connection: %v", got)
	}
	if n := tr.tracked(); n != 1 {
		t.Errorf("tracked = %d, want 1", n)
	}
}

// An inode number the kernel recycles for another 4-tuple is another
// connection: the old one ends, the new one starts at age 0.
func TestTrackerRecycledInode(t *testing.T) {
	recycled := in2
	recycled.Inode = in1.Inode
	tr := runSteps(t, defaultCfg, []step{
		{at: 0, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 0, 1}}},
		{at: 6 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 1, 1}}},
		{at: 7 * time.Second, sockets: []socket{lis80, recycled}, want: []row{{"in/80/4", 0, 1}}},
	})
	if want := [14]uint64{1: 1}; tr.total.counts != want {
		t.Errorf("lifetimes = %v, want the first connection's 6s in le=6", tr.total.counts)
	}
}

func TestTrackerDirectionAndFilters(t *testing.T) {
	all := []socket{lis80, lis80v6, lisAny, in1, in1Out, in2, in6, mapped, v6Any, own}
	tests := []struct {
		name string
		cfg  func(c *trackConfig)
		want []row // after duration: long-term equals established
	}{
		{"in", func(c *trackConfig) {}, []row{
			{"in/80/4", 2, 2}, {"in/80/6", 1, 1}, {"in/3838/4", 1, 1}, {"in/3838/6", 1, 1}}},
		{"out", func(c *trackConfig) { c.in, c.out = false, true }, []row{{"out/80/4", 1, 1}}},
		{"all", func(c *trackConfig) { c.out = true }, []row{
			{"in/80/4", 2, 2}, {"out/80/4", 1, 1}, {"in/80/6", 1, 1}, {"in/3838/4", 1, 1}, {"in/3838/6", 1, 1}}},
		{"port", func(c *trackConfig) { c.ports = portsOf(3838) }, []row{{"in/3838/4", 1, 1}, {"in/3838/6", 1, 1}}},
		{"port idle", func(c *trackConfig) { c.ports = portsOf(443); c.out = true }, []row{
			{"in/443/4", 0, 0}, {"out/443/4", 0, 0}, {"in/443/6", 0, 0}, {"out/443/6", 0, 0}}},
		{"ports", func(c *trackConfig) { c.ports = portsOf(3838, 443, 80) }, []row{
			{"in/80/4", 2, 2}, {"in/80/6", 1, 1}, {"in/443/4", 0, 0}, {"in/443/6", 0, 0}, {"in/3838/4", 1, 1}, {"in/3838/6", 1, 1}}},
		{"no tcpv6 keeps mapped", func(c *trackConfig) { c.tcpv6 = false }, []row{
			{"in/80/4", 2, 2}, {"in/3838/4", 1, 1}}},
		{"own port is never counted", func(c *trackConfig) { c.ownPort = 80 }, []row{
			{"in/3838/4", 1, 1}, {"in/3838/6", 1, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultCfg
			tt.cfg(&cfg)
			young := make([]row, len(tt.want))
			for i, r := range tt.want {
				young[i] = row{r.Key, 0, r.Established}
			}
			runSteps(t, cfg, []step{
				{at: 0, sockets: all, want: young},
				{at: cfg.duration, sockets: all, want: tt.want},
			})
		})
	}
}

func TestTrackerListedTwiceCountsOnce(t *testing.T) {
	runSteps(t, defaultCfg, []step{
		{at: 0, sockets: []socket{lis80, in1, in1, in2}, want: []row{{"in/80/4", 0, 2}}},
		{at: 6 * time.Second, sockets: []socket{lis80, in1, in2, in1, lis80}, want: []row{{"in/80/4", 2, 2}}},
	})
}

// The direction is fixed once two reads have listed a connection: a
// listener that appears later does not turn an outbound connection into an
// inbound one.
func TestTrackerDirectionFixedAtFirstSight(t *testing.T) {
	cfg := defaultCfg
	cfg.out = true
	runSteps(t, cfg, []step{
		{at: 0, sockets: []socket{in1}, want: []row{{"out/40001/4", 0, 1}}},
		{at: 1 * time.Second, sockets: []socket{in1}, want: []row{{"out/40001/4", 0, 1}}},
		{at: 6 * time.Second, sockets: []socket{lis80, in1}, want: []row{
			{"in/80/4", 0, 0}, {"out/40001/4", 1, 1}}},
	})
}

// A read is not atomic: the kernel lists listeners before connections, so
// a listener opened during a read is missed by it while the connections it
// accepted meanwhile are listed. The next read lists the listener: they are
// inbound, and keep their age.
func TestTrackerListenerOpenedDuringRead(t *testing.T) {
	queued := in1
	queued.Inode = 0
	allCfg := defaultCfg
	allCfg.out = true
	tests := []struct {
		name  string
		cfg   trackConfig
		steps []step
	}{
		{"in", defaultCfg, []step{
			{at: 0, sockets: []socket{in1}, want: nil},
			{at: 1 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 0, 1}}},
			{at: 6 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 1, 1}}},
		}},
		{"all", allCfg, []step{
			{at: 0, sockets: []socket{in1, in1Out}, want: []row{{"out/80/4", 0, 1}, {"out/40001/4", 0, 1}}},
			{at: 1 * time.Second, sockets: []socket{lis80, in1, in1Out}, want: []row{{"in/80/4", 0, 1}, {"out/80/4", 0, 1}}},
			{at: 6 * time.Second, sockets: []socket{lis80, in1, in1Out}, want: []row{{"in/80/4", 1, 1}, {"out/80/4", 1, 1}}},
		}},
		{"accepted from the queue meanwhile", defaultCfg, []step{
			{at: 0, sockets: []socket{queued}, want: nil},
			{at: 1 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 0, 1}}},
			{at: 6 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 1, 1}}},
		}},
		{"gone before the next read", allCfg, []step{
			{at: 0, sockets: []socket{in1}, want: []row{{"out/40001/4", 0, 1}}},
			{at: 1 * time.Second, sockets: []socket{lis80}, want: []row{{"in/80/4", 0, 0}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := runSteps(t, tt.cfg, tt.steps)
			if n := tr.tracked(); n != len(tt.steps[len(tt.steps)-1].sockets)-1 {
				t.Errorf("tracked = %d, want %d", n, len(tt.steps[len(tt.steps)-1].sockets)-1)
			}
		})
	}
}

// A read that fails half-way is never ended: it must not lose what the
// tracker knew, nor count anything twice.
func TestTrackerUnendedRead(t *testing.T) {
	clock := new(fakeClock)
	tr := newTracker(defaultCfg, clock.read)
	read := func(at time.Duration, end bool, socks ...socket) {
		clock.now = at
		tr.begin()
		for _, s := range socks {
			tr.observe(&s)
		}
		if end {
			tr.end()
		}
	}
	read(0, true, lis80, in1, in2)
	read(3*time.Second, false, lis80, in1) // fails before in2
	read(6*time.Second, true, lis80, in1, in2)
	if diff := cmp.Diff([]row{{"in/80/4", 2, 2}}, rows(tr)); diff != "" {
		t.Errorf("series mismatch (-want +got):\n%s", diff)
	}
	if got := tr.series.items[tr.seriesByKey[seriesKey{dirIn, 80, false}]].lifetimes.counts; got != ([14]uint64{}) {
		t.Errorf("lifetimes observed after an unended read: %v", got)
	}
}

// generatedRead feeds generated tables to a tracker as one read, with a
// parser and reader kept between reads, as the poll loop keeps its own.
type generatedRead struct {
	tr      *tracker
	clock   *fakeClock
	tables  [][]byte
	parser  tableParser
	r       bytes.Reader
	observe func(*socket)
}

func newGeneratedRead(cfg trackConfig, n int) *generatedRead {
	g := &generatedRead{clock: new(fakeClock), tables: [][]byte{genTable(n, false), genTable(n, true)}}
	g.tr = newTracker(cfg, g.clock.read)
	g.observe = g.tr.observe
	return g
}

func (g *generatedRead) read() {
	g.clock.now += time.Second
	g.tr.begin()
	for _, table := range g.tables {
		g.r.Reset(table)
		if err := g.parser.parse(&g.r, "generated", g.observe, failOnBad); err != nil {
			panic(err)
		}
	}
	g.tr.end()
}

func failOnBad(err error) { panic(err) }

// The steady state, the same connections read again, allocates nothing,
// however many connections there are.
func TestTrackerSteadyStateAllocs(t *testing.T) {
	cfg := defaultCfg
	cfg.out = true
	g := newGeneratedRead(cfg, 5000)
	g.read()
	g.read()
	if n := testing.AllocsPerRun(10, g.read); n != 0 {
		t.Errorf("a steady-state read of %d sockets allocates %v times, want 0", 10000, n)
	}
	if want := 2 * 5000 * 9 / 11; g.tr.tracked() < want {
		t.Errorf("tracked = %d, want at least %d", g.tr.tracked(), want)
	}
}

// BenchmarkTrackerRead50k is one read of 50,000 sockets in tcp and as many
// in tcp6, parse and track, in the steady state.
func BenchmarkTrackerRead50k(b *testing.B) {
	g := newGeneratedRead(defaultCfg, 50000)
	g.read()
	b.SetBytes(int64(len(g.tables[0]) + len(g.tables[1])))
	b.ReportAllocs()
	for b.Loop() {
		g.read()
	}
}

// BenchmarkTrackerObserve50k is the tracker alone over the same read.
func BenchmarkTrackerObserve50k(b *testing.B) {
	read := trackerReads(newGeneratedRead(defaultCfg, 50000))
	read()
	b.ReportAllocs()
	for b.Loop() {
		read()
	}
}

// trackerReads parses g's tables once and returns a read of the tracker
// alone over the sockets they hold, a second after the last.
func trackerReads(g *generatedRead) func() {
	var socks []socket
	for _, table := range g.tables {
		g.parser.parse(bytes.NewReader(table), "generated", func(s *socket) { socks = append(socks, *s) }, failOnBad)
	}
	return func() {
		g.clock.now += time.Second
		g.tr.begin()
		for i := range socks {
			g.tr.observe(&socks[i])
		}
		g.tr.end()
	}
}

// clientStep is one read with the distinct clients it should leave: per
// series (direction/port/version), and over all series for simple mode.
type clientStep struct {
	at      time.Duration
	sockets []socket
	want    map[string]int
	wantAll int
}

func runClientSteps(t *testing.T, cfg trackConfig, steps []clientStep) *tracker {
	t.Helper()
	clock := new(fakeClock)
	tr := newTracker(cfg, clock.read)
	for i, st := range steps {
		clock.now = st.at
		readOnce(tr, st.sockets)
		got := make(map[string]int)
		for _, s := range tr.sorted {
			got[rowKey(s.key)] = s.clients
		}
		if cfg.simple {
			if tr.allClients != st.wantAll {
				t.Errorf("step %d (at %s): %d clients in all, want %d", i, st.at, tr.allClients, st.wantAll)
			}
			continue
		}
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("step %d (at %s): clients mismatch (-want +got):\n%s", i, st.at, diff)
		}
	}
	return tr
}

// TestTrackerClients: a browser holds several connections; each remote
// address counts once per series among the long-term connections, and
// once over all series in simple mode. IPv4-mapped addresses are IPv4.
func TestTrackerClients(t *testing.T) {
	var (
		lis   = listener("0.0.0.0:80", 1)
		lis6  = listener("[::]:3838", 2)
		a1    = sock("10.0.0.1:80", "10.0.0.1:50001", stateEstablished, 11) // a browser on the host itself
		a2    = sock("10.0.0.5:80", "10.0.0.1:50002", stateEstablished, 12)
		a3    = sock("10.0.0.5:80", "10.0.0.1:50003", stateEstablished, 13)
		b1    = sock("10.0.0.5:80", "10.0.0.2:50004", stateEstablished, 14)
		aWS   = sock("[::ffff:10.0.0.5]:3838", "[::ffff:10.0.0.1]:50005", stateEstablished, 15)
		aWS4  = sock("10.0.0.5:3838", "10.0.0.1:50006", stateEstablished, 16)
		c6    = sock("[2001:db8::5]:3838", "[2001:db8::1]:50007", stateEstablished, 17)
		d1    = sock("10.0.0.5:80", "10.0.0.3:50008", stateEstablished, 18)
		queue = sock("10.0.0.5:80", "10.0.0.4:50009", stateEstablished, 0)
	)
	accepted := queue
	accepted.Inode = 19
	all := []socket{lis, lis6, a1, a2, a3, b1, aWS, aWS4, c6}
	steps := []clientStep{
		{at: 0, sockets: append(all, queue),
			want: map[string]int{"in/80/4": 0, "in/3838/4": 0, "in/3838/6": 0}, wantAll: 0},
		{at: 6 * time.Second, sockets: append(all, queue, accepted), // listed both ways: one connection
			want: map[string]int{"in/80/4": 3, "in/3838/4": 1, "in/3838/6": 1}, wantAll: 4},
		{at: 7 * time.Second, sockets: []socket{lis, lis6, a3, b1, aWS, c6, d1, accepted}, // d1 is young
			want: map[string]int{"in/80/4": 3, "in/3838/4": 1, "in/3838/6": 1}, wantAll: 4},
		{at: 8 * time.Second, sockets: []socket{lis, lis6, b1, aWS, c6, d1}, // 10.0.0.1 left port 80 only
			want: map[string]int{"in/80/4": 1, "in/3838/4": 1, "in/3838/6": 1}, wantAll: 3},
		{at: 13 * time.Second, sockets: []socket{lis, lis6, b1, d1},
			want: map[string]int{"in/80/4": 2, "in/3838/4": 0, "in/3838/6": 0}, wantAll: 2},
		{at: 14 * time.Second, sockets: []socket{lis, lis6},
			want: map[string]int{"in/80/4": 0, "in/3838/4": 0, "in/3838/6": 0}, wantAll: 0},
	}
	for _, simple := range []bool{false, true} {
		t.Run(fmt.Sprintf("simple=%t", simple), func(t *testing.T) {
			cfg := defaultCfg
			cfg.simple = simple
			tr := runClientSteps(t, cfg, steps)
			if n, m := len(tr.clientsByKey), len(tr.clients.items)-len(tr.clients.free); n != 0 || m != 0 {
				t.Errorf("%d clients by key, %d in slots after every connection went, want 0", n, m)
			}
		})
	}
}

// TestTrackerClientsRecheck: a connection first seen as outbound, whose
// listener the next read lists, moves to its inbound series and takes its
// client along, even when it is already long-term by then.
func TestTrackerClientsRecheck(t *testing.T) {
	cfg := defaultCfg
	cfg.out, cfg.duration = true, time.Second
	conn := sock("10.0.0.5:80", "10.0.0.1:50001", stateEstablished, 11)
	lis := listener("0.0.0.0:80", 1)
	tr := runClientSteps(t, cfg, []clientStep{
		{at: 0, sockets: []socket{conn}, want: map[string]int{"out/50001/4": 0}},
		{at: time.Second, sockets: []socket{lis, conn}, want: map[string]int{"in/80/4": 1}},
		{at: 2 * time.Second, sockets: []socket{lis}, want: map[string]int{"in/80/4": 0}},
	})
	if n := len(tr.clientsByKey); n != 0 {
		t.Errorf("%d clients kept after the connection went, want 0", n)
	}
}

// TestTrackerOwnEnds: neither end of a scrape of the exporter's own
// listening socket counts, in any direction; a remote exporter on the same
// port number is outbound traffic like any other.
func TestTrackerOwnEnds(t *testing.T) {
	cfg := defaultCfg
	cfg.out = true
	lisOwn := listener("0.0.0.0:9690", 1)
	ends := []socket{
		lisOwn,
		sock("127.0.0.1:9690", "127.0.0.1:40001", stateEstablished, 11), // the exporter's end
		sock("127.0.0.1:40001", "127.0.0.1:9690", stateEstablished, 12), // the scraper's, on loopback
		sock("[::1]:40002", "[::1]:9690", stateEstablished, 13),
		sock("[::ffff:127.0.0.2]:40003", "[::ffff:127.0.0.1]:9690", stateEstablished, 14),
		sock("10.0.0.5:40004", "10.0.0.5:9690", stateEstablished, 15), // to its own address
		sock("10.0.0.5:40005", "10.0.0.9:9690", stateEstablished, 16), // another host's exporter
		sock("[2001:db8::5]:40006", "[2001:db8::5]:9690", stateEstablished, 17),
	}
	runSteps(t, cfg, []step{
		{at: 0, sockets: ends, want: []row{{"out/9690/4", 0, 1}}},
		{at: 6 * time.Second, sockets: ends, want: []row{{"out/9690/4", 1, 1}}},
	})
}

func rowKey(k seriesKey) string {
	v := "4"
	if k.v6 {
		v = "6"
	}
	return k.dir.String() + "/" + strconv.Itoa(int(k.port)) + "/" + v
}
