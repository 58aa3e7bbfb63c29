package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

const checkUsage = `Usage: mtlsproxy check --config FILE [--dial]

Validate a config file: every problem is listed with its line and field
path, and the exit status is 1 if there is any.

With --dial, also connect to every route that names a concrete host and to
every gateway upstream, do a real mutual-TLS handshake with the route's
identity and trust, send one HEAD request, and print what was found: TLS
version and cipher, the server certificate's subject, names and expiry,
and the client identity presented. Run it before a deploy: it fails if any
upstream would not accept the proxy, naming the certificate problem.

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
	fc, probs, err := readConfigFile(*file)
	if err == nil {
		pl := planFromFile(fc, probs)
		err = probs.err()
		if err == nil {
			for _, w := range pl.warnings {
				fmt.Fprintf(c.stdout, "%s: warning: %s\n", *file, w)
			}
			fmt.Fprintf(c.stdout, "%s: ok: %s, %s, %s, %s\n", *file,
				plural(len(fc.Identities), "identity", "identities"), plural(len(fc.Trust), "trust bundle", "trust bundles"),
				plural(len(fc.Routes), "route", "routes"), plural(len(fc.Gateways), "gateway", "gateways"))
			if *dial {
				return c.dialAll(ctx, pl, *timeout)
			}
			return nil
		}
	}
	if pe, ok := err.(*problemsError); ok {
		for _, p := range pe.list {
			fmt.Fprintln(c.stdout, p)
		}
		return &exitError{code: 1, err: fmt.Errorf("%s: %s found", *file, plural(len(pe.list), "problem", "problems"))}
	}
	return &exitError{code: 1, err: err}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// dialTarget is one upstream that check --dial handshakes with.
type dialTarget struct {
	route    string
	hostport string
	rp       *routePlan
}

func dialTargets(pl *plan) (targets []dialTarget, skipped []string) {
	for _, rp := range pl.routes {
		for _, h := range rp.opts.Hosts {
			host, port, ok := h.Exact()
			if !ok {
				skipped = append(skipped, fmt.Sprintf("%s (%s: a wildcard names no host to dial)", rp.opts.Name, h))
				continue
			}
			if port == "" {
				port = "443"
			}
			targets = append(targets, dialTarget{rp.opts.Name, net.JoinHostPort(host, port), rp})
		}
	}
	for _, g := range pl.gateways {
		host, port, _ := g.route.opts.Hosts[0].Exact()
		targets = append(targets, dialTarget{g.name, net.JoinHostPort(host, port), g.route})
	}
	return targets, skipped
}

func (c *cli) dialAll(ctx context.Context, pl *plan, timeout time.Duration) error {
	targets, skipped := dialTargets(pl)
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tUPSTREAM\tDIALED\tTLS\tCIPHER\tSERVER SUBJECT\tSERVER NAMES\tSERVER EXPIRES\tCLIENT SUBJECT\tCLIENT EXPIRES\tRESULT")
	failed := 0
	now := time.Now()
	for _, t := range targets {
		r := dialOne(ctx, t, timeout)
		if r.err != "" {
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.route, t.hostport, dash(r.dialed), dash(r.version), dash(r.cipher),
			dash(r.serverSubject), dash(r.serverNames), days(r.serverNotAfter, now), dash(r.clientSubject), days(r.clientNotAfter, now), r.result())
	}
	_ = tw.Flush()
	for _, s := range skipped {
		fmt.Fprintf(c.stdout, "skipped %s\n", s)
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("check --dial: %d of %d upstreams failed", failed, len(targets))}
	}
	fmt.Fprintf(c.stdout, "all %s accepted the handshake\n", plural(len(targets), "upstream", "upstreams"))
	return nil
}

type dialResult struct {
	dialed, version, cipher        string
	serverSubject, serverNames     string
	clientSubject                  string
	serverNotAfter, clientNotAfter time.Time
	status                         int
	err                            string
}

func (r dialResult) result() string {
	if r.err != "" {
		return "FAIL: " + r.err
	}
	return "ok (HEAD / answered " + strconv.Itoa(r.status) + ")"
}

func dialOne(ctx context.Context, t dialTarget, timeout time.Duration) (r dialResult) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rt := proxy.NewRoute(t.rp.opts)
	defer rt.CloseIdleConnections()
	fail := func(err error) dialResult {
		_, code, msg := proxy.ClassifyUpstreamError(err, t.hostport)
		r.err = code + ": " + strings.TrimPrefix(msg, "upstream "+t.hostport+": ")
		return r
	}
	conn, err := rt.Dial(ctx, t.hostport)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	r.dialed = conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	host, _, _ := net.SplitHostPort(t.hostport)
	cfg := rt.TLSConfig().Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	var sent *tls.Certificate
	if get := cfg.GetClientCertificate; get != nil {
		cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := get(cri)
			sent = c
			return c, err
		}
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(err)
	}
	cs := tc.ConnectionState()
	r.version, r.cipher = tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite)
	leaf := cs.PeerCertificates[0]
	r.serverSubject, r.serverNames, r.serverNotAfter = leaf.Subject.String(), strings.Join(tlsconf.PresentedSANs(leaf), " "), leaf.NotAfter
	if sent != nil && sent.Leaf != nil {
		r.clientSubject, r.clientNotAfter = sent.Leaf.Subject.String(), sent.Leaf.NotAfter
	} else if t.rp.opts.Identity != nil {
		r.clientSubject = "(not asked for)"
	} else {
		r.clientSubject = "(none)"
	}
	// With TLS 1.3 the server judges the client certificate after the
	// handshake, so only a request tells whether it was accepted.
	fmt.Fprintf(tc, "HEAD / HTTP/1.1\r\nHost: %s\r\nUser-Agent: mtlsproxy-check\r\nConnection: close\r\n\r\n", hostHeader(t.hostport))
	resp, err := http.ReadResponse(bufio.NewReader(tc), &http.Request{Method: http.MethodHead})
	if err != nil {
		return fail(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	r.status = resp.StatusCode
	return r
}

func hostHeader(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err == nil && port == "443" {
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return hostport
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
