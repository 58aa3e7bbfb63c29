//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package fast

import "net"

// canPeek is false where an idle socket cannot be checked without
// waiting: the client is not used there.
const canPeek = false

func socketQuiet(net.Conn) bool { return false }
