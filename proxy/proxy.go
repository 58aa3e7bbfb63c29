package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/elazarl/goproxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"go.uber.org/zap"
)

// Options configure a Proxy.
type Options struct {
	// Routes are tried in order for absolute-form requests
	// (GET http://host/path, as sent by clients with HTTP_PROXY set); the
	// first route whose host patterns match the target carries the request.
	// A target no route matches gets 403 host-not-allowed and is never
	// dialed.
	Routes []*Route
	// Upstream, if set, makes the listener a gateway as well: origin-form
	// requests (GET /path) are sent to this https URL over UpstreamRoute.
	Upstream *url.URL
	// UpstreamRoute carries gateway requests. Required with Upstream.
	UpstreamRoute *Route
	// Logger receives operational messages. If nil, nothing is logged.
	Logger *zap.Logger
	// AccessLog receives one line per request. It must not be sampled. If
	// nil, Logger is used.
	AccessLog *zap.Logger
	// Metrics records requests; give the same Metrics to the routes. If
	// nil, nothing is recorded.
	Metrics *Metrics
	// Clients, if not empty, must authenticate with Proxy-Authorization
	// Basic; others get 407. Routes may be limited to some clients.
	Clients Clients
	// StripHeaders are removed from every request before it goes
	// upstream, on top of X-Forwarded-Client-Cert, so that a local caller
	// cannot forge an identity header the upstream trusts.
	StripHeaders []string
	// Self lists the proxy's own listener addresses (host:port); a request
	// aimed at one of them is answered at once instead of looping.
	Self []string
	// Mitm mints the certificates shown to clients in connect: mitm
	// tunnels. Without it, mitm routes refuse CONNECT.
	Mitm *tlsconf.LeafCache
	// Via, if set, is added to the Via header of requests and responses
	// (RFC 9110 section 7.6.3) as "1.1 <Via>", such as "1.1 mtlsproxy".
	Via string
}

// Proxy is an http.Handler that forwards plain-HTTP proxy and gateway
// requests to their upstreams over mutual TLS.
type Proxy struct {
	gp       *goproxy.ProxyHttpServer
	routes   []*Route
	upstream *url.URL
	upRoute  *Route
	log      *zap.Logger
	access   *zap.Logger
	// unrouted counts requests that matched no route.
	unrouted *routeMetrics
	via      string
	clients  Clients
	mitm     *tlsconf.LeafCache
	strip    []string
	self     map[string]bool
	mitmRT   goproxy.RoundTripper
	// gwTarget is the gateway upstream when the front may send
	// origin-form requests there itself (host empty: it may not).
	gwTarget target
	// testHook, if set, is called at named points of the request path,
	// so that tests can make them fail (a panic, say).
	testHook func(point string)
}

func (p *Proxy) hook(point string) {
	if p.testHook != nil {
		p.testHook(point)
	}
}

var _ http.Handler = (*Proxy)(nil)

// errNoDirectDial guards goproxy's own transport and CONNECT dialer, which
// must never be used: every upstream connection goes through a Route.
var errNoDirectDial = errors.New("mtlsproxy: direct dial refused")

// New builds a Proxy.
func New(o Options) (*Proxy, error) {
	if o.Upstream != nil {
		if o.UpstreamRoute == nil {
			return nil, errors.New("proxy: Upstream needs UpstreamRoute")
		}
		if o.Upstream.Scheme != "https" || o.Upstream.Host == "" {
			return nil, fmt.Errorf("proxy: upstream %q must be an https:// URL with a host", o.Upstream)
		}
	}
	if len(o.Routes) == 0 && o.Upstream == nil {
		return nil, errors.New("proxy: no routes and no upstream: nothing would be allowed")
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	access := o.AccessLog
	if access == nil {
		access = log
	}
	p := &Proxy{routes: o.Routes, upstream: o.Upstream, upRoute: o.UpstreamRoute, log: log, access: access,
		unrouted: o.Metrics.route("")}
	if o.Via != "" {
		p.via = "1.1 " + o.Via
	}
	p.clients, p.mitm = o.Clients, o.Mitm
	p.strip = append([]string{"X-Forwarded-Client-Cert"}, o.StripHeaders...)
	p.gwTarget = gatewayTarget(o.Upstream)
	p.self = map[string]bool{}
	for _, a := range o.Self {
		if host, port, err := net.SplitHostPort(a); err == nil {
			p.self[net.JoinHostPort(NormalizeHost(host), port)] = true
		}
	}

	p.mitmRT = goproxy.RoundTripperFunc(p.mitmRoundTrip)
	gp := goproxy.NewProxyHttpServer()
	// Replace the defaults, which read proxy settings from the environment
	// and skip TLS verification.
	refuse := func(context.Context, string, string) (net.Conn, error) { return nil, errNoDirectDial }
	gp.Tr = &http.Transport{Proxy: nil, DialContext: refuse, DialTLSContext: refuse}
	gp.ConnectDial = func(string, string) (net.Conn, error) { return nil, errNoDirectDial }
	gp.KeepAcceptEncoding = true
	// prepare removes the hop-by-hop headers (Proxy-* included) itself;
	// goproxy's RemoveProxyHeaders would only do part of it a second time.
	gp.KeepHeader = true
	// HTTP/2 from clients inside intercepted tunnels (ALPN).
	gp.AllowHTTP2 = o.Mitm != nil
	gp.Logger = goproxyLogger{log.WithOptions(zap.AddCallerSkip(2)).Named("goproxy")}
	gp.Verbose = log.Core().Enabled(zap.DebugLevel)
	gp.NonproxyHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.notProxyRequest().write(w)
	})
	gp.OnRequest().HandleConnectFunc(p.onConnect)
	gp.OnRequest().DoFunc(p.onRequest)
	gp.OnResponse().DoFunc(p.onResponse)
	p.gp = gp
	return p, nil
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ex := &exchange{start: time.Now(), watch: watchOf(r.Context())}
	rec := newRecorder(w, ex)
	defer p.recoverPanic(rec, r, ex)
	if perr := p.admit(r, ex); perr != nil {
		p.refuse(rec, r, ex, perr)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
	case r.URL.IsAbs():
	case p.upstream != nil && strings.HasPrefix(r.RequestURI, "/"):
		ex.gateway = true
		u := p.upstream
		r.URL.Scheme = u.Scheme
		r.URL.Host = u.Host
		r.URL.Path, r.URL.RawPath = joinURLPath(u, r.URL)
		if u.RawQuery != "" {
			if r.URL.RawQuery == "" {
				r.URL.RawQuery = u.RawQuery
			} else {
				r.URL.RawQuery = u.RawQuery + "&" + r.URL.RawQuery
			}
		}
	case r.Method == http.MethodOptions && r.RequestURI == "*":
		p.optionsStar(rec, r, ex)
		return
	default:
		p.refuse(rec, r, ex, p.notProxyRequest())
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex))
	// Count the body on this copy of the request only: the server looks at
	// the type of its own request's Body after the handler answers, and a
	// wrapper there would hide an unread "Expect: 100-continue" body, so
	// that the server would wait for the client to send the body the
	// upstream refused before it sent the answer.
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &countingBody{ReadCloser: r.Body, ex: ex}
	}
	p.gp.ServeHTTP(rec, r)
	if ex.clientConn != nil && !ex.connect {
		// goproxy returns from a WebSocket relay when either side ends
		// but leaves the client connection open: close it, which also
		// ends the relay goroutine still reading from it.
		_ = ex.clientConn.Close()
	}
	if err := ex.upstreamBodyErr; err != nil && !ex.hijacked {
		if rec.retract() {
			// Not a byte of the body reached the client: it can still
			// be told.
			perr := &proxyError{status: http.StatusBadGateway, code: CodeUpstreamConnect,
				msg: "upstream " + ex.host + ": invalid response body", cause: err}
			ex.fail(perr, err)
			rec.Header().Set("Connection", "close")
			perr.write(rec)
			p.logAccess(ex, r)
			return
		}
		// goproxy ignores the error and returns normally, and the server
		// would then end a chunked response cleanly: the client would
		// take a truncated body for a whole one. Abort instead: the
		// connection closes without the last chunk, as the upstream's did.
		ex.detail = "upstream body: " + err.Error()
		p.logAccess(ex, r)
		panic(http.ErrAbortHandler)
	}
	rec.commit()
	p.logAccess(ex, r)
}

// admit checks what the proxy requires of every request before it is
// routed: framing it can trust, the caller's credentials, no user info in
// the URL. It also decides whether the connection must close after this
// request.
func (p *Proxy) admit(r *http.Request, ex *exchange) *proxyError {
	teSeen := ex.watch != nil && ex.watch.seen.Load()
	if len(r.TransferEncoding) > 0 || teSeen {
		ex.closeAfter = true
	}
	if teSeen && r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		return badRequest("HTTP/1.0 requests cannot use Transfer-Encoding (RFC 9112 section 6.1); send a Content-Length, or use HTTP/1.1")
	}
	if len(p.clients) > 0 {
		name, ok := p.clients.authenticate(r.Header)
		if !ok {
			return proxyAuthRequired()
		}
		ex.client = name
	}
	if r.URL.User != nil {
		// Refused before goproxy sees it, so the credentials in the URL
		// never reach even a debug log.
		return badRequest("URLs with user info (user:password@) are not forwarded")
	}
	return nil
}

// refuse answers r with the proxy's own error and ends the exchange.
func (p *Proxy) refuse(w *recorder, r *http.Request, ex *exchange, perr *proxyError) {
	ex.fail(perr, nil)
	if perr.status == http.StatusProxyAuthRequired {
		w.Header().Set("Proxy-Authenticate", `Basic realm="mtlsproxy"`)
	}
	if ex.closeAfter || perr.status == http.StatusBadRequest {
		w.Header().Set("Connection", "close")
	}
	perr.write(w)
	p.logAccess(ex, r)
}

// optionsStar answers "OPTIONS *", a question about the proxy itself, as
// Go's server would (200, no body); the proxy answers it so that every
// request on a connection reaches the proxy and is logged.
func (p *Proxy) optionsStar(w *recorder, r *http.Request, ex *exchange) {
	if r.ContentLength != 0 {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 256<<10))
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
	w.commit()
	p.logAccess(ex, r)
}

func (p *Proxy) notProxyRequest() *proxyError {
	if p.upstream != nil {
		return badRequest("request target must be a path (/...) or an absolute http:// URL")
	}
	return badRequest("this is a forward proxy: send requests for http://HOST/... through it (HTTP_PROXY=http://<this listener>), or start it with --upstream URL to serve paths directly")
}

func (p *Proxy) onRequest(r *http.Request, ctx *goproxy.ProxyCtx) (req *http.Request, resp *http.Response) {
	ex, ok := r.Context().Value(exchangeKey{}).(*exchange)
	// goproxy recovers no panic, and requests inside an intercepted
	// tunnel run on a goroutine of its own: a panic would end the process.
	defer func() {
		if v := recover(); v != nil {
			req, resp = r, p.panicked(v, ex, r.Method).response(r)
		}
	}()
	if !ok {
		// A request inside an intercepted tunnel: ServeHTTP does not see
		// it, so it is timed and logged from here.
		ex = &exchange{start: time.Now()}
		if t, ok := ctx.UserData.(*mitmTunnel); ok {
			ex.client = t.client
		}
		ex.finish = func() { p.logAccess(ex, r) }
	}
	ctx.UserData = ex
	e := entryForward
	switch {
	case ex.finish != nil:
		e = entryMitm
	case ex.gateway:
		e = entryGateway
	}
	route, perr := p.prepare(r, ex, e)
	if perr != nil {
		ex.fail(perr, nil)
		return r, perr.response(r)
	}
	ctx.RoundTripper = route.rt
	if ex.finish != nil {
		ctx.RoundTripper = p.mitmRT
	}
	if ce := p.log.Check(zap.DebugLevel, "forwarding"); ce != nil {
		ce.Write(zap.String("method", r.Method), zap.String("upstream", r.URL.Host), zap.String("path", r.URL.Path),
			zap.String("route", route.name), zap.Bool("gateway", ex.gateway))
	}
	return r, nil
}

// prepare routes r (an absolute-form request, a gateway request
// rewritten to the upstream's URL, or a request inside an intercepted
// tunnel) and rewrites it into the upstream request.
func (p *Proxy) prepare(r *http.Request, ex *exchange, e entry) (*Route, *proxyError) {
	scheme := strings.ToLower(r.URL.Scheme)
	if scheme != "http" && scheme != "https" {
		return nil, badRequest("unsupported URL scheme %q: use http:// URLs", r.URL.Scheme)
	}
	if r.URL.User != nil {
		return nil, badRequest("URLs with user info are not forwarded")
	}
	host := NormalizeHost(r.URL.Hostname())
	if host == "" {
		return nil, badRequest("URL %q has no host", r.URL.Redacted())
	}
	port := r.URL.Port()
	if port == "" || (scheme == "http" && port == "80") {
		port = "443"
	} else if _, err := checkPort(port); err != nil {
		return nil, badRequest("URL %q: %v", r.URL.Redacted(), err)
	}
	route, perr := p.decide(ex, e, host, port)
	if perr != nil {
		return nil, perr
	}

	r.URL.Scheme = "https"
	r.URL.Host = stripDefaultPort(ex.host, "443")
	r.Host = ""
	r.RequestURI = "" // set on server requests; a client request must not have it
	// A client's "Connection: close" is about its own connection; passed on,
	// it would close the pooled upstream connection and cost a handshake.
	r.Close = false
	removeHopHeaders(r.Header, isUpgrade(r.Header))
	for _, h := range p.strip {
		r.Header.Del(h)
	}
	if p.via != "" {
		addVia(r.Header, r.ProtoMajor, r.ProtoMinor, p.via)
	}
	return route, nil
}

func (p *Proxy) onResponse(resp *http.Response, ctx *goproxy.ProxyCtx) (out *http.Response) {
	ex, ok := ctx.UserData.(*exchange)
	if !ok {
		return resp
	}
	defer func() {
		if v := recover(); v != nil {
			if resp != nil && resp.Body != nil {
				_ = resp.Body.Close()
			}
			perr := p.panicked(v, ex, ctx.Req.Method)
			if ex.finish != nil {
				ex.status = perr.status
				ex.finish()
			}
			out = perr.response(ctx.Req)
		}
	}()
	p.hook("response")
	if ex.code != "" { // our own answer
		if ex.closeAfter && resp != nil {
			resp.Header.Set("Connection", "close")
		}
		if ex.finish != nil && resp != nil {
			ex.status = resp.StatusCode
			ex.finish()
		}
		return resp
	}
	if resp == nil {
		if ctx.Error == nil {
			return nil
		}
		perr := p.roundTripError(ex, ctx.Error)
		ex.fail(perr, ctx.Error)
		if ex.finish != nil {
			ex.status = perr.status
			ex.finish()
		}
		resp := perr.response(ctx.Req)
		if perr.code == CodeBadRequest || ex.closeAfter {
			// The rest of the client's body cannot be found.
			resp.Header.Set("Connection", "close")
		}
		return resp
	}
	if ex.finish != nil {
		ex.status = resp.StatusCode
		if resp.StatusCode == http.StatusSwitchingProtocols || resp.Body == nil || resp.Body == http.NoBody {
			ex.finish()
		}
	}
	if resp.TLS != nil {
		ex.tlsVersion = resp.TLS.Version
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		removeHopHeaders(resp.Header, false)
		if ex.closeAfter {
			// goproxy replaces the writer's headers with these, so the
			// server learns from here that the connection must close.
			resp.Header.Set("Connection", "close")
		}
	}
	if p.via != "" {
		addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor, p.via)
	}
	return resp
}

// roundTripError is the answer to a round trip that failed: the
// client's fault if reading its request body failed (malformed chunked
// framing, a body cut short), else the upstream's.
func (p *Proxy) roundTripError(ex *exchange, err error) *proxyError {
	if bodyErr := ex.clientBodyErr.Load(); bodyErr != nil {
		return badRequest("cannot read the request body: %s", clientErrorText(*bodyErr))
	}
	return classifyUpstreamError(err, ex.host)
}

// stripDefaultPort drops ":port" from hostport when it is the default.
func stripDefaultPort(hostport, def string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || port != def {
		return hostport
	}
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// joinURLPath joins the gateway upstream's base path and the request path,
// as httputil.ReverseProxy does.
func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath, bpath := a.EscapedPath(), b.EscapedPath()
	aslash, bslash := strings.HasSuffix(apath, "/"), strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	if a == "" {
		return b
	}
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}
