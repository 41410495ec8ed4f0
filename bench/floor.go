package main

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// dumpFloor runs the netlink floor (./diagfloor) for dumps dumps, one a
// second as the exporter reads, and returns its CPU time per dump; port,
// unless empty, filters the established sockets as the port setting does.
func dumpFloor(bin string, dumps int, port string) (time.Duration, error) {
	args := []string{"-dumps", strconv.Itoa(dumps)}
	if port != "" {
		args = append(args, "-port", port)
	}
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		return 0, fmt.Errorf("diagfloor: %v", err)
	}
	for f := range strings.FieldsSeq(string(out)) {
		if v, ok := strings.CutPrefix(f, "cpu_per_dump_ns="); ok {
			ns, err := strconv.ParseInt(v, 10, 64)
			return time.Duration(ns), err
		}
	}
	return 0, fmt.Errorf("diagfloor: no figure in %q", out)
}
