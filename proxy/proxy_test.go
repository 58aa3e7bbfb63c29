package proxy

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// upstream is an httptest mTLS server that counts what reaches it.
type upstream struct {
	srv      *httptest.Server
	port     string
	conns    atomic.Int64 // TCP connections accepted
	requests atomic.Int64 // requests that reached the handler
}

func newUpstream(t testing.TB, cfg *tls.Config, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		h(w, r)
	}))
	u.srv.TLS = cfg
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	_, u.port, _ = net.SplitHostPort(u.srv.Listener.Addr().String())
	return u
}

// whoami answers with the client certificate subject and the request line.
func whoami(w http.ResponseWriter, r *http.Request) {
	subject := "none"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		subject = r.TLS.PeerCertificates[0].Subject.String()
	}
	w.Header().Set("X-Seen-Host", r.Host)
	fmt.Fprintf(w, "subject=%s uri=%s", subject, r.URL.RequestURI())
}

type testProxy struct {
	url     *url.URL
	logs    *observer.ObservedLogs
	set     *pkitest.Set
	handler *Proxy
	front   *Server
}

// newTestProxy serves a Proxy with one forward route allowing allow,
// whose identity and trust come from set. Every "host:port" in resolve is
// dialed at 127.0.0.1 on the same port unless mapped explicitly.
func newTestProxy(t testing.TB, set *pkitest.Set, allow []string, mod func(*RouteOptions, *Options)) *testProxy {
	t.Helper()
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	var hosts []HostPattern
	for _, a := range allow {
		hosts = append(hosts, mustParseHostPattern(a))
	}
	ro := RouteOptions{Name: "test", Hosts: hosts, Identity: id, RootCAs: set.CA.Pool(), Resolve: Resolve{},
		FastPath: testFastPath}
	core, logs := observer.New(zap.DebugLevel)
	o := Options{Logger: zap.New(core)}
	if mod != nil {
		mod(&ro, &o)
	}
	if len(ro.Hosts) > 0 {
		o.Routes = append(o.Routes, NewRoute(ro))
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	front, pu := serveFront(t, p)
	u, _ := url.Parse(pu)
	return &testProxy{url: u, logs: logs, set: set, handler: p, front: front}
}

// accessLines waits until n access-log lines are written (the line follows
// the response) and returns them.
func (tp *testProxy) accessLines(t testing.TB, n int) []observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := tp.logs.FilterMessage("request").All()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (tp *testProxy) client() *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(tp.url), DisableCompression: true}, Timeout: 30 * time.Second}
}

// do sends req through the proxy and returns status, headers and body.
func (tp *testProxy) do(t testing.TB, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := tp.client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

func (tp *testProxy) get(t testing.TB, target string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tp.do(t, req)
}

func resolveTo(port string, hosts ...string) func(*RouteOptions, *Options) {
	return func(ro *RouteOptions, _ *Options) {
		for _, h := range hosts {
			ro.Resolve[h] = "127.0.0.1:" + port
		}
	}
}

func wantError(t *testing.T, resp *http.Response, body string, status int, code, contains string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status = %d; want %d (body %q)", resp.StatusCode, status, body)
	}
	if got := resp.Header.Get(ErrorHeader); got != code {
		t.Errorf("%s = %q; want %q", ErrorHeader, got, code)
	}
	if !strings.HasPrefix(body, "mtlsproxy: ") || strings.Count(body, "\n") != 1 {
		t.Errorf("body %q is not one line starting with \"mtlsproxy: \"", body)
	}
	if !strings.Contains(body, contains) {
		t.Errorf("body %q does not contain %q", body, contains)
	}
}

func TestForward(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))

	resp, body := tp.get(t, "http://api.internal:"+up.port+"/x/y?q=1")
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d; want 200 (body %q)", resp.StatusCode, body)
	}
	if want := "subject=" + set.ClientSubject + " uri=/x/y?q=1"; body != want {
		t.Errorf("body = %q; want %q", body, want)
	}
	if got, want := resp.Header.Get("X-Seen-Host"), "api.internal:"+up.port; got != want {
		t.Errorf("upstream saw Host %q; want %q", got, want)
	}

	entries := tp.accessLines(t, 1)
	if len(entries) != 1 {
		t.Fatalf("got %d access log lines; want 1", len(entries))
	}
	f := entries[0].ContextMap()
	for k, want := range map[string]any{"method": "GET", "host": "api.internal:" + up.port, "path": "/x/y",
		"route": "test", "identity": "app", "status": int64(200), "error": "", "tls_version": "TLS 1.3"} {
		if f[k] != want {
			t.Errorf("access log %s = %#v; want %#v", k, f[k], want)
		}
	}
}

func TestForwardDefaultPortIs443(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal:443"}, func(ro *RouteOptions, _ *Options) {
		ro.Resolve["api.internal:443"] = "127.0.0.1:" + up.port
	})
	for _, target := range []string{"http://api.internal/p", "http://api.internal:80/p", "http://API.internal./p"} {
		resp, body := tp.get(t, target)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: status %d (%q)", target, resp.StatusCode, body)
		}
		if got := resp.Header.Get("X-Seen-Host"); got != "api.internal" {
			t.Errorf("GET %s: upstream saw Host %q; want api.internal", target, got)
		}
	}
}

func TestForwardHTTPSAbsoluteURL(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	// Go's client would CONNECT for https://, so write the request by hand.
	conn, err := net.Dial("tcp", tp.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET https://api.internal:%s/s HTTP/1.1\r\nHost: api.internal:%s\r\n\r\n", up.port, up.port)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "uri=/s") {
		t.Errorf("got %d %q; want 200 with uri=/s", resp.StatusCode, b)
	}
}

func TestPostBodyIntegrity(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	payload := make([]byte, 10<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(payload)
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(payload)
		if chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
		req, _ := http.NewRequest(http.MethodPost, "http://api.internal:"+up.port+"/upload", body)
		resp, got := tp.do(t, req)
		if want := fmt.Sprintf("%d %s", len(payload), hex.EncodeToString(sum[:])); resp.StatusCode != 200 || got != want {
			t.Errorf("chunked=%v: got %d %q; want 200 %q", chunked, resp.StatusCode, got, want)
		}
	}
}

func TestUpstreamTLSErrors(t *testing.T) {
	set := pkitest.New(t)
	otherCA, err := pki.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	foreignServer := pkitest.Issue(t, otherCA, pki.LeafOptions{CommonName: "api.internal", DNSNames: pkitest.ServerNames, Server: true})

	unknownCA := set.ServerTLS()
	unknownCA.Certificates = []tls.Certificate{foreignServer.TLSCertificate()}
	refuses13 := set.ServerTLS()
	refuses13.ClientCAs = otherCA.Pool()
	refuses12 := refuses13.Clone()
	refuses12.MaxVersion = tls.VersionTLS12

	tests := []struct {
		name     string
		cfg      *tls.Config
		host     string
		contains string
	}{
		{"unknown CA", unknownCA, "api.internal", "certificate signed by unknown authority"},
		{"name mismatch", set.ServerTLS(), "other.internal", "server name mismatch"},
		{"client cert refused TLS 1.3", refuses13, "api.internal", "client certificate refused by upstream"},
		{"client cert refused TLS 1.2", refuses12, "api.internal", "client certificate refused by upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, tt.cfg, whoami)
			tp := newTestProxy(t, set, []string{tt.host}, resolveTo(up.port, tt.host+":"+up.port))
			resp, body := tp.get(t, "http://"+tt.host+":"+up.port+"/secret")
			wantError(t, resp, body, http.StatusBadGateway, CodeUpstreamTLS, tt.contains)
			if strings.Contains(body, "subject=") {
				t.Errorf("upstream content reached the client: %q", body)
			}
			if n := up.requests.Load(); n != 0 {
				t.Errorf("upstream handler ran %d times; want 0", n)
			}
		})
	}
}

func TestServerNameOverride(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"10.1.2.3"}, func(ro *RouteOptions, _ *Options) {
		ro.ServerName = "api.internal"
		ro.Resolve["10.1.2.3:"+up.port] = "127.0.0.1:" + up.port
	})
	resp, body := tp.get(t, "http://10.1.2.3:"+up.port+"/")
	if resp.StatusCode != 200 || !strings.Contains(body, set.ClientSubject) {
		t.Errorf("got %d %q; want 200 with the client subject", resp.StatusCode, body)
	}
}

func TestHostNotAllowedNeverDials(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal", "*.corp.example"},
		resolveTo(up.port, "evil.internal:"+up.port, "evilcorp.example:"+up.port, "corp.example:"+up.port))
	for _, host := range []string{"evil.internal", "evilcorp.example", "corp.example"} {
		resp, body := tp.get(t, "http://"+host+":"+up.port+"/")
		wantError(t, resp, body, http.StatusForbidden, CodeHostNotAllowed, "--allow "+host)
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("upstream accepted %d connections; want 0", n)
	}
}

func TestConnectRefused(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"*"}, resolveTo(up.port, "api.internal:"+up.port))
	conn, err := net.Dial("tcp", tp.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT api.internal:%s HTTP/1.1\r\nHost: api.internal:%s\r\n\r\n", up.port, up.port)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("no HTTP response to CONNECT: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	wantError(t, resp, string(b), http.StatusForbidden, CodeHostNotAllowed, "use http:// URLs")
	if n := up.conns.Load(); n != 0 {
		t.Errorf("upstream accepted %d connections; want 0", n)
	}
}

func TestClientConnectionCloseKeepsUpstreamPool(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	client := tp.client()
	for i := 0; i < 100; i++ {
		req, _ := http.NewRequest(http.MethodGet, "http://api.internal:"+up.port+"/", nil)
		req.Close = true // sends "Connection: close"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	if n := up.conns.Load(); n > 3 {
		t.Errorf("upstream saw %d connections (TLS handshakes) for 100 requests; want at most 3", n)
	}
	reused := 0
	for _, e := range tp.accessLines(t, 100) {
		if e.ContextMap()["reused"] == true {
			reused++
		}
	}
	if reused < 97 {
		t.Errorf("access log shows %d reused upstream connections; want at least 97", reused)
	}
}

func TestUpstreamConnectAndTimeoutErrors(t *testing.T) {
	set := pkitest.New(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, _ := net.SplitHostPort(closed.Addr().String())
	closed.Close()

	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never speaks TLS
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	_, silentPort, _ := net.SplitHostPort(silent.Addr().String())

	release := make(chan struct{})
	slow := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)

	plain := httptest.NewServer(http.HandlerFunc(whoami))
	defer plain.Close()
	_, plainPort, _ := net.SplitHostPort(plain.Listener.Addr().String())

	tp := newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, _ *Options) {
		ro.Timeouts = Timeouts{TLSHandshake: 300 * time.Millisecond, ResponseHeader: 300 * time.Millisecond}
		for _, p := range []string{closedPort, silentPort, slow.port, plainPort} {
			ro.Resolve["api.internal:"+p] = "127.0.0.1:" + p
		}
	})
	tests := []struct {
		name     string
		port     string
		status   int
		code     string
		contains string
	}{
		{"refused", closedPort, 502, CodeUpstreamConnect, "connection refused"},
		{"handshake timeout", silentPort, 504, CodeUpstreamTimeout, "TLS handshake timed out"},
		{"header timeout", slow.port, 504, CodeUpstreamTimeout, "waiting for response headers"},
		{"plain HTTP upstream", plainPort, 502, CodeUpstreamTLS, "did not answer with TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tp.get(t, "http://api.internal:"+tt.port+"/")
			wantError(t, resp, body, tt.status, tt.code, tt.contains)
		})
	}
	resp, body := tp.get(t, "http://nonexistent.invalid:1/")
	wantError(t, resp, body, 403, CodeHostNotAllowed, "not allowed")
}

func TestDNSFailure(t *testing.T) {
	set := pkitest.New(t)
	tp := newTestProxy(t, set, []string{"*.invalid"}, nil)
	resp, body := tp.get(t, "http://no-such-host.invalid/")
	wantError(t, resp, body, 502, CodeUpstreamConnect, "cannot resolve host")
}

func TestExpiredIdentity(t *testing.T) {
	set := pkitest.New(t)
	expired := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "old", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	set.ClientCert, set.ClientKey, _ = expired.WriteFiles(set.Dir, "expired")
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	resp, body := tp.get(t, "http://api.internal:"+up.port+"/")
	wantError(t, resp, body, 503, CodeIdentityUnavailable, `identity "app"`)
	if n := up.conns.Load(); n != 0 {
		t.Errorf("upstream accepted %d connections; want 0", n)
	}
}

func TestGateway(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse("https://api.internal:" + up.port + "/base/")
	route := NewRoute(RouteOptions{Name: "gw", Hosts: []HostPattern{mustParseHostPattern("api.internal:" + up.port)},
		Identity: id, RootCAs: set.CA.Pool(), Resolve: Resolve{"api.internal:" + up.port: "127.0.0.1:" + up.port}})
	p, err := New(Options{Upstream: base, UpstreamRoute: route})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/x?q=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "subject=" + set.ClientSubject + " uri=/base/x?q=1"; resp.StatusCode != 200 || string(b) != want {
		t.Errorf("got %d %q; want 200 %q", resp.StatusCode, b, want)
	}
	if got, want := resp.Header.Get("X-Seen-Host"), "api.internal:"+up.port; got != want {
		t.Errorf("upstream saw Host %q; want %q", got, want)
	}

	// Absolute-form requests to other hosts are not allowed on a gateway.
	pu, _ := url.Parse(srv.URL)
	tp := &testProxy{url: pu}
	r2, body := tp.get(t, "http://elsewhere.internal/")
	wantError(t, r2, body, 403, CodeHostNotAllowed, "elsewhere.internal")
}

func TestOriginFormOnForwardProxy(t *testing.T) {
	set := pkitest.New(t)
	tp := newTestProxy(t, set, []string{"api.internal"}, nil)
	resp, err := http.Get(tp.url.String() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantError(t, resp, string(b), 400, CodeBadRequest, "HTTP_PROXY")
}

func TestHeaders(t *testing.T) {
	set := pkitest.New(t)
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = w.Write([]byte(s))
		_ = w.Close()
		return b.Bytes()
	}
	compressed := gz("hello hello hello")
	var seen http.Header
	up := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		w.Header().Set("Connection", "X-Upstream-Hop")
		w.Header().Set("X-Upstream-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=1")
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(compressed)
	})
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	req, _ := http.NewRequest(http.MethodGet, "http://api.internal:"+up.port+"/", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	req.Header.Set("Connection", "X-Client-Hop")
	req.Header.Set("X-Client-Hop", "secret")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	req.Header.Set("Authorization", "Bearer end-to-end")
	resp, body := tp.do(t, req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d %q", resp.StatusCode, body)
	}
	if got := seen.Get("Accept-Encoding"); got != "gzip" {
		t.Errorf("upstream saw Accept-Encoding %q; want gzip", got)
	}
	for _, h := range []string{"X-Client-Hop", "Keep-Alive", "Proxy-Authorization", "Connection"} {
		if v := seen.Get(h); v != "" {
			t.Errorf("upstream saw hop-by-hop %s: %q", h, v)
		}
	}
	if seen.Get("Authorization") != "Bearer end-to-end" {
		t.Errorf("Authorization was not forwarded")
	}
	if !bytes.Equal([]byte(body), compressed) || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("body was changed: got %d bytes, Content-Encoding %q; want the %d gzip bytes untouched",
			len(body), resp.Header.Get("Content-Encoding"), len(compressed))
	}
	for _, h := range []string{"X-Upstream-Hop", "Keep-Alive"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("client saw hop-by-hop %s: %q", h, v)
		}
	}
	for _, e := range tp.logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "Zm9vOmJhcg") || strings.Contains(f.String, "end-to-end") {
				t.Errorf("credential in log line %q: field %s", e.Message, f.Key)
			}
		}
	}
}

func TestStreamingReachesClientBeforeEnd(t *testing.T) {
	set := pkitest.New(t)
	release := make(chan struct{})
	up := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		_, _ = io.WriteString(w, "second\n")
	})
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	resp, err := tp.client().Get("http://api.internal:" + up.port + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line = %q, %v; want it before the upstream finishes", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "second\n" {
		t.Errorf("rest = %q; want second", rest)
	}
}

func TestNewRejectsNothingAllowed(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New with no routes and no upstream succeeded; want an error")
	}
	u, _ := url.Parse("http://plain.example/")
	if _, err := New(Options{Upstream: u, UpstreamRoute: &Route{}}); err == nil {
		t.Error("New with an http:// upstream succeeded; want an error")
	}
}

func TestRawRequests(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	tests := []struct {
		name, requestLine string
		status            int
		code, contains    string
	}{
		{"userinfo", "GET http://user:hunter2@api.internal:" + up.port + "/ HTTP/1.1", 400, CodeBadRequest, "user info"},
		{"ftp scheme", "GET ftp://api.internal:" + up.port + "/ HTTP/1.1", 400, CodeBadRequest, "unsupported URL scheme"},
		{"bad port", "GET http://api.internal:0/ HTTP/1.1", 400, CodeBadRequest, "bad port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", tp.url.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "%s\r\nHost: api.internal\r\n\r\n", tt.requestLine)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			wantError(t, resp, string(b), tt.status, tt.code, tt.contains)
		})
	}
	for _, e := range tp.logs.All() {
		for _, f := range e.Context {
			if strings.Contains(f.String, "hunter2") {
				t.Errorf("password from the URL in log line %q field %s", e.Message, f.Key)
			}
		}
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("upstream accepted %d connections; want 0", n)
	}
}
