package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
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

Config file: --config FILE describes several identities, trust bundles,
routes and gateway listeners (see the README). With a file, --listen,
--unsafe-listen, --log-level, --log-format and --resolve override it; the
single-identity flags (--cert, --key, --cacert, --allow, --upstream,
--server-name) cannot be combined with it.

Examples:
  mtlsproxy run --cert client.crt --key client.key --cacert ca.crt --allow api.internal
  mtlsproxy run --cert client.crt --key client.key --upstream https://api.internal:8443
  mtlsproxy run --config /etc/mtlsproxy/config.yaml

Flags (each can also be set as MTLSPROXY_<NAME>, e.g. MTLSPROXY_CACERT;
repeatable flags take a comma-separated list there):
  --config FILE            YAML config file (check it with: mtlsproxy check --config FILE)
  --listen ADDR            listener for local clients: HOST:PORT or unix:PATH
                           (default 127.0.0.1:8080)
  --unsafe-listen          allow a --listen address that is not loopback
  --cert FILE              client certificate, PEM; may hold the chain after the leaf
  --key FILE               private key of --cert, PEM (PKCS#8, PKCS#1 or SEC 1;
                           RSA, ECDSA or Ed25519; encrypted PKCS#8 with --key-pass-file)
  --key-pass-file FILE     passphrase of an encrypted PKCS#8 --key
  --pkcs12 FILE            client identity as PKCS#12 (.p12/.pfx), instead of --cert/--key
  --pkcs12-pass-file FILE  password of --pkcs12
  --reload-interval D      re-read identities and CA bundles this often, besides
                           watching their files (default 1m; 0 turns it off)
  --expiry-warning D       warn this long before a client certificate expires
                           (default 168h)
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
  --admin ADDR             admin listener: /healthz, /readyz, /metrics, /loglevel
                           (off unless given; loopback unless --unsafe-listen)
  --pprof                  also serve Go's profiler at /debug/pprof/ on the admin listener
  --max-connections N      open client connections per listener (per worker with
                           --workers); past it, new connections wait in the kernel's
                           accept queue (default 0: no limit)
  --workers N              serve from N processes sharing the listeners, each with
                           its own scheduler (default 1; Linux). Faster with
                           keep-alive clients on several CPUs; see the README
  --http2                  offer HTTP/2 to upstreams by ALPN; servers that do not take
                           it get HTTP/1.1 (default true; --http2=false turns it off)
  --via                    add "Via: 1.1 mtlsproxy" to requests and responses
  --strip-header NAME      remove this request header before forwarding (repeatable);
                           X-Forwarded-Client-Cert is always removed
  --socket-mode MODE       file mode of unix:PATH listeners (default 0660)
  --log-level LEVEL        debug, info, warn or error (default info)
  --log-format FORMAT      json or console (default json)

Timeouts (durations such as 500ms, 10s, 2m):
  --dial-timeout D             upstream TCP connect (default 10s)
  --tls-handshake-timeout D    upstream TLS handshake (default 10s)
  --response-header-timeout D  upstream response headers after the request is
                               sent (default 60s); bodies have no time limit
  --idle-conn-timeout D        idle pooled upstream connection (default 90s)
  --read-header-timeout D      client request headers (default 30s)
  --client-idle-timeout D      idle client keep-alive connection (default 2m)
  --shutdown-timeout D         on SIGTERM/SIGINT, time for in-flight requests to
                               finish before the rest are closed (default 30s)
  There is no write timeout: a long download or stream is never cut.

Signals: SIGTERM or SIGINT drains and exits 0; SIGHUP reloads identities
and CA bundles from their files (as a file change does). A file that fails
to load is logged and the previous certificate stays in use.

  -h, --help               show this help
`

// runConfig is everything "run" needs, from flags and the environment.
type runConfig struct {
	Config       string
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
	Admin        string
	// Pprof serves Go's profiler on the admin listener.
	Pprof bool
	// HTTP2 offers HTTP/2 to upstreams by ALPN.
	HTTP2 bool
	// Via adds "Via: 1.1 mtlsproxy" to requests and responses.
	Via          bool
	SocketMode   string
	StripHeaders []string
	// KeyPassFile holds the passphrase of an encrypted PKCS#8 --key.
	KeyPassFile    string
	PKCS12         string
	PKCS12PassFile string
	ReloadInterval time.Duration
	ExpiryWarning  time.Duration
	// MaxConnections caps open client connections per listener; 0 means
	// no cap.
	MaxConnections int
	// Workers is the number of serving processes; 1 serves in this one.
	Workers               int
	ShutdownTimeout       time.Duration
	ReadHeaderTimeout     time.Duration
	ClientIdleTimeout     time.Duration
	DialTimeout           time.Duration
	TLSHandshakeTimeout   time.Duration
	ResponseHeaderTimeout time.Duration
	IdleConnTimeout       time.Duration
	// set names the flags given on the command line or in the
	// environment, which override the config file.
	set map[string]bool
}

func (c *cli) parseRunFlags(args []string) (*runConfig, error) {
	cfg := &runConfig{}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&cfg.Config, "config", "", "")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "")
	fs.BoolVar(&cfg.UnsafeListen, "unsafe-listen", false, "")
	fs.StringVar(&cfg.Cert, "cert", "", "")
	fs.StringVar(&cfg.Key, "key", "", "")
	fs.StringVar(&cfg.KeyPassFile, "key-pass-file", "", "")
	fs.StringVar(&cfg.PKCS12, "pkcs12", "", "")
	fs.StringVar(&cfg.PKCS12PassFile, "pkcs12-pass-file", "", "")
	fs.DurationVar(&cfg.ReloadInterval, "reload-interval", time.Minute, "")
	fs.DurationVar(&cfg.ExpiryWarning, "expiry-warning", 7*24*time.Hour, "")
	fs.Var((*stringList)(&cfg.CACerts), "cacert", "")
	fs.Var((*stringList)(&cfg.Allow), "allow", "")
	fs.StringVar(&cfg.Upstream, "upstream", "", "")
	fs.StringVar(&cfg.ServerName, "server-name", "", "")
	fs.Var((*stringList)(&cfg.Resolve), "resolve", "")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "")
	fs.StringVar(&cfg.LogFormat, "log-format", "json", "")
	fs.StringVar(&cfg.Admin, "admin", "", "")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "")
	fs.BoolVar(&cfg.HTTP2, "http2", true, "")
	fs.BoolVar(&cfg.Via, "via", false, "")
	fs.StringVar(&cfg.SocketMode, "socket-mode", "0660", "")
	fs.Var((*stringList)(&cfg.StripHeaders), "strip-header", "")
	fs.IntVar(&cfg.MaxConnections, "max-connections", 0, "")
	fs.IntVar(&cfg.Workers, "workers", 1, "")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "")
	fs.DurationVar(&cfg.ReadHeaderTimeout, "read-header-timeout", 30*time.Second, "")
	fs.DurationVar(&cfg.ClientIdleTimeout, "client-idle-timeout", 2*time.Minute, "")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", 10*time.Second, "")
	fs.DurationVar(&cfg.TLSHandshakeTimeout, "tls-handshake-timeout", 10*time.Second, "")
	fs.DurationVar(&cfg.ResponseHeaderTimeout, "response-header-timeout", 60*time.Second, "")
	fs.DurationVar(&cfg.IdleConnTimeout, "idle-conn-timeout", 90*time.Second, "")
	if err := c.parseFlags(fs, args, runUsage); err != nil {
		return nil, err
	}
	if err := c.applyEnv(fs); err != nil {
		return nil, err
	}
	cfg.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { cfg.set[f.Name] = true })
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

func (c *cli) runCmd(ctx context.Context, args []string) error {
	// SIGHUP's default action ends the process. Until serve (or
	// supervise) listens for it, a SIGHUP is taken and dropped: what it
	// would reload is being loaded anyway. A worker's parent forwards
	// SIGHUP as soon as the worker has started.
	early := make(chan os.Signal, 1)
	signal.Notify(early, syscall.SIGHUP)
	defer signal.Stop(early)
	cfg, err := c.parseRunFlags(args)
	if err != nil {
		return ignoreHelp(err)
	}
	pl, err := cfg.plan()
	if err != nil {
		return err
	}
	worker, err := c.workerFromEnv()
	if err != nil {
		return err
	}
	if worker != nil {
		// A worker serves what its parent opened, and its admin endpoints
		// for the parent only.
		pl.workers, pl.admin = 1, worker.admin
		c.inherited = worker.listeners
	}
	// The proxy's live heap is small, so Go's default (GOGC=100) collects
	// very often; 400 cut its CPU per request by about a tenth in the
	// benchmark harness at the price of ~12 MiB more peak RSS under load.
	// GOGC in the environment still decides.
	if c.getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	index := -1
	if worker != nil {
		index = worker.index
	}
	logger, access, stopLogs := newLoggers(c.stderr, pl.format, pl.level, index)
	defer func() { stopLogs(); _ = logger.Sync() }()
	if pl.workers > 1 {
		return c.supervise(ctx, pl, args, logger)
	}
	return c.serve(ctx, pl, logger, access)
}

// plan validates the flags, or reads the config file they name and applies
// the flags that override it.
func (cfg *runConfig) plan() (*plan, error) {
	if cfg.Config == "" {
		return cfg.validate()
	}
	var clash []string
	for _, name := range []string{"cert", "key", "key-pass-file", "pkcs12", "pkcs12-pass-file", "cacert", "allow", "upstream", "server-name", "http2"} {
		if cfg.set[name] {
			clash = append(clash, "--"+name)
		}
	}
	if len(clash) > 0 {
		return nil, fmt.Errorf("%s cannot be combined with --config: describe identities and routes in the file", strings.Join(clash, ", "))
	}
	fc, probs, err := readConfigFile(cfg.Config)
	if err != nil {
		return nil, err
	}
	if cfg.set["listen"] {
		fc.Listen = cfg.Listen
	}
	if cfg.set["unsafe-listen"] {
		fc.UnsafeListen = cfg.UnsafeListen
	}
	if cfg.set["log-level"] {
		fc.Log.Level = cfg.LogLevel
	}
	if cfg.set["log-format"] {
		fc.Log.Format = cfg.LogFormat
	}
	fc.Resolve = append(fc.Resolve, cfg.Resolve...)
	if cfg.set["admin"] {
		fc.Admin = cfg.Admin
	}
	if cfg.set["reload-interval"] {
		fc.ReloadInterval = &cfg.ReloadInterval
	}
	if cfg.set["expiry-warning"] {
		fc.ExpiryWarning = &cfg.ExpiryWarning
	}
	if cfg.set["pprof"] {
		fc.Pprof = cfg.Pprof
	}
	if cfg.set["via"] {
		fc.Via = cfg.Via
	}
	if cfg.set["socket-mode"] {
		fc.SocketMode = cfg.SocketMode
	}
	fc.StripHeaders = append(fc.StripHeaders, cfg.StripHeaders...)
	if cfg.set["max-connections"] {
		fc.MaxConnections = cfg.MaxConnections
	}
	if cfg.set["workers"] {
		fc.Workers = cfg.Workers
	}
	for flagName, d := range map[string]struct {
		dst *time.Duration
		v   time.Duration
	}{
		"shutdown-timeout":        {&fc.Timeouts.Shutdown, cfg.ShutdownTimeout},
		"read-header-timeout":     {&fc.Timeouts.ClientReadHeader, cfg.ReadHeaderTimeout},
		"client-idle-timeout":     {&fc.Timeouts.ClientIdle, cfg.ClientIdleTimeout},
		"dial-timeout":            {&fc.Timeouts.Dial, cfg.DialTimeout},
		"tls-handshake-timeout":   {&fc.Timeouts.TLSHandshake, cfg.TLSHandshakeTimeout},
		"response-header-timeout": {&fc.Timeouts.ResponseHeader, cfg.ResponseHeaderTimeout},
		"idle-conn-timeout":       {&fc.Timeouts.IdleConn, cfg.IdleConnTimeout},
	} {
		if cfg.set[flagName] {
			*d.dst = d.v
		}
	}
	pl := planFromFile(fc, probs)
	return pl, probs.err()
}

func logStartup(logger *zap.Logger, pl *plan, addr net.Addr) {
	for _, name := range sortedKeys(pl.identities) {
		leaf := pl.identities[name].Leaf()
		logger.Info("identity loaded", zap.String("identity", name), zap.String("subject", leaf.Subject.String()),
			zap.String("issuer", leaf.Issuer.String()), zap.Time("not_after", leaf.NotAfter))
	}
	describe := func(kind string, rp *routePlan, extra ...zap.Field) {
		fields := append([]zap.Field{zap.String("route", rp.opts.Name), zap.Strings("hosts", rp.hosts),
			zap.String("identity", rp.identity), zap.String("trust", rp.trust)}, extra...)
		if rp.opts.Identity != nil {
			fields = append(fields, zap.String("identity_subject", rp.opts.Identity.Leaf().Subject.String()),
				zap.Time("identity_not_after", rp.opts.Identity.Leaf().NotAfter))
		}
		logger.Info(kind, fields...)
	}
	mode := "forward"
	switch {
	case pl.upstream != nil && len(pl.routes) > 0:
		mode = "forward+gateway"
	case pl.upstream != nil:
		mode = "gateway"
	case len(pl.routes) == 0:
		mode = "gateways only"
	}
	for _, rp := range pl.routes {
		describe("route", rp, zap.Bool("connect_tunnel", rp.opts.Connect == proxy.ConnectTunnel))
	}
	if pl.upstream != nil {
		describe("gateway", pl.upstreamRoute, zap.String("upstream", pl.upstream.String()), zap.String("listen", listenName(addr)))
	}
	for _, g := range pl.gateways {
		describe("gateway", g.route, zap.String("upstream", g.upstream.String()), zap.String("listen", g.listen))
	}
	logger.Info("mtlsproxy started", zap.String("listen", listenName(addr)), zap.String("mode", mode),
		zap.Int("routes", len(pl.routes)), zap.Int("gateways", len(pl.gateways)))
}

func listenName(a net.Addr) string {
	if a.Network() == "unix" {
		return "unix:" + a.String()
	}
	return a.String()
}
