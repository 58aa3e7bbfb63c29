package proxy

// The one policy seam (decide.go): every entry point (forward, gateway,
// CONNECT, a request inside an intercepted tunnel) refuses the same
// things with the same status, code and access line.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// seamEnv is a proxy served on a known address (so that it knows itself),
// with a mitm-capable local CA.
type seamEnv struct {
	addr  string
	logs  *observer.ObservedLogs
	roots *x509.CertPool
	p     *Proxy
}

// seamStart serves a Proxy built by build, which is given the address
// the proxy listens on.
func seamStart(t *testing.T, build func(self string) Options) *seamEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	leaves, roots := mitmtCA(t)
	o := build(ln.Addr().String())
	core, logs := observer.New(zap.InfoLevel)
	o.Logger, o.Self, o.Mitm = zap.New(core), []string{ln.Addr().String()}, leaves
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Proxy: p, HTTP: &http.Server{ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return &seamEnv{addr: ln.Addr().String(), logs: logs, roots: roots, p: p}
}

// seamRaw sends raw on a new connection and reads one response.
func seamRaw(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	method := strings.Fields(raw)[0]
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%.40q: no response: %v", raw, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// seamMitm opens an intercepted tunnel to connectTo (with SNI sni) and
// sends one inner request for innerHost; it fails the test if the tunnel
// is not established.
func (env *seamEnv) seamMitm(t *testing.T, connectTo, sni, innerHost, auth string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", connectTo, connectTo, auth)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", connectTo, resp, err)
	}
	tc := tls.Client(&bufferedConn{Conn: c, r: br}, &tls.Config{ServerName: sni, RootCAs: env.roots})
	fmt.Fprintf(tc, "GET /inner HTTP/1.1\r\nHost: %s\r\n\r\n", innerHost)
	resp, err = http.ReadResponse(bufio.NewReader(tc), &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("inner request for %s: %v", innerHost, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// accessLine waits for an access line with the given error code and
// returns its status.
func (env *seamEnv) accessLine(t *testing.T, code string) (status int64, ok bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range env.logs.FilterMessage("request").All() {
			if e.ContextMap()["error"] == code {
				return e.ContextMap()["status"].(int64), true
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, false
}

func seamBasic(user string) string {
	return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user+":pw-"+user)) + "\r\n"
}

func TestDecideEveryEntryPoint(t *testing.T) {
	set := pkitest.New(t)
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	old := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "old", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	oldCert, oldKey, _ := old.WriteFiles(set.Dir, "expired")
	expired, err := tlsconf.LoadPEMIdentity("old", oldCert, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	route := func(host string, id *tlsconf.Identity, connect ConnectPolicy, clients ...string) *Route {
		return NewRoute(RouteOptions{Name: "r-" + host, Hosts: []HostPattern{mustParseHostPattern(host)}, Identity: id,
			RootCAs: set.CA.Pool(), Connect: connect, Clients: clients})
	}
	gateway := func(o *Options, self string, r *Route) {
		o.Upstream, _ = url.Parse("https://" + self + "/")
		o.UpstreamRoute = r
	}

	type entryCase struct {
		name string
		do   func(t *testing.T, env *seamEnv) (*http.Response, string)
	}
	type refusal struct {
		name    string
		build   func(self string) Options
		status  int
		code    string
		contain string
		entries []entryCase
	}
	forward := func(target, auth string) entryCase {
		return entryCase{"forward", func(t *testing.T, env *seamEnv) (*http.Response, string) {
			return seamRaw(t, env.addr, "GET http://"+target+"/x HTTP/1.1\r\nHost: "+target+"\r\n"+auth+"\r\n")
		}}
	}
	connect := func(target, auth string) entryCase {
		return entryCase{"CONNECT", func(t *testing.T, env *seamEnv) (*http.Response, string) {
			return seamRaw(t, env.addr, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n"+auth+"\r\n")
		}}
	}
	mitm := func(connectTo, inner, auth string) entryCase {
		return entryCase{"mitm", func(t *testing.T, env *seamEnv) (*http.Response, string) {
			host, _, _ := net.SplitHostPort(connectTo)
			return env.seamMitm(t, connectTo, host, inner, auth)
		}}
	}
	gatewayGet := func(auth string) entryCase {
		return entryCase{"gateway", func(t *testing.T, env *seamEnv) (*http.Response, string) {
			return seamRaw(t, env.addr, "GET /x HTTP/1.1\r\nHost: local\r\n"+auth+"\r\n")
		}}
	}
	clients := NewClients(map[string]string{"alice": "pw-alice", "bob": "pw-bob"})

	for _, rf := range []refusal{
		{name: "no route", status: 403, code: CodeHostNotAllowed, contain: "other.internal",
			build: func(string) Options {
				return Options{Routes: []*Route{route("api.internal", id, ConnectMitm)}}
			},
			entries: []entryCase{forward("other.internal", ""), connect("other.internal:443", ""),
				mitm("api.internal:443", "other.internal", "")}},
		{name: "caller", status: 403, code: CodeHostNotAllowed, contain: `caller "bob"`,
			build: func(self string) Options {
				r := route("api.internal", id, ConnectMitm, "alice")
				o := Options{Routes: []*Route{r}, Clients: clients}
				return o
			},
			entries: []entryCase{forward("api.internal", seamBasic("bob")), connect("api.internal:443", seamBasic("bob"))}},
		{name: "caller on a gateway", status: 403, code: CodeHostNotAllowed, contain: `caller "bob"`,
			build: func(string) Options {
				o := Options{Clients: clients}
				o.Upstream, _ = url.Parse("https://api.internal/")
				o.UpstreamRoute = route("api.internal", id, ConnectReject, "alice")
				return o
			},
			entries: []entryCase{gatewayGet(seamBasic("bob"))}},
		{name: "self", status: http.StatusLoopDetected, code: CodeBadRequest, contain: "loops back",
			build: func(self string) Options {
				return Options{Routes: []*Route{route("api.internal", id, ConnectMitm), route("*", id, ConnectTunnel)}}
			},
			entries: []entryCase{
				{"forward", func(t *testing.T, env *seamEnv) (*http.Response, string) {
					return seamRaw(t, env.addr, "GET http://"+env.addr+"/x HTTP/1.1\r\nHost: "+env.addr+"\r\n\r\n")
				}},
				{"forward localhost", func(t *testing.T, env *seamEnv) (*http.Response, string) {
					_, port, _ := net.SplitHostPort(env.addr)
					return seamRaw(t, env.addr, "GET http://localhost:"+port+"/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
				}},
				{"CONNECT", func(t *testing.T, env *seamEnv) (*http.Response, string) {
					return seamRaw(t, env.addr, "CONNECT "+env.addr+" HTTP/1.1\r\nHost: "+env.addr+"\r\n\r\n")
				}},
				{"mitm", func(t *testing.T, env *seamEnv) (*http.Response, string) {
					return env.seamMitm(t, "api.internal:443", "api.internal", env.addr, "")
				}},
			}},
		{name: "self on a gateway", status: http.StatusLoopDetected, code: CodeBadRequest, contain: "loops back",
			build: func(self string) Options {
				var o Options
				gateway(&o, self, route("*", id, ConnectReject))
				return o
			},
			entries: []entryCase{gatewayGet("")}},
		{name: "identity expired", status: 503, code: CodeIdentityUnavailable, contain: `identity "old"`,
			build: func(string) Options {
				return Options{Routes: []*Route{route("api.internal", expired, ConnectMitm)}}
			},
			entries: []entryCase{forward("api.internal", ""), mitm("api.internal:443", "api.internal", "")}},
		{name: "identity expired on a gateway", status: 503, code: CodeIdentityUnavailable, contain: `identity "old"`,
			build: func(string) Options {
				o := Options{}
				o.Upstream, _ = url.Parse("https://api.internal/")
				o.UpstreamRoute = route("api.internal", expired, ConnectReject)
				return o
			},
			entries: []entryCase{gatewayGet("")}},
	} {
		for _, ec := range rf.entries {
			t.Run(rf.name+"/"+ec.name, func(t *testing.T) {
				env := seamStart(t, rf.build)
				resp, body := ec.do(t, env)
				wantError(t, resp, body, rf.status, rf.code, rf.contain)
				if status, ok := env.accessLine(t, rf.code); !ok || status != int64(rf.status) {
					t.Errorf("access line with error %q: status %d found %v; want %d", rf.code, status, ok, rf.status)
				}
			})
		}
	}
}

// TestConnectTunnelNeverToSelf: a route that tunnels anything does not
// tunnel into the proxy's own listener (which would nest), and a tunnel
// to anything else still opens.
func TestConnectTunnelNeverToSelf(t *testing.T) {
	port := tcpUpstream(t, echo)
	set := pkitest.New(t)
	env := seamStart(t, func(string) Options {
		return Options{Routes: []*Route{NewRoute(RouteOptions{Name: "any", Hosts: []HostPattern{mustParseHostPattern("*")},
			RootCAs: set.CA.Pool(), Connect: ConnectTunnel})}}
	})
	resp, body := seamRaw(t, env.addr, "CONNECT "+env.addr+" HTTP/1.1\r\nHost: x\r\n\r\n")
	wantError(t, resp, body, http.StatusLoopDetected, CodeBadRequest, "loops back")
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT 127.0.0.1:%s HTTP/1.1\r\nHost: x\r\n\r\n", port)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT to another host: %v %v", resp, err)
	}
	fmt.Fprint(c, "ping")
	b := make([]byte, 4)
	if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
		t.Errorf("tunnel echo: %q %v", b, err)
	}
}
