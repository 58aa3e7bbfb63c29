// Package config is mtlsproxy's configuration: the schema of the YAML file
// (one documented struct with zero-value defaults), its strict decoding
// with a line index, the run flags and MTLSPROXY_* variables as an overlay
// on it through one table, and one pure Validate that names every problem
// by its field path, or by the flag or variable the value came from.
//
// Nothing here opens a listener or reads a certificate: loading the files
// a Config names is the runtime's job (package app), which reports its
// problems through the same Problems, so that both read alike.
package config

import "time"

// Defaults of the settings whose zero value means "the default".
const (
	DefaultListen         = "127.0.0.1:8080"
	DefaultSocketMode     = "0660"
	DefaultLogLevel       = "info"
	DefaultLogFormat      = "json"
	DefaultWorkers        = 1
	DefaultReloadInterval = time.Minute
	DefaultExpiryWarning  = 7 * 24 * time.Hour
	// MaxWorkers bounds workers: far more than CPUs only adds processes.
	MaxWorkers = 64
)

// Default timeouts (see Timeouts).
const (
	DefaultDialTimeout             = 10 * time.Second
	DefaultTLSHandshakeTimeout     = 10 * time.Second
	DefaultResponseHeaderTimeout   = 60 * time.Second
	DefaultIdleConnTimeout         = 90 * time.Second
	DefaultTunnelIdleTimeout       = 5 * time.Minute
	DefaultClientReadHeaderTimeout = 30 * time.Second
	DefaultClientIdleTimeout       = 2 * time.Minute
	DefaultShutdownTimeout         = 30 * time.Second
)

// IdentityNone in a route or gateway means: no client certificate.
const IdentityNone = "none"

// Names of what the single-identity run flags (--cert, --allow, --upstream,
// ...) build: one identity, one trust bundle, a forward route and a
// gateway route on the main listener.
const (
	FlagIdentity     = "default"
	FlagTrust        = "default"
	FlagRoute        = "forward"
	FlagGatewayRoute = "gateway"
)

// Config is the configuration of "mtlsproxy run": the YAML file, with the
// flags and the environment laid over it. Unknown keys are errors; a zero
// value takes the default named in its comment (SetDefaults fills them).
type Config struct {
	// Listen is the forward-proxy listener, HOST:PORT or unix:PATH;
	// default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// UnsafeListen allows listeners that are not loopback: whoever reaches
	// one borrows the client identity.
	UnsafeListen bool `yaml:"unsafe_listen"`
	// Via adds "Via: 1.1 mtlsproxy" to requests and responses.
	Via bool `yaml:"via"`
	// FastPath serves bodiless HTTP/1.1 GET and HEAD requests on the
	// accelerator (the front in proxy/front.go on the client side,
	// proxy/fast towards HTTP/1.1 upstreams) instead of net/http's server
	// and transport; nil means true. false takes every request through
	// the reference pipeline alone.
	FastPath *bool `yaml:"fast_path"`
	// SocketMode is the file mode of unix:PATH listeners, in octal;
	// default "0660". World-writable modes are refused.
	SocketMode string `yaml:"socket_mode"`
	// StripHeaders are removed from requests before they go upstream, on
	// top of X-Forwarded-Client-Cert.
	StripHeaders []string `yaml:"strip_headers"`
	// Clients, if any, must authenticate with Proxy-Authorization Basic.
	Clients map[string]Client `yaml:"clients" section:"a client"`
	// Admin is the admin listener (/healthz, /readyz, /metrics,
	// /loglevel); off if empty.
	Admin string `yaml:"admin"`
	// Pprof serves Go's profiler at /debug/pprof/ on the admin listener.
	Pprof bool `yaml:"pprof"`
	// MaxConnections caps open client connections per listener (per
	// worker); 0 means no cap.
	MaxConnections int `yaml:"max_connections"`
	// Workers is the number of serving processes; 0 means 1. More than one
	// needs Linux.
	Workers int `yaml:"workers"`
	// ReloadInterval re-reads identities and trust bundles periodically,
	// besides watching their files; nil means 1m, 0 turns it off.
	ReloadInterval *time.Duration `yaml:"reload_interval"`
	// ExpiryWarning is how long before a certificate expires a warning is
	// logged; nil means 168h.
	ExpiryWarning *time.Duration `yaml:"expiry_warning"`
	// Timeouts; zero fields take the defaults.
	Timeouts Timeouts `yaml:"timeouts" section:"timeouts"`
	// Log sets the level (default info) and format (default json).
	Log Log `yaml:"log" section:"log"`
	// MitmCA is the local CA for connect: mitm routes (make one with
	// "mtlsproxy ca init").
	MitmCA *MitmCA `yaml:"mitm_ca" section:"mitm_ca"`
	// Resolve entries are HOST:PORT:ADDR, as curl --resolve.
	Resolve []string `yaml:"resolve"`
	// Identities are client certificates by name ("none" is reserved).
	Identities map[string]Identity `yaml:"identities" section:"an identity"`
	// Trust are CA bundles by name.
	Trust map[string]Trust `yaml:"trust" section:"a trust bundle"`
	// Routes are tried in order for forward-proxy requests; the first
	// match wins.
	Routes []Route `yaml:"routes" section:"a route"`
	// Gateways are extra listeners, each bound to one upstream.
	Gateways []Gateway `yaml:"gateways" section:"a gateway"`
	// Upstream, set by run --upstream only, makes the main listener a
	// gateway to one upstream as well; its Listen is empty. A file
	// describes gateways with their own listeners instead.
	Upstream *Gateway `yaml:"-"`

	// src says where values came from, for messages.
	src source
}

// Timeouts of the upstream side and of the client side. There is no write
// timeout: a long download or stream is never cut.
type Timeouts struct {
	// Dial is the upstream TCP connect; default 10s.
	Dial time.Duration `yaml:"dial"`
	// TLSHandshake is the upstream TLS handshake; default 10s.
	TLSHandshake time.Duration `yaml:"tls_handshake"`
	// ResponseHeader waits for upstream response headers after the
	// request is sent; default 60s. Bodies have no time limit.
	ResponseHeader time.Duration `yaml:"response_header"`
	// IdleConn closes an idle pooled upstream connection; default 90s.
	IdleConn time.Duration `yaml:"idle_conn"`
	// TunnelIdle closes a CONNECT tunnel with no traffic either way;
	// default 5m.
	TunnelIdle time.Duration `yaml:"tunnel_idle"`
	// ClientReadHeader bounds reading a client's request headers; default
	// 30s.
	ClientReadHeader time.Duration `yaml:"client_read_header"`
	// ClientIdle closes an idle client keep-alive connection; default 2m.
	ClientIdle time.Duration `yaml:"client_idle"`
	// Shutdown is how long in-flight requests may finish on SIGTERM or
	// SIGINT before the rest are closed; default 30s.
	Shutdown time.Duration `yaml:"shutdown"`
}

// Log configures the loggers.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is json (default) or console.
	Format string `yaml:"format"`
}

// MitmCA names the local CA's files.
type MitmCA struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Client is a caller that authenticates with Proxy-Authorization Basic.
type Client struct {
	// PasswordFile holds the caller's password (one trailing newline is
	// ignored).
	PasswordFile string `yaml:"password_file"`
}

// Identity is a client certificate: PEM cert and key, or PKCS#12.
type Identity struct {
	// Cert is the PEM certificate file; the chain may follow the leaf.
	Cert string `yaml:"cert"`
	// Key is the PEM private key of Cert (PKCS#8, PKCS#1 or SEC 1).
	Key string `yaml:"key"`
	// PKCS12 is a .p12/.pfx file, instead of Cert and Key.
	PKCS12 string `yaml:"pkcs12"`
	// PasswordFile holds the passphrase of an encrypted PKCS#8 Key, or the
	// password of PKCS12.
	PasswordFile string `yaml:"password_file"`
}

// Trust is a CA bundle that verifies upstream servers.
type Trust struct {
	// CAFiles are PEM files; one without a certificate is an error.
	CAFiles []string `yaml:"ca_files"`
	// System adds the system roots.
	System bool `yaml:"system"`
}

// Verify adds checks of the server certificate.
type Verify struct {
	// SAN: the certificate must carry one of these (DNS, IP or URI).
	SAN []string `yaml:"san"`
	// Pins: its public key must match one of these sha256/... SPKI pins.
	Pins []string `yaml:"pins"`
}

// Peer are the settings routes and gateways share: how the upstream is
// reached and checked, and what is presented to it.
type Peer struct {
	// Identity names the identity presented, or "none"; required.
	Identity string `yaml:"identity"`
	// Trust names the trust bundle; default the system roots.
	Trust string `yaml:"trust"`
	// ServerName is sent in SNI and verified, instead of the request's
	// host.
	ServerName string `yaml:"server_name"`
	// Address, HOST:PORT, is dialed instead of the request's host.
	Address string `yaml:"address"`
	// Verify adds checks of the server certificate.
	Verify Verify `yaml:"verify" section:"verify"`
	// MinTLS is "1.2" (default) or "1.3".
	MinTLS string `yaml:"min_tls"`
	// HTTP2 offers HTTP/2 by ALPN; nil means true.
	HTTP2 *bool `yaml:"http2"`
}

// Route carries the requests for some upstream hosts.
type Route struct {
	// Name labels the route in logs and metrics; default its first host.
	Name string `yaml:"name"`
	// Host is one host pattern: api.internal, *.corp.example, optional
	// :port. Give Host or Hosts.
	Host string `yaml:"host"`
	// Hosts are several patterns with the same settings.
	Hosts []string `yaml:"hosts"`
	Peer  `yaml:",inline"`
	// Connect is what CONNECT gets: reject (default), tunnel or mitm.
	Connect string `yaml:"connect"`
	// Clients limits the route to these callers (see Config.Clients);
	// others go on to the next route.
	Clients []string `yaml:"clients"`
}

// Gateway is a listener bound to one upstream.
type Gateway struct {
	// Name labels the gateway; default "gateway LISTEN".
	Name string `yaml:"name"`
	// Listen is the gateway's address (HOST:PORT or unix:PATH); required.
	Listen string `yaml:"listen"`
	// Upstream is the https:// URL requests go to; required.
	Upstream string `yaml:"upstream"`
	Peer     `yaml:",inline"`
	// Clients limits the gateway to these callers.
	Clients []string `yaml:"clients"`
}

// SetDefaults fills every zero value that stands for a default. Validate
// works before or after it; the runtime reads a Config after it.
func (c *Config) SetDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Listen, DefaultListen)
	def(&c.SocketMode, DefaultSocketMode)
	def(&c.Log.Level, DefaultLogLevel)
	def(&c.Log.Format, DefaultLogFormat)
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.ReloadInterval == nil {
		d := DefaultReloadInterval
		c.ReloadInterval = &d
	}
	if c.ExpiryWarning == nil {
		d := DefaultExpiryWarning
		c.ExpiryWarning = &d
	}
	for _, t := range c.Timeouts.fields() {
		if *t.v == 0 {
			*t.v = t.def
		}
	}
}

type timeoutField struct {
	key string
	v   *time.Duration
	def time.Duration
}

func (t *Timeouts) fields() []timeoutField {
	return []timeoutField{
		{"dial", &t.Dial, DefaultDialTimeout}, {"tls_handshake", &t.TLSHandshake, DefaultTLSHandshakeTimeout},
		{"response_header", &t.ResponseHeader, DefaultResponseHeaderTimeout}, {"idle_conn", &t.IdleConn, DefaultIdleConnTimeout},
		{"tunnel_idle", &t.TunnelIdle, DefaultTunnelIdleTimeout}, {"client_read_header", &t.ClientReadHeader, DefaultClientReadHeaderTimeout},
		{"client_idle", &t.ClientIdle, DefaultClientIdleTimeout}, {"shutdown", &t.Shutdown, DefaultShutdownTimeout},
	}
}

// FastPathEnabled reports whether the HTTP/1.1 accelerator is on (nil
// means yes).
func (c *Config) FastPathEnabled() bool { return c.FastPath == nil || *c.FastPath }

// HTTP2Enabled reports whether HTTP/2 is offered (nil means yes).
func (u Peer) HTTP2Enabled() bool { return u.HTTP2 == nil || *u.HTTP2 }

// RouteHosts are a route's host patterns, from Host or Hosts.
func (r Route) RouteHosts() []string {
	if r.Host != "" {
		return append([]string{r.Host}, r.Hosts...)
	}
	return r.Hosts
}

// File is the config file the Config was read from, or "".
func (c *Config) File() string { return c.src.file }
