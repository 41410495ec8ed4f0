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
)

// Integration: a real Prometheus server scrapes the exporter.

// TestPrometheusScrapes has a real Prometheus server scrape the exporter
// and asks it, through its HTTP API, for the counts of known connections.
func TestPrometheusScrapes(t *testing.T) {
	prometheus := lookPath(t, "prometheus")
	// Port A listens on [::], dual-stack: its IPv4 clients show in tcp6 as
	// ::ffff:127.0.0.1 and still count as tcp_version 4.
	a := listenLoopback(t, "tcp", "[::]:0")
	b := listenLoopback(t, "tcp", "127.0.0.1:0")
	a4 := dial(t, 3, "tcp", hostPort("127.0.0.1", a.port))
	dial(t, 2, "tcp", hostPort("::1", a.port))
	b4 := dial(t, 1, "tcp", hostPort("127.0.0.1", b.port))
	x := startBinary(t, nil, "-duration", "1s", "-interval", "100ms")

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
	web := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := startProcess(t, nil, prometheus,
		"--config.file="+config,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web,
		"--log.level=warn",
	)
	base := "http://" + web
	waitFor(t, waitLong, "Prometheus to be ready", func() bool {
		srv.checkRunning(t)
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	waitForEqual(t, "Prometheus to scrape the exporter", map[string]float64{"": 1},
		promQuery(base, `up{job="tee"}`))
	query := fmt.Sprintf(`netstat_tcp_longterm_connections_total{job="tee",port=~"%d|%d"}`, a.port, b.port)
	series := func(port int, v string) string { return fmt.Sprintf("port=%d,tcp_version=%s", port, v) }
	waitForEqual(t, "Prometheus to see the long-term connections", map[string]float64{
		series(a.port, "4"): 3,
		series(a.port, "6"): 2,
		series(b.port, "4"): 1,
	}, promQuery(base, query, "port", "tcp_version"))

	a4[0].Close()
	a4[1].Close()
	b4[0].Close()
	// Port B's listener keeps its series, at 0.
	waitForEqual(t, "Prometheus to see the connections closed", map[string]float64{
		series(a.port, "4"): 1,
		series(a.port, "6"): 2,
		series(b.port, "4"): 0,
	}, promQuery(base, query, "port", "tcp_version"))
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
