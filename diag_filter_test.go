package main

import (
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The port filter's bytecode against the kernel's rules.

// diagAnyPortFilter builds bytecode accepting sockets with any of ports as
// source or destination port, the way appendPortFilter does for one:
// each comparison but the last is followed by a JMP to the end (accept).
func diagAnyPortFilter(ports ...uint16) []byte {
	ne := binary.NativeEndian
	total := 2*len(ports)*12 - 4
	var b []byte
	for i, p := range ports {
		for j, code := range []uint8{bcSrcEq, bcDstEq} {
			b = ne.AppendUint16(append(b, code, 8), 12)
			b = ne.AppendUint16(append(b, 0, 0), p)
			if i < len(ports)-1 || j == 0 {
				b = ne.AppendUint16(append(b, bcJmp, 4), uint16(total-len(b)))
			}
		}
	}
	return b
}

// diagBCRun is the kernel's inet_diag_bc_run for the ops the filter uses.
// Call it only on a program diagBCAudit accepts.
func diagBCRun(bc []byte, sport, dport uint16) bool {
	ne := binary.NativeEndian
	left, i := len(bc), 0
	for left > 0 {
		op := bc[i:]
		ok := true
		switch op[0] {
		case bcJmp:
			ok = false
		case bcSrcEq:
			ok = sport == ne.Uint16(op[6:])
		case bcDstEq:
			ok = dport == ne.Uint16(op[6:])
		}
		step := int(ne.Uint16(op[2:])) // no
		if ok {
			step = int(op[1]) // yes
		}
		i, left = i+step, left-step
	}
	return left == 0
}

// diagBCAudit is the kernel's inet_diag_bc_audit for the ops the filter
// uses: each yes must reach the next op, each no an op boundary, the end, or
// 4 bytes past it (reject); the yes chain must end exactly at the end.
func diagBCAudit(bc []byte) error {
	ne := binary.NativeEndian
	validCC := func(cc int) bool { // is cc bytes before the end on the yes chain?
		for left, i := len(bc), 0; left >= 0; {
			if cc >= left {
				return cc == left
			}
			yes := int(bc[i+1])
			if yes < 4 || yes&3 != 0 {
				return false
			}
			i, left = i+yes, left-yes
		}
		return false
	}
	left, i := len(bc), 0
	for left > 0 {
		op := bc[i:]
		code, yes, no := op[0], int(op[1]), int(ne.Uint16(op[2:]))
		minLen := 4
		switch code {
		case bcSrcEq, bcDstEq:
			if minLen += 4; left < minLen {
				return fmt.Errorf("offset %d: port comparison truncated", i)
			}
		case bcJmp, 0:
		default:
			return fmt.Errorf("offset %d: unexpected code %d", i, code)
		}
		if code != 0 && (no < minLen || no > left+4 || no&3 != 0 || no < left && !validCC(left-no)) {
			return fmt.Errorf("offset %d: bad no %d", i, no)
		}
		if yes < minLen || yes > left+4 || yes&3 != 0 {
			return fmt.Errorf("offset %d: bad yes %d", i, yes)
		}
		i, left = i+yes, left-yes
	}
	if left != 0 {
		return fmt.Errorf("yes chain ends %d bytes past the end", -left)
	}
	return nil
}

// TestPortFilterBytecode checks the filter's program against the kernel's
// rules: inet_diag_bc_audit's and what inet_diag_bc_run computes, for
// lists of 1, 2, 64 and maxFilterPorts ports.
func TestPortFilterBytecode(t *testing.T) {
	seq := func(n int, from uint16) []uint16 {
		ps := make([]uint16, n)
		for i := range ps {
			ps[i] = from + uint16(i)*7
		}
		return ps
	}
	for _, ports := range [][]uint16{
		{0}, {1}, {80}, {8080}, {65535},
		{3838, 8080}, {65535, 0}, seq(maxPorts, 1000), seq(maxFilterPorts, 1),
	} {
		bc := appendPortFilter(nil, ports)
		name := fmt.Sprintf("%d ports from %d", len(ports), ports[0])
		if len(bc) != portFilterLen(len(ports)) {
			t.Errorf("%s: %d bytes, portFilterLen says %d", name, len(bc), portFilterLen(len(ports)))
		}
		if err := diagBCAudit(bc); err != nil {
			t.Errorf("%s: kernel would reject % x: %v", name, bc, err)
		}
		if diff := cmp.Diff(diagAnyPortFilter(ports...), bc); diff != "" {
			t.Errorf("%s: filter mismatch with the general form (-want +got):\n%s", name, diff)
		}
		listed := func(p uint16) bool { return slices.Contains(ports, p) }
		var probes []uint16
		for _, p := range ports {
			probes = append(probes, p, p+1, p-1)
		}
		for _, sp := range probes {
			for _, dp := range []uint16{sp, 2, ports[0], ports[len(ports)-1], 5} {
				got := diagBCRun(bc, sp, dp)
				if want := listed(sp) || listed(dp); got != want {
					t.Errorf("%s: filter(sport %d, dport %d) = %v, want %v", name, sp, dp, got, want)
				}
			}
		}
	}
}
