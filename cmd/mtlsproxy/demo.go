package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/demo"
)

const demoUsage = `Usage: mtlsproxy demo [--listen ADDR]

Show mtlsproxy at work without any setup. The demo
  1. makes a throwaway CA, a server certificate for demo.internal and a
     client certificate, in a temporary directory;
  2. starts an HTTPS server on 127.0.0.1 that requires a client certificate
     and answers with the subject it saw;
  3. starts the proxy (127.0.0.1:8080, or a free port if that is taken) and
     sends one request through it;
  4. prints a curl command that works while the demo runs.
Press Ctrl-C to stop; the temporary directory is removed.

Flags:
  --listen ADDR   proxy listener (default 127.0.0.1:8080)
  -h, --help      show this help
`

func (c *cli) demoCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listenAddr := fs.String("listen", "127.0.0.1:8080", "")
	if err := c.parseFlags(fs, args, demoUsage); err != nil {
		return ignoreHelp(err)
	}
	if err := config.CheckListen(*listenAddr, false); err != nil {
		return fmt.Errorf("demo --listen: %w", err)
	}
	if strings.HasPrefix(*listenAddr, "unix:") {
		return fmt.Errorf("demo --listen %s: the demo listens on TCP only (the curl line needs a host:port)", *listenAddr)
	}
	dir, err := os.MkdirTemp("", "mtlsproxy-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)
	files, err := demo.WritePKI(dir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	upstream, upAddr, err := demo.StartUpstream(files)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer upstream.Close()
	upPort := upAddr.(*net.TCPAddr).Port

	proxyAddr := *listenAddr
	if ln, err := net.Listen("tcp", proxyAddr); err != nil {
		proxyAddr = "127.0.0.1:0"
	} else {
		ln.Close()
	}
	resolve := demo.Host + ":443:127.0.0.1:" + strconv.Itoa(upPort)
	runArgs := []string{
		"--listen", proxyAddr,
		"--cert", files.ClientCert, "--key", files.ClientKey,
		"--cacert", files.CACert,
		"--allow", demo.Host,
		"--resolve", resolve,
		"--log-format", "console",
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan net.Addr, 1)
	inner := &cli{stdout: c.stdout, stderr: c.stderr, getenv: func(string) string { return "" },
		onListen: func(_ string, a net.Addr) { ready <- a }}
	done := make(chan error, 1)
	go func() { done <- inner.runCmd(ctx, runArgs) }()

	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		return fmt.Errorf("demo: proxy did not start: %w", err)
	}
	proxyURL := "http://" + addr.String()
	target := "http://" + demo.Host + "/hello"

	fmt.Fprintf(c.stdout, "\nmtlsproxy demo\n  upstream: https://%s (really 127.0.0.1:%d), requires a client certificate\n  proxy:    %s\n\n", demo.Host, upPort, proxyURL)
	fmt.Fprintf(c.stdout, "Sending GET %s through the proxy...\n", target)
	body, status, err := demo.Request(ctx, proxyURL, target)
	if err != nil {
		cancel()
		<-done
		return fmt.Errorf("demo: request through the proxy failed: %w", err)
	}
	fmt.Fprintf(c.stdout, "  %s\n  %s\n", status, body)
	fmt.Fprintf(c.stdout, "Try it yourself while the demo runs (Ctrl-C to stop):\n\n  curl -x %s %s\n\n", proxyURL, target)
	fmt.Fprintf(c.stdout, "The same proxy, started by hand:\n\n  mtlsproxy run --listen %s --cert %s --key %s --cacert %s --allow %s --resolve %s\n\n",
		addr, files.ClientCert, files.ClientKey, files.CACert, demo.Host, resolve)
	return <-done
}
