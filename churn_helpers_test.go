package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The connections, scrapes and measures of TestChurnNoLeak.

// hardChurn opens and closes n connections to addrs, workers at a time,
// and calls tick (when not nil) from the test goroutine every half second
// meanwhile. Each worker keeps its last two connections open, so that
// connections live across reads of the tables; every other one ends with
// a reset, the rest with a FIN.
func hardChurn(t *testing.T, addrs []string, n, workers int, tick func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var next, done atomic.Int64
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var ring [2]net.Conn // this worker's last two connections
			defer func() {
				for _, c := range ring {
					if c != nil {
						c.Close()
					}
				}
			}()
			d := net.Dialer{Timeout: 30 * time.Second} // SYN retries at 1, 3, 7 and 15s
			for i, made := next.Add(1)-1, 0; i < int64(n); i, made = next.Add(1)-1, made+1 {
				c, err := d.DialContext(ctx, "tcp", addrs[i%int64(len(addrs))])
				if err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				if i%2 == 0 {
					c.(*net.TCPConn).SetLinger(0)
				}
				if old := ring[made%2]; old != nil {
					old.Close()
				}
				ring[made%2] = c
				done.Add(1)
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-finished:
			select {
			case err := <-errc:
				t.Fatalf("churn: %v (%d of %d connections made); kernel counters: %s", err, done.Load(), n, hardTCPStats())
			default:
			}
			if got := done.Load(); got != int64(n) {
				t.Fatalf("churn: %d of %d connections made", got, n)
			}
			return
		case <-ticker.C:
			if tick != nil {
				tick()
			}
		}
	}
}

// hardSink is a listener whose server side reads each connection until
// the client closes it.
type hardSink struct {
	ln   net.Listener
	port int
	v6   bool
	wg   sync.WaitGroup
	open atomic.Int64 // connections accepted and not yet closed
}

func hardListenSink(t *testing.T, addr string) *hardSink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr)
	s := &hardSink{ln: ln, port: a.Port, v6: a.IP.To4() == nil}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.open.Add(1)
			s.wg.Go(func() {
				io.Copy(io.Discard, c)
				c.Close()
				s.open.Add(-1)
			})
		}
	})
	t.Cleanup(s.close)
	return s
}

// close stops the listener and waits until every connection has ended.
func (s *hardSink) close() {
	s.ln.Close()
	s.wg.Wait()
}

// series is the label text of the sink's port in the given direction.
func (s *hardSink) series(dir string) string {
	v := "4"
	if s.v6 {
		v = "6"
	}
	return fmt.Sprintf(`direction="%s",port="%d",tcp_version="%s"`, dir, s.port, v)
}

// hardScraper scrapes over one kept-alive connection, so that exactly one
// client end of a scrape connection is in the tables at any time.
type hardScraper struct {
	c    net.Conn
	r    *bufio.Reader
	host string
}

func hardKeepAlive(t *testing.T, base string) *hardScraper {
	t.Helper()
	host := strings.TrimPrefix(base, "http://")
	c := dial(t, 1, "tcp", host)[0]
	return &hardScraper{c: c, r: bufio.NewReader(c), host: host}
}

func (s *hardScraper) get(t *testing.T, path string) string {
	t.Helper()
	s.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(s.c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, s.host); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp, err := http.ReadResponse(s.r, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || resp.Close {
		t.Fatalf("GET %s: status %d, close %t, %v", path, resp.StatusCode, resp.Close, err)
	}
	return string(body)
}

// hardHeap returns the live heap after a full collection.
func hardHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func hardFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// hardTCPStats returns the kernel's TCP counters that tell why connections
// fail (drops, overflows, reuse of TIME_WAIT ports), those not zero.
func hardTCPStats() string {
	var out []string
	for _, path := range []string{"/proc/net/snmp", "/proc/net/netstat"} {
		data, err := os.ReadFile(path)
		if err != nil {
			return err.Error()
		}
		lines := strings.Split(string(data), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 || (names[0] != "Tcp:" && names[0] != "TcpExt:") {
				continue
			}
			for j := 1; j < len(names); j++ {
				if values[j] != "0" && (strings.Contains(names[j], "Drop") || strings.Contains(names[j], "Overflow") ||
					strings.Contains(names[j], "Fail") || strings.Contains(names[j], "Retrans") ||
					strings.Contains(names[j], "Syncookies") || strings.Contains(names[j], "TW") || strings.Contains(names[j], "PAWS")) {
					out = append(out, names[j]+"="+values[j])
				}
			}
		}
	}
	return strings.Join(out, " ")
}
