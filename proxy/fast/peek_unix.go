//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package fast

import (
	"errors"
	"net"
	"syscall"
)

const canPeek = true

// socketQuiet reports whether the socket under an idle connection has
// nothing to read and is not closed: a recv with MSG_PEEK|MSG_DONTWAIT,
// which neither waits nor takes the bytes.
func socketQuiet(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	quiet := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Nothing to read: EAGAIN. A byte, or 0 bytes (the peer
		// closed), or another error: not quiet.
		quiet = errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && quiet
}
