package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"tcp_established_exporter/internal/testnet"
)

// Tests of what operators deploy: deploy/prometheus and deploy/grafana.

// TestPrometheusRules runs each release's promtool over the rules and the
// example configuration, and Debian's over the rules' unit tests. The
// configuration is checked in a copy beside the tls/ files its TLS job
// names, made by the openssl commands of docs/security.md: promtool fails on
// a missing one.
func TestPrometheusRules(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"prometheus.yml", "rules.yml", "rules_test.yml"} {
		data, err := os.ReadFile(filepath.Join("../deploy/prometheus", name))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), data)
	}
	newTestPKI(t, filepath.Join(dir, "tls"))
	for _, v := range prometheusVersions(t) {
		t.Run("promtool"+v.name, func(t *testing.T) {
			for _, args := range [][]string{
				{"check", "rules", "rules.yml"},
				{"check", "config", "prometheus.yml"},
				{"test", "rules", "rules_test.yml"},
			} {
				cmd := exec.Command(v.tool(t, "promtool"), args...)
				cmd.Dir = dir
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				if strings.Contains(strings.ToLower(string(out)), "warn") {
					t.Errorf("promtool %s warns:\n%s", strings.Join(args, " "), out)
				}
			}
		})
	}
}

// TestDashboardUsesExportedNames checks that every query of the dashboard
// names only metrics that the running exporter exports (and Prometheus's
// own up).
func TestDashboardUsesExportedNames(t *testing.T) {
	srv := testnet.Listen(t, "tcp", "127.0.0.1:0")
	testnet.Dial(t, 1, "tcp4", srv.Listener.Addr().String())
	x := startBinary(t, nil, "-direction", "all", "-interval", "100ms")
	exported := exportedNames(testnet.Scrape(t, x.url))
	exported["up"] = true

	data, err := os.ReadFile("../deploy/grafana/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dashboard any
	if err := json.Unmarshal(data, &dashboard); err != nil {
		t.Fatalf("dashboard.json is not valid JSON: %v", err)
	}
	queries := promQueries(dashboard)
	if len(queries) < 10 {
		t.Fatalf("found %d queries in the dashboard, want at least 10", len(queries))
	}
	used := make(map[string]bool)
	for _, q := range queries {
		for _, name := range metricNames(q) {
			used[name] = true
			if !exported[name] {
				t.Errorf("query %q uses %s, which the exporter does not export", q, name)
			}
		}
	}
	for _, name := range []string{longtermName, establishedName, lifetimeName + "_bucket"} {
		if !used[name] {
			t.Errorf("the dashboard shows nothing of %s", name)
		}
	}
}

// exportedNames are the sample names of a text-format body.
func exportedNames(body string) map[string]bool {
	names := make(map[string]bool)
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		names[name] = true
	}
	return names
}

// promQueries collects the "expr" strings of the panels and the queries of
// the template variables.
func promQueries(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			if s, ok := child.(string); ok && (k == "expr" || k == "query" && strings.Contains(s, "(")) {
				out = append(out, s)
			}
			out = append(out, promQueries(child)...)
		}
	case []any:
		for _, child := range v {
			out = append(out, promQueries(child)...)
		}
	}
	return out
}

var (
	// What in a PromQL expression is not a metric name: strings, label
	// matchers, ranges, grouping clauses, numbers.
	promNoise = regexp.MustCompile(`"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\b\d+(\.\d+)?\b`)
	promIdent = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	// The PromQL functions, aggregations and keywords the queries may use.
	promWords = []string{"sum", "avg", "min", "max", "count", "rate", "irate", "increase", "delta",
		"histogram_quantile", "label_values", "and", "or", "unless", "bool", "offset", "absent",
		"clamp_min", "clamp_max", "topk", "bottomk", "time", "vector", "scalar", "job", "port"}
)

// metricNames picks the metric names out of a PromQL expression.
func metricNames(q string) []string {
	var names []string
	for _, id := range promIdent.FindAllString(promNoise.ReplaceAllString(q, " "), -1) {
		if !slices.Contains(promWords, id) {
			names = append(names, id)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	q := `histogram_quantile(0.9, sum by (le) (rate(netstat_tcp_connection_lifetime_seconds_bucket{job=~"$job", port=~"$port"}[$window]))) and on (job, instance) up`
	if got, want := metricNames(q), []string{"netstat_tcp_connection_lifetime_seconds_bucket", "up"}; !slices.Equal(got, want) {
		t.Errorf("metricNames = %q, want %q", got, want)
	}
}
