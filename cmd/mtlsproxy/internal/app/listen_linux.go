package app

import (
	"syscall"
)

// deferAccept asks the kernel to hand over a client connection only once
// its first bytes have arrived (TCP_DEFER_ACCEPT, up to a second). A
// proxy client always speaks first, so the connection's first read finds
// the request instead of waiting for it, which saves a wake-up per
// connection. A client that stays silent for longer is handed over
// anyway.
func deferAccept(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
