package main

import (
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

func TestTrackerSeriesComeAndGo(t *testing.T) {
	cfg := defaultCfg
	cfg.out = true
	tr := runSteps(t, cfg, []step{
		{at: 0, sockets: []socket{lis80, in1, in1Out}, want: []row{{"in/80/4", 0, 1}, {"out/80/4", 0, 1}}},
		// The client side goes: its series goes; the listener keeps in/80.
		{at: 2 * time.Second, sockets: []socket{lis80, in1}, want: []row{{"in/80/4", 0, 1}}},
		{at: 4 * time.Second, sockets: []socket{lis80}, want: []row{{"in/80/4", 0, 0}}},
		{at: 5 * time.Second, sockets: nil, want: nil},
	})
	if n := tr.tracked(); n != 0 {
		t.Errorf("tracked = %d after every connection went, want 0", n)
	}
	if n := len(tr.seriesByKey); n != 0 {
		t.Errorf("%d series kept after every port went, want 0", n)
	}
}

func TestTrackerLifetimes(t *testing.T) {
	clock := new(fakeClock)
	tr := newTracker(defaultCfg, clock.read)
	read := func(at time.Duration, socks ...socket) {
		clock.now = at
		readOnce(tr, socks)
	}
	read(0, lis80, in1, in2, in1Out)
	read(1500*time.Millisecond, lis80, in1, in2, in1Out)
	read(2*time.Second, lis80, in2) // in1 lived 1.5s: last seen at 1.5s
	read(8*time.Second, lis80, in2)
	read(9*time.Second, lis80) // in2 lived 8s
	h := tr.series.items[tr.seriesByKey[seriesKey{dirIn, 80, false}]].lifetimes
	want := histogram{sum: 9.5}
	want.counts[1] = 1 // le=6
	want.counts[2] = 1 // le=10
	if diff := cmp.Diff(want, h, cmp.AllowUnexported(histogram{})); diff != "" {
		t.Errorf("lifetimes mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, tr.total, cmp.AllowUnexported(histogram{})); diff != "" {
		t.Errorf("total lifetimes mismatch (-want +got):\n%s", diff)
	}
}

func TestHistogramBucketBounds(t *testing.T) {
	var h histogram
	for _, v := range []float64{0, 1, 1.0001, 6, 86400, 86401} {
		h.observe(v)
	}
	want := [14]uint64{0: 2, 1: 2, 12: 1, 13: 1}
	if diff := cmp.Diff(want, h.counts); diff != "" {
		t.Errorf("bucket counts mismatch (-want +got):\n%s", diff)
	}
}

func TestLifetimeHistogram(t *testing.T) {
	for _, simple := range []bool{false, true} {
		t.Run(fmt.Sprintf("simple=%t", simple), func(t *testing.T) {
			t.Parallel()
			testLifetimes(t, simple)
		})
	}
}

// testLifetimes holds two real connections for known times and reads the
// histogram they land in.
func testLifetimes(t *testing.T, simple bool) {
	const interval = 100 * time.Millisecond
	srv := testnet.Listen(t, "tcp4", "127.0.0.1:0")
	args := []string{"-port", strconv.Itoa(srv.Port), "-interval", interval.String(), fmt.Sprintf("-simple=%t", simple)}
	base := startServer(t, args...)
	labels := fmt.Sprintf(`port="%d",tcp_version="4"`, srv.Port)
	if simple {
		labels = ""
	}
	conns := testnet.Dial(t, 2, "tcp4", fmt.Sprintf("127.0.0.1:%d", srv.Port))
	// The hold starts when the exporter has seen both: first-seen is then
	// at most one interval (and a read) earlier.
	testnet.WaitFor(t, 30*time.Second, "both connections seen", func() bool {
		return testnet.Samples(testnet.Scrape(t, base), establishedName)[labels] == 2
	})
	held := []time.Duration{1500 * time.Millisecond, 7 * time.Second}
	start := time.Now()
	for i, c := range conns {
		time.Sleep(time.Until(start.Add(held[i])))
		c.Close()
	}
	var body string
	testnet.WaitFor(t, 30*time.Second, "two lifetimes observed", func() bool {
		body = testnet.Scrape(t, base)
		return testnet.Samples(body, lifetimeName+"_count")[labels] == 2
	})
	buckets := testnet.Samples(body, lifetimeName+"_bucket")
	le := func(bound string) float64 {
		if labels == "" {
			return buckets[`le="`+bound+`"`]
		}
		return buckets[labels+`,le="`+bound+`"`]
	}
	want := map[string]float64{"1": 0, "6": 1, "10": 2, "30": 2, "86400": 2, "+Inf": 2}
	for bound, n := range want {
		if got := le(bound); got != n {
			t.Errorf("bucket le=%s = %v, want %v\n%s", bound, got, n, body)
		}
	}
	sum := testnet.Samples(body, lifetimeName+"_sum")[labels]
	slack := 2 * (interval + 250*time.Millisecond) // one interval and a read, per connection
	if d := math.Abs(sum - (held[0] + held[1]).Seconds()); d > slack.Seconds() {
		t.Errorf("sum = %.3fs, want %s within %s", sum, held[0]+held[1], slack)
	}
}
