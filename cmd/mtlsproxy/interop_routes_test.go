package main

// Interop tests for the config file (run --config, check --config --dial):
// several identities, routes, a CONNECT tunnel and a gateway listener, all
// against one real nginx with "ssl_verify_client on", with curl as the
// client. Like TestInterop, a missing peer skips the test locally and fails
// it with MTLSPROXY_REQUIRE_INTEROP=1.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// rtiServerNames are the DNS names in the nginx certificate: every host the
// tests send to, including the ones the proxy must refuse, so that a proxy
// that dialed them anyway would get a 200 instead of a TLS error.
var rtiServerNames = []string{
	"api.internal", // waitTLS uses it
	"one.internal", "two.internal",
	"a.wild.test", "evilwild.test", "wild.test", "unrouted.internal",
	"san-bad.internal", "san-good.internal", "nginx.rti.test",
	"tunnel.internal", "reject.internal", "gw.internal",
}

const (
	// rtiRightSAN is in the nginx certificate; rtiWrongSAN is not.
	rtiRightSAN = "nginx.rti.test"
	rtiWrongSAN = "billing.rti.test"
	// rtiNginxCN is the nginx certificate's common name.
	rtiNginxCN = "rti-nginx"
)

// rtiCert is a client certificate written to disk.
type rtiCert struct {
	cert, key, subject string
}

func rtiIssueClient(t *testing.T, ca *pki.CA, dir, cn string) rtiCert {
	t.Helper()
	leaf := pkitest.Issue(t, ca, pki.LeafOptions{CommonName: cn, Client: true})
	c, k, err := leaf.WriteFiles(dir, cn)
	if err != nil {
		t.Fatal(err)
	}
	return rtiCert{c, k, leaf.Cert.Subject.String()}
}

// rtiEnv is what the subtests of TestInteropRoutes share.
type rtiEnv struct {
	pki         *pkitest.Set
	nginx       *nginxProcess
	port        string // nginx's TLS port
	ids         map[string]rtiCert
	curlCert    rtiCert // curl's own certificate, for the tunnel; no proxy identity
	otherCAFile string  // a CA that did not sign the nginx certificate
	serverSubj  string  // the nginx certificate's subject
	proxy       *runningProxy
	gateway     string // the gateway listener's host:port
	dir         string
}

func TestInteropRoutes(t *testing.T) {
	nginxBin := requireBinary(t, "nginx")
	curl := requireBinary(t, "curl")
	t.Parallel()

	env := &rtiEnv{pki: pkitest.New(t), dir: t.TempDir(), ids: map[string]rtiCert{}}
	p := env.pki
	server := pkitest.Issue(t, p.CA, pki.LeafOptions{CommonName: rtiNginxCN, DNSNames: rtiServerNames,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	serverCert, serverKey, err := server.WriteFiles(env.dir, "rti-server")
	if err != nil {
		t.Fatal(err)
	}
	env.serverSubj = server.Cert.Subject.String()
	env.ids["one"] = rtiCert{p.ClientCert, p.ClientKey, p.ClientSubject}
	env.ids["two"] = rtiIssueClient(t, p.CA, env.dir, "rti-client-two")
	env.ids["gw"] = rtiIssueClient(t, p.CA, env.dir, "rti-gateway")
	env.curlCert = rtiIssueClient(t, p.CA, env.dir, "rti-curl-own")
	other, err := pki.NewCA("rti other CA")
	if err != nil {
		t.Fatal(err)
	}
	if env.otherCAFile, err = other.WriteCert(env.dir, "other-ca"); err != nil {
		t.Fatal(err)
	}
	subjects := map[string]bool{env.curlCert.subject: true}
	for _, c := range env.ids {
		subjects[c.subject] = true
	}
	if len(subjects) != 4 {
		t.Fatalf("client subjects are not distinct: %v", subjects)
	}

	env.port = freePort(t)
	env.nginx = startNginx(t, nginxBin, nginxSite{Port: env.port, Cert: serverCert, Key: serverKey,
		ClientCA: p.CAFile, ServerCAs: p.CA.Pool(),
		Content: "nginx main: dn=$ssl_client_s_dn uri=$request_uri\n"})

	env.gateway = "127.0.0.1:" + freePort(t)
	runConfig := env.writeConfig(t, "run.yaml", p.CAFile, env.runRoutes(), env.gatewayYAML())
	env.proxy = startRun(t, "--config", runConfig)

	for _, tc := range []struct {
		name string
		run  func(*testing.T, *rtiEnv, string)
	}{
		{"TwoIdentities", rtiTwoIdentities},
		{"Wildcard", rtiWildcard},
		{"VerifySAN", rtiVerifySAN},
		{"Tunnel", rtiTunnel},
		{"ConnectRejected", rtiConnectRejected},
		{"Gateway", rtiGateway},
		{"CheckDial", rtiCheckDial},
		{"StillServes", rtiStillServes},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, env, curl) })
	}
	if t.Failed() {
		b, _ := os.ReadFile(runConfig)
		t.Logf("config:\n%s\nproxy log:\n%s\nnginx:\n%s", b, env.proxy.Stderr, env.nginx.log())
	}
}

// writeConfig writes a config file with the three identities, one trust
// bundle "test" holding caFile, and the given routes and gateways sections.
func (env *rtiEnv) writeConfig(t *testing.T, name, caFile, routes, gateways string) string {
	t.Helper()
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "listen: 127.0.0.1:0\nlog: {level: info, format: json}\n")
	// two.internal is mapped with resolve: rather than address:. The other
	// entries make refused hosts reachable: only the routing keeps the
	// identity away from them.
	b.WriteString("resolve:\n")
	for _, h := range []string{"two.internal", "evilwild.test", "wild.test", "unrouted.internal"} {
		fmt.Fprintf(&b, "  - %s\n", q(h+":"+env.port+":127.0.0.1"))
	}
	b.WriteString("identities:\n")
	for _, id := range []string{"one", "two", "gw"} {
		fmt.Fprintf(&b, "  %s: {cert: %s, key: %s}\n", id, q(env.ids[id].cert), q(env.ids[id].key))
	}
	fmt.Fprintf(&b, "trust:\n  test: {ca_files: [%s]}\n", q(caFile))
	b.WriteString(routes)
	b.WriteString(gateways)
	file := filepath.Join(env.dir, name)
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// route renders one route; extra lines are appended as they are.
func (env *rtiEnv) route(name, host, identity string, extra ...string) string {
	s := fmt.Sprintf("  - name: %s\n    host: %s\n    identity: %s\n    trust: test\n",
		name, strconv.Quote(host), identity)
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

func (env *rtiEnv) address() string { return "address: 127.0.0.1:" + env.port }

// runRoutes are the routes of the running proxy.
func (env *rtiEnv) runRoutes() string {
	return "routes:\n" +
		// one.internal has no port: http://one.internal/ (port 443) is sent
		// to nginx by address: alone.
		env.route("one", "one.internal", "one", env.address()) +
		env.route("two", "two.internal:"+env.port, "two") +
		env.route("wild", "*.wild.test", "one", env.address()) +
		env.route("san-bad", "san-bad.internal", "one", env.address(), "verify: {san: ["+rtiWrongSAN+"]}") +
		env.route("san-good", "san-good.internal", "one", env.address(), "verify: {san: ["+rtiRightSAN+"]}") +
		// The tunnel route has an identity: it must not be added to the
		// client's own TLS.
		env.route("tunnel", "tunnel.internal", "one", env.address(), "connect: tunnel") +
		env.route("reject", "reject.internal", "one", env.address(), "connect: reject")
}

func (env *rtiEnv) gatewayYAML() string {
	return fmt.Sprintf("gateways:\n  - name: gw\n    listen: %s\n    upstream: https://gw.internal:%s\n    identity: gw\n    trust: test\n    %s\n",
		env.gateway, env.port, env.address())
}

// viaProxy runs curl with the forward proxy.
func (env *rtiEnv) viaProxy(t *testing.T, curl string, args ...string) httpResult {
	t.Helper()
	return runCurl(t, curl, append([]string{"-x", "http://" + env.proxy.Addr}, args...)...)
}

// nginxDNs returns the client DN of every nginx access-log line for uri.
func (env *rtiEnv) nginxDNs(uri string) []string {
	b, _ := os.ReadFile(filepath.Join(env.nginx.dir, "access.log"))
	var dns []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != uri {
			continue
		}
		i, j := strings.IndexByte(l, '"'), strings.LastIndexByte(l, '"')
		if i >= 0 && j > i {
			dns = append(dns, l[i+1:j])
		} else {
			dns = append(dns, "?"+l)
		}
	}
	return dns
}

// checkNginxSaw checks a 200 from nginx for uri and that nginx verified the
// client certificate with subject dn, in its response and its access log.
func (env *rtiEnv) checkNginxSaw(t *testing.T, r httpResult, uri, dn string) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: status %d, want 200; headers %v; body %q; curl: %v %s", uri, r.Status, r.Header, r.Body, r.Err, r.Stderr)
	}
	if got := r.Header.Get("X-Client-DN"); got != dn {
		t.Errorf("%s: nginx saw client DN %q; want %q", uri, got, dn)
	}
	if want := "nginx main: dn=" + dn + " uri=" + uri + "\n"; r.Body != want {
		t.Errorf("%s: body %q; want %q", uri, r.Body, want)
	}
	var dns []string
	eventually(func() bool { dns = env.nginxDNs(uri); return len(dns) > 0 })
	if len(dns) != 1 || dns[0] != dn {
		t.Errorf("nginx access log for %s: client DNs %q; want exactly [%q]", uri, dns, dn)
	}
}

// checkNotReached checks that nginx logged nothing for uri.
func (env *rtiEnv) checkNotReached(t *testing.T, uri string) {
	t.Helper()
	if got := env.nginx.requests(uri); got != 0 {
		t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
	}
}

// rtiTwoIdentities: two routes with different identities to the same
// nginx, one mapped with address:, one with resolve:.
func rtiTwoIdentities(t *testing.T, env *rtiEnv, curl string) {
	uri1, uri2 := "/whoami/rti-one", "/whoami/rti-two"
	r1 := env.viaProxy(t, curl, "http://one.internal"+uri1)
	env.checkNginxSaw(t, r1, uri1, env.ids["one"].subject)
	r2 := env.viaProxy(t, curl, "http://two.internal:"+env.port+uri2)
	env.checkNginxSaw(t, r2, uri2, env.ids["two"].subject)
	if a, b := r1.Header.Get("X-Client-DN"), r2.Header.Get("X-Client-DN"); a == b {
		t.Errorf("both routes presented %q; want two different identities", a)
	}
	checkAccess(t, env.proxy, uri1, map[string]any{"route": "one", "identity": "one", "host": "one.internal:443",
		"status": 200.0, "tls_version": "TLS 1.3", "error": ""})
	checkAccess(t, env.proxy, uri2, map[string]any{"route": "two", "identity": "two", "host": "two.internal:" + env.port,
		"status": 200.0, "error": ""})
}

// rtiWildcard: *.wild.test matches a.wild.test, but neither evilwild.test
// nor wild.test itself, and a host no route names is refused too; the
// refused hosts resolve to nginx, which must log nothing for them.
func rtiWildcard(t *testing.T, env *rtiEnv, curl string) {
	uri := "/whoami/rti-wild"
	r := env.viaProxy(t, curl, "http://a.wild.test:"+env.port+uri)
	env.checkNginxSaw(t, r, uri, env.ids["one"].subject)
	checkAccess(t, env.proxy, uri, map[string]any{"route": "wild", "host": "a.wild.test:" + env.port, "status": 200.0})

	for _, tc := range []struct{ host, uri string }{
		{"evilwild.test", "/whoami/rti-evilwild"},
		{"wild.test", "/whoami/rti-wild-apex"},
		{"unrouted.internal", "/whoami/rti-unrouted"},
	} {
		r := env.viaProxy(t, curl, "http://"+tc.host+":"+env.port+tc.uri)
		checkProxyError(t, r, http.StatusForbidden, "host-not-allowed")
		if !strings.Contains(r.Body, tc.host+":"+env.port) {
			t.Errorf("%s: body %q does not name the host", tc.host, r.Body)
		}
		checkAccess(t, env.proxy, tc.uri, map[string]any{"status": 403.0, "error": "host-not-allowed", "route": "", "tls_version": ""})
		env.checkNotReached(t, tc.uri)
	}
}

// rtiVerifySAN: a route whose verify.san is not in the nginx certificate
// gets 502 upstream-tls naming the expected value; the right SAN passes.
func rtiVerifySAN(t *testing.T, env *rtiEnv, curl string) {
	uri := "/whoami/rti-san-bad"
	r := env.viaProxy(t, curl, "http://san-bad.internal"+uri)
	checkProxyError(t, r, http.StatusBadGateway, "upstream-tls")
	for _, want := range []string{"SAN mismatch", rtiWrongSAN, "DNS:" + rtiRightSAN} {
		if !strings.Contains(r.Body, want) {
			t.Errorf("body %q does not contain %q", r.Body, want)
		}
	}
	checkAccess(t, env.proxy, uri, map[string]any{"route": "san-bad", "status": 502.0, "error": "upstream-tls"})
	env.checkNotReached(t, uri)

	uri = "/whoami/rti-san-good"
	r = env.viaProxy(t, curl, "http://san-good.internal"+uri)
	env.checkNginxSaw(t, r, uri, env.ids["one"].subject)
	checkAccess(t, env.proxy, uri, map[string]any{"route": "san-good", "status": 200.0, "error": ""})
}

// rtiTunnel: curl sends CONNECT tunnel.internal:PORT and does its own TLS
// with its own certificate through the tunnel; the proxy dials the route's
// address and adds nothing.
func rtiTunnel(t *testing.T, env *rtiEnv, curl string) {
	uri := "/whoami/rti-tunnel"
	r := env.viaProxy(t, curl, "-v", "--cacert", env.pki.CAFile,
		"--cert", env.curlCert.cert, "--key", env.curlCert.key, "https://tunnel.internal:"+env.port+uri)
	if r.Err != nil {
		t.Fatalf("curl through the tunnel: %v\n%s", r.Err, r.Stderr)
	}
	// curl left the name to the proxy: tunnel.internal is in no resolver.
	if want := "CONNECT tunnel.internal:" + env.port + " HTTP/1.1"; !strings.Contains(r.Stderr, want) {
		t.Errorf("curl -v does not show %q:\n%s", want, r.Stderr)
	}
	env.checkNginxSaw(t, r, uri, env.curlCert.subject)
	for name, id := range env.ids {
		if r.Header.Get("X-Client-DN") == id.subject {
			t.Errorf("nginx saw the proxy identity %s through a tunnel", name)
		}
	}
	if r.Header.Get("X-Mtlsproxy-Error") != "" {
		t.Errorf("X-Mtlsproxy-Error %q on a tunnelled success", r.Header.Get("X-Mtlsproxy-Error"))
	}
	var lines []map[string]any
	eventually(func() bool { lines = rtiConnectLog(t, env.proxy, "tunnel.internal:"+env.port); return len(lines) > 0 })
	if len(lines) != 1 {
		t.Fatalf("%d access-log lines for CONNECT tunnel.internal:%s; want 1", len(lines), env.port)
	}
	for k, w := range map[string]any{"route": "tunnel", "status": 200.0, "error": ""} {
		if got := lines[0][k]; got != w {
			t.Errorf("tunnel access log: %s = %v; want %v", k, got, w)
		}
	}
	if n, _ := lines[0]["bytes_out"].(float64); n <= 0 {
		t.Errorf("tunnel access log: bytes_out = %v; want the bytes nginx sent", lines[0]["bytes_out"])
	}
}

// rtiConnectLog returns the access-log lines of CONNECTs to hostport.
func rtiConnectLog(t *testing.T, rp *runningProxy, hostport string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, m := range accessLog(t, rp, "") {
		if m["method"] == "CONNECT" && m["host"] == hostport {
			out = append(out, m)
		}
	}
	return out
}

// rtiConnectRejected: CONNECT to a connect: reject route, and to a host no
// route names, gets a real 403.
func rtiConnectRejected(t *testing.T, env *rtiEnv, curl string) {
	for _, tc := range []struct{ host, uri string }{
		{"reject.internal", "/whoami/rti-connect-reject"},
		{"unrouted.internal", "/whoami/rti-connect-unrouted"},
	} {
		r := env.viaProxy(t, curl, "-v", "--cacert", env.pki.CAFile,
			"--cert", env.curlCert.cert, "--key", env.curlCert.key, "https://"+tc.host+":"+env.port+tc.uri)
		if r.Err == nil {
			t.Fatalf("CONNECT %s succeeded; want it refused\n%s", tc.host, r.Stderr)
		}
		if !strings.Contains(r.Stderr, "CONNECT tunnel failed, response 403") {
			t.Errorf("%s: curl stderr does not say %q:\n%s", tc.host, "CONNECT tunnel failed, response 403", r.Stderr)
		}
		if !verboseHasHeader(r.Stderr, "X-Mtlsproxy-Error: host-not-allowed") {
			t.Errorf("%s: curl -v shows no X-Mtlsproxy-Error: host-not-allowed:\n%s", tc.host, r.Stderr)
		}
		if r.Status != http.StatusForbidden {
			t.Errorf("%s: CONNECT status %d; want 403", tc.host, r.Status)
		}
		env.checkNotReached(t, tc.uri)
		var lines []map[string]any
		eventually(func() bool { lines = rtiConnectLog(t, env.proxy, tc.host+":"+env.port); return len(lines) > 0 })
		if len(lines) != 1 || lines[0]["status"] != 403.0 || lines[0]["error"] != "host-not-allowed" {
			t.Errorf("%s: CONNECT access log %v; want one line with status 403, error host-not-allowed", tc.host, lines)
		}
	}
}

// rtiGateway: a gateways: listener presents its own identity.
func rtiGateway(t *testing.T, env *rtiEnv, curl string) {
	uri := "/whoami/rti-gateway?x=1"
	r := runCurl(t, curl, "http://"+env.gateway+uri)
	env.checkNginxSaw(t, r, uri, env.ids["gw"].subject)
	checkAccess(t, env.proxy, "/whoami/rti-gateway", map[string]any{"route": "gw", "identity": "gw",
		"host": "gw.internal:" + env.port, "status": 200.0, "error": ""})
}

// rtiCheckDial: check --config --dial handshakes with every concrete-host
// route and gateway, and fails naming the certificate problem when the
// trust bundle is another CA.
func rtiCheckDial(t *testing.T, env *rtiEnv, _ string) {
	routes := "routes:\n" +
		env.route("one", "one.internal", "one", env.address()) +
		env.route("two", "two.internal:"+env.port, "two") +
		env.route("wild", "*.wild.test", "one", env.address()) +
		env.route("san-good", "san-good.internal", "one", env.address(), "verify: {san: ["+rtiRightSAN+"]}")
	// The gateway listen address is never opened by check.
	gateways := env.gatewayYAML()
	rows := map[string]string{ // route -> client subject presented
		"one": env.ids["one"].subject, "two": env.ids["two"].subject,
		"san-good": env.ids["one"].subject, "gw": env.ids["gw"].subject,
	}

	good := env.writeConfig(t, "check-good.yaml", env.pki.CAFile, routes, gateways)
	stdout, stderr, err := runOnce(nil, "check", "--config", good, "--dial")
	if err != nil {
		t.Fatalf("check --dial on a good config: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, want := range []string{"TLS 1.3", env.serverSubj, "ok", "all 4 upstreams accepted the handshake", "skipped wild"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check --dial output does not contain %q:\n%s", want, stdout)
		}
	}
	for route, subj := range rows {
		row := rtiRow(stdout, route)
		if row == "" {
			t.Errorf("no row for route %s:\n%s", route, stdout)
			continue
		}
		for _, want := range []string{"127.0.0.1:" + env.port, "TLS 1.3", env.serverSubj, subj, "ok (HEAD / answered 200)"} {
			if !strings.Contains(row, want) {
				t.Errorf("row %q does not contain %q", row, want)
			}
		}
	}
	if row := rtiRow(stdout, "one"); row != "" && !strings.Contains(row, "one.internal:443") {
		t.Errorf("row %q: want upstream one.internal:443 (no port in the route)", row)
	}

	bad := env.writeConfig(t, "check-other-ca.yaml", env.otherCAFile, routes, gateways)
	stdout, stderr, err = runOnce(nil, "check", "--config", bad, "--dial")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("check --dial with the wrong CA: error %#v (%v); want *exitError with code 1\nstdout:\n%s\nstderr:\n%s", err, err, stdout, stderr)
	}
	if !strings.Contains(err.Error(), "4 of 4 upstreams failed") {
		t.Errorf("error %q; want it to count 4 of 4 failed upstreams", err)
	}
	for route := range rows {
		row := rtiRow(stdout, route)
		if !strings.Contains(row, "FAIL: upstream-tls: TLS handshake failed: certificate signed by unknown authority") {
			t.Errorf("route %s: row %q does not report the unknown authority\n%s", route, row, stdout)
		}
	}
}

// rtiRow finds the table row of route in check --dial output.
func rtiRow(out, route string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == route {
			return l
		}
	}
	return ""
}

// rtiStillServes: after everything above, both listeners still answer
// (with Go's client), and nothing panicked.
func rtiStillServes(t *testing.T, env *rtiEnv, _ string) {
	proxyURL, _ := url.Parse("http://" + env.proxy.Addr)
	for _, tc := range []struct {
		client *http.Client
		target string
		uri    string
		dn     string
	}{
		{&http.Client{Timeout: peerTimeout, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}},
			"http://two.internal:" + env.port + "/whoami/rti-final-two", "/whoami/rti-final-two", env.ids["two"].subject},
		{&http.Client{Timeout: peerTimeout, Transport: &http.Transport{Proxy: nil}},
			"http://" + env.gateway + "/whoami/rti-final-gw", "/whoami/rti-final-gw", env.ids["gw"].subject},
	} {
		resp, err := tc.client.Get(tc.target)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.target, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		tc.client.CloseIdleConnections()
		if err != nil {
			t.Fatalf("GET %s: reading body: %v", tc.target, err)
		}
		env.checkNginxSaw(t, httpResult{Status: resp.StatusCode, Header: resp.Header, Body: string(body)}, tc.uri, tc.dn)
	}
	for _, uri := range []string{"/whoami/rti-evilwild", "/whoami/rti-wild-apex", "/whoami/rti-unrouted",
		"/whoami/rti-san-bad", "/whoami/rti-connect-reject", "/whoami/rti-connect-unrouted"} {
		env.checkNotReached(t, uri)
	}
	if s := env.proxy.Stderr.String(); strings.Contains(s, "panic") {
		t.Errorf("proxy log mentions a panic:\n%s", s)
	}
}
