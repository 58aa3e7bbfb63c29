//go:build !linux

package proxy

import "net"

// fastListener returns ln: accepting without the poller is Linux only.
func fastListener(ln net.Listener) net.Listener { return ln }

// rawIO returns c: direct reads and writes are Linux only.
func rawIO(c net.Conn) net.Conn { return c }
