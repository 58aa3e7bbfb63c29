package proxy

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// entry says how a request reached the proxy. Every entry point asks
// decide the same question; only what a refusal says differs.
type entry int

const (
	// entryForward is an absolute-form request (GET http://host/...).
	entryForward entry = iota
	// entryGateway is an origin-form request on a gateway listener.
	entryGateway
	// entryConnect is a CONNECT request.
	entryConnect
	// entryMitm is a request inside an intercepted (connect: mitm) tunnel.
	entryMitm
)

// decide is the proxy's one policy decision: whether, and over which
// route, a request may go to host:port (host normalized, port already
// mapped from 80 to 443 where that applies). Every entry point calls it
// before anything is dialed: it checks the target's form, refuses the
// proxy's own listeners (a loop), matches the routes in order for the
// caller, applies the CONNECT policy, and checks that the identity the
// route would present is valid now. It records the target and the route
// in ex for the access log and metrics.
func (p *Proxy) decide(ex *exchange, e entry, host, port string) (*Route, *proxyError) {
	p.hook("decide")
	if host == "" || !validPort(port) {
		return nil, badRequest("target %q is not host:port", net.JoinHostPort(host, port))
	}
	hostport := net.JoinHostPort(host, port)
	ex.host = hostport
	if p.isSelf(host, port, hostport) {
		return nil, &proxyError{status: http.StatusLoopDetected, code: CodeBadRequest,
			msg: fmt.Sprintf("request for %s loops back to mtlsproxy itself; send it to the upstream's name instead", hostport)}
	}
	var route *Route
	if e == entryGateway {
		if p.upRoute.allows(ex.client) {
			route = p.upRoute
		}
	} else {
		route = p.match(host, port, ex.client)
	}
	if route == nil {
		if ex.client != "" && p.matchAnyCaller(host, port, e == entryGateway) {
			msg := fmt.Sprintf("host %s is not allowed for caller %q: its routes are for other callers", hostport, ex.client)
			if e == entryConnect {
				msg = "CONNECT " + hostport + " refused: " + msg
			}
			return nil, &proxyError{status: http.StatusForbidden, code: CodeHostNotAllowed, msg: msg}
		}
		if e == entryConnect {
			return nil, &proxyError{status: http.StatusForbidden, code: CodeHostNotAllowed,
				msg: fmt.Sprintf("CONNECT %s refused: no route allows this host", hostport)}
		}
		return nil, &proxyError{status: http.StatusForbidden, code: CodeHostNotAllowed,
			msg: fmt.Sprintf("host %s is not allowed: no route matches it (to send the client certificate there, add --allow %s, or a route for it in the config file)", hostport, host)}
	}
	ex.route = route
	if e == entryConnect {
		switch {
		case route.connect == ConnectTunnel:
			// The client's own TLS passes through: no identity is
			// presented, so its validity does not matter.
			return route, nil
		case route.connect == ConnectMitm && p.mitm == nil:
			return nil, &proxyError{status: http.StatusForbidden, code: CodeHostNotAllowed,
				msg: fmt.Sprintf("CONNECT %s refused: the route intercepts tunnels, but no local CA (mitm_ca) is configured", hostport)}
		case route.connect == ConnectMitm:
			// The requests inside the tunnel are decided one by one,
			// identity included.
			return route, nil
		}
		return nil, &proxyError{status: http.StatusForbidden, code: CodeHostNotAllowed,
			msg: fmt.Sprintf("CONNECT %s refused: mtlsproxy adds the client certificate to plain-HTTP requests only; use http:// URLs (http://%s/...) through HTTP_PROXY instead of https:// through HTTPS_PROXY",
				hostport, stripDefaultPort(hostport, "443"))}
	}
	if id := route.identity; id != nil && id.Expired(ex.start) {
		leaf := id.Leaf()
		return nil, &proxyError{status: http.StatusServiceUnavailable, code: CodeIdentityUnavailable,
			msg: fmt.Sprintf("identity %q is outside its validity period (%s to %s): renew the client certificate",
				id.Name(), leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	return route, nil
}

// match finds the first route for host:port that the caller may use.
func (p *Proxy) match(host, port, client string) *Route {
	for _, rt := range p.routes {
		if rt.match(host, port) && rt.allows(client) {
			return rt
		}
	}
	return nil
}

// matchAnyCaller reports whether some route would carry host:port for
// another caller.
func (p *Proxy) matchAnyCaller(host, port string, gateway bool) bool {
	if gateway {
		return p.upRoute != nil
	}
	for _, rt := range p.routes {
		if rt.match(host, port) {
			return true
		}
	}
	return false
}

// isSelf reports whether host:port (hostport, already joined) is one of
// the proxy's own listeners.
func (p *Proxy) isSelf(host, port, hostport string) bool {
	if len(p.self) == 0 {
		return false
	}
	if p.self[hostport] {
		return true
	}
	// A listener on a loopback or unspecified address is also reached
	// through localhost and the other loopback names.
	if host == "localhost" || host == "::1" || strings.HasPrefix(host, "127.") {
		for a := range p.self {
			h, pt, _ := net.SplitHostPort(a)
			if pt == port && (h == "127.0.0.1" || h == "::1" || h == "0.0.0.0" || h == "::" || h == "localhost") {
				return true
			}
		}
	}
	return false
}
