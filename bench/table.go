package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

// floorColumns head the columns every row has, after those that say which
// row it is.
const floorColumns = "floor: read tcp+tcp6 | floor: bare dump, per family | floor: bare dump, one walk | exporter CPU per read | " +
	"ratio to /proc floor | ratio to dump, per family | ratio to dump, one walk | RSS | /metrics p50 | /metrics p99 | series |"

func printTable(w io.Writer, rows, busy []result, bins binaries) {
	if len(rows) > 0 {
		fmt.Fprintln(w, "| connections | source | "+floorColumns)
		fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, r := range rows {
			fmt.Fprintf(w, "| %d | %s | %s\n", r.n, r.variant, cells(r))
		}
	}
	printBusy(w, busy)
	fmt.Fprintf(w, "\nstripped static binary: exporter %s, bare net/http server %s\n", size(bins.exporter), size(bins.bare))
	printGrowth(w, rows)
	printTargets(w, rows)
}

// printBusy prints the rows of an empty namespace beside connections held
// in another, and the size of its table, negative when the host's.
func printBusy(w io.Writer, busy []result) {
	if len(busy) == 0 {
		return
	}
	fmt.Fprintln(w, "\nAn empty namespace beside N connections (2N sockets) elsewhere:")
	fmt.Fprintln(w, "\n| connections elsewhere | tcp_ehash_entries | source | "+floorColumns)
	fmt.Fprintln(w, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range busy {
		fmt.Fprintf(w, "| %d | %d | %s | %s\n", r.n, r.buckets, r.variant, cells(r))
	}
}

// cells are a row's floors, figures and ratios, "–" for a floor it has not.
func cells(r result) string {
	return fmt.Sprintf("%s | %s | %s | %s | %s | %s | %s | %.1f MiB | %s | %s | %d |",
		msOr(r.floor), msOr(r.dumpFloor), msOr(r.oneFloor), ms(r.cpuPerRead),
		ratio(r.cpuPerRead, r.floor), ratio(r.cpuPerRead, r.dumpFloor), ratio(r.cpuPerRead, r.oneFloor),
		float64(r.rss)/(1<<20), ms(r.p50), ms(r.p99), r.series)
}

func ratio(d, floor time.Duration) string {
	if floor <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2fx", float64(d)/float64(floor))
}

// printGrowth prints how the netlink exporter's cost and memory grow with
// the sockets (two a connection), beside the dumps', from the rows at N = 0.
func printGrowth(w io.Writer, rows []result) {
	var zero *result
	for i := range rows {
		if rows[i].n == 0 && rows[i].variant == "netlink" {
			zero = &rows[i]
		}
	}
	if zero == nil {
		return
	}
	fmt.Fprintln(w, "\n| connections | source | CPU per read | per socket beyond N=0 | bare dump per socket beyond N=0 | "+
		"one-walk dump per socket beyond N=0 | RSS | RSS per socket beyond N=0 |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|")
	perSocket := func(d time.Duration, socks float64) float64 { return float64(d) / socks }
	for _, r := range rows {
		if r.n == 0 || r.variant != "netlink" {
			continue
		}
		socks := float64(2 * r.n)
		fmt.Fprintf(w, "| %d | %s | %s | %.0f ns | %.0f ns | %.0f ns | %.1f MiB | %.0f B |\n",
			r.n, r.variant, ms(r.cpuPerRead), perSocket(r.cpuPerRead-zero.cpuPerRead, socks),
			perSocket(r.dumpFloor-zero.dumpFloor, socks), perSocket(r.oneFloor-zero.oneFloor, socks),
			float64(r.rss)/(1<<20), float64(r.rss-zero.rss)/socks)
	}
}

// targets bound the netlink exporter's CPU per read, as a multiple of the
// one-walk dump's (issue 21).
var targets = []struct {
	n       int
	variant string
	most    float64
}{
	{0, "netlink", 1.5},
	{10000, "netlink", 1.08}, {50000, "netlink", 1.08}, {200000, "netlink", 1.08},
	{10000, "netlink, port", 1.15}, {50000, "netlink, port", 1.15}, {200000, "netlink, port", 1.15},
}

// printTargets says of each target whose row was measured whether it holds.
func printTargets(w io.Writer, rows []result) {
	fmt.Fprintln(w, "\nTargets, exporter CPU per read to the one-walk dump:")
	held, missed := 0, 0
	for _, t := range targets {
		for _, r := range rows {
			if r.n != t.n || r.variant != t.variant || r.oneFloor <= 0 {
				continue
			}
			x := float64(r.cpuPerRead) / float64(r.oneFloor)
			verdict := "holds"
			if x > t.most {
				verdict, missed = "MISSED", missed+1
			} else {
				held++
			}
			fmt.Fprintf(w, "- N=%d %s: %.2fx, at most %.2fx: %s\n", t.n, t.variant, x, t.most, verdict)
		}
	}
	fmt.Fprintf(w, "%d of %d measured targets hold, %d missed; %d not measured in this run\n",
		held, held+missed, missed, len(targets)-held-missed)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

// msOr is d in milliseconds, or "–" for a floor not measured.
func msOr(d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return ms(d)
}

func size(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.2f MiB", float64(st.Size())/(1<<20))
}
