package main

// sysSetns is setns(2) of arch/x86/entry/syscalls/syscall_32.tbl, which
// the syscall package does not number on 386.
const sysSetns = 346
