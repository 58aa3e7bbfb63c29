package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

const healthUsage = `Usage: mtlsproxy health [--admin ADDR] [--timeout DUR] [--live]

Ask a running mtlsproxy whether it is ready: exit 0 if its admin listener
answers 200 on /readyz, else print why and exit 1. For exec probes and
Docker HEALTHCHECK in an image with no shell or curl. With --live, ask
/healthz instead (the process serves), for liveness probes: an expired
certificate makes a proxy unready, but restarting it would not help.

Flags:
  --admin ADDR     the admin listener, HOST:PORT or unix:PATH
                   (default $MTLSPROXY_ADMIN, else 127.0.0.1:9901)
  --timeout DUR    give up after this long (default 2s)
  --live           check /healthz (liveness) instead of /readyz (readiness)
  -h, --help       show this help
`

func (c *cli) healthCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	addr := fs.String("admin", "", "")
	timeout := fs.Duration("timeout", 2*time.Second, "")
	live := fs.Bool("live", false, "")
	if err := c.parseFlags(fs, args, healthUsage); err != nil {
		return ignoreHelp(err)
	}
	if *addr == "" {
		*addr = c.getenv("MTLSPROXY_ADMIN")
	}
	if *addr == "" {
		*addr = "127.0.0.1:9901"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	endpoint := "/readyz"
	if *live {
		endpoint = "/healthz"
	}
	target := "http://" + *addr + endpoint
	if path, ok := strings.CutPrefix(*addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		target = "http://admin" + endpoint
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("health: %w", err)}
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("health: admin listener %s does not answer: %w", *addr, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return &exitError{code: 1, err: fmt.Errorf("health: %s: %s", resp.Status, msg)}
	}
	fmt.Fprintln(c.stdout, msg)
	return nil
}
