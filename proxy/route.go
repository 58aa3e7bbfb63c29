package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/mtlsproxy/mtlsproxy/proxy/fast"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

// Timeouts bound the upstream side of a request.
type Timeouts struct {
	// Dial bounds the TCP connect. If zero, 10s.
	Dial time.Duration
	// TLSHandshake bounds the upstream TLS handshake. If zero, 10s.
	TLSHandshake time.Duration
	// ResponseHeader bounds the wait for the upstream's response headers
	// after the request has been written. If zero, 60s.
	ResponseHeader time.Duration
	// IdleConn is how long an idle pooled upstream connection is kept. If
	// zero, 90s.
	IdleConn time.Duration
	// TunnelIdle closes a CONNECT tunnel after this long without traffic in
	// either direction. If zero, 5 minutes.
	TunnelIdle time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Dial, 10*time.Second)
	def(&t.TLSHandshake, 10*time.Second)
	def(&t.ResponseHeader, 60*time.Second)
	def(&t.IdleConn, 90*time.Second)
	def(&t.TunnelIdle, 5*time.Minute)
	return t
}

// RouteOptions describe a Route.
type RouteOptions struct {
	// Name labels the route in logs and metrics.
	Name string
	// Hosts are the upstream hosts this route carries.
	Hosts []HostPattern
	// Identity is the client certificate presented upstream. If nil, none.
	Identity *tlsconf.Identity
	// RootCAs verifies upstream servers. If nil, the system roots.
	RootCAs *x509.CertPool
	// ServerName overrides SNI and the verified name. If empty, the
	// request's host.
	ServerName string
	// Address, if set, is dialed for every upstream connection of this
	// route instead of the request's host:port (SNI and verification still
	// use the host).
	Address string
	// Resolve overrides the dial address per host:port, like curl
	// --resolve. Address takes precedence.
	Resolve Resolve
	// MinVersion is the lowest upstream TLS version. If zero, TLS 1.2.
	MinVersion uint16
	// VerifySAN and Pins add server certificate checks; see
	// tlsconf.ClientOptions.
	VerifySAN []string
	Pins      []tlsconf.Pin
	// Connect decides what a CONNECT to this route's hosts gets. The zero
	// value rejects.
	Connect ConnectPolicy
	// Metrics records handshakes and requests. If nil, nothing is recorded.
	Metrics *Metrics
	// Clients, if set, limits the route to these authenticated callers;
	// others go on to the next route.
	Clients []string
	// HTTP2 offers HTTP/2 to the upstream by ALPN; servers that do not
	// take it get HTTP/1.1. WebSocket upgrades always use HTTP/1.1.
	HTTP2 bool
	// Timeouts for the upstream side; zero fields take defaults.
	Timeouts Timeouts
	// FastPath sends bodiless GET and HEAD requests over the HTTP/1.1
	// accelerator (package fast) instead of http.Transport, while the
	// upstream speaks HTTP/1.1. Off, every request takes http.Transport.
	FastPath bool
	// MaxIdleConnsPerHost is the idle pool size per upstream host. If zero,
	// 512: a proxy shared by many local clients needs a deep pool, or
	// connections churn and every churned one costs a full mTLS handshake.
	MaxIdleConnsPerHost int
}

// Route binds a set of upstream hosts to the identity and TLS settings
// used to reach them. Each route owns one pooled http.Transport, because the
// client certificate callback cannot see which server it is talking to.
type Route struct {
	name      string
	hosts     []HostPattern
	identity  *tlsconf.Identity
	connect   ConnectPolicy
	clients   map[string]bool
	timeouts  Timeouts
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	tlsOpts   tlsconf.ClientOptions
	tlsConfig atomic.Pointer[tls.Config]
	// conns holds the upstream transports; Refresh replaces them.
	conns    atomic.Pointer[transports]
	h1Config atomic.Pointer[tls.Config]
	rt       goproxy.RoundTripper
	metrics  *routeMetrics
	maxIdle  int
	fastPath bool
}

// newFast is the route's accelerator, or nil when it is off or cannot
// work here.
func (r *Route) newFast() *fast.Client {
	c := &fast.Client{
		Dial: func(ctx context.Context, addr string) (*tls.Conn, error) {
			conn, err := r.handshake(ctx, "tcp", addr, r.tlsConfig.Load())
			if err != nil {
				return nil, err
			}
			return conn.(*tls.Conn), nil
		},
		ResponseHeaderTimeout: r.timeouts.ResponseHeader,
		IdleTimeout:           r.timeouts.IdleConn,
		MaxIdlePerHost:        r.maxIdle,
	}
	if !r.fastPath || !c.Usable() {
		return nil
	}
	return c
}

// transports are a route's pooled upstream connections.
type transports struct {
	// fast, if set, carries bodiless GETs and HEADs; see package fast.
	fast *fast.Client
	main *http.Transport
	// h1 carries WebSocket upgrades, which HTTP/2 cannot, when main may
	// speak HTTP/2; otherwise it is main.
	h1 *http.Transport
}

func (ts *transports) closeIdle(final bool) {
	if ts.fast != nil {
		ts.fast.CloseIdleConnections(final)
	}
	ts.main.CloseIdleConnections()
	if ts.h1 != ts.main {
		ts.h1.CloseIdleConnections()
	}
}

// ConnectPolicy is what a route does with CONNECT requests.
type ConnectPolicy int

const (
	// ConnectReject answers 403: a tunnel cannot carry the identity.
	ConnectReject ConnectPolicy = iota
	// ConnectTunnel passes the client's own TLS through untouched; no
	// identity is added.
	ConnectTunnel
	// ConnectMitm terminates the client's TLS with a leaf from the local
	// CA and handles the requests inside exactly like forward-mode ones,
	// identity included.
	ConnectMitm
)

// NewRoute builds a route and its upstream transport.
func NewRoute(o RouteOptions) *Route {
	t := o.Timeouts.withDefaults()
	idle := o.MaxIdleConnsPerHost
	if idle <= 0 {
		idle = 512
	}
	dialer := &net.Dialer{Timeout: t.Dial, KeepAlive: 30 * time.Second}
	dial := o.Resolve.dialContext(dialer)
	if o.Address != "" {
		dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, o.Address)
		}
	}
	tlsOpts := tlsconf.ClientOptions{
		Identity:   o.Identity,
		RootCAs:    o.RootCAs,
		ServerName: o.ServerName,
		MinVersion: o.MinVersion,
		VerifySAN:  o.VerifySAN,
		Pins:       o.Pins,
		HTTP2:      o.HTTP2,
	}
	tlsCfg := tlsconf.ClientConfig(tlsOpts)
	r := &Route{
		name:     o.Name,
		hosts:    o.Hosts,
		identity: o.Identity,
		connect:  o.Connect,
		timeouts: t,
		dial:     dial,
		tlsOpts:  tlsOpts,
		metrics:  o.Metrics.route(o.Name),
		maxIdle:  idle,
	}
	ts := &transports{}
	ts.main = &http.Transport{
		// Never take proxy settings from the environment: the upstream
		// side always dials the upstream itself.
		Proxy:       nil,
		DialContext: dial,
		// The route does the TLS handshake itself, to count it; tlsConfig
		// stays here for anything that looks at it.
		DialTLSContext:        r.dialTLS,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   t.TLSHandshake,
		ResponseHeaderTimeout: t.ResponseHeader,
		IdleConnTimeout:       t.IdleConn,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          0, // no global cap; the per-host cap applies
		MaxIdleConnsPerHost:   idle,
		// Keep the client's Accept-Encoding and never decompress behind
		// its back.
		DisableCompression: true,
		ForceAttemptHTTP2:  o.HTTP2,
	}
	ts.h1 = ts.main
	if o.HTTP2 {
		h1 := ts.main.Clone()
		h1.ForceAttemptHTTP2 = false
		h1.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		h1.DialTLSContext = r.dialTLSH1
		ts.h1 = h1
		h1Opts := tlsOpts
		h1Opts.HTTP2 = false
		r.h1Config.Store(tlsconf.ClientConfig(h1Opts))
	}
	r.tlsConfig.Store(tlsCfg)
	r.fastPath = o.FastPath
	ts.fast = r.newFast()
	r.conns.Store(ts)
	if len(o.Clients) > 0 {
		r.clients = map[string]bool{}
		for _, c := range o.Clients {
			r.clients[c] = true
		}
	}
	r.rt = goproxy.RoundTripperFunc(r.roundTrip)
	return r
}

// TLSConfig returns the route's upstream TLS client configuration, for
// callers that handshake outside the proxy (such as a pre-flight check).
// It must not be modified.
func (r *Route) TLSConfig() *tls.Config { return r.tlsConfig.Load() }

// SetRootCAs swaps the pool that verifies upstream servers. New
// handshakes use it; see Refresh.
func (r *Route) SetRootCAs(pool *x509.CertPool) {
	r.tlsOpts.RootCAs = pool
	r.Refresh()
}

// Refresh starts over with fresh TLS state after the route's identity or
// trust changed: a new session cache (a resumed session would carry the
// old client certificate), and new transports, so that no request after
// the swap reuses a connection made before it. Closing idle connections
// is not enough: under steady load a connection is rarely idle (an HTTP/2
// one almost never), and it would keep presenting the old certificate.
// Requests in flight finish on their connections, which the old transports
// then close (HTTP/1.1 at once, HTTP/2 after the idle-connection timeout).
func (r *Route) Refresh() {
	r.tlsConfig.Store(tlsconf.ClientConfig(r.tlsOpts))
	old := r.conns.Load()
	next := &transports{main: old.main.Clone()}
	next.h1 = next.main
	if old.h1 != old.main {
		opts := r.tlsOpts
		opts.HTTP2 = false
		r.h1Config.Store(tlsconf.ClientConfig(opts))
		next.h1 = old.h1.Clone()
	}
	next.fast = r.newFast()
	r.conns.Store(next)
	old.closeIdle(true)
}

// Dial connects to addr (host:port) the way the route's requests do,
// honouring Address and Resolve.
func (r *Route) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return r.dial(ctx, "tcp", addr)
}

// RoundTrip sends req upstream the way proxied requests go: the route's
// dial (Address, Resolve), TLS configuration and identity, over its pooled
// connections, in HTTP/2 when the upstream chooses it by ALPN. req.URL
// must be an https URL. It is what a pre-flight probe should use, so that
// the probe and real traffic cannot disagree.
func (r *Route) RoundTrip(req *http.Request) (*http.Response, error) {
	return r.conns.Load().main.RoundTrip(req)
}

// CloseIdleConnections closes pooled upstream connections that are idle.
func (r *Route) CloseIdleConnections() { r.conns.Load().closeIdle(false) }

func (r *Route) match(host, port string) bool {
	for _, p := range r.hosts {
		if p.Match(host, port) {
			return true
		}
	}
	return false
}

// Clients lists the callers the route is limited to; nil means any.
func (r *Route) Clients() []string {
	var out []string
	for c := range r.clients {
		out = append(out, c)
	}
	return out
}

// allows reports whether the caller may use the route.
func (r *Route) allows(client string) bool {
	return r.clients == nil || r.clients[client]
}

func (r *Route) roundTrip(req *http.Request, ctx *goproxy.ProxyCtx) (*http.Response, error) {
	ex, _ := ctx.UserData.(*exchange)
	return r.send(req, ex)
}

// send carries req (already decided and rewritten) upstream: over the
// accelerator when it takes the request, else over http.Transport. ex,
// if set, learns whether the connection was reused.
func (r *Route) send(req *http.Request, ex *exchange) (*http.Response, error) {
	ts := r.conns.Load()
	if ts.fast != nil && ex != nil && fast.Eligible(req) {
		resp, reused, err := ts.fast.RoundTrip(req, ex.host)
		if err != fast.ErrHTTP2 {
			ex.reused = reused
			wrapBody(resp, ex)
			return resp, err
		}
	}
	if ex != nil {
		ex.trace.GotConn = ex.gotConn
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &ex.trace))
	}
	if isUpgrade(req.Header) {
		return ts.h1.RoundTrip(req)
	}
	resp, err := ts.main.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		// Nothing was asked to switch: passed on, the answer would turn
		// the client's connection into a tunnel to whatever follows.
		_ = resp.Body.Close()
		return nil, errUnaskedSwitch
	}
	wrapBody(resp, ex)
	return resp, err
}

// errUnaskedSwitch is a 101 answer to a request that asked for no
// upgrade.
var errUnaskedSwitch = errors.New("upstream switched protocols, which the request did not ask for")

// dialTLS connects and does the upstream TLS handshake, bounded by the
// TLS handshake timeout.
func (r *Route) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	return r.handshake(ctx, network, addr, r.tlsConfig.Load())
}

// dialTLSH1 is dialTLS offering HTTP/1.1 only, for upgrades.
func (r *Route) dialTLSH1(ctx context.Context, network, addr string) (net.Conn, error) {
	return r.handshake(ctx, network, addr, r.h1Config.Load())
}

func (r *Route) handshake(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
	conn, err := r.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, r.timeouts.TLSHandshake)
	err = tc.HandshakeContext(hctx)
	timedOut := hctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
	cancel()
	if err != nil {
		_ = conn.Close()
		if timedOut {
			err = errHandshakeTimeout
		}
		r.metrics.handshake(err)
		return nil, err
	}
	r.metrics.handshake(nil)
	return tc, nil
}

// errHandshakeTimeout is the upstream TLS handshake running past its
// timeout.
var errHandshakeTimeout = &timeoutError{"TLS handshake timeout"}

// timeoutError is a net.Error that timed out.
type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// Resolve maps a normalized "host:port" to the address to dial instead,
// like curl's --resolve. The TLS server name stays the request's host.
type Resolve map[string]string

func (m Resolve) dialContext(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if len(m) == 0 {
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, port, err := net.SplitHostPort(addr); err == nil {
			if to, ok := m[net.JoinHostPort(NormalizeHost(host), port)]; ok {
				addr = to
			}
		}
		return d.DialContext(ctx, network, addr)
	}
}
