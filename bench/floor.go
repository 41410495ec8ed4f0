package main

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// runFloor runs the floor (./floor) for reads reads, one a second as the
// exporter reads, and returns its CPU time per read. source is netlink or
// proc; port, unless empty, filters the established sockets of the netlink
// dump as the port setting does.
func runFloor(bin string, reads int, source, port string) (time.Duration, error) {
	args := []string{"-reads", strconv.Itoa(reads), "-source", source}
	if port != "" {
		args = append(args, "-port", port)
	}
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		return 0, fmt.Errorf("floor %s: %v", strings.Join(args, " "), err)
	}
	for f := range strings.FieldsSeq(string(out)) {
		if v, ok := strings.CutPrefix(f, "cpu_per_read_ns="); ok {
			ns, err := strconv.ParseInt(v, 10, 64)
			return time.Duration(ns), err
		}
	}
	return 0, fmt.Errorf("floor: no figure in %q", out)
}
