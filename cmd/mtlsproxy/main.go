// Command mtlsproxy is a local forward proxy that adds mutual TLS: local
// clients send plain HTTP, mtlsproxy forwards each request upstream over
// HTTPS with a client certificate and verifies the server.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		os.Exit(exitCode(err, os.Stderr))
	}
}
