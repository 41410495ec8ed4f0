package e2e

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"tcp_established_exporter/internal/testnet"
)

// A fixed capture served through -procfs.

// TestProcfsRoot serves a fixed capture through -procfs. The fixture,
// testdata/procfs/net/tcp and tcp6, is /proc/net/tcp and tcp6
// of a fresh network namespace (lo up) captured while one program held:
//
//	listeners 127.0.0.1:3838, [::]:8080 (dual-stack), [::1]:9000, 127.0.0.1:5432 (idle)
//	127.0.0.1:20001..20003 -> 127.0.0.1:3838        3 ESTABLISHED pairs (tcp)
//	127.0.0.1:20011..20012 -> 127.0.0.1:8080        2 pairs: the dialling ends in tcp,
//	                                                the accepted ends in tcp6 as ::ffff:127.0.0.1
//	[::1]:20013 -> [::1]:8080                       1 pair (tcp6)
//	[::1]:20021..20022 -> [::1]:9000                2 pairs (tcp6)
//	127.0.0.1:20031 -> 127.0.0.1:6000               1 pair whose listener was then closed
//	127.0.0.1:20004 -> 127.0.0.1:3838, client closed: FIN_WAIT2 and CLOSE_WAIT, not counted
//	127.0.0.1:20041 -> 127.0.0.1:7000, both closed: TIME_WAIT, not counted
//
// Every local port in it is below 32768, the kernel's ephemeral range, so
// the exporter's own port (freePort) cannot clash with one.
func TestProcfsRoot(t *testing.T) {
	fixture := filepath.Join("testdata", "procfs")
	tests := []struct {
		name string
		args []string
		want map[string]float64 // long-term and established alike
	}{
		{
			// Inbound: the accepted ends, by the port of their listener.
			// 8080 listens on [::], so it has a series per IP version, and
			// its mapped IPv4 clients count as 4. 5432 is idle. 6000 has
			// no listener any more: its pair is outbound both ways.
			name: "in",
			want: map[string]float64{
				`port="3838",tcp_version="4"`: 3,
				`port="5432",tcp_version="4"`: 0,
				`port="8080",tcp_version="4"`: 2,
				`port="8080",tcp_version="6"`: 1,
				`port="9000",tcp_version="6"`: 2,
			},
		},
		{
			// Outbound: the dialling ends, by remote port; and both ends
			// of the pair whose listener closed: 20031 -> 6000 by 6000,
			// 6000 -> 20031 by 20031.
			name: "all",
			args: []string{"-direction", "all"},
			want: map[string]float64{
				`direction="in",port="3838",tcp_version="4"`:   3,
				`direction="out",port="3838",tcp_version="4"`:  3,
				`direction="in",port="5432",tcp_version="4"`:   0,
				`direction="out",port="6000",tcp_version="4"`:  1,
				`direction="in",port="8080",tcp_version="4"`:   2,
				`direction="out",port="8080",tcp_version="4"`:  2,
				`direction="in",port="8080",tcp_version="6"`:   1,
				`direction="out",port="8080",tcp_version="6"`:  1,
				`direction="in",port="9000",tcp_version="6"`:   2,
				`direction="out",port="9000",tcp_version="6"`:  2,
				`direction="out",port="20031",tcp_version="4"`: 1,
			},
		},
		{
			name: "out",
			args: []string{"-direction", "out"},
			want: map[string]float64{
				`direction="out",port="3838",tcp_version="4"`:  3,
				`direction="out",port="6000",tcp_version="4"`:  1,
				`direction="out",port="8080",tcp_version="4"`:  2,
				`direction="out",port="8080",tcp_version="6"`:  1,
				`direction="out",port="9000",tcp_version="6"`:  2,
				`direction="out",port="20031",tcp_version="4"`: 1,
			},
		},
		{
			// IPv6 out, the mapped IPv4 clients of [::]:8080 kept.
			name: "tcpv6 false",
			args: []string{"-tcpv6=false"},
			want: map[string]float64{
				`port="3838",tcp_version="4"`: 3,
				`port="5432",tcp_version="4"`: 0,
				`port="8080",tcp_version="4"`: 2,
			},
		},
		{
			name: "port",
			args: []string{"-port", "8080"},
			want: map[string]float64{
				`port="8080",tcp_version="4"`: 2,
				`port="8080",tcp_version="6"`: 1,
			},
		},
		{
			name: "idle port",
			args: []string{"-port", "5432"},
			want: map[string]float64{
				`port="5432",tcp_version="4"`: 0,
				`port="5432",tcp_version="6"`: 0,
			},
		},
		{
			name: "simple", // 3 + 2 + 1 + 2
			args: []string{"-simple"},
			want: map[string]float64{"": 8},
		},
		{
			name: "simple all", // 8 in, 8 + 1 + 1 out
			args: []string{"-simple", "-direction", "all"},
			want: map[string]float64{"": 18},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-procfs", fixture, "-duration", "1s", "-interval", "100ms"}, tt.args...)
			x := startBinary(t, nil, args...)
			waitForEqual(t, "the fixture's connections to be long-term", tt.want, func() (map[string]float64, error) {
				return testnet.Samples(testnet.Scrape(t, x.url), longtermName), nil
			})
			body := testnet.Scrape(t, x.url)
			if diff := cmp.Diff(tt.want, testnet.Samples(body, establishedName)); diff != "" {
				t.Errorf("%s mismatch (-want +got):\n%s", establishedName, diff)
			}
			if diff := cmp.Diff(map[string]float64{`file="tcp"`: 0, `file="tcp6"`: 0}, testnet.Samples(body, malformedName)); diff != "" {
				t.Errorf("%s mismatch (-want +got):\n%s", malformedName, diff)
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		x := startBinary(t, nil, "-procfs", "/nonexistent", "-interval", "100ms")
		resp, err := http.Get(x.url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "/nonexistent/net/tcp") {
			t.Errorf("GET /healthz with -procfs /nonexistent: %s %q, want 503 naming /nonexistent/net/tcp", resp.Status, body)
		}
	})
}
