package main

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// trackerState is everything a scrape shows of a tracker, and what it
// remembers.
type trackerState struct {
	Series  []seriesState
	All     [14]uint64
	Clients int
	Tracked int
}

type seriesState struct {
	Key                            string
	Longterm, Established, Clients int
	Lifetimes                      [14]uint64
}

func stateOf(tr *tracker) trackerState {
	st := trackerState{All: tr.total.counts, Clients: tr.allClients, Tracked: tr.tracked()}
	for _, s := range tr.sorted {
		st.Series = append(st.Series, seriesState{rowKey(s.key), s.longterm, s.established, s.clients, s.lifetimes.counts})
	}
	return st
}

// orderPool makes the sockets of the order tests: connections to a few
// listening ports from a few clients, outbound ones, IPv6 ones, each with
// an inode of its own.
type orderPool struct {
	rng   *rand.Rand
	inode uint64
}

func (p *orderPool) conn() socket {
	p.inode++
	lport := uint16(80 + p.rng.IntN(3))
	client := netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + p.rng.IntN(20))})
	local, remote := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, 1}), lport),
		netip.AddrPortFrom(client, uint16(30000+p.inode%30000))
	switch p.rng.IntN(4) {
	case 0: // outbound
		local, remote = remote, local
	case 1:
		local = netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), local.Port())
		remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(p.rng.IntN(20))}), remote.Port())
	}
	return socket{local, remote, stateEstablished, p.inode}
}

// churn returns the sockets of the next read: some of prev gone, new ones
// inserted at random places, an inode recycled for another 4-tuple, a
// connection accepted from the queue and one waiting in it, one listed
// twice.
func (p *orderPool) churn(prev []socket) []socket {
	var next []socket
	for _, s := range prev {
		if s.State == stateEstablished && s.Inode != 0 && p.rng.IntN(10) == 0 {
			continue // gone
		}
		if s.State == stateEstablished && s.Inode == 0 {
			s.Inode = p.inode + 1000 // accepted
		}
		next = append(next, s)
		if p.rng.IntN(10) == 0 {
			next = append(next, p.conn())
		}
	}
	recycled := p.conn()
	recycled.Inode = next[len(next)/2].Inode
	next[len(next)/2] = recycled
	queued := p.conn()
	queued.Inode = 0
	wide := p.conn() // a forged table's: its low 32 bits another's inode
	wide.Inode = 1<<32 | next[len(next)/5].Inode
	next = slices.Insert(next, len(next)/3, queued, next[len(next)/4])
	return slices.Insert(next, len(next)/5, wide)
}

// TestTrackerOrderFollowing: a tracker that follows the order of the last
// read counts exactly what one that finds every socket in its map counts,
// whether the kernel lists the sockets in the same order, shuffled, or with
// sockets come and gone in the middle.
func TestTrackerOrderFollowing(t *testing.T) {
	for seed := range uint64(5) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			p := &orderPool{rng: rand.New(rand.NewPCG(seed, 12))}
			var base []socket
			for _, port := range []string{"0.0.0.0:80", "[::]:81"} {
				base = append(base, listener(port, 1))
			}
			for range 300 {
				base = append(base, p.conn())
			}
			shuffled := slices.Clone(base)
			p.rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			churned := p.churn(base)
			reads := []struct {
				name    string
				sockets []socket
				inOrder bool // every socket is where the last read had it
			}{
				{"first", base, false},
				{"second", base, false},
				{"same order", base, true},
				{"shuffled", shuffled, false},
				{"back in order", base, false},
				{"same order again", base, true},
				{"churned", churned, false},
				{"churned again", churned, false},
				{"churned twice", p.churn(churned), false},
			}
			cfg := defaultCfg
			cfg.out, cfg.duration = true, 2*time.Second
			clock := new(fakeClock)
			follow, byMap := newTracker(cfg, clock.read), newTracker(cfg, clock.read)
			for i, r := range reads {
				clock.now = time.Duration(i) * time.Second
				for _, tr := range []*tracker{follow, byMap} {
					if tr == byMap {
						tr.order = tr.order[:0] // nothing to follow: every socket through the map
					}
					readOnce(tr, r.sockets)
				}
				if diff := cmp.Diff(stateOf(byMap), stateOf(follow)); diff != "" {
					t.Fatalf("read %q: state mismatch (-map +order):\n%s", r.name, diff)
				}
				if r.inOrder && follow.cursor != len(follow.order) {
					t.Errorf("read %q: followed the order to %d of %d", r.name, follow.cursor, len(follow.order))
				}
			}
			if st := stateOf(follow); st.Tracked == 0 || st.All == ([14]uint64{}) {
				t.Errorf("the test tracks nothing or ends no lifetime: %+v", st)
			}
		})
	}
}

// BenchmarkTrackerObserve50kCold is BenchmarkTrackerObserve50k with the
// caches emptied between reads, outside the timer, as the kernel's walk of
// its socket hash empties them before the exporter sees a socket.
func BenchmarkTrackerObserve50kCold(b *testing.B) {
	read := trackerReads(newGeneratedRead(defaultCfg, 50000))
	evict := make([]byte, 32<<20)
	read()
	read()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := 0; i < len(evict); i += 64 {
			evict[i]++
		}
		b.StartTimer()
		read()
	}
}
