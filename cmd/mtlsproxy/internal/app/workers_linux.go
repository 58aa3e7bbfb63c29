package app

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenerFile duplicates a listening socket's descriptor for a worker
// (exec.Cmd.ExtraFiles). The duplicate shares the socket's open file
// description, flags included, with this process and every worker.
// os/exec calls Fd on each ExtraFiles entry, and Fd switches a descriptor
// to blocking mode if the os.File put it in non-blocking mode, as the file
// from net's (*TCPListener).File does: every sharer's accept would then
// block a thread. A descriptor that was non-blocking already when given
// to os.NewFile is left as it is, so the duplicate is made with
// F_DUPFD_CLOEXEC on the raw descriptor and wrapped with os.NewFile.
func listenerFile(ln syscall.Conn) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicate the listening socket: %w", derr)
	}
	return os.NewFile(uintptr(fd), "listener"), nil
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
