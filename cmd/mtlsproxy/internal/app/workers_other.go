//go:build !linux

package app

import (
	"errors"
	"os"
	"syscall"
)

// listenerFile: workers run on Linux only (config.Validate).
func listenerFile(syscall.Conn) (*os.File, error) {
	return nil, errors.New("more than one worker is supported on Linux only")
}

// reusePort: workers run on Linux only (config.Validate).
var reusePort = deferAccept
