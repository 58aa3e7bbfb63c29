package proxy

// connect: mitm (issue 10) against Go upstreams over mutual TLS: a client
// that trusts the local CA gets HTTPS (HTTP/1.1 and HTTP/2) through the
// route's identity; the upstream is still verified; a client that does not
// trust the CA fails the handshake and the log says why; CONNECTs that no
// mitm route allows get 403; plain HTTP inside a CONNECT to port 80 is
// forward mode; the access log has the CONNECT and every inner request;
// WebSocket inside the tunnel.

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// mitmtCA makes a local CA permitting the test names and a leaf cache
// that mints from it.
func mitmtCA(t testing.TB) (*tlsconf.LeafCache, *x509.CertPool) {
	t.Helper()
	certFile, keyFile, err := tlsconf.InitMitmCA(filepath.Join(t.TempDir(), "mitm-ca"),
		[]string{"api.internal", "other.internal", "rogue.internal"}, "mitmt local CA")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlsconf.LoadMitmCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	return tlsconf.NewLeafCache(ca, 0, 0), pool
}

// mitmtEnv is a proxy whose route "test" intercepts CONNECTs to
// api.internal (any port) and carries them to up with the set's client
// identity.
type mitmtEnv struct {
	set    *pkitest.Set
	up     *upstream
	tp     *testProxy
	leaves *tlsconf.LeafCache
	roots  *x509.CertPool // the local CA, as clients must trust it
	host   string         // api.internal:PORT
}

// mitmtEcho answers with the client certificate subject, the request and
// the SHA-256 of its body.
func mitmtEcho(w http.ResponseWriter, r *http.Request) {
	subject := "none"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		subject = r.TLS.PeerCertificates[0].Subject.String()
	}
	h := sha256.New()
	n, _ := io.Copy(h, r.Body)
	w.Header().Set("X-Seen-Host", r.Host)
	if r.URL.Path == "/missing" {
		w.WriteHeader(http.StatusNotFound)
	}
	fmt.Fprintf(w, "subject=%s %s uri=%s body=%d:%s", subject, r.Method, r.URL.RequestURI(), n, hex.EncodeToString(h.Sum(nil))[:16])
}

func mitmtStart(t testing.TB, h2Upstream bool, mod func(*RouteOptions, *Options)) *mitmtEnv {
	t.Helper()
	env := &mitmtEnv{set: pkitest.New(t)}
	cfg := env.set.ServerTLS()
	if h2Upstream {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	env.up = newUpstream(t, cfg, mitmtEcho)
	env.host = "api.internal:" + env.up.port
	env.leaves, env.roots = mitmtCA(t)
	env.tp = newTestProxy(t, env.set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		ro.Connect = ConnectMitm
		ro.HTTP2 = h2Upstream
		ro.Resolve[env.host] = "127.0.0.1:" + env.up.port
		o.Mitm = env.leaves
		if mod != nil {
			mod(ro, o)
		}
	})
	return env
}

// client is a Go client that sends https:// requests through the proxy
// with CONNECT, trusting roots; h2 offers HTTP/2 inside the tunnel.
func (env *mitmtEnv) client(roots *x509.CertPool, h2 bool) (*http.Client, *http.Transport) {
	tr := &http.Transport{Proxy: http.ProxyURL(env.tp.url), TLSClientConfig: &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: h2, DisableCompression: true, MaxIdleConnsPerHost: 64}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

func mitmtDo(t testing.TB, c *http.Client, method, target, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, target, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, target, err)
	}
	return resp, string(b)
}

func mitmtBodySum(s string) string {
	h := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%d:%s", len(s), hex.EncodeToString(h[:])[:16])
}

// TestMitmHTTPS sends https:// requests through a mitm route, over
// HTTP/1.1 and HTTP/2 inside the tunnel and to the upstream: the upstream
// sees the route's identity, the client sees a leaf from the local CA for
// the host it asked for, and one leaf serves every connection.
func TestMitmHTTPS(t *testing.T) {
	for _, mode := range []struct {
		name                 string
		clientH2, upstreamH2 bool
	}{{"h1-h1", false, false}, {"h2-h1", true, false}, {"h1-h2", false, true}, {"h2-h2", true, true}} {
		t.Run(mode.name, func(t *testing.T) {
			env := mitmtStart(t, mode.upstreamH2, nil)
			c, tr := env.client(env.roots, mode.clientH2)
			wantProto := 1
			if mode.clientH2 {
				wantProto = 2
			}
			post := strings.Repeat("mitm body ", 10000)
			for i, req := range []struct{ method, path, body string }{
				{"GET", "/x/y?q=1", ""}, {"POST", "/upload", post}, {"GET", "/again", ""},
			} {
				resp, body := mitmtDo(t, c, req.method, "https://"+env.host+req.path, req.body)
				if resp.StatusCode != 200 {
					t.Fatalf("%s %s: status %d (%q); want 200", req.method, req.path, resp.StatusCode, body)
				}
				want := fmt.Sprintf("subject=%s %s uri=%s body=%s", env.set.ClientSubject, req.method, req.path, mitmtBodySum(req.body))
				if body != want {
					t.Errorf("%s %s: upstream answered %q; want %q", req.method, req.path, body, want)
				}
				if resp.ProtoMajor != wantProto {
					t.Errorf("%s %s: client spoke HTTP/%d.%d inside the tunnel; want HTTP/%d", req.method, req.path, resp.ProtoMajor, resp.ProtoMinor, wantProto)
				}
				if got := resp.Header.Get("X-Seen-Host"); got != env.host {
					t.Errorf("upstream saw Host %q; want %q", got, env.host)
				}
				if resp.Header.Get(ErrorHeader) != "" {
					t.Errorf("%s on a success: %q", ErrorHeader, resp.Header.Get(ErrorHeader))
				}
				leaf := resp.TLS.PeerCertificates[0]
				if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "api.internal" || leaf.Issuer.CommonName != "mitmt local CA" {
					t.Errorf("client saw a certificate for %v from %q; want api.internal from the local CA", leaf.DNSNames, leaf.Issuer)
				}
				if i == 0 {
					// A new tunnel for every request after the first:
					// the leaf must come from the cache.
					tr.CloseIdleConnections()
				}
			}
			if n := env.leaves.Mints(); n != 1 {
				t.Errorf("%d leaves minted for one host; want 1", n)
			}
			if n := env.up.requests.Load(); n != 3 {
				t.Errorf("upstream handled %d requests; want 3", n)
			}
		})
	}
}

// TestMitmClientTLSVersions checks that clients limited to TLS 1.2 or 1.3
// get through, and that older ones are refused.
func TestMitmClientTLSVersions(t *testing.T) {
	env := mitmtStart(t, false, nil)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		c, tr := env.client(env.roots, false)
		tr.TLSClientConfig.MinVersion, tr.TLSClientConfig.MaxVersion = v, v
		resp, body := mitmtDo(t, c, "GET", "https://"+env.host+"/v", "")
		if resp.StatusCode != 200 || resp.TLS.Version != v {
			t.Errorf("%s: status %d, version %s (%q); want 200 over %s", tls.VersionName(v), resp.StatusCode,
				tls.VersionName(resp.TLS.Version), body, tls.VersionName(v))
		}
	}
	c, tr := env.client(env.roots, false)
	tr.TLSClientConfig.MinVersion, tr.TLSClientConfig.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
	if resp, err := c.Get("https://" + env.host + "/old"); err == nil {
		resp.Body.Close()
		t.Errorf("a TLS 1.1 client got status %d inside the tunnel; want a failed handshake", resp.StatusCode)
	}
}

// TestMitmUpstreamStillVerified points a mitm route at a server whose
// certificate comes from another CA: the client, which trusts the local
// CA, must get a 502 upstream-tls inside the tunnel, never the server's
// content.
func TestMitmUpstreamStillVerified(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client-h2=%v", h2), func(t *testing.T) {
			env := mitmtStart(t, false, nil)
			otherCA, err := pki.NewCA("some other CA")
			if err != nil {
				t.Fatal(err)
			}
			foreign := pkitest.Issue(t, otherCA, pki.LeafOptions{CommonName: "rogue.internal",
				DNSNames: []string{"rogue.internal"}, Server: true})
			cfg := env.set.ServerTLS()
			cfg.Certificates = []tls.Certificate{foreign.TLSCertificate()}
			rogue := newUpstream(t, cfg, mitmtEcho)
			rogueHost := "rogue.internal:" + rogue.port
			env.tp = newTestProxy(t, env.set, []string{"rogue.internal"}, func(ro *RouteOptions, o *Options) {
				ro.Connect = ConnectMitm
				ro.Resolve[rogueHost] = "127.0.0.1:" + rogue.port
				o.Mitm = env.leaves
			})
			c, _ := env.client(env.roots, h2)
			for i := range 2 { // the tunnel stays usable after the error
				resp, body := mitmtDo(t, c, "GET", "https://"+rogueHost+"/secret", "")
				wantError(t, resp, body, http.StatusBadGateway, CodeUpstreamTLS, "unknown authority")
				if strings.Contains(body, "subject=") {
					t.Errorf("request %d: the rogue server's content reached the client: %q", i, body)
				}
			}
			if n := rogue.requests.Load(); n != 0 {
				t.Errorf("rogue upstream handled %d requests; want 0", n)
			}
			lines := env.tp.accessLines(t, 3)
			var inner int
			for _, e := range lines {
				f := e.ContextMap()
				if f["method"] != "GET" {
					continue
				}
				inner++
				for k, want := range map[string]any{"host": rogueHost, "path": "/secret", "route": "test",
					"status": int64(502), "error": CodeUpstreamTLS} {
					if f[k] != want {
						t.Errorf("access log %s = %#v; want %#v", k, f[k], want)
					}
				}
			}
			if inner != 2 {
				t.Errorf("%d access-log lines for the inner requests; want 2", inner)
			}
		})
	}
}

// TestMitmClientRejectsCA checks the helpful failure: a client that does
// not trust the local CA fails the handshake (it never sends a request),
// and the proxy log names the host and the fix.
func TestMitmClientRejectsCA(t *testing.T) {
	env := mitmtStart(t, false, nil)
	c, _ := env.client(x509.NewCertPool(), false)
	resp, err := c.Get("https://" + env.host + "/untrusted")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a client that does not trust the local CA got status %d; want a failed handshake", resp.StatusCode)
	}
	if !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("client error %v; want it to be about the unknown authority", err)
	}
	var warn []observer.LoggedEntry
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if warn = env.tp.logs.FilterMessageSnippet("client refused the TLS handshake inside an intercepted tunnel").All(); len(warn) > 0 {
			break
		}
	}
	if len(warn) != 1 {
		t.Fatalf("%d log lines about the refused handshake; want 1\nlog: %v", len(warn), env.tp.logs.All())
	}
	w := warn[0]
	if w.Level != zapcore.WarnLevel {
		t.Errorf("logged at %v; want warn", w.Level)
	}
	for _, s := range []string{"trust", "mitm_ca", "README"} {
		if !strings.Contains(w.Message, s) {
			t.Errorf("message %q does not mention %q", w.Message, s)
		}
	}
	f := w.ContextMap()
	if got := fmt.Sprint(f["host"]); got != env.host {
		t.Errorf("logged host %q; want %q", got, env.host)
	}
	if got := fmt.Sprint(f["error"]); !strings.Contains(got, "remote error: tls: bad certificate") {
		t.Errorf("logged error %q; want the Go client's alert (bad certificate)", got)
	}
	if n := env.up.requests.Load(); n != 0 {
		t.Errorf("upstream handled %d requests; want 0", n)
	}
}

// TestMitmServerName checks which leaf a client gets: one for its SNI
// when a mitm route allows that name, one for the CONNECT host without
// SNI, and none for a name no mitm route allows.
func TestMitmServerName(t *testing.T) {
	env := mitmtStart(t, false, func(ro *RouteOptions, o *Options) {
		o.Routes = append(o.Routes,
			NewRoute(RouteOptions{Name: "other", Hosts: []HostPattern{mustParseHostPattern("other.internal")}, Connect: ConnectMitm}),
			NewRoute(RouteOptions{Name: "fwd", Hosts: []HostPattern{mustParseHostPattern("fwd.internal")}}))
	})
	handshake := func(sni string, verify bool) (*tls.ConnectionState, error) {
		resp, conn := env.tp.connect(t, env.host, "")
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT %s: status %d; want 200", env.host, resp.StatusCode)
		}
		tc := tls.Client(conn, &tls.Config{RootCAs: env.roots, ServerName: sni, InsecureSkipVerify: !verify})
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			return nil, err
		}
		st := tc.ConnectionState()
		return &st, nil
	}
	st, err := handshake("other.internal", true)
	if err != nil {
		t.Fatalf("SNI other.internal (a mitm route): %v", err)
	}
	if got := st.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "other.internal" {
		t.Errorf("SNI other.internal: leaf for %v", got)
	}
	st, err = handshake("", false)
	if err != nil {
		t.Fatalf("no SNI: %v", err)
	}
	if got := st.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "api.internal" {
		t.Errorf("no SNI: leaf for %v; want the CONNECT host api.internal", got)
	}
	for _, sni := range []string{"evil.internal", "fwd.internal"} {
		if _, err := handshake(sni, false); err == nil {
			t.Errorf("SNI %s inside a tunnel to api.internal: handshake succeeded; want it refused (no mitm route allows %s)", sni, sni)
		}
	}
	if n := env.leaves.Mints(); n != 2 {
		t.Errorf("%d leaves minted; want 2 (api.internal, other.internal)", n)
	}
}

// TestMitmConnectRefused checks the CONNECTs that must not be intercepted.
func TestMitmConnectRefused(t *testing.T) {
	t.Run("no route", func(t *testing.T) {
		env := mitmtStart(t, false, nil)
		resp, _ := env.tp.connect(t, "unrouted.internal:"+env.up.port, "")
		b, _ := io.ReadAll(resp.Body)
		wantError(t, resp, string(b), http.StatusForbidden, CodeHostNotAllowed, "no route allows this host")
		if n := env.leaves.Mints(); n != 0 {
			t.Errorf("%d leaves minted for a refused CONNECT", n)
		}
	})
	t.Run("forward-only route", func(t *testing.T) {
		env := mitmtStart(t, false, func(ro *RouteOptions, o *Options) {
			o.Routes = append(o.Routes, NewRoute(RouteOptions{Name: "fwd", Hosts: []HostPattern{mustParseHostPattern("fwd.internal")}}))
		})
		resp, _ := env.tp.connect(t, "fwd.internal:443", "")
		b, _ := io.ReadAll(resp.Body)
		wantError(t, resp, string(b), http.StatusForbidden, CodeHostNotAllowed, "use http:// URLs")
	})
	t.Run("no local CA", func(t *testing.T) {
		env := mitmtStart(t, false, func(_ *RouteOptions, o *Options) { o.Mitm = nil })
		resp, _ := env.tp.connect(t, env.host, "")
		b, _ := io.ReadAll(resp.Body)
		wantError(t, resp, string(b), http.StatusForbidden, CodeHostNotAllowed, "no local CA (mitm_ca) is configured")
		if n := env.up.conns.Load(); n != 0 {
			t.Errorf("upstream accepted %d connections; want 0", n)
		}
		f := env.tp.accessLines(t, 1)[0].ContextMap()
		for k, want := range map[string]any{"method": "CONNECT", "route": "test", "status": int64(403), "error": CodeHostNotAllowed} {
			if f[k] != want {
				t.Errorf("access log %s = %#v; want %#v", k, f[k], want)
			}
		}
	})
}

// TestMitmCallers checks a mitm route limited to one authenticated
// caller: the caller's CONNECT credentials carry over to the requests
// inside the tunnel, which send none themselves; other callers get no
// tunnel.
func TestMitmCallers(t *testing.T) {
	env := mitmtStart(t, false, func(ro *RouteOptions, o *Options) {
		ro.Clients = []string{"alice"}
		o.Clients = NewClients(map[string]string{"alice": "a-secret", "bob": "b-secret"})
	})
	as := func(user, pass string) *http.Client {
		c, tr := env.client(env.roots, false)
		u := *env.tp.url
		if user != "" {
			u.User = url.UserPassword(user, pass)
		}
		tr.Proxy = http.ProxyURL(&u)
		return c
	}
	resp, body := mitmtDo(t, as("alice", "a-secret"), "GET", "https://"+env.host+"/alice", "")
	if resp.StatusCode != 200 || !strings.Contains(body, env.set.ClientSubject) {
		t.Fatalf("alice: %d %q; want 200 with the route identity", resp.StatusCode, body)
	}
	for _, who := range []struct{ user, pass, want string }{
		{"bob", "b-secret", "Forbidden"}, {"alice", "wrong", "Proxy Authentication Required"}, {"", "", "Proxy Authentication Required"},
	} {
		if resp, err := as(who.user, who.pass).Get("https://" + env.host + "/" + who.user); err == nil {
			resp.Body.Close()
			t.Errorf("%q/%q: got an answer from inside a tunnel (%d); want the CONNECT refused", who.user, who.pass, resp.StatusCode)
		} else if !strings.Contains(err.Error(), who.want) {
			t.Errorf("%q/%q: %v; want the CONNECT refused with %s", who.user, who.pass, err, who.want)
		}
	}
	if n := env.up.requests.Load(); n != 1 {
		t.Errorf("upstream handled %d requests; want 1 (alice's)", n)
	}
	var found bool
	for _, e := range env.tp.accessLines(t, 5) {
		if f := e.ContextMap(); f["method"] == "GET" {
			found = true
			if f["path"] != "/alice" || f["caller"] != "alice" || f["identity"] != "app" || f["status"] != int64(200) {
				t.Errorf("access log of the inner request: path %v caller %v identity %v status %v; want /alice alice app 200",
					f["path"], f["caller"], f["identity"], f["status"])
			}
		}
	}
	if !found {
		t.Error("no access-log line for alice's inner request")
	}
}

// TestMitmPlainHTTPPort80 sends plain HTTP inside a CONNECT to port 80, as
// some clients do for http:// URLs with HTTPS_PROXY-only settings: it is
// forward mode, to port 443 with the route's identity.
func TestMitmPlainHTTPPort80(t *testing.T) {
	env := mitmtStart(t, false, func(ro *RouteOptions, _ *Options) {
		ro.Resolve = Resolve{} // only the 443 mapping below
	})
	env.tp = newTestProxy(t, env.set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		ro.Connect = ConnectMitm
		ro.Resolve["api.internal:443"] = "127.0.0.1:" + env.up.port
		o.Mitm = env.leaves
	})
	resp, conn := env.tp.connect(t, "api.internal:80", "")
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT api.internal:80: status %d; want 200", resp.StatusCode)
	}
	br := bufio.NewReader(conn)
	for i, hostHeader := range []string{"api.internal", "api.internal:80"} {
		path := fmt.Sprintf("/plain/%d?x=1", i)
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, hostHeader)
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on the tunnel: %v", i, err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		want := fmt.Sprintf("subject=%s GET uri=%s body=%s", env.set.ClientSubject, path, mitmtBodySum(""))
		if r.StatusCode != 200 || string(b) != want {
			t.Errorf("request %d (Host %s): %d %q; want 200 %q", i, hostHeader, r.StatusCode, b, want)
		}
	}
	if n := env.leaves.Mints(); n != 0 {
		t.Errorf("%d leaves minted for plain HTTP; want 0", n)
	}
	var inner int
	for _, e := range env.tp.accessLines(t, 3) {
		if f := e.ContextMap(); f["method"] == "GET" {
			inner++
			if f["host"] != "api.internal:443" || f["identity"] != "app" || f["status"] != int64(200) {
				t.Errorf("access log: host %v identity %v status %v; want api.internal:443 app 200", f["host"], f["identity"], f["status"])
			}
		}
	}
	if inner != 2 {
		t.Errorf("%d access-log lines for the inner requests; want 2", inner)
	}
}

// TestMitmAccessLog checks the access log of an intercepted tunnel: one
// line for the CONNECT (no identity: it carries nothing itself) and one
// per inner request with the route, identity and status, over HTTP/1.1
// and HTTP/2 keep-alive connections.
func TestMitmAccessLog(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("client-h2=%v", h2), func(t *testing.T) {
			env := mitmtStart(t, false, nil)
			c, tr := env.client(env.roots, h2)
			paths := []string{"/a", "/missing", "/c"}
			for _, p := range paths {
				resp, body := mitmtDo(t, c, "GET", "https://"+env.host+p, "")
				if want := map[bool]int{true: 404, false: 200}[p == "/missing"]; resp.StatusCode != want {
					t.Fatalf("GET %s: %d %q; want %d", p, resp.StatusCode, body, want)
				}
			}
			tr.CloseIdleConnections()
			lines := env.tp.accessLines(t, 1+len(paths))
			time.Sleep(100 * time.Millisecond) // a duplicate line would come now
			lines = env.tp.logs.FilterMessage("request").All()
			if len(lines) != 1+len(paths) {
				for _, l := range lines {
					t.Logf("%v", l.ContextMap())
				}
				t.Fatalf("%d access-log lines; want %d: one CONNECT and one per request", len(lines), 1+len(paths))
			}
			byPath := map[string]map[string]any{}
			var connects int
			for _, e := range lines {
				f := e.ContextMap()
				if f["method"] == "CONNECT" {
					connects++
					for k, want := range map[string]any{"host": env.host, "route": "test", "identity": "", "status": int64(200), "error": ""} {
						if f[k] != want {
							t.Errorf("CONNECT line: %s = %#v; want %#v", k, f[k], want)
						}
					}
					continue
				}
				byPath[f["path"].(string)] = f
			}
			if connects != 1 {
				t.Errorf("%d CONNECT lines; want 1 (one keep-alive tunnel)", connects)
			}
			for _, p := range paths {
				f, ok := byPath[p]
				if !ok {
					t.Errorf("no access-log line for %s", p)
					continue
				}
				want := map[string]any{"method": "GET", "host": env.host, "route": "test", "identity": "app",
					"status": int64(map[bool]int{true: 404, false: 200}[p == "/missing"]), "error": "", "tls_version": "TLS 1.3"}
				for k, w := range want {
					if f[k] != w {
						t.Errorf("%s: access log %s = %#v; want %#v", p, k, f[k], w)
					}
				}
				if n, _ := f["bytes_out"].(int64); n <= 0 {
					t.Errorf("%s: bytes_out = %v; want the body size", p, f["bytes_out"])
				}
				if d, _ := f["duration"].(time.Duration); d <= 0 {
					t.Errorf("%s: duration = %v", p, f["duration"])
				}
			}
		})
	}
}

// TestMitmWebSocket opens WebSocket sessions inside an intercepted tunnel:
// the upstream greets with the route identity's name, messages go both
// ways, and the upstream's close reaches the client.
func TestMitmWebSocket(t *testing.T) {
	env := mitmtStart(t, false, nil)
	up, ended := fidWSUpstream(t, env.set, false)
	host := "api.internal:" + up.port
	env.tp = newTestProxy(t, env.set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		ro.Connect = ConnectMitm
		ro.Resolve[host] = "127.0.0.1:" + up.port
		o.Mitm = env.leaves
	})
	for i := range 3 {
		path := fmt.Sprintf("/ws/%d", i)
		resp, conn := env.tp.connect(t, host, "")
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		tc := tls.Client(conn, &tls.Config{RootCAs: env.roots, ServerName: "api.internal", NextProtos: []string{"http/1.1"}})
		_ = tc.SetDeadline(time.Now().Add(fidWait))
		k := make([]byte, 16)
		_, _ = rand.Read(k)
		key := base64.StdEncoding.EncodeToString(k)
		fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: https://%s\r\n\r\n", path, host, key, host)
		br := bufio.NewReader(tc)
		r, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
		if err != nil {
			t.Fatalf("%s: WebSocket handshake: %v", path, err)
		}
		if r.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(r.Body)
			t.Fatalf("%s: status %d %q; want 101", path, r.StatusCode, b)
		}
		sum := sha1.Sum([]byte(key + fidWSGUID))
		if got, want := r.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
			t.Fatalf("Sec-WebSocket-Accept %q; want %q", got, want)
		}
		_ = tc.SetDeadline(time.Time{})
		ws := &fidWSConn{c: tc, br: br}
		if op, p, err := ws.read(); err != nil || op != 1 || string(p) != "welcome test-client" {
			t.Fatalf("%s: greeting op=%d %q, %v; want \"welcome test-client\" (the route's identity)", path, op, p, err)
		}
		for _, msg := range []string{"hello " + path, strings.Repeat("x", 100<<10)} {
			if err := ws.write(1, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			if op, p, err := ws.read(); err != nil || op != 1 || string(p) != "echo: "+msg {
				t.Fatalf("%s: echo op=%d %d bytes, %v; want the %d bytes sent back", path, op, len(p), err, len(msg))
			}
		}
		if i%2 == 0 {
			if err := ws.write(1, []byte("close-please")); err != nil {
				t.Fatal(err)
			}
			if op, _, err := ws.read(); err != nil || op != 8 {
				t.Fatalf("%s: after the upstream closed: op=%d, %v; want a close frame", path, op, err)
			}
		}
		tc.Close()
		select {
		case got := <-ended:
			if got != path {
				t.Errorf("session %s ended; want %s", got, path)
			}
		case <-time.After(fidWait):
			t.Fatalf("%s: the upstream session is still open after the client closed", path)
		}
	}
	var upgrades int
	for _, e := range env.tp.accessLines(t, 6) {
		if f := e.ContextMap(); f["method"] == "GET" {
			upgrades++
			if f["status"] != int64(101) || f["identity"] != "app" {
				t.Errorf("access log for the upgrade: status %v identity %v; want 101 app", f["status"], f["identity"])
			}
		}
	}
	if upgrades != 3 {
		t.Errorf("%d access-log lines for upgrades; want 3", upgrades)
	}
}

// BenchmarkMitmKeepAlive measures keep-alive HTTPS requests through an
// intercepted tunnel to an in-process mTLS upstream, access log included
// (JSON to io.Discard). The tunnels and leaves are set up before the
// timer starts, so this is the steady state of a client that keeps its
// connections.
func BenchmarkMitmKeepAlive(b *testing.B) {
	for _, h2 := range []bool{false, true} {
		b.Run(map[bool]string{false: "h1", true: "h2"}[h2], func(b *testing.B) {
			set := pkitest.New(b)
			up := newUpstream(b, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "ok")
			})
			id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
			if err != nil {
				b.Fatal(err)
			}
			host := "api.internal:" + up.port
			route := NewRoute(RouteOptions{Name: "bench", Hosts: []HostPattern{mustParseHostPattern("api.internal")},
				Identity: id, RootCAs: set.CA.Pool(), Connect: ConnectMitm, Resolve: Resolve{host: "127.0.0.1:" + up.port}})
			leaves, roots := mitmtCA(b)
			enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
			logger := zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
			p, err := New(Options{Routes: []*Route{route}, Logger: logger, Mitm: leaves})
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(p)
			defer srv.Close()
			pu, _ := url.Parse(srv.URL)
			env := &mitmtEnv{tp: &testProxy{url: pu}}
			c, tr := env.client(roots, h2)
			defer tr.CloseIdleConnections()
			target := "https://" + host + "/bench"
			var fails atomic.Int64
			get := func() {
				resp, err := c.Get(target)
				if err != nil {
					fails.Add(1)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					fails.Add(1)
				}
			}
			for range 8 { // warm up: tunnels and the leaf
				get()
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get()
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
			if n := fails.Load(); n > 0 {
				b.Fatalf("%d of %d requests failed", n, b.N)
			}
			if n := leaves.Mints(); n != 1 {
				b.Errorf("%d leaves minted; want 1", n)
			}
		})
	}
}
