package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"tcp_established_exporter/internal/testnet"
)

// Integration: promtool lints what the exporter serves.

// TestPromtoolCheckMetrics lints what each mode serves with promtool, with
// IPv4 and IPv6 connections open, long-term, and one of them closed so
// that the lifetime histogram has an observation.
func TestPromtoolCheckMetrics(t *testing.T) {
	for _, v := range prometheusVersions(t) {
		t.Run("promtool"+v.name, func(t *testing.T) { promtoolCheckMetrics(t, v.tool(t, "promtool")) })
	}
}

func promtoolCheckMetrics(t *testing.T, promtool string) {
	tests := []struct {
		name string
		args func(p4, p6 int) []string
		// want* are the long-term gauge before and after closing one IPv4
		// connection, and the lifetime histogram's count after.
		wantBefore, wantAfter, wantLifetimes func(p4, p6 int) map[string]float64
	}{
		{
			name: "labelled",
			args: func(p4, p6 int) []string { return nil },
			wantBefore: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`port="%d",tcp_version="4"`, p4): 3,
					fmt.Sprintf(`port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantAfter: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`port="%d",tcp_version="4"`, p4): 2,
					fmt.Sprintf(`port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantLifetimes: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`port="%d",tcp_version="4"`, p4): 1,
					fmt.Sprintf(`port="%d",tcp_version="6"`, p6): 0,
				}
			},
		},
		{
			// -port makes the one unlabelled sample ours alone.
			name:          "simple",
			args:          func(p4, p6 int) []string { return []string{"-simple", "-port", strconv.Itoa(p4)} },
			wantBefore:    func(p4, p6 int) map[string]float64 { return map[string]float64{"": 3} },
			wantAfter:     func(p4, p6 int) map[string]float64 { return map[string]float64{"": 2} },
			wantLifetimes: func(p4, p6 int) map[string]float64 { return map[string]float64{"": 1} },
		},
		{
			// Both ends of a loopback connection are on this machine: the
			// accepted one counts in, the dialling one out.
			name: "direction all",
			args: func(p4, p6 int) []string { return []string{"-direction", "all"} },
			wantBefore: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, p4):  3,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, p4): 3,
					fmt.Sprintf(`direction="in",port="%d",tcp_version="6"`, p6):  2,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantAfter: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, p4):  2,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, p4): 2,
					fmt.Sprintf(`direction="in",port="%d",tcp_version="6"`, p6):  2,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="6"`, p6): 2,
				}
			},
			wantLifetimes: func(p4, p6 int) map[string]float64 {
				return map[string]float64{
					fmt.Sprintf(`direction="in",port="%d",tcp_version="4"`, p4):  1,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="4"`, p4): 1,
					fmt.Sprintf(`direction="in",port="%d",tcp_version="6"`, p6):  0,
					fmt.Sprintf(`direction="out",port="%d",tcp_version="6"`, p6): 0,
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv4 := testnet.Listen(t, "tcp", "127.0.0.1:0")
			srv6 := testnet.Listen(t, "tcp", "[::1]:0")
			p4, p6 := srv4.Port, srv6.Port
			conns4 := testnet.Dial(t, 3, "tcp", hostPort("127.0.0.1", p4))
			testnet.Dial(t, 2, "tcp", hostPort("::1", p6))
			args := append([]string{"-duration", "1s", "-interval", "100ms"}, tt.args(p4, p6)...)
			x := startBinary(t, nil, args...)

			waitForEqual(t, "the connections to be long-term", tt.wantBefore(p4, p6),
				scrapeSamples(t, x.url, longtermName, p4, p6))
			conns4[0].Close()
			waitForEqual(t, "the closed connection to leave the gauge", tt.wantAfter(p4, p6),
				scrapeSamples(t, x.url, longtermName, p4, p6))
			waitForEqual(t, "the closed connection's lifetime to be observed", tt.wantLifetimes(p4, p6),
				scrapeSamples(t, x.url, lifetimeName+"_count", p4, p6))

			body := testnet.Scrape(t, x.url)
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(body)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			code := 0
			switch {
			case errors.As(err, &exit):
				code = exit.ExitCode()
			case err != nil:
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			const kept = `netstat_tcp_longterm_connections_total non-counter metrics should not have "_total" suffix`
			switch {
			case code == 0 && len(out) == 0:
			case code == 3 && len(lines) == 1 && lines[0] == kept:
			default:
				t.Errorf("promtool check metrics: exit %d, want 0 with no output or 3 with only the lint line of the kept name; output:\n%s\nbody:\n%s", code, out, body)
			}
		})
	}
}
