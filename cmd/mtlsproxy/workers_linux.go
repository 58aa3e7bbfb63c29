package main

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// workerSysProcAttr makes a worker get SIGTERM, and drain, if its parent
// dies without stopping it.
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}

// reusePort is deferAccept plus SO_REUSEPORT: every worker gets a
// listening socket of its own on the same address, and the kernel
// spreads new connections evenly over them.
func reusePort(network, address string, c syscall.RawConn) error {
	if err := deferAccept(network, address, c); err != nil {
		return err
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
