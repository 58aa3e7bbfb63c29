package proxy

import (
	"crypto/tls"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// TestRouteServerChecks runs a route's extra server checks (VerifySAN,
// Pins, MinVersion) end to end: a failed check is a 502 upstream-tls that
// names what was wanted and what was presented, and the upstream handler is
// never reached.
func TestRouteServerChecks(t *testing.T) {
	set := pkitest.New(t)
	spiffe, _ := url.Parse("spiffe://corp/api")
	leaf := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "api.internal", Server: true,
		DNSNames: []string{"api.internal"}, URIs: []*url.URL{spiffe}})
	serverTLS := func(maxVersion uint16) *tls.Config {
		cfg := set.ServerTLS()
		cfg.Certificates = []tls.Certificate{leaf.TLSCertificate()}
		cfg.MaxVersion = maxVersion
		return cfg
	}
	leafPin := tlsconf.PinOf(leaf.Cert)
	caPin := tlsconf.PinOf(set.CA.Cert)

	tests := []struct {
		name       string
		serverMax  uint16
		route      func(*RouteOptions)
		wantStatus int
		code       string
		contains   []string
	}{
		{"SAN match", 0, func(ro *RouteOptions) { ro.VerifySAN = []string{"spiffe://corp/api"} }, 200, "", nil},
		{"SAN mismatch", 0, func(ro *RouteOptions) { ro.VerifySAN = []string{"spiffe://corp/payments", "payments.internal"} },
			502, CodeUpstreamTLS, []string{"SAN mismatch", "spiffe://corp/payments", "payments.internal", "DNS:api.internal", "URI:spiffe://corp/api"}},
		{"pin match", 0, func(ro *RouteOptions) { ro.Pins = []tlsconf.Pin{caPin, leafPin} }, 200, "", nil},
		{"pin mismatch", 0, func(ro *RouteOptions) { ro.Pins = []tlsconf.Pin{caPin} },
			502, CodeUpstreamTLS, []string{"pin mismatch", caPin.String(), leafPin.String()}},
		{"TLS 1.3 required, offered", 0, func(ro *RouteOptions) { ro.MinVersion = tls.VersionTLS13 }, 200, "", nil},
		{"TLS 1.3 required, server caps at 1.2", tls.VersionTLS12, func(ro *RouteOptions) { ro.MinVersion = tls.VersionTLS13 },
			502, CodeUpstreamTLS, []string{"TLS handshake failed", "protocol version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, serverTLS(tt.serverMax), whoami)
			tp := newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
				resolveTo(up.port, "api.internal:"+up.port)(ro, o)
				tt.route(ro)
			})
			resp, body := tp.get(t, "http://api.internal:"+up.port+"/secret")
			if tt.wantStatus == 200 {
				if resp.StatusCode != 200 || !strings.Contains(body, "subject="+set.ClientSubject) {
					t.Fatalf("got %d %q; want 200 from the upstream", resp.StatusCode, body)
				}
				if n := up.requests.Load(); n != 1 {
					t.Errorf("upstream handler ran %d times; want 1", n)
				}
				return
			}
			wantError(t, resp, body, tt.wantStatus, tt.code, "upstream api.internal:"+up.port)
			for _, s := range tt.contains {
				if !strings.Contains(body, s) {
					t.Errorf("body %q does not mention %q", body, s)
				}
			}
			if n := up.requests.Load(); n != 0 {
				t.Errorf("upstream handler ran %d times; want 0", n)
			}
			f := tp.accessLines(t, 1)[0].ContextMap()
			if f["status"] != int64(tt.wantStatus) || f["error"] != tt.code {
				t.Errorf("access log status %v error %v; want %d %s", f["status"], f["error"], tt.wantStatus, tt.code)
			}
		})
	}
}

// TestRouteAddress checks that a route's Address is dialed for every host
// of a wildcard route, while the request keeps its own Host and the TLS
// name comes from ServerName. The .test hosts do not resolve, so reaching
// the upstream at all proves the fixed address was used.
func TestRouteAddress(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"*.x.test"}, func(ro *RouteOptions, _ *Options) {
		ro.Address = "127.0.0.1:" + up.port
		ro.ServerName = "api.internal"
	})
	tests := []struct{ target, wantHost string }{
		{"http://a.x.test/p", "a.x.test"},
		{"http://b.c.x.test:8443/p", "b.c.x.test:8443"},
		{"http://A.X.TEST./p", "a.x.test"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			resp, body := tp.get(t, tt.target)
			if want := "subject=" + set.ClientSubject + " uri=/p"; resp.StatusCode != http.StatusOK || body != want {
				t.Fatalf("got %d %q; want 200 %q", resp.StatusCode, body, want)
			}
			if got := resp.Header.Get("X-Seen-Host"); got != tt.wantHost {
				t.Errorf("upstream saw Host %q; want %q", got, tt.wantHost)
			}
		})
	}
	if got := up.requests.Load(); got != 3 {
		t.Errorf("upstream handler ran %d times; want 3", got)
	}

	// Without the ServerName override the upstream's certificate does not
	// cover the requested name, and verification still refuses it.
	tp2 := newTestProxy(t, set, []string{"*.x.test"}, func(ro *RouteOptions, _ *Options) {
		ro.Address = "127.0.0.1:" + up.port
	})
	resp, body := tp2.get(t, "http://a.x.test/")
	wantError(t, resp, body, http.StatusBadGateway, CodeUpstreamTLS, "server name mismatch")
}

// TestRouteWithoutIdentity checks that a route with no identity sends no
// client certificate, even when the upstream asks for one.
func TestRouteWithoutIdentity(t *testing.T) {
	set := pkitest.New(t)
	srv := set.ServerTLS()
	srv.ClientAuth = tls.VerifyClientCertIfGiven
	up := newUpstream(t, srv, whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		resolveTo(up.port, "api.internal:"+up.port)(ro, o)
		ro.Identity = nil
	})
	resp, body := tp.get(t, "http://api.internal:"+up.port+"/")
	if want := "subject=none uri=/"; resp.StatusCode != http.StatusOK || body != want {
		t.Errorf("got %d %q; want 200 %q", resp.StatusCode, body, want)
	}
	f := tp.accessLines(t, 1)[0].ContextMap()
	if f["identity"] != "" {
		t.Errorf("access log identity = %q; want empty", f["identity"])
	}
}
