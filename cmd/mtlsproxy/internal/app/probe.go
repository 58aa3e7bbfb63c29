package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

// ProbeResult is what check --dial found at one upstream.
type ProbeResult struct {
	// Route names the route or gateway; HostPort is the upstream.
	Route, HostPort string
	// Dialed is the address connected to, if the dial succeeded.
	Dialed string
	// Version and Cipher are the TLS version and cipher suite; Protocol
	// is what ALPN chose (h2 or http/1.1).
	Version, Cipher, Protocol string
	// The server certificate's subject, names (SANs) and expiry.
	ServerSubject, ServerNames string
	ServerNotAfter             time.Time
	// ClientSubject is the identity the route presents when asked, or
	// "(none)"; ClientNotAfter its expiry.
	ClientSubject  string
	ClientNotAfter time.Time
	// Status is the HEAD answer's status code.
	Status int
	// Err is "CODE: message" if the upstream failed, else "".
	Err string
}

// probeTarget is one upstream that check --dial asks.
type probeTarget struct {
	route    string
	hostport string
	rp       *routePlan
}

func probeTargets(pl *Plan) (targets []probeTarget, skipped []string) {
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
			targets = append(targets, probeTarget{rp.opts.Name, net.JoinHostPort(host, port), rp})
		}
	}
	for _, g := range pl.gateways {
		host, port, _ := g.route.opts.Hosts[0].Exact()
		targets = append(targets, probeTarget{g.name, net.JoinHostPort(host, port), g.route})
	}
	return targets, skipped
}

// Probe sends one HEAD / to every upstream of pl that names a concrete
// host (wildcards are skipped, and listed) and to every gateway upstream,
// each within timeout. It goes through a route built as the proxy builds
// it, over the route's own dial, TLS configuration and identity, in
// whichever protocol the upstream chose by ALPN: what the probe finds is
// what proxied requests would find. With TLS 1.3 the server judges the
// client certificate after the handshake, so only the answer to a request
// tells whether it was accepted.
func Probe(ctx context.Context, pl *Plan, timeout time.Duration) (results []ProbeResult, skipped []string) {
	targets, skipped := probeTargets(pl)
	for _, t := range targets {
		results = append(results, probe(ctx, pl, t, timeout))
	}
	return results, skipped
}

func probe(ctx context.Context, pl *Plan, t probeTarget, timeout time.Duration) ProbeResult {
	r := ProbeResult{Route: t.route, HostPort: t.hostport, ClientSubject: "(none)"}
	if id := t.rp.opts.Identity; id != nil {
		r.ClientSubject, r.ClientNotAfter = id.Leaf().Subject.String(), id.Leaf().NotAfter
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	opts := t.rp.opts
	opts.Timeouts = pl.proxyTimeouts()
	route := proxy.NewRoute(opts)
	defer route.CloseIdleConnections()
	var state *tls.ConnectionState
	trace := &httptrace.ClientTrace{
		ConnectDone: func(_, addr string, err error) {
			if err == nil {
				r.Dialed = addr
			}
		},
		GotConn: func(info httptrace.GotConnInfo) {
			if tc, ok := info.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
				cs := tc.ConnectionState()
				state = &cs
			}
		},
	}
	var asked atomic.Bool
	ctx = tlsconf.WithCertificateRequested(ctx, func() { asked.Store(true) })
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodHead, "https://"+hostHeader(t.hostport)+"/", nil)
	if err != nil {
		r.Err = "bad-request: " + err.Error()
		return r
	}
	req.Header.Set("User-Agent", "mtlsproxy-check")
	resp, err := route.RoundTrip(req)
	if resp != nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		r.Status = resp.StatusCode
		if resp.TLS != nil {
			state = resp.TLS
		}
	}
	if state != nil && len(state.PeerCertificates) > 0 {
		leaf := state.PeerCertificates[0]
		r.Version, r.Cipher, r.Protocol = tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite), state.NegotiatedProtocol
		r.ServerSubject, r.ServerNames, r.ServerNotAfter = leaf.Subject.String(), strings.Join(tlsconf.PresentedSANs(leaf), " "), leaf.NotAfter
	}
	if state != nil && t.rp.opts.Identity != nil && !asked.Load() {
		r.ClientSubject, r.ClientNotAfter = "(not asked for)", time.Time{}
	}
	if state == nil {
		// Nothing was presented: the handshake did not get that far.
		r.ClientSubject, r.ClientNotAfter = "-", time.Time{}
	}
	if err != nil {
		_, code, msg := proxy.ClassifyUpstreamError(err, t.hostport)
		r.Err = code + ": " + strings.TrimPrefix(msg, "upstream "+t.hostport+": ")
	}
	return r
}

// hostHeader is hostport as a URL's host: without the default port.
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
