package main

import (
	"fmt"
	"log"
)

// measureBusy holds n connections in the bench's namespace and measures
// the exporter, beside its floors, in an empty namespace: one that shares
// the host's connection table, whose every walk skips those 2n sockets,
// and one made with a table of its own. Each row has its namespace's
// tcp_ehash_entries.
func measureBusy(bins binaries, cfg runConfig, n int) ([]result, error) {
	stop, _, err := startLoad(bins.load, cfg, n)
	if err != nil {
		return nil, err
	}
	defer stop()
	var rows []result
	for _, own := range []bool{false, true} {
		r, err := measureEmpty(bins, cfg, n, own)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

// measureEmpty makes an empty namespace, with a table of its own when own,
// and runs each variant without a port in it.
func measureEmpty(bins binaries, cfg runConfig, n int, own bool) ([]result, error) {
	ns, err := makeEmptyNetns(own)
	if err != nil {
		return nil, err
	}
	defer ns.remove()
	var rows []result
	for _, v := range variants {
		if v.withPort {
			continue
		}
		j := job{
			label:   fmt.Sprintf("empty namespace (tcp_ehash_entries %d) beside N=%d, %s", ns.buckets, n, v.name),
			args:    append(append([]string{}, v.args...), cfg.args...),
			netlink: v.netlink,
			at:      ns.place,
		}
		r, err := measureVariant(bins, cfg, j)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", j.label, err)
		}
		r.n, r.variant, r.buckets = n, v.name, ns.buckets
		rows = append(rows, r)
	}
	log.Printf("N=%d elsewhere, tcp_ehash_entries %d: done", n, ns.buckets)
	return rows, nil
}
