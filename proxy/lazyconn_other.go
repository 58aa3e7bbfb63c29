//go:build !linux || 386

package proxy

import "net"

// fastListener returns ln: accepting without the poller is for Linux
// (but not 386, which lacks a plain accept4 system call).
func fastListener(ln net.Listener) net.Listener { return ln }

// rawIO returns c: direct reads and writes are for Linux (not 386).
func rawIO(c net.Conn) net.Conn { return c }
