//go:build !linux

package app

import "syscall"

// deferAccept does nothing where TCP_DEFER_ACCEPT is not available.
func deferAccept(_, _ string, _ syscall.RawConn) error { return nil }
