package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tcp_established_exporter/internal/testnet"
)

// Integration: a real Prometheus server scrapes the exporter.

// prometheusVersion is one Prometheus release the tests run: Debian's 2.x
// from PATH and 3.x, which test.sh builds from the Go module proxy.
type prometheusVersion struct {
	name string // "2" or "3"
	dir  string // holding prometheus and promtool; "" for PATH
}

// prometheus3Version is the module version test.sh builds; the cache
// directory is named after it.
const prometheus3Version = "v0.316.0"

// prometheusVersions lists both releases, or skips (fails in CI) where one
// is missing.
func prometheusVersions(t *testing.T) []prometheusVersion {
	t.Helper()
	dir := os.Getenv("PROMETHEUS3_DIR")
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			skipWithout(t, "no cache directory for Prometheus 3: %v", err)
		}
		dir = filepath.Join(cache, "tcp_established_exporter", "prometheus-"+prometheus3Version)
	}
	for _, tool := range []string{"prometheus", "promtool"} {
		if _, err := os.Stat(filepath.Join(dir, tool)); err != nil {
			skipWithout(t, "Prometheus 3 is not built (test.sh builds it into %s): %v", dir, err)
		}
	}
	return []prometheusVersion{{"2", ""}, {"3", dir}}
}

// tool returns the path of a program of this release.
func (v prometheusVersion) tool(t *testing.T, name string) string {
	if v.dir == "" {
		return lookPath(t, name)
	}
	return filepath.Join(v.dir, name)
}

// TestPrometheusScrapes has a real Prometheus server of each release
// scrape the exporter and asks it, through its HTTP API, for the counts of
// known connections: Prometheus 3 negotiates OpenMetrics first and fails a
// scrape whose Content-Type it does not know.
func TestPrometheusScrapes(t *testing.T) {
	for _, v := range prometheusVersions(t) {
		t.Run("prometheus"+v.name, func(t *testing.T) { prometheusScrapes(t, v) })
	}
}

func prometheusScrapes(t *testing.T, v prometheusVersion) {
	// Port A listens on [::], dual-stack: its IPv4 clients show in tcp6 as
	// ::ffff:127.0.0.1 and still count as tcp_version 4. Port C is listed
	// but has no listener: its zero series exist all the same. A listed
	// port has the series of both IP versions.
	a := testnet.Listen(t, "tcp", "[::]:0")
	b := testnet.Listen(t, "tcp", "127.0.0.1:0")
	c := freePort(t)
	a4 := testnet.Dial(t, 3, "tcp", hostPort("127.0.0.1", a.Port))
	testnet.Dial(t, 2, "tcp", hostPort("::1", a.Port))
	b4 := testnet.Dial(t, 1, "tcp", hostPort("127.0.0.1", b.Port))
	x := startBinary(t, nil, "-duration", "1s", "-interval", "100ms",
		"-port", fmt.Sprintf("%d,%d,%d", a.Port, b.Port, c))

	dir := t.TempDir() // removed after the server is stopped: cleanups run last first
	config := filepath.Join(dir, "prometheus.yml")
	err := os.WriteFile(config, fmt.Appendf(nil, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tee
    static_configs:
      - targets: ['127.0.0.1:%d']
`, x.port), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	base := startPrometheus(t, v, config, filepath.Join(dir, "data"))

	waitForEqual(t, "Prometheus to scrape the exporter", map[string]float64{"": 1},
		promQuery(base, `up{job="tee"}`))
	series := func(port int, v string) string { return fmt.Sprintf("port=%d,tcp_version=%s", port, v) }
	ports := fmt.Sprintf(`job="tee",port=~"%d|%d|%d"`, a.Port, b.Port, c)
	waitForEqual(t, "Prometheus to see the long-term connections", map[string]float64{
		series(a.Port, "4"): 3,
		series(a.Port, "6"): 2,
		series(b.Port, "4"): 1,
		series(b.Port, "6"): 0,
		series(c, "4"):      0,
		series(c, "6"):      0,
	}, promQuery(base, "netstat_tcp_longterm_connections_total{"+ports+"}", "port", "tcp_version"))
	// The clients: 127.0.0.1 and ::1, one a series.
	waitForEqual(t, "Prometheus to see the clients", map[string]float64{
		series(a.Port, "4"): 1,
		series(a.Port, "6"): 1,
		series(b.Port, "4"): 1,
		series(b.Port, "6"): 0,
		series(c, "4"):      0,
		series(c, "6"):      0,
	}, promQuery(base, "netstat_tcp_longterm_clients{"+ports+"}", "port", "tcp_version"))

	a4[0].Close()
	a4[1].Close()
	b4[0].Close()
	// Port B's listener keeps its series, at 0.
	waitForEqual(t, "Prometheus to see the connections closed", map[string]float64{
		series(a.Port, "4"): 1,
		series(a.Port, "6"): 2,
		series(b.Port, "4"): 0,
		series(b.Port, "6"): 0,
		series(c, "4"):      0,
		series(c, "6"):      0,
	}, promQuery(base, "netstat_tcp_longterm_connections_total{"+ports+"}", "port", "tcp_version"))
	waitForEqual(t, "Prometheus to see the lifetimes of the closed connections", map[string]float64{
		series(a.Port, "4"): 2,
		series(a.Port, "6"): 0,
		series(b.Port, "4"): 1,
		series(b.Port, "6"): 0,
		series(c, "4"):      0,
		series(c, "6"):      0,
	}, promQuery(base, "netstat_tcp_connection_lifetime_seconds_count{"+ports+"}", "port", "tcp_version"))
	// Prometheus 3 writes the le label as a float ("1.0"), 2 as given.
	bucket := fmt.Sprintf(`netstat_tcp_connection_lifetime_seconds_bucket{job="tee",port="%d",tcp_version="4",le=~"%%s"}`, a.Port)
	waitForEqual(t, "the +Inf bucket to hold both lifetimes", map[string]float64{"": 2},
		promQuery(base, fmt.Sprintf(bucket, `\\+Inf`)))
	waitForEqual(t, "the le=1 bucket to hold neither: both lived longer", map[string]float64{"": 0},
		promQuery(base, fmt.Sprintf(bucket, `1|1\\.0`)))
	if health, lastErr := promTarget(t, base); health != "up" || lastErr != "" {
		t.Errorf("target health %q, last scrape error %q; want up and none", health, lastErr)
	}
}

// startPrometheus runs a Prometheus server of release v with config and
// its storage in data, and returns its base URL once it is ready.
func startPrometheus(t *testing.T, v prometheusVersion, config, data string) string {
	t.Helper()
	web := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := startProcess(t, nil, v.tool(t, "prometheus"),
		"--config.file="+config,
		"--storage.tsdb.path="+data,
		"--web.listen-address="+web,
		"--log.level=warn",
	)
	base := "http://" + web
	testnet.WaitFor(t, waitLong, "Prometheus to be ready", func() bool {
		srv.checkRunning(t)
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	t.Logf("Prometheus %s", promBuildVersion(t, base))
	return base
}

// promBuildVersion asks a Prometheus server its version.
func promBuildVersion(t *testing.T, base string) string {
	t.Helper()
	var r struct {
		Data struct {
			Version string `json:"version"`
		} `json:"data"`
	}
	promGet(t, base+"/api/v1/status/buildinfo", &r)
	return r.Data.Version
}

// promTarget returns the health and last scrape error of the one target.
func promTarget(t *testing.T, base string) (health, lastError string) {
	t.Helper()
	var r struct {
		Data struct {
			ActiveTargets []struct {
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	promGet(t, base+"/api/v1/targets", &r)
	if n := len(r.Data.ActiveTargets); n != 1 {
		t.Fatalf("%d active targets, want 1", n)
	}
	return r.Data.ActiveTargets[0].Health, r.Data.ActiveTargets[0].LastError
}

func promGet(t *testing.T, u string, v any) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %s: %v", u, resp.Status, err)
	}
}

// promQuery returns a got function for waitForEqual that runs an instant
// query and maps each sample, named by the values of keys
// ("port=3838,tcp_version=4"), to its value.
func promQuery(base, query string, keys ...string) func() (map[string]float64, error) {
	return func() (map[string]float64, error) {
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				ResultType string `json:"resultType"`
				Result     []struct {
					Metric map[string]string `json:"metric"`
					Value  []any             `json:"value"` // [unix time, "value"]
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, fmt.Errorf("query %s: %s: %v", query, resp.Status, err)
		}
		if r.Status != "success" || r.Data.ResultType != "vector" {
			return nil, fmt.Errorf("query %s: status %q, result type %q: %s", query, r.Status, r.Data.ResultType, r.Error)
		}
		m := make(map[string]float64)
		for _, s := range r.Data.Result {
			var name []string
			for _, k := range keys {
				name = append(name, k+"="+s.Metric[k])
			}
			if len(s.Value) != 2 {
				return nil, fmt.Errorf("query %s: malformed value %v", query, s.Value)
			}
			text, _ := s.Value[1].(string)
			v, err := strconv.ParseFloat(text, 64)
			if err != nil {
				return nil, fmt.Errorf("query %s: %v", query, err)
			}
			m[strings.Join(name, ",")] = v
		}
		return m, nil
	}
}
