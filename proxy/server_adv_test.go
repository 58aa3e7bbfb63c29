package proxy

// Adversarial tests for Server (front.go, front_parse.go): raw bytes on
// a client connection, a real mTLS upstream that records what reaches
// it, and, where it matters, the same bytes sent to the same Proxy served
// by Go's server alone (the goproxy path) for comparison.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
)

// advWait bounds every wait for something that should happen at once.
const advWait = 2 * time.Second

// advRec is one request as the upstream's HTTP server parsed it.
type advRec struct {
	Method, URI, Proto, Host string
	Header                   http.Header
	Body                     string
}

// advUpstream is an mTLS upstream (Go's server behind a TLS listener
// requiring a client certificate) that records every request, and the
// plaintext bytes of every connection, so that tests can see header case
// and order as sent.
type advUpstream struct {
	port       string
	handshakes atomic.Int64
	mu         sync.Mutex
	reqs       []advRec
	raw        []*advRecConn
}

type advRecConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *advRecConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

type advRecListener struct {
	net.Listener
	u *advUpstream
}

func (l advRecListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &advRecConn{Conn: c}
	l.u.mu.Lock()
	l.u.raw = append(l.u.raw, rc)
	l.u.mu.Unlock()
	return rc, nil
}

// advTLS is the set's server config, counting handshakes in n.
func advTLS(set *pkitest.Set, n *atomic.Int64) *tls.Config {
	cfg := set.ServerTLS()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		n.Add(1)
		return nil, nil
	}
	return cfg
}

func advNewUpstream(t testing.TB, set *pkitest.Set, h http.HandlerFunc) *advUpstream {
	t.Helper()
	u := &advUpstream{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, u.port, _ = net.SplitHostPort(ln.Addr().String())
	srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			u.mu.Lock()
			u.reqs = append(u.reqs, advRec{Method: r.Method, URI: r.RequestURI, Proto: r.Proto, Host: r.Host,
				Header: r.Header.Clone(), Body: string(b)})
			u.mu.Unlock()
			h(w, r)
		})}
	go func() { _ = srv.Serve(advRecListener{tls.NewListener(ln, advTLS(set, &u.handshakes)), u}) }()
	t.Cleanup(func() { _ = srv.Close() })
	return u
}

// seen returns the requests recorded so far, and forgets them.
func (u *advUpstream) seen() []advRec {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.reqs
	u.reqs = nil
	return r
}

// rawHead returns the request head, as it came on the wire, that starts
// with prefix (such as "GET /a "), or "" if none did.
func (u *advUpstream) rawHead(prefix string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.raw {
		c.mu.Lock()
		s := c.buf.String()
		c.mu.Unlock()
		for _, h := range strings.Split(s, "\r\n\r\n") {
			if i := strings.Index(h, prefix); i >= 0 && (i == 0 || strings.HasSuffix(h[:i], "\n")) {
				return h[i:] + "\r\n\r\n"
			}
		}
	}
	return ""
}

// advEcho answers with what it got; its Content-Type avoids sniffing.
func advEcho(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s %s", r.Method, r.RequestURI)
}

// advRawUpstream is an mTLS upstream that answers each request (read with
// http.ReadRequest) with whatever respond writes; respond returns false to
// close the connection after its answer.
type advRawUpstream struct {
	port       string
	handshakes atomic.Int64
	mu         sync.Mutex
	conns      []net.Conn
}

func advNewRawUpstream(t testing.TB, set *pkitest.Set, respond func(req *http.Request, w *bufio.Writer) bool) *advRawUpstream {
	t.Helper()
	u := &advRawUpstream{}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", advTLS(set, &u.handshakes))
	if err != nil {
		t.Fatal(err)
	}
	_, u.port, _ = net.SplitHostPort(ln.Addr().String())
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br, bw := bufio.NewReader(c), bufio.NewWriter(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					keep := respond(req, bw)
					if bw.Flush() != nil || !keep {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		u.mu.Lock()
		for _, c := range u.conns {
			_ = c.Close()
		}
		u.mu.Unlock()
		wg.Wait()
	})
	return u
}

// advNewProxy builds a Proxy whose one route carries api.internal, on
// each of ports, to 127.0.0.1 on the same port.
func advNewProxy(t testing.TB, set *pkitest.Set, mod func(*RouteOptions, *Options), ports ...string) *Proxy {
	t.Helper()
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	ro := RouteOptions{Name: "adv", Hosts: []HostPattern{mustParseHostPattern("api.internal")}, Identity: id,
		RootCAs: set.CA.Pool(), Resolve: Resolve{}, Timeouts: Timeouts{ResponseHeader: 3 * time.Second},
		FastPath: testFastPath}
	for _, p := range ports {
		ro.Resolve["api.internal:"+p] = "127.0.0.1:" + p
	}
	o := Options{Logger: zap.NewNop(), StripHeaders: []string{"X-Internal-User"}}
	if mod != nil {
		mod(&ro, &o)
	}
	rt := NewRoute(ro)
	if o.Upstream != nil {
		o.UpstreamRoute = rt
	} else {
		o.Routes = []*Route{rt}
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.CloseIdleConnections)
	return p
}

// advFront serves p as the command does (a Server in front of Go's
// server) with the given client timeouts, and returns the Server and its
// address.
func advFront(t testing.TB, p *Proxy, readHeader, idle time.Duration) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: readHeader, IdleTimeout: idle, MaxHeaderBytes: 64 << 10,
		ErrorLog: log.New(io.Discard, "", 0)}
	s := &Server{Proxy: p, HTTP: srv, Front: testFastPath}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		_ = s.Close()
		select {
		case <-done:
		case <-time.After(advWait):
			t.Errorf("Serve did not return after Close")
		}
	})
	return s, ln.Addr().String()
}

// advSlow serves p with a plain http.Server, without Server's
// connection settings: the reference for what Server adds.
func advSlow(t testing.TB, p *Proxy, readHeader, idle time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: readHeader, IdleTimeout: idle, MaxHeaderBytes: 64 << 10,
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// advConn is a raw client connection.
type advConn struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func advDial(t testing.TB, addr string) *advConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &advConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (a *advConn) send(s string) {
	a.t.Helper()
	_ = a.c.SetWriteDeadline(time.Now().Add(advWait))
	if _, err := io.WriteString(a.c, s); err != nil {
		a.t.Fatalf("write %.60q: %v", s, err)
	}
}

// next reads one response (1xx included) and its body within d.
func (a *advConn) next(method string, d time.Duration) (*http.Response, string, error) {
	_ = a.c.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = a.c.SetReadDeadline(time.Time{}) }()
	resp, err := http.ReadResponse(a.br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err // resp, with the body read so far, even on error
}

// final reads the final response, counting the informational ones
// before it; it fails the test if none comes within advWait.
func (a *advConn) final(method string) (resp *http.Response, body string, n1xx int) {
	a.t.Helper()
	for {
		resp, body, err := a.next(method, advWait)
		if err != nil {
			a.t.Fatalf("%s: no response: %v (body so far %q)", method, err, body)
		}
		if resp.StatusCode >= 200 {
			return resp, body, n1xx
		}
		n1xx++
	}
}

// closed reports whether the peer closes the connection within d
// without sending anything more; it fails the test on stray bytes.
func (a *advConn) closed(d time.Duration) bool {
	a.t.Helper()
	_ = a.c.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = a.c.SetReadDeadline(time.Time{}) }()
	b, err := a.br.ReadByte()
	if err == nil {
		rest, _ := a.br.Peek(a.br.Buffered())
		a.t.Fatalf("stray bytes after the last response: %q", append([]byte{b}, rest...))
	}
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// advGet is a forward-proxy GET for path on host with extra header lines.
func advGet(method, host, path string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s http://%s%s HTTP/1.1\r\nHost: %s\r\n", method, host, path, host)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// advFrontProbe is an extra header some requests carry; the upstream
// must see it like any other.
const advFrontProbe = "x-adv-path: probe"

// advEnv is a Proxy routed to a recording upstream, served by the front
// and by Go's server alone.
type advEnv struct {
	set   *pkitest.Set
	up    *advUpstream
	p     *Proxy
	front *Server
	fAddr string // the front
	sAddr string // Go's server alone
	host  string // api.internal:port of up
}

func advNewEnv(t testing.TB, h http.HandlerFunc) *advEnv {
	t.Helper()
	return advNewEnvMod(t, h, nil)
}

// advNewEnvMod is advNewEnv with the proxy's options changed by mod,
// which is given the upstream's port.
func advNewEnvMod(t testing.TB, h http.HandlerFunc, mod func(port string, ro *RouteOptions, o *Options)) *advEnv {
	t.Helper()
	if h == nil {
		h = advEcho
	}
	env := &advEnv{set: pkitest.New(t)}
	env.up = advNewUpstream(t, env.set, h)
	env.host = "api.internal:" + env.up.port
	var m func(*RouteOptions, *Options)
	if mod != nil {
		m = func(ro *RouteOptions, o *Options) { mod(env.up.port, ro, o) }
	}
	env.p = advNewProxy(t, env.set, m, env.up.port)
	env.front, env.fAddr = advFront(t, env.p, time.Second, 10*time.Second)
	// The reference: the same proxy, without the accelerator, under a
	// plain http.Server.
	ref := advNewProxy(t, env.set, func(ro *RouteOptions, o *Options) {
		if m != nil {
			m(ro, o)
		}
		ro.FastPath = false
	}, env.up.port)
	env.sAddr = advSlow(t, ref, time.Second, 10*time.Second)
	return env
}

// TestAdvPipelinedHandoffMidConnection writes three fast requests, a POST
// with a body and a GET in one go: the front serves the first three, then
// hands the connection over with the POST and the GET already read.
func TestAdvPipelinedHandoffMidConnection(t *testing.T) {
	env := advNewEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "12")
		w.Header().Set("X-Uri", r.RequestURI)
		if r.Method != http.MethodHead {
			fmt.Fprintf(w, "%-12s", r.RequestURI)
		}
	})
	h := env.host
	raw := advGet("GET", h, "/p1", advFrontProbe) + advGet("GET", h, "/p2?x=1", advFrontProbe) +
		advGet("HEAD", h, "/p3", advFrontProbe) +
		"POST http://" + h + "/p4 HTTP/1.1\r\nHost: " + h + "\r\n" + advFrontProbe + "\r\nContent-Length: 10\r\n\r\nhello-body" +
		advGet("GET", h, "/p5", advFrontProbe)
	c := advDial(t, env.fAddr)
	c.send(raw)
	want := []struct{ method, uri string }{{"GET", "/p1"}, {"GET", "/p2?x=1"}, {"HEAD", "/p3"}, {"POST", "/p4"}, {"GET", "/p5"}}
	for _, w := range want {
		resp, body, _ := c.final(w.method)
		wantBody := fmt.Sprintf("%-12s", w.uri)
		if w.method == "HEAD" {
			wantBody = ""
		}
		if resp.StatusCode != 200 || resp.Header.Get("X-Uri") != w.uri || body != wantBody || resp.ContentLength != 12 {
			t.Errorf("%s %s: got %d X-Uri %q length %d body %q; want 200 %q 12 %q", w.method, w.uri, resp.StatusCode,
				resp.Header.Get("X-Uri"), resp.ContentLength, body, w.uri, wantBody)
		}
	}
	if c.closed(100 * time.Millisecond) {
		t.Errorf("connection closed after the pipelined requests; want it kept")
	}
	seen := env.up.seen()
	var got []string
	for _, r := range seen {
		got = append(got, r.Method+" "+r.URI+" "+r.Body)
	}
	if w := []string{"GET /p1 ", "GET /p2?x=1 ", "HEAD /p3 ", "POST /p4 hello-body", "GET /p5 "}; !reflect.DeepEqual(got, w) {
		t.Errorf("upstream saw %q; want %q", got, w)
	}
	// And the connection goes on after the handoff.
	c.send(advGet("GET", h, "/p6"))
	if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != fmt.Sprintf("%-12s", "/p6") {
		t.Errorf("after the handoff: %d %q", resp.StatusCode, body)
	}
}

// TestAdvAmbiguousFramingClosesConnection sends a Content-Length plus
// Transfer-Encoding request hiding a second request in what a
// Content-Length reader takes for its body, after plain requests on the
// same connection. The request is read by its chunked framing (RFC 9112
// section 6.3), and the connection closes after its answer, so the
// hidden request and the one after it are never served. Pipelined, the
// Transfer-Encoding line arrives with the first request, and the
// connection closes after whichever answer is in progress then.
func TestAdvAmbiguousFramingClosesConnection(t *testing.T) {
	env := advNewEnv(t, nil)
	h := env.host
	hidden := advGet("GET", h, "/hidden")
	body := "0\r\n\r\n" + hidden
	smuggle := "POST http://" + h + "/smuggle HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: " + fmt.Sprint(len(body)) +
		"\r\nTransfer-Encoding: chunked\r\n\r\n" + body
	t.Run("after responses", func(t *testing.T) {
		env.up.seen()
		c := advDial(t, env.fAddr)
		for _, p := range []string{"/a", "/b"} {
			c.send(advGet("GET", h, p))
			if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != "GET "+p || resp.Close {
				t.Fatalf("%s: %d %q close=%v", p, resp.StatusCode, body, resp.Close)
			}
		}
		c.send(smuggle + advGet("GET", h, "/after"))
		resp, rb, _ := c.final("POST")
		if resp.StatusCode != 200 || rb != "POST /smuggle" || !resp.Close {
			t.Errorf("CL+TE request: %d %q close=%v; want 200 \"POST /smuggle\", Connection: close", resp.StatusCode, rb, resp.Close)
		}
		if !c.closed(advWait) {
			t.Errorf("connection still open after the CL+TE request")
		}
		var got []string
		for _, r := range env.up.seen() {
			got = append(got, r.Method+" "+r.URI+" "+r.Body)
		}
		if w := []string{"GET /a ", "GET /b ", "POST /smuggle "}; !reflect.DeepEqual(got, w) {
			t.Errorf("upstream saw %q; want %q", got, w)
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		env.up.seen()
		c := advDial(t, env.fAddr)
		c.send(advGet("GET", h, "/a") + advGet("GET", h, "/b") + smuggle + advGet("GET", h, "/after"))
		var answered []string
		for _, want := range []string{"GET /a", "GET /b", "POST /smuggle"} {
			resp, body, err := c.next(strings.Fields(want)[0], advWait)
			if err != nil {
				break
			}
			if resp.StatusCode != 200 || body != want {
				t.Fatalf("got %d %q; want 200 %q", resp.StatusCode, body, want)
			}
			answered = append(answered, want)
			if resp.Close {
				break
			}
		}
		if len(answered) == 0 {
			t.Fatalf("no request answered")
		}
		if !c.closed(advWait) {
			t.Errorf("connection still open after %q", answered)
		}
		var got []string
		for _, r := range env.up.seen() {
			got = append(got, r.Method+" "+r.URI)
		}
		if !reflect.DeepEqual(got, answered) {
			t.Errorf("upstream saw %q; client got answers to %q", got, answered)
		}
	})
}

// advOutcome is what a client and the upstream saw for one raw request
// followed, on the same connection, by a plain probe request.
type advOutcome struct {
	Status  int
	ErrCode string
	Close   bool
	Body    string
	Probe   string // the probe's status, or what went wrong
	Seen    []advRec
}

func (o advOutcome) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "status=%d err=%q close=%v body=%q probe=%s upstream:", o.Status, o.ErrCode, o.Close, o.Body, o.Probe)
	for _, r := range o.Seen {
		fmt.Fprintf(&b, "\n\t%s %s %s host=%q body=%q header=%v", r.Method, r.URI, r.Proto, r.Host, r.Body, r.Header)
	}
	return b.String()
}

// advOutcomeOf sends raw to addr, reads one response, then sends a probe
// GET on the same connection.
func advOutcomeOf(t *testing.T, env *advEnv, addr, raw string) advOutcome {
	t.Helper()
	env.up.seen()
	c := advDial(t, addr)
	c.send(raw)
	var o advOutcome
	resp, body, err := c.next("GET", 1500*time.Millisecond)
	if err != nil {
		o.Status, o.Body = -1, "no response: "+err.Error()
		o.Seen = env.up.seen()
		return o
	}
	o.Status, o.ErrCode, o.Close, o.Body = resp.StatusCode, resp.Header.Get(ErrorHeader), resp.Close, body
	if _, err := io.WriteString(c.c, advGet("GET", env.host, "/probe")); err != nil {
		o.Probe = "write failed"
	} else if resp, _, err := c.next("GET", advWait); err != nil {
		o.Probe = "closed"
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "reset") {
			o.Probe = err.Error()
		}
	} else {
		o.Probe = fmt.Sprint(resp.StatusCode)
	}
	o.Seen = env.up.seen()
	return o
}

// TestAdvRequestShapesMatchGoproxyPath sends odd and malformed request
// heads to the front and to Go's server alone (the goproxy path): the
// client and the upstream must see the same thing, request for request.
func TestAdvRequestShapesMatchGoproxyPath(t *testing.T) {
	env := advNewEnv(t, nil)
	h := env.host
	u := "http://" + h
	tests := []struct {
		name string
		raw  string
		// front, if set, must hold for the front's outcome (and the
		// request must take its fast path): a deliberate difference
		// from the goproxy path that is checked instead of equality.
		front func(o advOutcome) string
	}{
		{name: "plain", raw: advGet("GET", h, "/plain", "Accept: */*", "User-Agent: t/1")},
		{name: "bare LF everywhere", raw: "GET " + u + "/lf HTTP/1.1\nHost: " + h + "\nX-A: 1\n\n"},
		{name: "bare LF ends the head", raw: "GET " + u + "/lf2 HTTP/1.1\r\nHost: " + h + "\r\nX-A: 1\r\n\n"},
		{name: "bare LF inside", raw: "GET " + u + "/lf3 HTTP/1.1\r\nHost: " + h + "\nX-A: 1\r\n\r\n"},
		{name: "bare CR inside", raw: "GET " + u + "/cr HTTP/1.1\r\nHost: " + h + "\rX-A: 1\r\n\r\n"},
		{name: "obs-fold", raw: advGet("GET", h, "/fold", "X-Fold: a", " b")},
		{name: "obs-fold tab", raw: advGet("GET", h, "/fold2", "X-Fold: a", "\tContent-Length: 5")},
		{name: "duplicate Host", raw: "GET " + u + "/dup HTTP/1.1\r\nHost: " + h + "\r\nHost: evil.example\r\n\r\n"},
		{name: "duplicate Host same", raw: "GET " + u + "/dup2 HTTP/1.1\r\nHost: " + h + "\r\nHost: " + h + "\r\n\r\n"},
		{name: "missing Host", raw: "GET " + u + "/nohost HTTP/1.1\r\nX-A: 1\r\n\r\n"},
		{name: "empty Host", raw: "GET " + u + "/emptyhost HTTP/1.1\r\nHost:\r\n\r\n"},
		{name: "Host differs from target", raw: "GET " + u + "/otherhost HTTP/1.1\r\nHost: other.example:1\r\n\r\n"},
		{name: "space before colon", raw: advGet("GET", h, "/sp", "X-A : 1")},
		{name: "Host with space before colon", raw: "GET " + u + "/sp2 HTTP/1.1\r\nHost : " + h + "\r\n\r\n"},
		{name: "empty header name", raw: advGet("GET", h, "/noname", ": x")},
		{name: "NUL in value", raw: advGet("GET", h, "/nul", "X-A: a\x00b")},
		{name: "DEL in value", raw: advGet("GET", h, "/del", "X-A: a\x7fb")},
		{name: "obs-text in value", raw: advGet("GET", h, "/obs", "X-A: caf\xe9")},
		{name: "tab and spaces in value", raw: advGet("GET", h, "/ws", "X-A: \t a \t b \t ")},
		{name: "empty value", raw: advGet("GET", h, "/empty", "X-Empty:")},
		{name: "empty User-Agent", raw: advGet("GET", h, "/noua", "User-Agent:")},
		{name: "two User-Agents", raw: advGet("GET", h, "/ua2", "User-Agent: a", "User-Agent: b")},
		{name: "repeated header", raw: advGet("GET", h, "/rep", "X-R: 1", "X-S: s", "x-r: 2", "X-R: 3")},
		{name: "underscore name", raw: advGet("GET", h, "/us", "Content_Length: 5", "Transfer_Encoding: chunked")},
		{name: "CL and TE first", raw: "GET " + u + "/clte HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{name: "TE chunked GET", raw: "GET " + u + "/te HTTP/1.1\r\nHost: " + h + "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{name: "Content-Length 0 GET", raw: advGet("GET", h, "/cl0", "Content-Length: 0")},
		{name: "quote in target", raw: advGet("GET", h, "/a\"b")},
		{name: "bad percent", raw: advGet("GET", h, "/a%zz")},
		{name: "bad percent in query", raw: advGet("GET", h, "/a?q=%zz")},
		{name: "percent-encoded", raw: advGet("GET", h, "/a%41%2Fb%2f%7e%20c?x=%41+b&y=%2F")},
		{name: "sub-delims", raw: advGet("GET", h, "/a'b(c)*!$&+,;=:@~?q='x'&r=(1)&s=a/b?c")},
		{name: "dot segments", raw: advGet("GET", h, "/a/../b/./c")},
		{name: "double slash", raw: advGet("GET", h, "//x//y")},
		{name: "no path", raw: "GET " + u + " HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "query without path", raw: "GET " + u + "?x=1 HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "fragment", raw: advGet("GET", h, "/frag#x")},
		{name: "upper-case host", raw: "GET http://API.Internal:" + env.up.port + "/up HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "trailing-dot host", raw: "GET http://api.internal.:" + env.up.port + "/dot HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "zero-padded port", raw: "GET http://api.internal:0" + env.up.port + "/pad HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "user info", raw: "GET http://u:p@" + h + "/ui HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "upper-case scheme", raw: "GET HTTP://" + h + "/scheme HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "origin-form on a forward proxy", raw: "GET /origin HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "lower-case method", raw: "get " + u + "/lm HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "two spaces", raw: "GET  " + u + "/2sp HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "trailing space", raw: "GET " + u + "/ts HTTP/1.1 \r\nHost: " + h + "\r\n\r\n"},
		{name: "HTTP/1.0", raw: "GET " + u + "/10 HTTP/1.0\r\nHost: " + h + "\r\n\r\n"},
		{name: "HTTP/1.2", raw: "GET " + u + "/12 HTTP/1.2\r\nHost: " + h + "\r\n\r\n"},
		{name: "leading empty line", raw: "\r\nGET " + u + "/lead HTTP/1.1\r\nHost: " + h + "\r\n\r\n"},
		{name: "Connection names a header", raw: advGet("GET", h, "/cn", "Connection: X-Foo, keep-alive", "X-Foo: secret", "X-Bar: kept")},
		{name: "Connection close", raw: advGet("GET", h, "/cc", "Connection: close")},
		{name: "Connection close and keep-alive", raw: advGet("GET", h, "/cck", "Connection: keep-alive", "Connection: close")},
		{name: "hop-by-hop request headers", raw: advGet("GET", h, "/hop", "Connection: keep-alive", "Keep-Alive: timeout=5",
			"Proxy-Connection: keep-alive", "Proxy-Authorization: Basic Zm9vOmJhcg==", "Proxy-Authenticate: Basic",
			"X-Forwarded-Client-Cert: Hash=forged", "x-forwarded-client-cert: By=forged", "Accept: */*")},
		{name: "TE trailers", raw: advGet("GET", h, "/tet", "TE: trailers")},
		{name: "Upgrade h2c", raw: advGet("GET", h, "/h2c", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__")},
		{name: "Expect", raw: advGet("GET", h, "/exp", "Expect: 100-continue")},
		{name: "two Proxy-Authorization", raw: advGet("GET", h, "/pa2", "Proxy-Authorization: Basic a", "Proxy-Authorization: Basic b")},
		{name: "Via", raw: advGet("GET", h, "/via", "Via: 1.0 other")},
		{name: "49 headers", raw: advGet("GET", h, "/many", strings.TrimSuffix(strings.Repeat("X-M: v\r\n", 49), "\r\n"))},
		{name: "48 headers", raw: advGet("GET", h, "/many48", strings.TrimSuffix(strings.Repeat("X-M: v\r\n", 48), "\r\n"))},
		// Go's server refuses a Host header with '@' (not in httpguts'
		// host bytes); so does the front, by handing it over.
		{name: "Host with @", raw: "GET " + u + "/at HTTP/1.1\r\nHost: u@evil.example\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := tt.raw
			if !strings.Contains(raw, advFrontProbe) && strings.Contains(raw, "\r\n\r\n") {
				// Mark the request, to tell which path sent it.
				i := strings.Index(raw, "\r\n")
				raw = raw[:i+2] + advFrontProbe + "\r\n" + raw[i+2:]
			}
			fo := advOutcomeOf(t, env, env.fAddr, raw)
			// The probe header's name differs on the upstream's wire only.
			for _, r := range fo.Seen {
				if r.Header.Get("X-Adv-Path") != "" && r.Header.Get("X-Adv-Path") != "probe" {
					t.Errorf("probe header mangled: %q", r.Header["X-Adv-Path"])
				}
			}
			if tt.front != nil {
				if msg := tt.front(fo); msg != "" {
					t.Errorf("Server: %s\n%s", msg, fo)
				}
				return
			}
			so := advOutcomeOf(t, env, env.sAddr, raw)
			if !reflect.DeepEqual(fo, so) {
				t.Errorf("Server and a plain http.Server differ:\nServer: %s\nplain:  %s", fo, so)
			}
		})
	}
}

// advRawResponses are raw upstream answers, by path; HEAD gets the head
// only. "close" ones close the connection after the answer.
var advRawResponses = map[string]string{
	"/cl":         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello",
	"/cl0":        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
	"/lower":      "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-lower: 1\r\ncontent-length: 2\r\n\r\nok",
	"/dupcl":      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
	"/badcl":      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2, 3\r\n\r\nok",
	"/cookies":    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
	"/299":        "HTTP/1.1 299 Odd\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
	"/noreason":   "HTTP/1.1 404\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nno",
	"/chunked":    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: abc\r\n\r\n",
	"/chunked2":   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Late: undeclared\r\n\r\n",
	"/clte":       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"/close":      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
	"/closecl":    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbye!",
	"/http10":     "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nten",
	"/http10cl":   "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nten",
	"/204":        "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
	"/204cl":      "HTTP/1.1 204 No Content\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
	"/304":        "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nCache-Control: max-age=60\r\n\r\n",
	"/304cl":      "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
	"/103":        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
	"/103x2":      "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"/hop":        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\nX-Keep: yes\r\nContent-Length: 2\r\n\r\nok",
	"/hopnamed":   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Bar\r\nX-Bar: secret\r\nKeep-Alive: timeout=5\r\nX-Keep: yes\r\nContent-Length: 2\r\n\r\nok",
	"/hopchunk":   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nX-Keep: yes\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
	"/lfhead":     "HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 2\n\nok",
	"/lfsplit":    "HTTP/1.1 200 OK\nContent-Length: 0\n\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nsmugld",
	"/short":      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nabc",
	"/shortchunk": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
	"/bighdr":     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Big: " + strings.Repeat("b", 6000) + "\r\nContent-Length: 2\r\n\r\nok",
	"/fold":       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
	"/via":        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVia: 1.0 upstream-proxy\r\nContent-Length: 2\r\n\r\nok",
	"/big":        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("0123456789", 10000),
	"/bigchunks":  "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("2710\r\n"+strings.Repeat("x", 10000)+"\r\n", 10) + "0\r\n\r\n",
}

// advCloseAfter are the raw answers after which the upstream closes.
var advCloseAfter = map[string]bool{"/short": true, "/shortchunk": true, "/close": true, "/closecl": true, "/http10": true, "/http10cl": true}

func advRawRespond(req *http.Request, w *bufio.Writer) bool {
	s, ok := advRawResponses[req.URL.Path]
	if !ok {
		s = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nunknown"
	}
	if req.Method == http.MethodHead {
		if i := strings.LastIndex(s, "\r\n\r\n"); i >= 0 {
			s = s[:i+4]
		}
	}
	w.WriteString(s)
	return !advCloseAfter[req.URL.Path]
}

// advClientView is what a client makes of a response.
type advClientView struct {
	Status    int
	Header    http.Header
	TE        []string
	Length    int64
	Body      string
	Trailer   http.Header
	Close     bool
	Informal  int
	ProbeBody string
	BodyErr   string
}

func advView(t *testing.T, addr, method, host, path string) advClientView {
	t.Helper()
	c := advDial(t, addr)
	c.send(advGet(method, host, path))
	var (
		resp *http.Response
		body string
		err  error
		n1xx int
	)
	for {
		if resp, body, err = c.next(method, advWait); resp == nil {
			t.Fatalf("%s %s: no response: %v", method, path, err)
		}
		if resp.StatusCode >= 200 {
			break
		}
		n1xx++
	}
	h := resp.Header.Clone()
	h.Del("Date")
	v := advClientView{Status: resp.StatusCode, Header: h, TE: resp.TransferEncoding, Length: resp.ContentLength,
		Body: body, Trailer: resp.Trailer, Close: resp.Close, Informal: n1xx}
	if len(body) > 64 {
		v.Body = fmt.Sprintf("%d bytes %.20q...", len(body), body)
	}
	if err != nil {
		v.BodyErr = err.Error()
		v.Close = c.closed(advWait)
		return v
	}
	if !resp.Close {
		// The connection must still be in step.
		c.send(advGet("GET", host, "/cl"))
		if r, b, err := c.next("GET", advWait); err != nil {
			v.ProbeBody = "error: " + err.Error()
		} else {
			v.ProbeBody = fmt.Sprint(r.StatusCode, " ", b)
		}
	}
	return v
}

// TestAdvResponseFramingMatchesGoproxyPath has a raw upstream answer with
// every framing (length, chunked with trailers, up to the close, HTTP/1.0,
// 204, 304, HEAD, 1xx first, hop-by-hop headers): a client of the front
// must see what a client of the goproxy path sees, and stay in step.
func TestAdvResponseFramingMatchesGoproxyPath(t *testing.T) {
	set := pkitest.New(t)
	up := advNewRawUpstream(t, set, advRawRespond)
	p := advNewProxy(t, set, nil, up.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	sAddr := advSlow(t, p, time.Second, 10*time.Second)
	host := "api.internal:" + up.port

	type check func(v advClientView) string
	has := func(k, want string) check {
		return func(v advClientView) string {
			if got := strings.Join(v.Header.Values(k), "|"); got != want {
				return fmt.Sprintf("%s = %q; want %q", k, got, want)
			}
			return ""
		}
	}
	body := func(want string) check {
		return func(v advClientView) string {
			if v.Body != want {
				return fmt.Sprintf("body %q; want %q", v.Body, want)
			}
			return ""
		}
	}
	status := func(want int) check {
		return func(v advClientView) string {
			if v.Status != want {
				return fmt.Sprintf("status %d; want %d", v.Status, want)
			}
			return ""
		}
	}
	inStep := func(v advClientView) string {
		if v.Close || v.ProbeBody != "200 hello" {
			return fmt.Sprintf("connection not kept in step: close=%v next=%q", v.Close, v.ProbeBody)
		}
		return ""
	}
	noHop := func(v advClientView) string {
		for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "X-Bar", "Proxy-Authenticate", "Upgrade"} {
			if len(v.Header[k]) > 0 {
				return fmt.Sprintf("hop-by-hop %s: %q reached the client", k, v.Header[k])
			}
		}
		return ""
	}
	tests := []struct {
		method, path string
		checks       []check
		// skip lists header names allowed to differ from the goproxy path.
		skip []string
	}{
		{"GET", "/cl", []check{status(200), body("hello"), has("Content-Length", "5"), has("X-A", "1"), inStep}, nil},
		{"GET", "/cl0", []check{status(200), body(""), has("Content-Length", "0"), inStep}, nil},
		{"GET", "/lower", []check{status(200), body("ok"), has("X-Lower", "1"), inStep}, nil},
		{"GET", "/dupcl", []check{status(200), body("ok"), inStep}, nil},
		// The front's own error has a Content-Length, the goproxy path's is
		// chunked: both frame the same body.
		{"GET", "/badcl", []check{status(502), has(ErrorHeader, CodeUpstreamConnect), inStep}, []string{"framing"}},
		{"GET", "/cookies", []check{status(200), has("Set-Cookie", "a=1|b=2"), inStep}, nil},
		{"GET", "/299", []check{status(299), body("ok"), inStep}, nil},
		{"GET", "/noreason", []check{status(404), body("no"), inStep}, nil},
		{"GET", "/chunked", []check{status(200), body("hello world"), inStep, func(v advClientView) string {
			if v.Trailer.Get("X-Sum") != "abc" {
				return fmt.Sprintf("trailer X-Sum = %q; want abc", v.Trailer.Get("X-Sum"))
			}
			return ""
		}}, nil},
		{"GET", "/chunked2", []check{status(200), body("hello"), inStep}, nil},
		{"GET", "/clte", []check{status(200), body("hello"), inStep}, nil},
		{"GET", "/close", []check{status(200), body("until the close"), inStep}, nil},
		{"GET", "/closecl", []check{status(200), body("bye!"), inStep, noHop}, nil},
		{"GET", "/http10", []check{status(200), body("ten"), inStep}, nil},
		{"GET", "/http10cl", []check{status(200), body("ten"), inStep}, nil},
		{"GET", "/204", []check{status(204), body(""), has("X-A", "1"), has("Content-Length", ""), inStep}, nil},
		{"GET", "/204cl", []check{status(204), body(""), has("X-A", "1"), has("Content-Length", ""), inStep}, nil},
		{"GET", "/304", []check{status(304), body(""), has("Etag", `"v1"`), inStep}, nil},
		{"HEAD", "/cl", []check{status(200), body(""), has("Content-Length", "5"), inStep}, nil},
		// On the goproxy path Go's reader takes the Trailer header out and
		// goproxy announces the trailers again; the front drops it as
		// hop-by-hop. Harmless on a HEAD answer, which has no trailers.
		{"HEAD", "/chunked", []check{status(200), body(""), inStep}, []string{"Trailer"}},
		{"HEAD", "/hopnamed", []check{status(200), body(""), has("Content-Length", "2"), noHop, inStep}, nil},
		// Go's server drops Content-Type and Content-Length from a 304;
		// the front passes the upstream's on. Both are allowed (RFC 9110
		// 8.6, 15.4.5), and no body follows either way.
		{"GET", "/304cl", []check{status(304), body(""), has("Etag", `"v1"`), inStep}, []string{"Content-Type", "Content-Length"}},
		{"GET", "/103", []check{status(200), body("ok"), inStep}, nil},
		{"GET", "/103x2", []check{status(200), body("ok"), inStep}, nil},
		{"GET", "/hop", []check{status(200), body("ok"), has("X-Keep", "yes"), noHop, inStep}, nil},
		{"GET", "/hopnamed", []check{status(200), body("ok"), has("X-Keep", "yes"), noHop, inStep}, nil},
		{"GET", "/hopchunk", []check{status(200), body("ok"), has("X-Keep", "yes"), noHop, inStep}, nil},
		{"GET", "/big", []check{status(200), has("Content-Length", "100000"), inStep}, nil},
		{"GET", "/bigchunks", []check{status(200), inStep}, nil},
		{"GET", "/short", []check{status(200), body("abc"), func(v advClientView) string {
			if v.BodyErr == "" || !v.Close {
				return fmt.Sprintf("body error %q, closed %v; want a short body and a closed connection", v.BodyErr, v.Close)
			}
			return ""
		}}, nil},
		// The goproxy path ends the chunked answer cleanly when the
		// upstream breaks off, so its client takes a truncated body for
		// a whole one (a goproxy-path bug); the front gets it right, and
		// is checked alone.
		{"GET", "/shortchunk", []check{status(200), body("abc"), func(v advClientView) string {
			if v.BodyErr == "" || !v.Close {
				return fmt.Sprintf("body error %q, closed %v; want a short body and a closed connection", v.BodyErr, v.Close)
			}
			return ""
		}}, []string{"frontOnly"}},
		{"GET", "/bighdr", []check{status(200), body("ok"), has("X-Big", strings.Repeat("b", 6000)), inStep}, nil},
		{"GET", "/fold", []check{status(200), body("ok"), has("X-Fold", "a b"), inStep}, nil},
		{"GET", "/via", []check{status(200), body("ok"), has("Via", "1.0 upstream-proxy"), inStep}, nil},
		{"GET", "/lfhead", []check{status(200), body("ok"), inStep}, nil},
		{"GET", "/lfsplit", []check{status(200), body("")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			fv := advView(t, fAddr, tt.method, host, tt.path)
			if slices.Contains(tt.skip, "frontOnly") {
				for _, c := range tt.checks {
					if msg := c(fv); msg != "" {
						t.Errorf("front: %s", msg)
					}
				}
				return
			}
			sv := advView(t, sAddr, tt.method, host, tt.path)
			for _, c := range tt.checks {
				if msg := c(fv); msg != "" {
					t.Errorf("front: %s", msg)
				}
				if msg := c(sv); msg != "" {
					t.Errorf("goproxy path: %s (the check is wrong)", msg)
				}
			}
			for _, k := range tt.skip {
				if k == "framing" {
					fv.Length, sv.Length, fv.TE, sv.TE = 0, 0, nil, nil
					k = "Content-Length"
				}
				fv.Header.Del(k)
				sv.Header.Del(k)
			}
			if !reflect.DeepEqual(fv, sv) {
				t.Errorf("front and goproxy path differ:\nfront:   %+v\ngoproxy: %+v", fv, sv)
			}
		})
	}
}

// TestAdvStreamingFlowsBeforeNextWrite has the upstream send a first
// piece, then wait until the client has it before sending the rest: a
// front that held the first piece back would stall here.
func TestAdvStreamingFlowsBeforeNextWrite(t *testing.T) {
	set := pkitest.New(t)
	var mu sync.Mutex
	gates := map[string]chan struct{}{}
	gate := func(path string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if gates[path] == nil {
			gates[path] = make(chan struct{})
		}
		return gates[path]
	}
	stalled := func(path string) bool {
		select {
		case <-gate(path):
			return false
		case <-time.After(time.Second):
			return true
		}
	}
	var stalls atomic.Int64
	up := advNewUpstream(t, set, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", "12")
		}
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		if stalled(r.URL.Path) {
			stalls.Add(1)
		}
		io.WriteString(w, "second")
	})
	// A raw upstream whose first write ends inside the next chunk's size
	// line: Go's chunked reader returns the first chunk without waiting.
	raw := advNewRawUpstream(t, set, func(req *http.Request, w *bufio.Writer) bool {
		w.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n6")
		w.Flush()
		if stalled(req.URL.Path) {
			stalls.Add(1)
		}
		w.WriteString("\r\nsecond\r\n0\r\n\r\n")
		return true
	})
	p := advNewProxy(t, set, nil, up.port, raw.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	sAddr := advSlow(t, p, time.Second, 10*time.Second)
	for _, tc := range []struct{ name, port, path string }{
		{"chunked", up.port, "/chunked"},
		{"content-length", up.port, "/sized"},
		{"chunk size split", raw.port, "/split"},
	} {
		for _, srv := range []struct{ name, addr string }{{"front", fAddr}, {"goproxy", sAddr}} {
			t.Run(tc.name+"/"+srv.name, func(t *testing.T) {
				path := tc.path + "-" + srv.name
				stalls.Store(0)
				c := advDial(t, srv.addr)
				c.send(advGet("GET", "api.internal:"+tc.port, path))
				_ = c.c.SetReadDeadline(time.Now().Add(2 * advWait))
				resp, err := http.ReadResponse(c.br, nil)
				if err != nil {
					t.Fatal(err)
				}
				first := make([]byte, 6)
				if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
					t.Fatalf("first piece: %q, %v", first, err)
				}
				close(gate(path))
				rest, err := io.ReadAll(resp.Body)
				if err != nil || string(rest) != "second" {
					t.Errorf("rest: %q, %v", rest, err)
				}
				if n := stalls.Load(); n != 0 {
					t.Errorf("the client got the first piece only after the upstream sent the second (after a 1s wait)")
				}
			})
		}
	}
}

// TestAdvClientConnectionClose: a client's "Connection: close" is
// answered with "Connection: close" and a closed connection, is not passed
// upstream, and leaves the upstream connection pooled.
func TestAdvClientConnectionClose(t *testing.T) {
	env := advNewEnv(t, nil)
	for i, extra := range [][]string{{"Connection: close"}, {"Connection: keep-alive, close"}, {"connection: CLOSE"}} {
		c := advDial(t, env.fAddr)
		extra = append(extra, advFrontProbe)
		path := fmt.Sprintf("/close%d", i)
		// A request pipelined after the close must not be served.
		c.send(advGet("GET", env.host, path, extra...) + advGet("GET", env.host, "/after-close"))
		resp, body, _ := c.final("GET")
		// (http.ReadResponse takes "Connection: close" out into Close.)
		if resp.StatusCode != 200 || body != "GET "+path || !resp.Close {
			t.Errorf("%q: %d %q close=%v; want 200, Connection: close", extra, resp.StatusCode, body, resp.Close)
		}
		if !c.closed(advWait) {
			t.Errorf("%q: connection still open", extra)
		}
		if h := env.up.rawHead("GET " + path + " "); strings.Contains(strings.ToLower(h), "connection") {
			t.Errorf("%q: upstream got %q", extra, h)
		}
	}
	var got []string
	for _, r := range env.up.seen() {
		got = append(got, r.URI)
	}
	if w := []string{"/close0", "/close1", "/close2"}; !reflect.DeepEqual(got, w) {
		t.Errorf("upstream saw %q; want %q", got, w)
	}
	if n := env.up.handshakes.Load(); n != 1 {
		t.Errorf("%d upstream handshakes for three requests; want 1 (the upstream connection pooled)", n)
	}
}

// TestAdvHopByHopRequestHeaders checks, on the upstream's wire, exactly
// what a request with every hop-by-hop and forged header becomes.
func TestAdvHopByHopRequestHeaders(t *testing.T) {
	env := advNewEnv(t, nil)
	c := advDial(t, env.fAddr)
	c.send(advGet("GET", env.host, "/hop", "Connection: keep-alive", "Keep-Alive: timeout=5", "Proxy-Connection: keep-alive",
		"Proxy-Authorization: Basic Zm9vOmJhcg==", "X-Forwarded-Client-Cert: Hash=forged", "x-forwarded-client-cert: By=forged",
		"X-FORWARDED-CLIENT-CERT: Cert=forged", "Accept: */*", "x-internal-user: root", "x-lower: kept", "X-Internal-User: admin"))
	if resp, _, _ := c.final("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	want := "GET /hop HTTP/1.1\r\nHost: " + env.host + "\r\nUser-Agent: Go-http-client/1.1\r\nAccept: */*\r\nX-Lower: kept\r\n\r\n"
	if got := env.up.rawHead("GET /hop "); got != want {
		t.Errorf("upstream got\n%q\nwant\n%q", got, want)
	}
	// A header named in Connection goes no further (on either path).
	c.send(advGet("GET", env.host, "/named", "Connection: X-Foo", "X-Foo: secret", "X-Bar: kept"))
	if resp, _, _ := c.final("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	seen := env.up.seen()
	if len(seen) != 2 {
		t.Fatalf("upstream saw %d requests; want 2", len(seen))
	}
	if h := seen[1].Header; h.Get("X-Foo") != "" || h.Get("Connection") != "" || h.Get("X-Bar") != "kept" {
		t.Errorf("upstream headers %v; want X-Bar only", h)
	}
}

// advClosedAfter waits for the peer to close c and returns how long that
// took from start; it fails the test on data, or if nothing happens
// within limit.
func advClosedAfter(t *testing.T, c *advConn, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	_ = c.c.SetReadDeadline(start.Add(limit))
	b, err := c.br.ReadByte()
	if err == nil {
		rest, _ := c.br.Peek(c.br.Buffered())
		t.Fatalf("got %q; want the connection closed", append([]byte{b}, rest...))
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

// advDrip writes s in n pieces, one every interval, and stops at the
// first write error. It returns a channel closed when it is done.
func advDrip(c net.Conn, s string, n int, interval time.Duration) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		size := (len(s) + n - 1) / n
		for len(s) > 0 {
			k := min(size, len(s))
			if _, err := io.WriteString(c, s[:k]); err != nil {
				return
			}
			s = s[k:]
			time.Sleep(interval)
		}
	}()
	return done
}

// TestAdvClientTimeouts: ReadHeaderTimeout bounds a head that stalls or
// trickles in, on the first request and on later ones; IdleTimeout (not
// ReadHeaderTimeout) bounds the wait between requests.
func TestAdvClientTimeouts(t *testing.T) {
	const hdr, idle = 200 * time.Millisecond, 500 * time.Millisecond
	env := advNewEnv(t, nil)
	_, fAddr := advFront(t, env.p, hdr, idle)
	half := "GET http://" + env.host + "/half HTTP/1.1\r\nHost: " + env.host + "\r\n"
	t.Run("first head stalls", func(t *testing.T) {
		c := advDial(t, fAddr)
		start := time.Now()
		c.send(half)
		if d := advClosedAfter(t, c, start, hdr+time.Second); d < hdr-50*time.Millisecond {
			t.Errorf("closed after %v; want ReadHeaderTimeout %v", d, hdr)
		}
	})
	t.Run("second head stalls", func(t *testing.T) {
		c := advDial(t, fAddr)
		c.send(advGet("GET", env.host, "/one"))
		if resp, _, _ := c.final("GET"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		c.send(half)
		if d := advClosedAfter(t, c, start, hdr+time.Second); d < hdr-50*time.Millisecond || d > idle-50*time.Millisecond {
			t.Errorf("closed %v after the head began; want ReadHeaderTimeout %v (not IdleTimeout %v)", d, hdr, idle)
		}
	})
	t.Run("head trickles in", func(t *testing.T) {
		c := advDial(t, fAddr)
		start := time.Now()
		done := advDrip(c.c, half+strings.Repeat("X-Slow: 1\r\n", 40), 40, 25*time.Millisecond)
		if d := advClosedAfter(t, c, start, hdr+time.Second); d < hdr-50*time.Millisecond || d > hdr+300*time.Millisecond {
			t.Errorf("closed after %v; want ReadHeaderTimeout %v from the first byte", d, hdr)
		}
		_ = c.c.Close()
		<-done
	})
	t.Run("idle", func(t *testing.T) {
		c := advDial(t, fAddr)
		c.send(advGet("GET", env.host, "/one"))
		if resp, _, _ := c.final("GET"); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		start := time.Now()
		if c.closed(hdr + 150*time.Millisecond) {
			t.Fatalf("idle connection closed after %v, before IdleTimeout %v", time.Since(start), idle)
		}
		if d := advClosedAfter(t, c, start, idle+time.Second); d < idle-50*time.Millisecond {
			t.Errorf("closed after %v idle; want IdleTimeout %v", d, idle)
		}
	})
}

// TestAdvReadHeaderTimeoutSpansHandoff trickles in a head longer than the
// front's 4 KiB buffer, taking twice ReadHeaderTimeout in all: Go's
// server alone closes the connection at ReadHeaderTimeout; the front must
// not give the head a second ReadHeaderTimeout when it hands it over.
func TestAdvReadHeaderTimeoutSpansHandoff(t *testing.T) {
	const hdr = 400 * time.Millisecond
	env := advNewEnv(t, nil)
	_, fAddr := advFront(t, env.p, hdr, time.Second)
	sAddr := advSlow(t, env.p, hdr, time.Second)
	head := advGet("GET", env.host, "/bighead", "Cookie: c="+strings.Repeat("x", 6000))
	for _, srv := range []struct{ name, addr string }{{"goproxy", sAddr}, {"front", fAddr}} {
		t.Run(srv.name, func(t *testing.T) {
			c := advDial(t, srv.addr)
			start := time.Now()
			// 4.2 KiB (past the front's buffer) within 3/4 of the timeout,
			// the rest within as much again.
			done := make(chan struct{})
			go func() {
				defer close(done)
				<-advDrip(c.c, head[:4200], 6, hdr/8)
				<-advDrip(c.c, head[4200:], 6, hdr/8)
			}()
			resp, _, err := c.next("GET", 3*hdr)
			if err == nil && resp.StatusCode == 200 {
				t.Errorf("a head that took %v was served; want the connection closed at ReadHeaderTimeout %v", time.Since(start), hdr)
			}
			_ = c.c.Close()
			<-done
		})
	}
}

// advShutdownEnv is a front whose upstream holds /slow requests for
// slowFor, reporting each one's arrival on entered.
type advShutdownEnv struct {
	*advEnv
	s       *Server
	addr    string
	served  chan error // Serve's result
	entered chan string
}

func advNewShutdownEnv(t *testing.T, slowFor time.Duration) *advShutdownEnv {
	entered := make(chan string, 16)
	env := advNewEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/slow") {
			entered <- r.Method + " " + r.URL.Path
			select {
			case <-time.After(slowFor):
			case <-r.Context().Done():
				return
			}
		}
		advEcho(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: env.p, ReadHeaderTimeout: time.Second, IdleTimeout: 10 * time.Second,
		MaxHeaderBytes: 64 << 10, ErrorLog: log.New(io.Discard, "", 0)}
	se := &advShutdownEnv{advEnv: env, s: &Server{Proxy: env.p, HTTP: srv}, addr: ln.Addr().String(),
		served: make(chan error, 1), entered: entered}
	go func() { se.served <- se.s.Serve(ln) }()
	t.Cleanup(func() { _ = se.s.Close() })
	return se
}

func (se *advShutdownEnv) waitEntered(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-se.entered:
		if got != want {
			t.Fatalf("upstream got %q; want %q", got, want)
		}
	case <-time.After(advWait):
		t.Fatalf("%s never reached the upstream", want)
	}
}

// idleConns opens a connection left idle after a fast request, one
// handed over to Go's server (after a POST) and left idle, and one that
// has sent nothing.
func (se *advShutdownEnv) idleConns(t *testing.T) (fast, handed, silent *advConn) {
	fast = advDial(t, se.addr)
	fast.send(advGet("GET", se.host, "/idle"))
	if resp, _, _ := fast.final("GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	handed = advDial(t, se.addr)
	handed.send("POST http://" + se.host + "/post HTTP/1.1\r\nHost: " + se.host + "\r\nContent-Length: 1\r\n\r\nx")
	if resp, _, _ := handed.final("POST"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	silent = advDial(t, se.addr)
	time.Sleep(50 * time.Millisecond) // let the server take them up
	return fast, handed, silent
}

// TestAdvShutdown: Shutdown lets a fast request in flight finish (with
// Connection: close), closes idle connections at once, refuses new ones,
// and returns when the request is done.
func TestAdvShutdown(t *testing.T) {
	const slowFor = 400 * time.Millisecond
	se := advNewShutdownEnv(t, slowFor)
	idleFast, idleHanded, silent := se.idleConns(t)
	busy := advDial(t, se.addr)
	busy.send(advGet("GET", se.host, "/slow", advFrontProbe))
	se.waitEntered(t, "GET /slow")

	start := time.Now()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- se.s.Shutdown(ctx)
	}()
	for name, c := range map[string]*advConn{"idle fast": idleFast, "idle handed over": idleHanded, "silent": silent} {
		if d := advClosedAfter(t, c, start, slowFor/2); d > slowFor/2 {
			t.Errorf("%s connection closed %v after Shutdown; want at once", name, d)
		}
	}
	resp, body, _ := busy.final("GET")
	if resp.StatusCode != 200 || body != "GET /slow" || !resp.Close {
		t.Errorf("request in flight: %d %q close=%v; want 200 \"GET /slow\" with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if !busy.closed(advWait) {
		t.Errorf("connection of the request in flight still open after its response")
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if d := time.Since(start); d > slowFor+500*time.Millisecond {
			t.Errorf("Shutdown took %v; the request in flight took %v", d, slowFor)
		}
	case <-time.After(advWait):
		t.Fatalf("Shutdown did not return")
	}
	select {
	case err := <-se.served:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v; want ErrServerClosed", err)
		}
	case <-time.After(advWait):
		t.Errorf("Serve did not return")
	}
	if c, err := net.DialTimeout("tcp", se.addr, time.Second); err == nil {
		_ = c.Close()
		t.Errorf("a new connection was accepted after Shutdown")
	}
}

// TestAdvShutdownWaitsForHandedOverRequest: Shutdown also waits for a
// request in flight on a connection the front handed over.
func TestAdvShutdownWaitsForHandedOverRequest(t *testing.T) {
	const slowFor = 400 * time.Millisecond
	se := advNewShutdownEnv(t, slowFor)
	busy := advDial(t, se.addr)
	busy.send("POST http://" + se.host + "/slow-post HTTP/1.1\r\nHost: " + se.host + "\r\nContent-Length: 1\r\n\r\nx")
	se.waitEntered(t, "POST /slow-post")
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := se.s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if d := time.Since(start); d < slowFor/2 {
		t.Errorf("Shutdown returned after %v, before the handed-over request (%v) finished", d, slowFor)
	}
	resp, body, _ := busy.final("POST")
	if resp.StatusCode != 200 || body != "POST /slow-post" {
		t.Errorf("handed-over request in flight: %d %q", resp.StatusCode, body)
	}
}

// TestAdvClose: Close closes every connection at once, busy or idle,
// kept by the front or handed over.
func TestAdvClose(t *testing.T) {
	const slowFor = 3 * time.Second
	se := advNewShutdownEnv(t, slowFor)
	idleFast, idleHanded, silent := se.idleConns(t)
	busyFast := advDial(t, se.addr)
	busyFast.send(advGet("GET", se.host, "/slow-get"))
	se.waitEntered(t, "GET /slow-get")
	busyHanded := advDial(t, se.addr)
	busyHanded.send("POST http://" + se.host + "/slow-post HTTP/1.1\r\nHost: " + se.host + "\r\nContent-Length: 1\r\n\r\nx")
	se.waitEntered(t, "POST /slow-post")

	start := time.Now()
	if err := se.s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	for name, c := range map[string]*advConn{"idle fast": idleFast, "idle handed over": idleHanded, "silent": silent,
		"busy fast": busyFast, "busy handed over": busyHanded} {
		if d := advClosedAfter(t, c, start, time.Second); d > 500*time.Millisecond {
			t.Errorf("%s connection closed %v after Close; want at once", name, d)
		}
	}
	select {
	case err := <-se.served:
		if !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v; want ErrServerClosed", err)
		}
	case <-time.After(advWait):
		t.Errorf("Serve did not return")
	}
}

// TestAdvUpstreamErrors: when the upstream is down, or drops the request,
// the front answers itself, exactly as the goproxy path would, and the
// client connection carries the next request.
func TestAdvUpstreamErrors(t *testing.T) {
	set := pkitest.New(t)
	up := advNewUpstream(t, set, advEcho)
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, downPort, _ := net.SplitHostPort(down.Addr().String())
	_ = down.Close()
	// Reads the request and closes without a word.
	drop := advNewRawUpstream(t, set, func(*http.Request, *bufio.Writer) bool { return false })
	p := advNewProxy(t, set, nil, up.port, downPort, drop.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	sAddr := advSlow(t, p, time.Second, 10*time.Second)
	for _, tc := range []struct {
		name, port, code, contains string
	}{
		{"refused", downPort, CodeUpstreamConnect, "connection refused"},
		{"dropped", drop.port, CodeUpstreamConnect, "connection closed by upstream before a response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bodies [2]string
			for i, addr := range []string{fAddr, sAddr} {
				c := advDial(t, addr)
				c.send(advGet("GET", "api.internal:"+tc.port, "/x"))
				resp, body, _ := c.final("GET")
				wantError(t, resp, body, http.StatusBadGateway, tc.code, tc.contains)
				if resp.Close {
					t.Errorf("the proxy's own 502 closes the client connection")
				}
				bodies[i] = body
				c.send(advGet("GET", "api.internal:"+up.port, "/next"))
				if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != "GET /next" {
					t.Errorf("next request: %d %q", resp.StatusCode, body)
				}
			}
			if bodies[0] != bodies[1] {
				t.Errorf("front says %q; goproxy path says %q", bodies[0], bodies[1])
			}
		})
	}
	t.Run("with Connection: close", func(t *testing.T) {
		c := advDial(t, fAddr)
		c.send(advGet("GET", "api.internal:"+downPort, "/x", "Connection: close"))
		resp, body, _ := c.final("GET")
		wantError(t, resp, body, http.StatusBadGateway, CodeUpstreamConnect, "connection refused")
		if !resp.Close || !c.closed(advWait) {
			t.Errorf("Connection: close not honoured on the proxy's own error")
		}
	})
}

// TestAdvLargeHeads: a head past the front's 4 KiB buffer is handed over
// whole (also mid-connection, with requests before and after it), and one
// past Go's limit gets 431.
func TestAdvLargeHeads(t *testing.T) {
	env := advNewEnv(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s cookie=%d", r.RequestURI, len(r.Header.Get("Cookie")))
	})
	cookie := "Cookie: c=" + strings.Repeat("k", 6<<10)
	c := advDial(t, env.fAddr)
	c.send(advGet("GET", env.host, "/small1", advFrontProbe) + advGet("GET", env.host, "/big", cookie) +
		advGet("GET", env.host, "/small2"))
	for _, want := range []string{"/small1 cookie=0", fmt.Sprintf("/big cookie=%d", 2+6<<10), "/small2 cookie=0"} {
		if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != want {
			t.Errorf("got %d %q; want 200 %q", resp.StatusCode, body, want)
		}
	}
	// Heads around the front's 4 KiB buffer, pipelined.
	var raw strings.Builder
	var want []string
	for _, size := range []int{4094, 4095, 4096, 4097, 4098} {
		path := fmt.Sprintf("/b%d", size)
		base := len(advGet("GET", env.host, path, "Cookie: c="))
		raw.WriteString(advGet("GET", env.host, path, "Cookie: c="+strings.Repeat("k", size-base)))
		want = append(want, fmt.Sprintf("%s cookie=%d", path, 2+size-base))
	}
	c.send(raw.String())
	for _, w := range want {
		if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != w {
			t.Errorf("got %d %q; want 200 %q", resp.StatusCode, body, w)
		}
	}
	t.Run("too large", func(t *testing.T) {
		env.up.seen()
		c := advDial(t, env.fAddr)
		done := advDrip(c.c, advGet("GET", env.host, "/huge", "Cookie: c="+strings.Repeat("k", 100<<10)), 1, 0)
		resp, _, err := c.next("GET", advWait)
		if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("got %v, %v; want 431", resp, err)
		}
		_ = c.c.Close()
		<-done
		if n := len(env.up.seen()); n != 0 {
			t.Errorf("%d requests reached the upstream", n)
		}
	})
}

// TestAdvClientGoneStopsUpstreamWait: a client that goes away while the
// upstream has not answered yet: on the goproxy path Go's server notices
// and the upstream request is cancelled (the upstream sees its request
// context end); the front must not keep the upstream working for nobody.
func TestAdvClientGoneStopsUpstreamWait(t *testing.T) {
	cancelled := make(chan string, 4)
	entered := make(chan string, 4)
	env := advNewEnv(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- r.URL.Path
		select {
		case <-r.Context().Done():
			cancelled <- r.URL.Path
		case <-time.After(30 * time.Second):
		}
	})
	for _, srv := range []struct{ name, addr string }{{"goproxy", env.sAddr}, {"front", env.fAddr}} {
		t.Run(srv.name, func(t *testing.T) {
			c := advDial(t, srv.addr)
			path := "/hang-" + srv.name
			c.send(advGet("GET", env.host, path))
			select {
			case <-entered:
			case <-time.After(advWait):
				t.Fatal("request never reached the upstream")
			}
			_ = c.c.Close()
			// Well under the response-header timeout (60s by default);
			// loose enough for a loaded machine under the race detector. A
			// late cancellation of the other subtest's request is skipped.
			timeout := time.After(10 * time.Second)
			for done := false; !done; {
				select {
				case got := <-cancelled:
					if got == path {
						done = true
					} else {
						t.Logf("cancelled %q (a request of before) while waiting for %q", got, path)
					}
				case <-timeout:
					t.Errorf("the upstream request was not cancelled within 10s of the client leaving")
					done = true
				}
			}
		})
	}
}

// TestAdvGatewayMatchesGoproxyPath: origin-form requests on a gateway
// listener, compared with the goproxy path.
func TestAdvGatewayMatchesGoproxyPath(t *testing.T) {
	env := advNewEnvMod(t, nil, func(port string, ro *RouteOptions, o *Options) {
		o.Upstream, _ = url.Parse("https://api.internal:" + port + "/")
		ro.Hosts = []HostPattern{mustParseHostPattern("api.internal:" + port)}
	})
	for _, tc := range []struct{ name, raw string }{
		{"plain", "GET /g?x=1 HTTP/1.1\r\nHost: anything\r\n" + advFrontProbe + "\r\n\r\n"},
		{"root", "GET / HTTP/1.1\r\nHost: anything\r\n" + advFrontProbe + "\r\n\r\n"},
		{"encoded", "GET /a%41%2fb'(x)?q=%41 HTTP/1.1\r\nHost: anything\r\n" + advFrontProbe + "\r\n\r\n"},
		{"double slash", "GET //evil.example/x HTTP/1.1\r\nHost: anything\r\n" + advFrontProbe + "\r\n\r\n"},
		{"asterisk", "GET * HTTP/1.1\r\nHost: anything\r\n" + advFrontProbe + "\r\n\r\n"},
		{"absolute form", "GET http://" + env.host + "/abs HTTP/1.1\r\nHost: anything\r\n" + advFrontProbe + "\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fo := advOutcomeOf(t, env, env.fAddr, tc.raw)
			so := advOutcomeOf(t, env, env.sAddr, tc.raw)
			if !reflect.DeepEqual(fo, so) {
				t.Errorf("front and goproxy path differ:\nfront:   %s\ngoproxy: %s", fo, so)
			}
		})
	}
}

// TestAdvProxyAuthPerRequest: with callers configured, every request on
// a connection is judged on its own credentials (the front caches the
// last ones it accepted), as on the goproxy path, and the credentials
// never reach the upstream.
func TestAdvProxyAuthPerRequest(t *testing.T) {
	env := advNewEnvMod(t, nil, func(_ string, ro *RouteOptions, o *Options) {
		ro.Clients = []string{"alice"}
		o.Clients = NewClients(map[string]string{"alice": "pa", "bob": "pb"})
	})
	basic := func(userpass string) string {
		return "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(userpass))
	}
	alice := basic("alice:pa")
	for si, seq := range [][]string{
		{alice, alice, ""},
		{alice, basic("bob:pb"), alice},
		{alice, basic("alice:wrong")},
		{alice, "Proxy-Authorization:"},
		{alice, "Proxy-Authorization: Basic"},
		{alice, "Proxy-Authorization: basic " + base64.StdEncoding.EncodeToString([]byte("alice:pa")) + " \t"},
		{alice, basic("alice:pa\x00")},
		{basic("alice:wrong"), alice},
	} {
		t.Run(strings.Join(seq, ";"), func(t *testing.T) {
			var got [2][]string
			for i, addr := range []string{env.fAddr, env.sAddr} {
				env.up.seen()
				c := advDial(t, addr)
				for j, auth := range seq {
					extra := []string{advFrontProbe}
					if auth != "" {
						extra = append(extra, auth)
					}
					c.send(advGet("GET", env.host, fmt.Sprintf("/s%d-%c-r%d", si, "fs"[i], j), extra...))
					resp, _, err := c.next("GET", advWait)
					if err != nil {
						got[i] = append(got[i], "error")
						break
					}
					got[i] = append(got[i], fmt.Sprint(resp.StatusCode, " ", resp.Header.Get(ErrorHeader)))
				}
				for _, r := range env.up.seen() {
					got[i] = append(got[i], "upstream "+r.URI[strings.LastIndex(r.URI, "-"):])
					if v := r.Header.Values("Proxy-Authorization"); len(v) > 0 {
						t.Errorf("upstream got Proxy-Authorization %q", v)
					}
				}
			}
			if !reflect.DeepEqual(got[0], got[1]) {
				t.Errorf("front %q; goproxy path %q", got[0], got[1])
			}
		})
	}
}

// TestAdvProxyAuthNotCarriedAcrossConnections: the credentials a
// connection proved are forgotten with it (the front reuses its
// per-connection state).
func TestAdvProxyAuthNotCarriedAcrossConnections(t *testing.T) {
	env := advNewEnvMod(t, nil, func(_ string, _ *RouteOptions, o *Options) {
		o.Clients = NewClients(map[string]string{"alice": "pa"})
	})
	alice := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:pa"))
	for i := range 20 {
		a := advDial(t, env.fAddr)
		a.send(advGet("GET", env.host, "/ok", alice, "Connection: close"))
		if resp, _, _ := a.final("GET"); resp.StatusCode != 200 {
			t.Fatalf("alice: %d", resp.StatusCode)
		}
		if !a.closed(advWait) {
			t.Fatal("connection not closed")
		}
		b := advDial(t, env.fAddr)
		b.send(advGet("GET", env.host, "/anon"))
		if resp, _, _ := b.final("GET"); resp.StatusCode != http.StatusProxyAuthRequired {
			t.Fatalf("round %d: a request without credentials on a new connection got %d; want 407", i, resp.StatusCode)
		}
	}
	for _, r := range env.up.seen() {
		if r.URI != "/ok" {
			t.Errorf("upstream got %s", r.URI)
		}
	}
}

// TestAdvViaMatchesGoproxyPath: with Via configured, the front adds it to
// requests and responses as the goproxy path does.
func TestAdvViaMatchesGoproxyPath(t *testing.T) {
	set := pkitest.New(t)
	raw := advNewRawUpstream(t, set, advRawRespond)
	up := advNewUpstream(t, set, advEcho)
	p := advNewProxy(t, set, func(_ *RouteOptions, o *Options) { o.Via = "mtlsproxy" }, raw.port, up.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	sAddr := advSlow(t, p, time.Second, 10*time.Second)
	for _, tc := range []struct {
		method, path, want string
	}{
		{"GET", "/cl", "1.1 mtlsproxy"},
		{"GET", "/chunked", "1.1 mtlsproxy"},
		{"GET", "/via", "1.0 upstream-proxy, 1.1 mtlsproxy"},
		{"GET", "/http10cl", "1.0 mtlsproxy"},
		{"GET", "/204", "1.1 mtlsproxy"},
		{"HEAD", "/cl", "1.1 mtlsproxy"},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			fv := advView(t, fAddr, tc.method, "api.internal:"+raw.port, tc.path)
			sv := advView(t, sAddr, tc.method, "api.internal:"+raw.port, tc.path)
			if got := strings.Join(fv.Header.Values("Via"), "|"); got != tc.want {
				t.Errorf("front: Via %q; want %q", got, tc.want)
			}
			if !reflect.DeepEqual(fv, sv) {
				t.Errorf("front and goproxy path differ:\nfront:   %+v\ngoproxy: %+v", fv, sv)
			}
		})
	}
	host := "api.internal:" + up.port
	for _, tc := range []struct{ name, extra, want string }{
		{"none", "", "1.1 mtlsproxy"},
		{"prior", "Via: 1.0 other", "1.0 other, 1.1 mtlsproxy"},
	} {
		t.Run("request "+tc.name, func(t *testing.T) {
			var got [2]string
			for i, addr := range []string{fAddr, sAddr} {
				up.seen()
				c := advDial(t, addr)
				extra := []string{"Accept: */*"}
				if tc.extra != "" {
					extra = append(extra, tc.extra)
				}
				c.send(advGet("GET", host, "/req-via", extra...))
				if resp, _, _ := c.final("GET"); resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				seen := up.seen()
				if len(seen) != 1 {
					t.Fatalf("upstream saw %d requests", len(seen))
				}
				got[i] = strings.Join(seen[0].Header.Values("Via"), "|")
			}
			if got[0] != tc.want || got[1] != tc.want {
				t.Errorf("upstream got Via %q from the front, %q from the goproxy path; want %q", got[0], got[1], tc.want)
			}
		})
	}
}

// TestAdvHTTP2UpstreamHandsOver: an upstream that picks HTTP/2 by ALPN
// gets every request through the goproxy path, the first one included.
func TestAdvHTTP2UpstreamHandsOver(t *testing.T) {
	set := pkitest.New(t)
	up := fidNewUpstream(t, set, true, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.RequestURI)
	})
	p := advNewProxy(t, set, func(ro *RouteOptions, _ *Options) { ro.HTTP2 = true }, up.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	host := "api.internal:" + up.port
	for i := range 2 {
		c := advDial(t, fAddr)
		c.send(advGet("GET", host, "/a") + advGet("GET", host, "/b"))
		for _, path := range []string{"/a", "/b"} {
			if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != "HTTP/2.0 "+path {
				t.Errorf("connection %d, %s: %d %q; want 200 \"HTTP/2.0 %s\"", i, path, resp.StatusCode, body, path)
			}
		}
	}
}

// TestAdvShutdownWithConnectionsArriving calls Shutdown while connections
// that have sent nothing are being taken up: each must be closed at once
// like any idle one, so that Shutdown returns at once. (Server.stop cuts
// an idle connection's read deadline, but a connection whose goroutine
// has not yet set its first deadline then sets it again, to
// ReadHeaderTimeout, and Shutdown waits that long.)
func TestAdvShutdownWithConnectionsArriving(t *testing.T) {
	set := pkitest.New(t)
	p := advNewProxy(t, set, nil, "1")
	const conns = 30
	for i := range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second,
			ErrorLog: log.New(io.Discard, "", 0)}
		s := &Server{Proxy: p, HTTP: srv}
		served := make(chan error, 1)
		go func() { served <- s.Serve(ln) }()
		var cs []net.Conn
		for range conns {
			if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
				cs = append(cs, c)
			}
		}
		time.Sleep(time.Duration(i%10) * 10 * time.Microsecond)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err = s.Shutdown(ctx)
		cancel()
		open := 0
		if err != nil {
			for _, c := range cs {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				if _, rerr := c.Read(make([]byte, 1)); errors.Is(rerr, os.ErrDeadlineExceeded) {
					open++
				}
			}
		}
		_ = s.Close()
		<-served
		for _, c := range cs {
			_ = c.Close()
		}
		if err != nil {
			t.Fatalf("round %d: Shutdown with only silent connections: %v; %d of them still open after 300ms", i, err, open)
		}
	}
}

// TestAdvUpstreamClosesIdleConnection: an upstream that closes each
// connection after its answer without saying so leaves a dead connection
// in the pool; the next GET is retried on a new one, not answered 502.
func TestAdvUpstreamClosesIdleConnection(t *testing.T) {
	set := pkitest.New(t)
	up := advNewRawUpstream(t, set, func(req *http.Request, w *bufio.Writer) bool {
		w.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
		return false
	})
	p := advNewProxy(t, set, nil, up.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	c := advDial(t, fAddr)
	for i := range 3 {
		c.send(advGet("GET", "api.internal:"+up.port, "/x"))
		if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != "ok" {
			t.Errorf("request %d: %d %q; want 200 \"ok\"", i, resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond) // let the close arrive
	}
	if n := up.handshakes.Load(); n != 3 {
		t.Errorf("%d upstream handshakes; want 3", n)
	}
}

// TestAdvUpstreamPooledBeforeResponseEnds: sequential requests, each on a
// new client connection (as from clients that do not keep connections),
// share one upstream connection: the front must give it back to the pool
// before the client has the whole response and sends its next request,
// or that request dials (and handshakes) again.
func TestAdvUpstreamPooledBeforeResponseEnds(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		front        bool
	}{{"plain/GET", "GET", false}, {"plain/HEAD", "HEAD", false}, {"Server/GET", "GET", true}, {"Server/HEAD", "HEAD", true}} {
		method := tc.method
		t.Run(tc.name, func(t *testing.T) {
			env := advNewEnv(t, nil)
			addr := env.sAddr
			if tc.front {
				addr = env.fAddr
			}
			for i := range 30 {
				c := advDial(t, addr)
				c.send(advGet(method, env.host, fmt.Sprintf("/seq%d", i), advFrontProbe))
				if resp, _, _ := c.final(method); resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				_ = c.c.Close()
			}
			if n := env.up.handshakes.Load(); n != 1 {
				t.Errorf("30 sequential %s requests made %d upstream handshakes; want 1", method, n)
			}
		})
	}
}
