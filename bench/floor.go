package main

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// runFloor runs the floor (./floor) in at's namespace for reads reads, one
// a second as the exporter reads, and returns its CPU time per read.
// source is netlink or proc; walk, for netlink, is one (a request for both
// families, as the exporter asks) or family (a request a family); port,
// unless empty, filters the established sockets of the dump as the port
// setting does.
func runFloor(at place, bin string, reads int, source, walk, port string) (time.Duration, error) {
	args := []string{"-reads", strconv.Itoa(reads), "-source", source}
	if walk != "" {
		args = append(args, "-walk", walk)
	}
	if port != "" {
		args = append(args, "-port", port)
	}
	return cpuPerRead(at.command(bin, args...))
}

// cpuPerRead runs cmd, a floor-like program, and returns the CPU time per
// read it prints.
func cpuPerRead(cmd *exec.Cmd) (time.Duration, error) {
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return 0, fmt.Errorf("%s: %v %s", strings.Join(cmd.Args, " "), err, stderr)
	}
	for f := range strings.FieldsSeq(string(out)) {
		if v, ok := strings.CutPrefix(f, "cpu_per_read_ns="); ok {
			ns, err := strconv.ParseInt(v, 10, 64)
			return time.Duration(ns), err
		}
	}
	return 0, fmt.Errorf("%s: no figure in %q", cmd.Args[0], out)
}
