//go:build !amd64 && !386

package main

import "syscall"

// sysSetns is setns(2), which the syscall package numbers on every
// architecture but amd64 and 386.
const sysSetns = syscall.SYS_SETNS
