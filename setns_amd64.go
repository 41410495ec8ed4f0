package main

// sysSetns is setns(2) of arch/x86/entry/syscalls/syscall_64.tbl, which
// the syscall package does not number on amd64.
const sysSetns = 308
