package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/app"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
)

const checkUsage = `Usage: mtlsproxy check --config FILE [--dial]

Validate a config file: every problem is listed with its line and field
path, and the exit status is 1 if there is any.

With --dial, also send one HEAD request to every route that names a
concrete host and to every gateway upstream, the way the proxy would: the
route's own dial, TLS configuration and identity, in HTTP/2 or HTTP/1.1 as
the upstream chooses. Then print what was found: TLS version and cipher,
the server certificate's subject, names and expiry, and the client
identity. Run it before a deploy: it fails if any upstream would not
accept the proxy, naming the certificate problem.

Flags:
  --config FILE    the config file (also MTLSPROXY_CONFIG)
  --dial           handshake with every upstream
  --timeout DUR    per-upstream timeout for --dial (default 10s)
  -h, --help       show this help
`

// exitError ends the process with code after printing err, if any.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (c *cli) checkCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	file := fs.String("config", "", "")
	dial := fs.Bool("dial", false, "")
	timeout := fs.Duration("timeout", 10*time.Second, "")
	if err := c.parseFlags(fs, args, checkUsage); err != nil {
		return ignoreHelp(err)
	}
	if *file == "" {
		*file = c.getenv("MTLSPROXY_CONFIG")
	}
	if *file == "" {
		fmt.Fprintf(c.stderr, "mtlsproxy check: --config FILE is required\n\n%s", checkUsage)
		return errUsage
	}
	cfg, err := config.Load(*file)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	pl, err := app.Load(cfg)
	var problems *config.Error
	if errors.As(err, &problems) {
		for _, line := range problems.Lines() {
			fmt.Fprintln(c.stdout, line)
		}
		return &exitError{code: 1, err: fmt.Errorf("%s: %s found", *file, plural(len(problems.Problems), "problem", "problems"))}
	} else if err != nil {
		return &exitError{code: 1, err: err}
	}
	for _, w := range pl.Warnings() {
		fmt.Fprintf(c.stdout, "%s: warning: %s\n", *file, w)
	}
	fmt.Fprintf(c.stdout, "%s: ok: %s, %s, %s, %s\n", *file,
		plural(len(cfg.Identities), "identity", "identities"), plural(len(cfg.Trust), "trust bundle", "trust bundles"),
		plural(len(cfg.Routes), "route", "routes"), plural(len(cfg.Gateways), "gateway", "gateways"))
	if *dial {
		return c.dialAll(ctx, pl, *timeout)
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// dialAll prints check --dial's table.
func (c *cli) dialAll(ctx context.Context, pl *app.Plan, timeout time.Duration) error {
	results, skipped := app.Probe(ctx, pl, timeout)
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tUPSTREAM\tDIALED\tTLS\tCIPHER\tSERVER SUBJECT\tSERVER NAMES\tSERVER EXPIRES\tCLIENT SUBJECT\tCLIENT EXPIRES\tRESULT")
	failed := 0
	now := time.Now()
	for _, r := range results {
		result := "ok (HEAD / answered " + strconv.Itoa(r.Status) + ")"
		if r.Err != "" {
			failed++
			result = "FAIL: " + r.Err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Route, r.HostPort, dash(r.Dialed), dash(r.Version), dash(r.Cipher),
			dash(r.ServerSubject), dash(r.ServerNames), days(r.ServerNotAfter, now), dash(r.ClientSubject), days(r.ClientNotAfter, now), result)
	}
	_ = tw.Flush()
	for _, s := range skipped {
		fmt.Fprintf(c.stdout, "skipped %s\n", s)
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("check --dial: %d of %d upstreams failed", failed, len(results))}
	}
	fmt.Fprintf(c.stdout, "all %s accepted the handshake\n", plural(len(results), "upstream", "upstreams"))
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func days(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := int(t.Sub(now).Hours() / 24)
	if t.Before(now) {
		return "EXPIRED " + t.UTC().Format("2006-01-02")
	}
	if d < 1 {
		return t.UTC().Format("2006-01-02") + " (" + strconv.Itoa(int(t.Sub(now).Hours())) + "h)"
	}
	return t.UTC().Format("2006-01-02") + " (" + strconv.Itoa(d) + "d)"
}
