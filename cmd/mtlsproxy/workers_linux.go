package main

import "syscall"

// workerSysProcAttr makes a worker get SIGTERM, and drain, if its parent
// dies without stopping it.
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
