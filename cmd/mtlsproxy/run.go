package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"go.uber.org/zap"
)

const runUsage = `Usage: mtlsproxy run [flags]

Run the proxy. Local clients send plain HTTP; each request goes upstream
over HTTPS with the client certificate, and the server is verified.

Forward mode: clients set HTTP_PROXY=http://127.0.0.1:8080 and request
http://api.internal/x, which is sent to https://api.internal/x (port 80
becomes 443; any other port is kept). Only hosts matched by --allow are
reached; any other host gets 403 and is never dialed.

Gateway mode: with --upstream, requests for a path (GET /x) go to that one
upstream, for apps that take a base URL but cannot use a proxy.

Examples:
  mtlsproxy run --cert client.crt --key client.key --cacert ca.crt --allow api.internal
  mtlsproxy run --cert client.crt --key client.key --upstream https://api.internal:8443

Flags (each can also be set as MTLSPROXY_<NAME>, e.g. MTLSPROXY_CACERT;
repeatable flags take a comma-separated list there):
  --listen ADDR            listener for local clients: HOST:PORT or unix:PATH
                           (default 127.0.0.1:8080)
  --unsafe-listen          allow a --listen address that is not loopback
  --cert FILE              client certificate, PEM; may hold the chain after the leaf
  --key FILE               private key of --cert, PEM (PKCS#8, PKCS#1 or SEC 1;
                           RSA, ECDSA or Ed25519)
  --cacert FILE            CA bundle that upstream servers are verified against
                           (repeatable; default: the system roots)
  --allow PATTERN          upstream host the client certificate may be sent to
                           (repeatable): api.internal, *.corp.example (any depth
                           below corp.example), an IP, or '*' for any host; add
                           :PORT to allow one port only
  --upstream URL           gateway mode: send path requests to this https:// URL
  --server-name NAME       name sent in SNI and verified in the server certificate,
                           instead of the request's host
  --resolve HOST:PORT:ADDR dial ADDR (an IP, optionally with :PORT) for HOST:PORT,
                           like curl --resolve (repeatable)
  --log-level LEVEL        debug, info, warn or error (default info)
  --log-format FORMAT      json or console (default json)
  -h, --help               show this help
`

// runConfig is everything "run" needs, from flags and the environment.
type runConfig struct {
	Listen       string
	UnsafeListen bool
	Cert         string
	Key          string
	CACerts      []string
	Allow        []string
	Upstream     string
	ServerName   string
	Resolve      []string
	LogLevel     string
	LogFormat    string
}

func (c *cli) parseRunFlags(args []string) (*runConfig, error) {
	cfg := &runConfig{}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "")
	fs.BoolVar(&cfg.UnsafeListen, "unsafe-listen", false, "")
	fs.StringVar(&cfg.Cert, "cert", "", "")
	fs.StringVar(&cfg.Key, "key", "", "")
	fs.Var((*stringList)(&cfg.CACerts), "cacert", "")
	fs.Var((*stringList)(&cfg.Allow), "allow", "")
	fs.StringVar(&cfg.Upstream, "upstream", "", "")
	fs.StringVar(&cfg.ServerName, "server-name", "", "")
	fs.Var((*stringList)(&cfg.Resolve), "resolve", "")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "")
	fs.StringVar(&cfg.LogFormat, "log-format", "json", "")
	if err := c.parseFlags(fs, args, runUsage); err != nil {
		return nil, err
	}
	if err := c.applyEnv(fs); err != nil {
		return nil, err
	}
	return cfg, nil
}

// applyEnv sets every flag that is not on the command line from
// MTLSPROXY_<NAME>, so the command line always wins.
func (c *cli) applyEnv(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := "MTLSPROXY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v := c.getenv(env)
		if v == "" {
			return
		}
		values := []string{v}
		if _, repeatable := f.Value.(*stringList); repeatable {
			values = strings.Split(v, ",")
		}
		for _, one := range values {
			if strings.TrimSpace(one) == "" {
				continue
			}
			if err := fs.Set(f.Name, strings.TrimSpace(one)); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// settings is a validated runConfig, ready to build the proxy from.
type settings struct {
	cfg      *runConfig
	identity *tlsconf.Identity
	allow    []proxy.HostPattern
	upstream *url.URL
	resolve  proxy.Resolve
	level    zap.AtomicLevel
}

// validate checks every setting and reports all problems at once, each
// naming its flag.
func (cfg *runConfig) validate() (*settings, error) {
	s := &settings{cfg: cfg, resolve: proxy.Resolve{}}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(checkListen("--listen", cfg.Listen, cfg.UnsafeListen))
	switch {
	case cfg.Cert == "" && cfg.Key == "":
		add(errors.New("no client identity: give --cert FILE and --key FILE"))
	case cfg.Cert == "":
		add(errors.New("--key given without --cert"))
	case cfg.Key == "":
		add(errors.New("--cert given without --key"))
	default:
		id, err := tlsconf.LoadPEMIdentity("default", cfg.Cert, cfg.Key)
		if err != nil {
			add(fmt.Errorf("--cert/--key: %w", err))
		}
		s.identity = id
	}
	for _, a := range cfg.Allow {
		p, err := proxy.ParseHostPattern(a)
		if err != nil {
			add(fmt.Errorf("--allow: %w", err))
			continue
		}
		s.allow = append(s.allow, p)
	}
	if cfg.Upstream != "" {
		u, err := parseUpstream(cfg.Upstream)
		add(err)
		s.upstream = u
	}
	if len(cfg.Allow) == 0 && cfg.Upstream == "" {
		add(errNothingAllowed)
	}
	if cfg.ServerName != "" {
		if _, err := proxy.ParseHostPattern(cfg.ServerName); err != nil || strings.ContainsAny(cfg.ServerName, "*:") {
			add(fmt.Errorf("--server-name %q: not a host name", cfg.ServerName))
		}
	}
	for _, r := range cfg.Resolve {
		k, v, err := parseResolve(r)
		if err != nil {
			add(err)
			continue
		}
		s.resolve[k] = v
	}
	level, err := zap.ParseAtomicLevel(cfg.LogLevel)
	if err != nil || cfg.LogLevel == "" {
		add(fmt.Errorf("--log-level %q: want debug, info, warn or error", cfg.LogLevel))
	}
	s.level = level
	if cfg.LogFormat != "json" && cfg.LogFormat != "console" {
		add(fmt.Errorf("--log-format %q: want json or console", cfg.LogFormat))
	}
	return s, errors.Join(errs...)
}

func (c *cli) runCmd(ctx context.Context, args []string) error {
	cfg, err := c.parseRunFlags(args)
	if err != nil {
		return ignoreHelp(err)
	}
	s, err := cfg.validate()
	if err != nil {
		return err
	}
	logger, access := newLoggers(c.stderr, cfg.LogFormat, s.level)
	defer func() { _ = logger.Sync() }()

	roots, err := tlsconf.LoadCAFiles(cfg.CACerts)
	if err != nil {
		return fmt.Errorf("--cacert: %w", err)
	}
	opts := proxy.Options{Logger: logger, AccessLog: access}
	routeOpts := proxy.RouteOptions{Identity: s.identity, RootCAs: roots, ServerName: cfg.ServerName, Resolve: s.resolve}
	if len(s.allow) > 0 {
		ro := routeOpts
		ro.Name, ro.Hosts = "forward", s.allow
		opts.Routes = append(opts.Routes, proxy.NewRoute(ro))
	}
	if s.upstream != nil {
		p, err := upstreamPattern(s.upstream)
		if err != nil {
			return fmt.Errorf("--upstream: %w", err)
		}
		ro := routeOpts
		ro.Name, ro.Hosts = "gateway", []proxy.HostPattern{p}
		opts.Upstream, opts.UpstreamRoute = s.upstream, proxy.NewRoute(ro)
	}
	handler, err := proxy.New(opts)
	if err != nil {
		return err
	}
	ln, err := listen(cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	logStartup(logger, s, ln.Addr())
	if c.onListen != nil {
		c.onListen("listen", ln.Addr())
	}
	defer func() {
		for _, r := range opts.Routes {
			r.CloseIdleConnections()
		}
		if opts.UpstreamRoute != nil {
			opts.UpstreamRoute.CloseIdleConnections()
		}
	}()
	return serve(ctx, logger, ln, handler)
}

// serve runs the HTTP server until ctx ends, then drains it.
func serve(ctx context.Context, logger *zap.Logger, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          zap.NewStdLog(logger.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	logger.Info("shutting down", zap.Stringer("listen", ln.Addr()))
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	return nil
}

func logStartup(logger *zap.Logger, s *settings, addr net.Addr) {
	mode := "forward"
	switch {
	case s.upstream != nil && len(s.allow) > 0:
		mode = "forward+gateway"
	case s.upstream != nil:
		mode = "gateway"
	}
	allow := make([]string, len(s.allow))
	for i, p := range s.allow {
		allow[i] = p.String()
	}
	trust := "system roots"
	if len(s.cfg.CACerts) > 0 {
		trust = strings.Join(s.cfg.CACerts, ",")
	}
	fields := []zap.Field{
		zap.String("listen", listenName(addr)),
		zap.String("mode", mode),
		zap.Strings("allow", allow),
		zap.String("trust", trust),
	}
	if s.upstream != nil {
		fields = append(fields, zap.String("upstream", s.upstream.String()))
	}
	if s.identity != nil {
		leaf := s.identity.Leaf()
		fields = append(fields,
			zap.String("identity_subject", leaf.Subject.String()),
			zap.Time("identity_not_after", leaf.NotAfter))
		now := time.Now()
		switch {
		case s.identity.Expired(now):
			logger.Warn("client certificate is outside its validity period; requests will get 503 identity-unavailable until it is renewed",
				zap.Time("not_before", leaf.NotBefore), zap.Time("not_after", leaf.NotAfter))
		case leaf.NotAfter.Sub(now) < 7*24*time.Hour:
			logger.Warn("client certificate expires soon", zap.Time("not_after", leaf.NotAfter))
		}
	}
	logger.Info("mtlsproxy started", fields...)
}

func listenName(a net.Addr) string {
	if a.Network() == "unix" {
		return "unix:" + a.String()
	}
	return a.String()
}
