package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/elazarl/goproxy"
)

// onConnect answers CONNECT. A tunnel cannot carry the client certificate,
// so only routes with connect: tunnel (a raw pass-through) or connect: mitm
// (terminated with the local CA) get one; everything else gets a real
// 403 (an unmatched CONNECT in goproxy would be an open tunnel to anywhere).
func (p *Proxy) onConnect(target string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	ex, ok := ctx.Req.Context().Value(exchangeKey{}).(*exchange)
	if !ok {
		ex = &exchange{start: time.Now()}
	}
	ex.connect = true
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		host, port = target, "443"
	}
	host = NormalizeHost(host)
	var route *Route
	var perr *proxyError
	if host == "" || !validPort(port) {
		perr = badRequest("CONNECT target %q is not host:port", target)
	} else {
		route, perr = p.decide(ex, entryConnect, host, port)
	}
	if perr != nil {
		ex.fail(perr, nil)
		ex.status = perr.status
		resp := perr.response(ctx.Req)
		resp.Header.Set("Connection", "close")
		ctx.Resp = resp
		return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, target
	}
	ex.route = route
	if route.connect == ConnectMitm {
		ex.status = http.StatusOK
		// Requests inside the tunnel get their own goproxy contexts,
		// which start from this UserData.
		ctx.UserData = &mitmTunnel{client: ex.client, host: host, port: port}
		return &goproxy.ConnectAction{Action: goproxy.ConnectMitm, TLSConfig: p.mitmTLS(host, port, ex.client)}, target
	}
	return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: func(req *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
		p.tunnel(req, client, route, ex)
	}}, target
}

// mitmTunnel is what the requests inside an intercepted tunnel inherit
// from the CONNECT.
type mitmTunnel struct {
	client, host, port string
}

// mitmTLS is the server side of an intercepted tunnel: a leaf for the
// name the client asks for (SNI, else the CONNECT host). A different SNI
// is served only if a mitm route allows it too.
func (p *Proxy) mitmTLS(host, port, client string) func(string, *goproxy.ProxyCtx) (*tls.Config, error) {
	return func(string, *goproxy.ProxyCtx) (*tls.Config, error) {
		return &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(hello *tls.ClientHelloInfo) (_ *tls.Certificate, err error) {
				defer func() {
					// The handshake runs on goproxy's tunnel goroutine,
					// which recovers nothing.
					if v := recover(); v != nil {
						p.panicked(v, &exchange{host: net.JoinHostPort(host, port)}, http.MethodConnect)
						err = fmt.Errorf("internal error choosing the certificate for %q", host)
					}
				}()
				name := host
				if sni := NormalizeHost(hello.ServerName); sni != "" && sni != host {
					probe := &exchange{start: time.Now(), client: client}
					if rt, perr := p.decide(probe, entryConnect, sni, port); perr != nil || rt.connect != ConnectMitm {
						return nil, fmt.Errorf("client asked for %q inside a tunnel to %q, which no mitm route allows", sni, host)
					}
					name = sni
				}
				return p.mitm.Certificate(name)
			},
		}, nil
	}
}

func validPort(p string) bool {
	_, err := checkPort(p)
	return err == nil
}

// mitmRoundTrip carries a request inside an intercepted tunnel. When the
// round trip fails, goproxy's tunnel loop neither calls onResponse nor
// answers properly (HTTP/1.1: it drops the connection; HTTP/2: a bare 502),
// so the failure is turned into mtlsproxy's own error answer here, which
// onResponse then logs like any other. So is a panic, which on goproxy's
// tunnel goroutine would end the process.
func (p *Proxy) mitmRoundTrip(req *http.Request, ctx *goproxy.ProxyCtx) (resp *http.Response, err error) {
	ex := ctx.UserData.(*exchange)
	defer func() {
		if v := recover(); v != nil {
			resp, err = p.panicked(v, ex, req.Method).response(req), nil
		}
	}()
	p.hook("roundtrip")
	resp, err = ex.route.rt.RoundTrip(req, ctx)
	if err != nil {
		perr := classifyUpstreamError(err, ex.host)
		ex.fail(perr, err)
		return perr.response(req), nil
	}
	return resp, nil
}
