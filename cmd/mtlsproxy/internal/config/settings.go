package config

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Setting is one setting of "mtlsproxy run": its flag, its MTLSPROXY_*
// variable, the config key it sets and its usage. run --help, the
// environment names and the flag table of the docs are made from
// Settings, so they cannot drift from what the code applies.
type Setting struct {
	// Flag is the flag's name without dashes.
	Flag string
	// Arg names the flag's value in the usage (FILE, D); "" for a switch.
	Arg string
	// Key is the config key the setting sets. For the single-identity
	// flags (Single), it is what they build: the file names identities
	// and routes itself.
	Key string
	// Usage says what the setting does, defaults included.
	Usage string
	// Group is "" or "timeouts", for the usage's sections.
	Group string
	// Repeatable flags may be given several times; the variable takes a
	// comma-separated list. With a config file they add to its list.
	Repeatable bool
	// Single marks the single-identity flags, which describe an identity,
	// a trust bundle and a route, and cannot be combined with --config.
	Single bool
	kind   kind
	// docs is Markdown the docs' table adds to Usage (a link).
	docs string
	// apply sets one value, already checked to parse as kind.
	apply func(o *overlay, v string)
}

// Env is the setting's variable: MTLSPROXY_ and the flag's name in
// capitals, dashes as underscores.
func (s Setting) Env() string {
	return "MTLSPROXY_" + strings.ToUpper(strings.ReplaceAll(s.Flag, "-", "_"))
}

type kind int

const (
	kString kind = iota
	kBool
	kInt
	kDuration
)

// parse checks that v is a value of k.
func (k kind) parse(v string) error {
	var err error
	switch k {
	case kBool:
		_, err = strconv.ParseBool(v)
	case kInt:
		_, err = strconv.Atoi(v)
	case kDuration:
		_, err = time.ParseDuration(v)
	}
	if err != nil {
		return errors.New("parse error")
	}
	return nil
}

// overlay is a Config being built from flags, and the single-identity
// flags until they are turned into an identity, a trust and routes.
type overlay struct {
	c *Config
	s single
}

type single struct {
	cert, key, keyPass, pkcs12, pkcs12Pass, upstream, serverName string
	cacert, allow                                                []string
	http2                                                        *bool
}

func str(f func(*overlay) *string) applier {
	return applier{kString, func(o *overlay, v string) { *f(o) = v }}
}

func boolean(f func(*overlay) *bool) applier {
	return applier{kBool, func(o *overlay, v string) { *f(o), _ = strconv.ParseBool(v) }}
}

func integer(f func(*overlay) *int) applier {
	return applier{kInt, func(o *overlay, v string) { *f(o), _ = strconv.Atoi(v) }}
}

func duration(f func(*overlay) *time.Duration) applier {
	return applier{kDuration, func(o *overlay, v string) { *f(o), _ = time.ParseDuration(v) }}
}

func durationPtr(f func(*overlay) **time.Duration) applier {
	return applier{kDuration, func(o *overlay, v string) {
		d, _ := time.ParseDuration(v)
		*f(o) = &d
	}}
}

func list(f func(*overlay) *[]string) applier {
	return applier{kString, func(o *overlay, v string) { *f(o) = append(*f(o), v) }}
}

// applier is how a setting's value is parsed and applied.
type applier struct {
	k     kind
	apply func(*overlay, string)
}

func setting(flagName, arg, key, usage string, a applier) Setting {
	return Setting{Flag: flagName, Arg: arg, Key: key, Usage: usage, kind: a.k, apply: a.apply}
}

func (s Setting) repeatable() Setting    { s.Repeatable = true; return s }
func (s Setting) single() Setting        { s.Single = true; return s }
func (s Setting) link(md string) Setting { s.docs = md; return s }
func (s Setting) group(g string) Setting {
	s.Group = g
	return s
}

// Settings lists every run setting, in the order of the usage.
func Settings() []Setting {
	timeout := func(flagName, key, usage string, f func(*Timeouts) *time.Duration) Setting {
		a := duration(func(o *overlay) *time.Duration { return f(&o.c.Timeouts) })
		return setting(flagName, "D", "timeouts."+key, usage, a).group("timeouts")
	}
	var s []Setting
	add := func(st Setting) { s = append(s, st) }
	add(setting("config", "FILE", "", "YAML config file (check it with: mtlsproxy check --config FILE)", applier{k: kString}).link("see [Config file](#config-file)"))
	add(setting("listen", "ADDR", "listen", "listener for local clients: HOST:PORT or unix:PATH (default 127.0.0.1:8080)",
		str(func(o *overlay) *string { return &o.c.Listen })))
	add(setting("unsafe-listen", "", "unsafe_listen", "allow a listen address that is not loopback (anyone who reaches it can use the identity)",
		boolean(func(o *overlay) *bool { return &o.c.UnsafeListen })))
	add(setting("cert", "FILE", "identities.default.cert", "client certificate, PEM; may hold the chain after the leaf",
		str(func(o *overlay) *string { return &o.s.cert })).single())
	add(setting("key", "FILE", "identities.default.key", "private key of --cert, PEM (PKCS#8, PKCS#1 or SEC 1; RSA, ECDSA or Ed25519; encrypted PKCS#8 with --key-pass-file)",
		str(func(o *overlay) *string { return &o.s.key })).single())
	add(setting("key-pass-file", "FILE", "identities.default.password_file", "passphrase of an encrypted PKCS#8 --key (one trailing newline is ignored)",
		str(func(o *overlay) *string { return &o.s.keyPass })).single())
	add(setting("pkcs12", "FILE", "identities.default.pkcs12", "client identity as PKCS#12 (.p12/.pfx), instead of --cert/--key",
		str(func(o *overlay) *string { return &o.s.pkcs12 })).single())
	add(setting("pkcs12-pass-file", "FILE", "identities.default.password_file", "password of --pkcs12",
		str(func(o *overlay) *string { return &o.s.pkcs12Pass })).single())
	add(setting("reload-interval", "D", "reload_interval", "re-read identities and CA bundles this often, besides watching their files (default 1m; 0 turns it off)",
		durationPtr(func(o *overlay) **time.Duration { return &o.c.ReloadInterval })))
	add(setting("expiry-warning", "D", "expiry_warning", "warn this long before a client certificate expires (default 168h)",
		durationPtr(func(o *overlay) **time.Duration { return &o.c.ExpiryWarning })))
	add(setting("cacert", "FILE", "trust.default.ca_files", "CA bundle that upstream servers are verified against (repeatable; default: the system roots); a file with no certificate is an error",
		list(func(o *overlay) *[]string { return &o.s.cacert })).repeatable().single())
	add(setting("allow", "PATTERN", "routes[0].hosts", "upstream host the client certificate may be sent to (repeatable): api.internal, *.corp.example (any depth below corp.example), an IP, or '*' for any host; add :PORT to allow one port only",
		list(func(o *overlay) *[]string { return &o.s.allow })).repeatable().single().link("see [Host patterns](#host-patterns)"))
	add(setting("upstream", "URL", "", "gateway mode: send path requests to this https:// URL",
		str(func(o *overlay) *string { return &o.s.upstream })).single())
	add(setting("server-name", "NAME", "routes[0].server_name", "name sent in SNI and verified in the server certificate, instead of the request's host",
		str(func(o *overlay) *string { return &o.s.serverName })).single())
	add(setting("resolve", "HOST:PORT:ADDR", "resolve", "dial ADDR (an IP, optionally with :PORT) for HOST:PORT, like curl --resolve (repeatable; adds to the file's list)",
		list(func(o *overlay) *[]string { return &o.c.Resolve })).repeatable())
	add(setting("admin", "ADDR", "admin", "admin listener: /healthz, /readyz, /metrics, /loglevel (off unless given; loopback unless --unsafe-listen)",
		str(func(o *overlay) *string { return &o.c.Admin })))
	add(setting("pprof", "", "pprof", "also serve Go's profiler at /debug/pprof/ on the admin listener",
		boolean(func(o *overlay) *bool { return &o.c.Pprof })))
	add(setting("max-connections", "N", "max_connections", "open client connections per listener (per worker with --workers); past it, new connections wait in the kernel's accept queue (default 0: no limit)",
		integer(func(o *overlay) *int { return &o.c.MaxConnections })))
	add(setting("workers", "N", "workers", "serve from N processes sharing the listeners, each with its own scheduler (default 1, as is 0; more than 1 on Linux only, not with --pprof)",
		integer(func(o *overlay) *int { return &o.c.Workers })).link("see [operations: workers](operations.md#workers)"))
	http2 := boolean(func(o *overlay) *bool {
		if o.s.http2 == nil {
			o.s.http2 = new(bool)
		}
		return o.s.http2
	})
	add(setting("http2", "", "routes[0].http2", "offer HTTP/2 to upstreams by ALPN; servers that do not take it get HTTP/1.1 (default true; --http2=false turns it off)", http2).single())
	add(setting("via", "", "via", `add "Via: 1.1 mtlsproxy" to requests and responses`,
		boolean(func(o *overlay) *bool { return &o.c.Via })))
	add(setting("fast-path", "", "fast_path", "serve bodiless HTTP/1.1 GET and HEAD requests on the HTTP/1.1 accelerator (a lighter client and upstream path; answers are the same) (default true; --fast-path=false takes every request through net/http's server and transport)",
		boolean(func(o *overlay) *bool {
			if o.c.FastPath == nil {
				o.c.FastPath = new(bool)
			}
			return o.c.FastPath
		})))
	add(setting("strip-header", "NAME", "strip_headers", "remove this request header before forwarding (repeatable; adds to the file's list); X-Forwarded-Client-Cert is always removed",
		list(func(o *overlay) *[]string { return &o.c.StripHeaders })).repeatable())
	add(setting("socket-mode", "MODE", "socket_mode", "file mode of unix:PATH listeners (default 0660; world-writable modes are refused)",
		str(func(o *overlay) *string { return &o.c.SocketMode })))
	add(setting("log-level", "LEVEL", "log.level", "debug, info, warn or error (default info)",
		str(func(o *overlay) *string { return &o.c.Log.Level })))
	add(setting("log-format", "FORMAT", "log.format", "json or console (default json)",
		str(func(o *overlay) *string { return &o.c.Log.Format })))
	add(timeout("dial-timeout", "dial", "upstream TCP connect (default 10s)", func(t *Timeouts) *time.Duration { return &t.Dial }))
	add(timeout("tls-handshake-timeout", "tls_handshake", "upstream TLS handshake (default 10s)", func(t *Timeouts) *time.Duration { return &t.TLSHandshake }))
	add(timeout("response-header-timeout", "response_header", "upstream response headers after the request is sent (default 60s); bodies have no time limit", func(t *Timeouts) *time.Duration { return &t.ResponseHeader }))
	add(timeout("idle-conn-timeout", "idle_conn", "idle pooled upstream connection (default 90s)", func(t *Timeouts) *time.Duration { return &t.IdleConn }))
	add(timeout("tunnel-idle-timeout", "tunnel_idle", "CONNECT tunnel with no traffic either way (default 5m)", func(t *Timeouts) *time.Duration { return &t.TunnelIdle }))
	add(timeout("read-header-timeout", "client_read_header", "client request headers (default 30s)", func(t *Timeouts) *time.Duration { return &t.ClientReadHeader }))
	add(timeout("client-idle-timeout", "client_idle", "idle client keep-alive connection (default 2m)", func(t *Timeouts) *time.Duration { return &t.ClientIdle }))
	add(timeout("shutdown-timeout", "shutdown", "on SIGTERM/SIGINT, time for in-flight requests to finish before the rest are closed (default 30s)", func(t *Timeouts) *time.Duration { return &t.Shutdown }))
	return s
}

// rawValue is a flag that keeps what was given, checked to parse, for the
// overlay to apply after the file is read.
type rawValue struct {
	k    kind
	vals []string
	repl bool // the next Set replaces rather than appends (not repeatable)
}

func (r *rawValue) String() string { return strings.Join(r.vals, ",") }
func (r *rawValue) Set(v string) error {
	if err := r.k.parse(v); err != nil {
		return err
	}
	if r.repl {
		r.vals = r.vals[:0]
	}
	r.vals = append(r.vals, v)
	return nil
}
func (r *rawValue) IsBoolFlag() bool { return r.k == kBool }

// Run is the run command's flag set and what it was given.
type Run struct {
	fs       *flag.FlagSet
	settings []Setting
	vals     map[string]*rawValue
}

// NewRun makes the flag set of "mtlsproxy run", one flag per Setting.
func NewRun() *Run {
	r := &Run{fs: flag.NewFlagSet("run", flag.ContinueOnError), settings: Settings(), vals: map[string]*rawValue{}}
	for _, s := range r.settings {
		v := &rawValue{k: s.kind, repl: !s.Repeatable}
		r.vals[s.Flag] = v
		r.fs.Var(v, s.Flag, s.Usage)
	}
	return r
}

// FlagSet is the flag set to parse the arguments with.
func (r *Run) FlagSet() *flag.FlagSet { return r.fs }

// given is a setting's values and where they came from: the command line
// wins over the environment.
func (r *Run) given(s Setting, getenv func(string) string) (vals []string, origin string, err error) {
	set := false
	r.fs.Visit(func(f *flag.Flag) { set = set || f.Name == s.Flag })
	if set {
		return r.vals[s.Flag].vals, "--" + s.Flag, nil
	}
	env := getenv(s.Env())
	if env == "" {
		return nil, "", nil
	}
	items := []string{env}
	if s.Repeatable {
		items = strings.Split(env, ",")
	}
	for _, v := range items {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		if err := s.kind.parse(v); err != nil {
			return nil, "", fmt.Errorf("%s=%q: %w", s.Env(), env, err)
		}
		vals = append(vals, v)
	}
	return vals, s.Env(), nil
}

// Config builds the configuration from the parsed flags and the
// environment: the file --config (or MTLSPROXY_CONFIG) names, if any, with
// every other setting given laid over it. It does not validate; see
// Validate. The error is for what cannot be turned into a Config at all:
// an unreadable file, a variable that does not parse, single-identity
// flags with a file.
func (r *Run) Config(getenv func(string) string) (*Config, error) {
	type given struct {
		s      Setting
		vals   []string
		origin string
	}
	var all []given
	var errs []error
	file := ""
	var clash []string
	for _, s := range r.settings {
		vals, origin, err := r.given(s, getenv)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if origin == "" {
			continue
		}
		if s.Flag == "config" {
			file = vals[len(vals)-1]
			continue
		}
		if s.Single {
			clash = append(clash, "--"+s.Flag)
		}
		all = append(all, given{s, vals, origin})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c := &Config{}
	if file != "" {
		if len(clash) > 0 {
			return nil, fmt.Errorf("%s cannot be combined with --config: describe identities and routes in the file", strings.Join(clash, ", "))
		}
		var err error
		if c, err = Load(file); err != nil {
			return nil, err
		}
	} else {
		c.src.flagsOnly = true
	}
	o := &overlay{c: c}
	for _, g := range all {
		for _, v := range g.vals {
			g.s.apply(o, v)
		}
		if g.s.Single {
			continue
		}
		if g.s.Repeatable {
			// The values given are the last ones of the list.
			n := len(listOf(c, g.s.Key))
			for i := n - len(g.vals); i < n; i++ {
				c.src.setOrigin(fmt.Sprintf("%s[%d]", g.s.Key, i), g.origin)
			}
			continue
		}
		c.src.setOrigin(g.s.Key, g.origin)
	}
	if file == "" {
		origins := map[string]string{}
		for _, g := range all {
			origins[g.s.Flag] = g.origin
		}
		o.expand(origins)
	}
	return c, nil
}

func listOf(c *Config, key string) []string {
	if key == "resolve" {
		return c.Resolve
	}
	return c.StripHeaders
}

// expand turns the single-identity flags into what a file would say: an
// identity and a trust bundle named default, a route named forward for
// the --allow hosts, and the main listener's gateway for --upstream.
// Combinations of flags that mean nothing are problems for Validate to
// report.
func (o *overlay) expand(origin map[string]string) {
	c, s := o.c, o.s
	problem := func(msg string) { c.src.decode = append(c.src.decode, Problem{Msg: msg}) }
	pem := s.cert != "" || s.key != "" || s.keyPass != ""
	p12 := s.pkcs12 != "" || s.pkcs12Pass != ""
	const idPath = "identities." + FlagIdentity
	switch {
	case pem && p12:
		problem("give --cert/--key or --pkcs12, not both")
	case s.pkcs12Pass != "" && s.pkcs12 == "":
		problem("--pkcs12-pass-file given without --pkcs12")
	case s.pkcs12 != "":
		c.Identities = map[string]Identity{FlagIdentity: {PKCS12: s.pkcs12, PasswordFile: s.pkcs12Pass}}
		c.src.setOrigin(idPath, "--pkcs12")
		c.src.setOrigin(idPath+".pkcs12", origin["pkcs12"])
		c.src.setOrigin(idPath+".password_file", origin["pkcs12-pass-file"])
	case s.cert == "" && s.key == "":
		problem("no client identity: give --cert FILE and --key FILE, or --pkcs12 FILE (or --config FILE)")
	case s.cert == "":
		problem("--key given without --cert")
	case s.key == "":
		problem("--cert given without --key")
	default:
		c.Identities = map[string]Identity{FlagIdentity: {Cert: s.cert, Key: s.key, PasswordFile: s.keyPass}}
		c.src.setOrigin(idPath, "--cert/--key")
		c.src.setOrigin(idPath+".cert", origin["cert"])
		c.src.setOrigin(idPath+".key", origin["key"])
		c.src.setOrigin(idPath+".password_file", origin["key-pass-file"])
	}
	peer := Peer{Identity: FlagIdentity, ServerName: s.serverName, HTTP2: s.http2}
	if len(s.cacert) > 0 {
		c.Trust = map[string]Trust{FlagTrust: {CAFiles: s.cacert}}
		c.src.setOrigin("trust."+FlagTrust, origin["cacert"])
		peer.Trust = FlagTrust
	}
	if len(s.allow) > 0 {
		c.Routes = []Route{{Name: FlagRoute, Hosts: s.allow, Peer: peer}}
		c.src.setOrigin("routes[0]", origin["allow"])
		c.src.setOrigin("routes[0].server_name", origin["server-name"])
	}
	if s.upstream != "" {
		c.Upstream = &Gateway{Name: FlagGatewayRoute, Upstream: s.upstream, Peer: peer}
		c.src.setOrigin("upstream", origin["upstream"])
		c.src.setOrigin("upstream.server_name", origin["server-name"])
	}
	for p, o := range c.src.origin {
		if o == "" {
			delete(c.src.origin, p)
		}
	}
}
