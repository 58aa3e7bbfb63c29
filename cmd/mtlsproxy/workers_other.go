//go:build !linux

package main

import "syscall"

// workerSysProcAttr: workers run on Linux only (checkWorkers).
func workerSysProcAttr() *syscall.SysProcAttr { return nil }

// reusePort: workers run on Linux only (checkWorkers).
var reusePort = deferAccept
