package main

import (
	"fmt"
	"io"
	"time"
)

// maxPods bounds -node: the processes (three a namespace) and the
// bench's fds (the connections' both ends) must fit this machine's
// limits; checkLimits checks them.
const maxPods = 1000

// printNode prints the node rows, the cost of finding the namespaces, and
// the node targets.
func printNode(w io.Writer, rows []nodeResult) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nOne exporter per node (-namespaces all): K namespaces of pods, %d processes each, beside %d connections in the host's; "+
		"the floors read every namespace, cAdvisor's way every pod process's tables and PID 1's:\n\n", podProcs, nodeHostConns)
	fmt.Fprintln(w, "| namespaces | connections each | their tcp_ehash_entries | processes | floor: one-walk dump in each | cAdvisor's way | "+
		"root: CPU per read | to floor | to cAdvisor | last read | RSS | "+
		"unprivileged: CPU per read | to floor | to cAdvisor | last read | RSS |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %d | %d | %d | %d | %s | %s | %s | %s |\n", r.k, r.conns, r.buckets, r.procs,
			ms(r.floor), ms(r.cadvisor), exporterCells(r.root, r), exporterCells(r.unpriv, r))
	}
	fmt.Fprintln(w, "\n| namespaces | their tcp_ehash_entries | root: read over netlink / from /proc | /metrics p50 | p99 | "+
		"unprivileged: read over netlink / from /proc | /metrics p50 | p99 | series |")
	fmt.Fprintln(w, "|---:|---:|---|---:|---:|---|---:|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %d | %d | %d / %d | %s | %s | %d / %d | %s | %s | %d |\n", r.k, r.buckets,
			r.root.netlink, r.root.proc, ms(r.root.p50), ms(r.root.p99),
			r.unpriv.netlink, r.unpriv.proc, ms(r.unpriv.p50), ms(r.unpriv.p99), r.root.series)
	}
	printScan(w, rows)
	printNodeTargets(w, rows)
}

// exporterCells are an exporter's figures and ratios in a node row.
func exporterCells(f nodeFigures, r nodeResult) string {
	return fmt.Sprintf("%s | %s | %s | %.3f s | %.1f MiB", ms(f.cpu), ratio(f.cpu, r.floor), ratio(f.cpu, r.cadvisor),
		f.lastRead, float64(f.rss)/(1<<20))
}

// scanShare is the root exporter's cost of finding the namespaces among
// all r.procs processes, as a share of its read: what the processes
// beyond fewProcs added to a read, extrapolated to all of them (the scan
// does the same for each), over the read with all of them. ok is false
// where the node needed no extra processes, and none were taken away.
func scanShare(r nodeResult) (share float64, perProc time.Duration, ok bool) {
	if r.few <= 0 || r.procs <= r.fewProcs || r.root.cpu <= 0 {
		return 0, 0, false
	}
	perProc = (r.root.cpu - r.few) / time.Duration(r.procs-r.fewProcs)
	return float64(perProc) * float64(r.procs) / float64(r.root.cpu), perProc, true
}

// printScan prints the root exporter's CPU per read with the node's
// processes and with the extra sleeps taken away.
func printScan(w io.Writer, rows []nodeResult) {
	fmt.Fprintln(w, "\nFinding the namespaces: the root exporter's CPU per read with the node's processes, and with the host's extra sleeps "+
		"taken away, by turns in one run; the difference per process, times all of them, over the read:")
	fmt.Fprintln(w, "\n| namespaces | their tcp_ehash_entries | processes | CPU per read | processes | CPU per read | per process | "+
		"scan's share of the read | a copy of the scan, alone | its share |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		alone := fmt.Sprintf("%s | %.1f%%", ms(r.scanAlone), 100*float64(r.scanAlone)/float64(max(r.root.cpu, 1)))
		share, perProc, ok := scanShare(r)
		if !ok {
			fmt.Fprintf(w, "| %d | %d | %d | %s | – | – | – | – | %s |\n", r.k, r.buckets, r.procs, ms(r.root.cpu), alone)
			continue
		}
		fmt.Fprintf(w, "| %d | %d | %d | %s | %d | %s | %.2f µs | %.1f%% | %s |\n", r.k, r.buckets, r.procs, ms(r.root.cpu),
			r.fewProcs, ms(r.few), float64(perProc)/1e3, 100*share, alone)
	}
}

// nodeTarget is one bound of issue 22 and what a row measured of it.
type nodeTarget struct {
	what      string
	got, most float64
	unit      string
}

// nodeTargets are the bounds a row is held to: the root exporter (the
// way a node is deployed) to the dump in each namespace and to
// cAdvisor's way, its RSS (20 MiB up to 100 namespaces, 40 MiB up to
// 1,000) and the share of its read spent finding the namespaces: the
// larger of the two estimates, the difference of its reads and the copy
// of its scan.
func nodeTargets(r nodeResult) []nodeTarget {
	rssMost := 20.0
	if r.k > 100 {
		rssMost = 40
	}
	ts := []nodeTarget{
		{"CPU per read to the one-walk floor", float64(r.root.cpu) / float64(r.floor), 1.10, "x"},
		{"CPU per read to cAdvisor's way", float64(r.root.cpu) / float64(r.cadvisor), 0.25, "x"},
		{"RSS", float64(r.root.rss) / (1 << 20), rssMost, " MiB"},
	}
	if r.scanAlone > 0 && r.root.cpu > 0 {
		share := float64(r.scanAlone) / float64(r.root.cpu)
		if diff, _, ok := scanShare(r); ok {
			share = max(share, diff)
		}
		ts = append(ts, nodeTarget{fmt.Sprintf("finding the namespaces among %d processes, share of the read (the larger estimate)", r.procs),
			100 * share, 20, "%"})
	}
	return ts
}

func printNodeTargets(w io.Writer, rows []nodeResult) {
	fmt.Fprintln(w, "\nTargets, one exporter per node (root, netlink):")
	held, missed := 0, 0
	for _, r := range rows {
		for _, t := range nodeTargets(r) {
			verdict := "holds"
			if t.got > t.most {
				verdict, missed = "MISSED", missed+1
			} else {
				held++
			}
			fmt.Fprintf(w, "- K=%d, tcp_ehash_entries %d: %s: %.2f%s, at most %.2f%s: %s\n", r.k, r.buckets, t.what, t.got, t.unit, t.most, t.unit, verdict)
		}
	}
	fmt.Fprintf(w, "%d of %d node targets hold, %d missed\n", held, held+missed, missed)
}
