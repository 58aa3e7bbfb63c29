package app

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// listen opens a TCP listener, or a unix socket for "unix:PATH" with the
// given file mode. A socket file left behind by a crashed process is
// replaced; one that a live process still serves is not.
func listen(addr string, mode os.FileMode) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		// No TCP keep-alive probes on client connections: the client
		// idle timeout already closes idle ones, and setting the probes
		// up costs four system calls per accepted connection.
		lc := net.ListenConfig{KeepAlive: -1, Control: deferAccept}
		return lc.Listen(context.Background(), "tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The socket is created with the umask's mode; set the intended one
	// before anyone can use it (net.UnixListener removes the file on
	// Close).
	if err := os.Chmod(path, mode); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

// ListenName is how a listener's address is shown: unix:PATH or HOST:PORT.
func ListenName(a net.Addr) string {
	if a.Network() == "unix" {
		return "unix:" + a.String()
	}
	return a.String()
}
