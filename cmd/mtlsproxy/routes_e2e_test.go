package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/cfgtest"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// cfgtRunning is "mtlsproxy run" started in-process with the address of
// every listener, by name: "listen" for the main one, the gateway's name
// for each gateway.
type cfgtRunning = inProcessRun

// cfgtStartRun runs "mtlsproxy run args..." until the test ends and waits
// for n listeners. Unlike startRun it records every listener, so gateways
// can be reached too.
func cfgtStartRun(t *testing.T, n int, args ...string) *cfgtRunning {
	t.Helper()
	return startRunUntil(t, atLeast(n), args...)
}

// cfgtResponse is what a client got.
type cfgtResponse struct {
	status int
	code   string // X-Mtlsproxy-Error
	body   string
}

func cfgtDo(t *testing.T, client *http.Client, target string) cfgtResponse {
	t.Helper()
	resp, err := client.Get(target)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", target, err)
	}
	return cfgtResponse{resp.StatusCode, resp.Header.Get(proxy.ErrorHeader), string(body)}
}

// cfgtConnect sends a CONNECT for target through the proxy at addr and
// returns the connection, the response, and a reader positioned after it.
func cfgtConnect(t *testing.T, addr, target string) (net.Conn, *bufio.Reader, cfgtResponse) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	r := cfgtResponse{status: resp.StatusCode, code: resp.Header.Get(proxy.ErrorHeader)}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		r.body = string(body)
		resp.Body.Close()
	}
	return conn, br, r
}

// TestRoutesE2E runs the proxy from a config file with many routes and a
// gateway, against in-process upstreams that report which client
// certificate they saw.
func TestRoutesE2E(t *testing.T) {
	f := cfgtest.New(t)
	// One server certificate for every upstream: the names the routes
	// verify, and a SPIFFE ID for verify.san.
	spiffe, err := url.Parse("spiffe://corp/api")
	if err != nil {
		t.Fatal(err)
	}
	serverLeaf := pkitest.Issue(t, f.CA, pki.LeafOptions{CommonName: "upstream", Server: true,
		DNSNames: []string{"api.internal", "a.internal", "b.internal", "tunnel.internal", "reject.internal"},
		URIs:     []*url.URL{spiffe}})
	serverTLS := func(clientAuth tls.ClientAuthType, maxVersion uint16) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{serverLeaf.TLSCertificate()}, ClientCAs: f.CA.Pool(),
			ClientAuth: clientAuth, MinVersion: tls.VersionTLS12, MaxVersion: maxVersion}
	}
	mtls := cfgtUpstream(t, serverTLS(tls.RequireAndVerifyClientCert, 0))
	tls12 := cfgtUpstream(t, serverTLS(tls.RequireAndVerifyClientCert, tls.VersionTLS12))
	// Asks for a certificate without requiring one, so that it would see
	// one if the proxy sent it.
	open := cfgtUpstream(t, serverTLS(tls.RequestClientCert, 0))

	goodPin := tlsconf.PinOf(serverLeaf.Cert).String()
	wrongPin := tlsconf.PinOf(f.Client.Cert).String()
	config := strings.NewReplacer("$MTLS", mtls.Listener.Addr().String(), "$TLS12", tls12.Listener.Addr().String(),
		"$OPEN", open.Listener.Addr().String(), "$GOODPIN", goodPin, "$WRONGPIN", wrongPin).Replace(`
listen: 127.0.0.1:0
log: {level: debug}
identities:
  app: {cert: $CERT, key: $KEY}
  other: {cert: $OTHERCERT, key: $OTHERKEY}
trust:
  internal: {ca_files: [$CA]}
routes:
  - {host: a.internal, identity: app, trust: internal, address: $MTLS}
  - {host: b.internal, identity: other, trust: internal, address: $MTLS}
  - {host: api.internal, identity: app, trust: internal, address: $MTLS}
  - name: wild
    host: "*.wild.test"
    identity: app
    trust: internal
    server_name: api.internal
    address: $MTLS
  - name: san-wrong
    host: san-wrong.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: $MTLS
    verify: {san: [spiffe://corp/other]}
  - name: san-right
    host: san-right.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: $MTLS
    verify: {san: [spiffe://corp/api]}
  - name: pin-wrong
    host: pin-wrong.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: $MTLS
    verify: {pins: [$WRONGPIN]}
  - name: pin-right
    host: pin-right.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: $MTLS
    verify: {pins: [$WRONGPIN, $GOODPIN]}
  - {host: tls13.internal, identity: app, trust: internal, server_name: api.internal, address: $TLS12, min_tls: "1.3"}
  - {host: tls12.internal, identity: app, trust: internal, server_name: api.internal, address: $TLS12, min_tls: "1.2"}
  - {host: anonymous.internal, identity: none, trust: internal, server_name: api.internal, address: $OPEN}
  - {host: tunnel.internal, identity: app, trust: internal, address: $OPEN, connect: tunnel}
  - {host: reject.internal, identity: app, trust: internal, address: $OPEN}
gateways:
  - name: gw
    listen: 127.0.0.1:0
    upstream: https://api.internal/base
    identity: other
    trust: internal
    address: $MTLS
`)
	run := cfgtStartRun(t, 2, "--config", f.Write(t, config))
	proxyURL := &url.URL{Scheme: "http", Host: run.addrs["listen"]}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL)}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	app, other := "subject="+f.ClientSubject+" ", "subject="+f.OtherSubject+" "
	hostNotAllowed := func(host string) string {
		return "mtlsproxy: host " + host + ":443 is not allowed: no route matches it"
	}
	tests := []struct {
		name   string
		target string
		status int
		code   string
		want   []string // substrings of the body
	}{
		// (a) Two routes to one upstream, each with its own identity; the
		// second round goes over pooled connections.
		{"identity a", "http://a.internal/x", 200, "", []string{app, "host=a.internal path=/x"}},
		{"identity b", "http://b.internal/y", 200, "", []string{other, "host=b.internal path=/y"}},
		{"identity a again", "http://a.internal/x", 200, "", []string{app}},
		{"identity b again", "http://b.internal/y", 200, "", []string{other}},
		// (b) A wildcard matches below its suffix, at any depth, and
		// nothing else.
		{"wildcard one label", "http://a.wild.test/", 200, "", []string{app, "host=a.wild.test"}},
		{"wildcard two labels", "http://x.y.wild.test/", 200, "", []string{app, "host=x.y.wild.test"}},
		{"wildcard not a suffix", "http://evilwild.test/", 403, "host-not-allowed", []string{hostNotAllowed("evilwild.test")}},
		{"wildcard not the apex", "http://wild.test/", 403, "host-not-allowed", []string{hostNotAllowed("wild.test")}},
		{"unrouted", "http://elsewhere.example/", 403, "host-not-allowed", []string{hostNotAllowed("elsewhere.example")}},
		// (c) verify.san
		{"SAN mismatch", "http://san-wrong.internal/", 502, "upstream-tls", []string{
			"mtlsproxy: upstream san-wrong.internal:443: TLS handshake failed: server certificate SAN mismatch: want one of [spiffe://corp/other], server presented [DNS:api.internal, DNS:a.internal, DNS:b.internal, DNS:tunnel.internal, DNS:reject.internal, URI:spiffe://corp/api]"}},
		{"SAN match", "http://san-right.internal/", 200, "", []string{app}},
		// (d) verify.pins
		{"pin mismatch", "http://pin-wrong.internal/", 502, "upstream-tls", []string{
			"server certificate pin mismatch: want one of [" + wrongPin + "], server presented [" + goodPin + "]"}},
		{"pin match", "http://pin-right.internal/", 200, "", []string{app}},
		// (e) min_tls against a server that stops at TLS 1.2
		{"min_tls 1.3", "http://tls13.internal/", 502, "upstream-tls", []string{"mtlsproxy: upstream tls13.internal:443: TLS handshake failed: upstream sent alert: protocol version not supported"}},
		{"min_tls 1.2", "http://tls12.internal/", 200, "", []string{app}},
		// (f) identity: none
		{"identity none", "http://anonymous.internal/", 200, "", []string{"subject=none host=anonymous.internal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := cfgtDo(t, client, tt.target)
			if got.status != tt.status || got.code != tt.code {
				t.Errorf("GET %s: %d %q; want %d %q\n%s", tt.target, got.status, got.code, tt.status, tt.code, got.body)
			}
			for _, w := range tt.want {
				if !strings.Contains(got.body, w) {
					t.Errorf("GET %s: body %q; want it to contain %q", tt.target, got.body, w)
				}
			}
		})
	}

	// (g) CONNECT
	t.Run("CONNECT tunnel", func(t *testing.T) {
		conn, br, resp := cfgtConnect(t, run.addrs["listen"], "tunnel.internal:443")
		if resp.status != http.StatusOK {
			t.Fatalf("CONNECT: %d %q %s; want 200", resp.status, resp.code, resp.body)
		}
		if br.Buffered() > 0 {
			t.Fatalf("%d bytes after the CONNECT response, before the client spoke", br.Buffered())
		}
		// The client's own TLS, end to end: it verifies the upstream and
		// presents no certificate, and the proxy adds none.
		tc := tls.Client(conn, &tls.Config{ServerName: "tunnel.internal", RootCAs: f.CA.Pool()})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS through the tunnel: %v", err)
		}
		if got := tc.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "upstream" {
			t.Errorf("TLS through the tunnel reached %q; want the upstream", got)
		}
		fmt.Fprintf(tc, "GET /tunnelled HTTP/1.1\r\nHost: tunnel.internal\r\nConnection: close\r\n\r\n")
		r, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatalf("response through the tunnel: %v", err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if want := "subject=none host=tunnel.internal path=/tunnelled"; r.StatusCode != 200 || string(body) != want {
			t.Errorf("through the tunnel: %d %q; want 200 %q", r.StatusCode, body, want)
		}
	})
	connectRefused := []struct {
		name, target, want string
	}{
		{"CONNECT reject route", "reject.internal:443", "mtlsproxy: CONNECT reject.internal:443 refused: mtlsproxy adds the client certificate to plain-HTTP requests only; use http:// URLs (http://reject.internal/...)"},
		{"CONNECT unrouted", "elsewhere.example:443", "mtlsproxy: CONNECT elsewhere.example:443 refused: no route allows this host"},
	}
	for _, tt := range connectRefused {
		t.Run(tt.name, func(t *testing.T) {
			_, _, resp := cfgtConnect(t, run.addrs["listen"], tt.target)
			if resp.status != http.StatusForbidden || resp.code != "host-not-allowed" {
				t.Errorf("CONNECT %s: %d %q; want 403 host-not-allowed\n%s", tt.target, resp.status, resp.code, resp.body)
			}
			if !strings.Contains(resp.body, tt.want) {
				t.Errorf("CONNECT %s: body %q; want it to contain %q", tt.target, resp.body, tt.want)
			}
		})
	}

	// (h) A gateway listener has its own identity; the main listener's
	// route to the same upstream keeps its own.
	t.Run("gateway", func(t *testing.T) {
		gw, ok := run.addrs["gw"]
		if !ok {
			t.Fatalf("no listener named gw in %v", run.addrs)
		}
		plain := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}
		defer plain.CloseIdleConnections()
		got := cfgtDo(t, plain, "http://"+gw+"/v1/items")
		if want := other + "host=api.internal path=/base/v1/items"; got.status != 200 || got.body != want {
			t.Errorf("gateway: %d %q; want 200 %q", got.status, got.body, want)
		}
		got = cfgtDo(t, client, "http://api.internal/v1/items")
		if want := app + "host=api.internal path=/v1/items"; got.status != 200 || got.body != want {
			t.Errorf("main listener: %d %q; want 200 %q", got.status, got.body, want)
		}
		// The gateway serves its upstream only: an absolute URL for
		// another host is refused, not forwarded with its identity.
		viaGW := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: gw})}, Timeout: 10 * time.Second}
		defer viaGW.CloseIdleConnections()
		got = cfgtDo(t, viaGW, "http://a.internal/")
		if got.status != http.StatusForbidden || got.code != "host-not-allowed" {
			t.Errorf("absolute URL through the gateway: %d %q %q; want 403 host-not-allowed", got.status, got.code, got.body)
		}
	})
}
