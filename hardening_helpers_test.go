package main

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Hardening tests: what the exporter meets when it runs for months next to
// production services. Hostile /proc content, hostile HTTP clients,
// connection churn, signals and ports, and the scratch image. This file
// holds the helpers several of them share.

// hardWait waits until check returns "", and on timeout also reports the
// last thing check returned: "timed out" alone does not say what was wrong.
func hardWait(t testing.TB, timeout time.Duration, what string, check func() string) {
	t.Helper()
	last := "never checked"
	defer func() {
		if t.Failed() && last != "" {
			t.Logf("%s: last seen: %s", what, last)
		}
	}()
	waitFor(t, timeout, what, func() bool {
		last = check()
		return last == ""
	})
}

// hardGet does one request with a client timeout and returns the status,
// the header and the whole body.
func hardGet(t testing.TB, client *http.Client, method, url string, header http.Header) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

// hardFamilies lists the `# TYPE` lines of a text-format body, sorted.
func hardFamilies(body string) []string {
	var fams []string
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			fams = append(fams, strings.TrimSuffix(rest, "\n"))
		}
	}
	slices.Sort(fams)
	return fams
}

// hardComplete reports what is wrong with a scraped body: incomplete (not
// ending with the last family the exporter writes) or with other families
// than want.
func hardComplete(body string, want []string) string {
	if !strings.HasSuffix(body, "\n") {
		return fmt.Sprintf("body of %d bytes does not end with a newline", len(body))
	}
	lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "go_goroutines ") {
		return fmt.Sprintf("body of %d bytes ends with %q, not the go_goroutines sample", len(body), last)
	}
	if diff := cmp.Diff(want, hardFamilies(body)); diff != "" {
		return fmt.Sprintf("families mismatch (-want +got):\n%s", diff)
	}
	return ""
}
