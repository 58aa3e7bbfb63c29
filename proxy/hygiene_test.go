package proxy

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// hardSeen is one request as the upstream received it.
type hardSeen struct {
	uri    string
	header http.Header
	body   string
	length int64
	te     []string
}

// hardHygieneEnv is a Proxy behind a real http.Server (as in run), with
// the server's limits, one route allowing '*' and the proxy's own address
// in Self, in front of an upstream that records every request.
type hardHygieneEnv struct {
	set   *pkitest.Set
	up    *upstream
	route *Route
	srv   *httptest.Server
	addr  string // the proxy's listener, host:port
	logs  *observer.ObservedLogs

	entered atomic.Int64 // requests that reached the proxy handler
	mu      sync.Mutex
	handled []string // RequestURIs the proxy handler saw
	seen    []hardSeen
}

const hardReadHeaderTimeout = time.Second

func hardNewHygieneEnv(t *testing.T) *hardHygieneEnv {
	t.Helper()
	env := &hardHygieneEnv{set: pkitest.New(t)}
	env.up = newUpstream(t, env.set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		env.mu.Lock()
		env.seen = append(env.seen, hardSeen{uri: r.RequestURI, header: r.Header.Clone(), body: string(b),
			length: r.ContentLength, te: r.TransferEncoding})
		env.mu.Unlock()
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "SETCOOKIE-SECRET-5"})
		fmt.Fprintf(w, "ok uri=%s body=%d", r.RequestURI, len(b))
	})
	id, err := tlsconf.LoadPEMIdentity("app", env.set.ClientCert, env.set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	// --allow '*': every host is routed; only api.internal resolves to the
	// upstream.
	env.route = NewRoute(RouteOptions{Name: "any", Hosts: hardHosts("*"), Identity: id, RootCAs: env.set.CA.Pool(),
		Resolve: Resolve{"api.internal:" + env.up.port: "127.0.0.1:" + env.up.port}})
	core, logs := observer.New(zap.DebugLevel)
	env.logs = logs
	var p *Proxy
	env.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		env.entered.Add(1)
		env.mu.Lock()
		env.handled = append(env.handled, r.RequestURI)
		env.mu.Unlock()
		p.ServeHTTP(w, r)
	}))
	env.addr = env.srv.Listener.Addr().String()
	p, err = New(Options{Routes: []*Route{env.route}, Logger: zap.New(core), StripHeaders: []string{"X-Internal-User"},
		Self: []string{env.addr}})
	if err != nil {
		t.Fatal(err)
	}
	// The settings run gives its listeners.
	env.srv.Config.ReadHeaderTimeout = hardReadHeaderTimeout
	env.srv.Config.MaxHeaderBytes = 1 << 20
	env.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	env.srv.Start()
	t.Cleanup(env.srv.Close)
	return env
}

func (env *hardHygieneEnv) target(path string) string {
	return "http://api.internal:" + env.up.port + path
}

// seenSince returns the requests the upstream got after the first n.
func (env *hardHygieneEnv) seenSince(n int) []hardSeen {
	env.mu.Lock()
	defer env.mu.Unlock()
	return append([]hardSeen(nil), env.seen[n:]...)
}

func (env *hardHygieneEnv) seenCount() int {
	env.mu.Lock()
	defer env.mu.Unlock()
	return len(env.seen)
}

// hardExchange is what came back for raw bytes written to a listener.
type hardExchange struct {
	resps  []*http.Response
	bodies []string
	// closed reports that the proxy closed the connection after the last
	// response (EOF within a short wait), rather than keeping it open.
	closed bool
	err    error // the first error reading a response, if any
}

// hardRaw writes raw to addr (while reading, so a server that answers
// before the whole request is in does not deadlock), reads up to want
// responses, and then, if probe, checks whether the connection was closed
// (waiting up to a second for more bytes).
func hardRaw(t *testing.T, addr, raw string, want int, probe bool) hardExchange {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	go func() { _, _ = io.WriteString(c, raw) }()
	br := bufio.NewReader(c)
	var ex hardExchange
	for range want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			ex.err = err
			return ex
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			ex.err = err
			return ex
		}
		ex.resps = append(ex.resps, resp)
		ex.bodies = append(ex.bodies, string(b))
	}
	if !probe {
		return ex
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, err = br.ReadByte()
	ex.closed = err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	return ex
}

// hardOne expects exactly one response to raw and returns it, and if
// probe whether the connection was closed after it.
func hardOne(t *testing.T, addr, raw string, probe bool) (*http.Response, string, bool) {
	t.Helper()
	ex := hardRaw(t, addr, raw, 1, probe)
	if ex.err != nil {
		t.Fatalf("no response to %.80q: %v", raw, ex.err)
	}
	return ex.resps[0], ex.bodies[0], ex.closed
}

// TestHygiene speaks raw bytes to a proxy listener: each malformed or
// dangerous request gets a clear 4xx (or, for what Go's server accepts by
// design, a safe reframing), nothing unintended reaches the upstream,
// no secret reaches the log, and afterwards the proxy still serves and
// has no goroutines left over.
func TestHygiene(t *testing.T) {
	env := hardNewHygieneEnv(t)
	host := "api.internal:" + env.up.port

	client := func() (*http.Client, *http.Transport) {
		pu, _ := url.Parse("http://" + env.addr)
		tr := &http.Transport{Proxy: http.ProxyURL(pu), DisableCompression: true}
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
	}
	serves := func(t *testing.T) {
		t.Helper()
		c, tr := client()
		defer tr.CloseIdleConnections()
		resp, err := c.Get(env.target("/alive"))
		if err != nil {
			t.Fatalf("proxy no longer serves: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "ok uri=/alive body=0" {
			t.Fatalf("proxy no longer serves: %d %q", resp.StatusCode, b)
		}
	}
	// Warm up (the first request starts long-lived goroutines), drop the
	// pooled upstream connection, and take the goroutine baseline.
	serves(t)
	env.route.CloseIdleConnections()
	baseline := hardStableGoroutines()

	// refused checks that raw gets status and reaches neither the proxy
	// handler nor the upstream.
	refused := func(t *testing.T, raw string, status int) (*http.Response, string) {
		t.Helper()
		entered, seen := env.entered.Load(), env.seenCount()
		resp, body, closed := hardOne(t, env.addr, raw, true)
		if resp.StatusCode != status {
			t.Errorf("status = %d %q; want %d", resp.StatusCode, body, status)
		}
		if !closed {
			t.Errorf("connection left open after a %d for a malformed request; want it closed", resp.StatusCode)
		}
		if n := env.entered.Load() - entered; n != 0 {
			t.Errorf("proxy handler entered %d times; want 0: the server must refuse it first", n)
		}
		if n := env.seenCount() - seen; n != 0 {
			t.Errorf("upstream got %d requests; want 0", n)
		}
		return resp, body
	}

	t.Run("malformed request line", func(t *testing.T) {
		for name, raw := range map[string]string{
			"garbage":         "GARBAGE\r\n\r\n",
			"binary":          "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
			"no version":      "GET http://" + host + "/\r\nHost: " + host + "\r\n\r\n",
			"two spaces only": "GET  HTTP/1.1\r\nHost: " + host + "\r\n\r\n",
			"bad version":     "GET http://" + host + "/ HTTP/x.y\r\nHost: " + host + "\r\n\r\n",
		} {
			t.Run(name, func(t *testing.T) { refused(t, raw, http.StatusBadRequest) })
		}
	})

	t.Run("invalid header name", func(t *testing.T) {
		for name, h := range map[string]string{
			"space in name":      "Bad Name: v",
			"space before colon": "Transfer-Encoding : chunked",
			"control byte":       "X-Bad\x01: v",
			"no colon":           "X-No-Colon",
			"empty name":         ": v",
		} {
			t.Run(name, func(t *testing.T) {
				refused(t, "GET "+env.target("/h")+" HTTP/1.1\r\nHost: "+host+"\r\n"+h+"\r\n\r\n", http.StatusBadRequest)
			})
		}
		t.Run("control byte in value", func(t *testing.T) {
			refused(t, "GET "+env.target("/h")+" HTTP/1.1\r\nHost: "+host+"\r\nX-V: a\x00b\r\n\r\n", http.StatusBadRequest)
			refused(t, "GET "+env.target("/h")+" HTTP/1.1\r\nHost: "+host+"\r\nX-V: a\rb\r\n\r\n", http.StatusBadRequest)
		})
	})

	// Content-Length with Transfer-Encoding. RFC 9112 section 6.3 lets an
	// intermediary forward such a message after dropping Content-Length
	// and framing by Transfer-Encoding; Go's server does exactly that
	// (it does not answer 400). What matters is that the upstream gets one
	// unambiguously framed request, so that no request hidden in the body
	// is executed as a separate one.
	t.Run("CL+TE", func(t *testing.T) {
		hidden := "GET /smuggled HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
		for _, tt := range []struct {
			name string
			cl   int // the Content-Length sent next to Transfer-Encoding: chunked
		}{
			// A CL-framing hop would end the body inside the chunk size
			// line and take the hidden request as the next one.
			{"TE.CL: short Content-Length", 4},
			// A CL-framing hop would wait for more body than the chunks.
			{"CL.TE: long Content-Length", 500},
		} {
			t.Run(tt.name, func(t *testing.T) {
				seen, handled := env.seenCount(), env.entered.Load()
				chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden)
				raw := "POST " + env.target("/clte") + " HTTP/1.1\r\nHost: " + host + "\r\n" +
					fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n", tt.cl) + chunked
				ex := hardRaw(t, env.addr, raw, 1, true)
				if ex.err != nil {
					t.Fatalf("no response: %v", ex.err)
				}
				if ex.resps[0].StatusCode != http.StatusOK {
					t.Fatalf("status = %d %q; want 200 (Go's server reframes CL+TE by Transfer-Encoding)", ex.resps[0].StatusCode, ex.bodies[0])
				}
				got := env.seenSince(seen)
				if len(got) != 1 {
					t.Fatalf("upstream got %d requests; want exactly 1: %+v", len(got), got)
				}
				r := got[0]
				if r.uri != "/clte" || r.body != hidden {
					t.Errorf("upstream got %s with body %q; want /clte with the chunked data as its body", r.uri, r.body)
				}
				if v := r.header.Values("Content-Length"); len(v) != 0 || r.length != -1 || fmt.Sprint(r.te) != "[chunked]" {
					t.Errorf("upstream framing: Content-Length %q, length %d, TE %v; want no Content-Length, chunked", v, r.length, r.te)
				}
				if n := env.entered.Load() - handled; n != 1 {
					t.Errorf("proxy handler entered %d times; want 1", n)
				}
				// Observed, not required: Go's server keeps the connection
				// open after such a request, where RFC 9112 section 6.1 says
				// a server that processes it must close it.
				t.Logf("connection closed after the CL+TE request: %v", ex.closed)
			})
		}
		t.Run("pipelined after the chunked body", func(t *testing.T) {
			// By Transfer-Encoding the second request is a request of its
			// own; by Content-Length it would be body. The proxy handles it
			// as its own request (routed, logged, framed afresh): every
			// request the upstream gets is one the proxy handler saw.
			seen := env.seenCount()
			env.mu.Lock()
			handledBefore := len(env.handled)
			env.mu.Unlock()
			second := "GET " + env.target("/second") + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"
			raw := "POST " + env.target("/first") + " HTTP/1.1\r\nHost: " + host + "\r\n" +
				fmt.Sprintf("Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n", len("3\r\nabc\r\n0\r\n\r\n")+len(second)) +
				"3\r\nabc\r\n0\r\n\r\n" + second
			ex := hardRaw(t, env.addr, raw, 2, false)
			t.Logf("responses: %d, error %v", len(ex.resps), ex.err)
			env.mu.Lock()
			handled := append([]string(nil), env.handled[handledBefore:]...)
			env.mu.Unlock()
			for _, r := range env.seenSince(seen) {
				if !strings.Contains(strings.Join(handled, " "), r.uri) {
					t.Errorf("upstream got %s, which the proxy handler never saw (handled: %v)", r.uri, handled)
				}
				if r.uri == "/first" && r.body != "abc" {
					t.Errorf("upstream got /first with body %q; want abc", r.body)
				}
			}
		})
		t.Run("HTTP/1.0 with Transfer-Encoding", func(t *testing.T) {
			// Go ignores Transfer-Encoding in HTTP/1.0 and frames by
			// Content-Length; the upstream gets exactly those bytes.
			seen := env.seenCount()
			raw := "POST " + env.target("/http10") + " HTTP/1.0\r\nHost: " + host + "\r\n" +
				"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"
			resp, body, closed := hardOne(t, env.addr, raw, true)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d %q", resp.StatusCode, body)
			}
			got := env.seenSince(seen)
			if len(got) != 1 || got[0].body != "abc" || got[0].length != 3 || len(got[0].te) != 0 {
				t.Errorf("upstream got %+v; want one request with the 3-byte body and no Transfer-Encoding", got)
			}
			if !closed {
				t.Error("HTTP/1.0 connection left open")
			}
		})
	})

	t.Run("repeated differing Content-Length", func(t *testing.T) {
		refused(t, "POST "+env.target("/cl")+" HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", http.StatusBadRequest)
		refused(t, "POST "+env.target("/cl")+" HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 3, 4\r\n\r\nabcd", http.StatusBadRequest)
		refused(t, "POST "+env.target("/cl")+" HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: -1\r\n\r\nabcd", http.StatusBadRequest)
		refused(t, "POST "+env.target("/cl")+" HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: +3\r\n\r\nabc", http.StatusBadRequest)
	})

	t.Run("unsupported Transfer-Encoding", func(t *testing.T) {
		for _, te := range []string{"gzip, chunked", "chunked, chunked", "xchunked", "identity"} {
			refused(t, "POST "+env.target("/te")+" HTTP/1.1\r\nHost: "+host+"\r\nTransfer-Encoding: "+te+"\r\n\r\n0\r\n\r\n",
				http.StatusNotImplemented)
		}
	})

	// obs-fold (a header line continued on the next line with leading
	// whitespace). Go's server does not answer 400: it unfolds the value,
	// replacing the line break and indentation with one space (RFC 9112
	// section 5.2 allows a proxy to do that), so nothing folded goes on.
	// A continuation line before any header is malformed and gets 400.
	t.Run("obs-fold", func(t *testing.T) {
		seen := env.seenCount()
		raw := "GET " + env.target("/fold") + " HTTP/1.1\r\nHost: " + host + "\r\nX-Fold: a\r\n  b\r\n\tX-Injected: c\r\nConnection: close\r\n\r\n"
		resp, body, _ := hardOne(t, env.addr, raw, false)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d %q; want 200 (folded)", resp.StatusCode, body)
		}
		got := env.seenSince(seen)
		if len(got) != 1 {
			t.Fatalf("upstream got %d requests; want 1", len(got))
		}
		if v := got[0].header.Values("X-Fold"); len(v) != 1 || v[0] != "a b X-Injected: c" {
			t.Errorf("upstream saw X-Fold %q; want one unfolded value %q", v, "a b X-Injected: c")
		}
		if v := got[0].header.Values("X-Injected"); len(v) != 0 {
			t.Errorf("a continuation line became header X-Injected: %q", v)
		}
		for name, vs := range got[0].header {
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n") {
					t.Errorf("upstream saw a line break in %s: %q", name, v)
				}
			}
		}
		refused(t, "GET "+env.target("/fold")+" HTTP/1.1\r\n X-Fold: a\r\nHost: "+host+"\r\n\r\n", http.StatusBadRequest)
	})

	t.Run("headers over the limit", func(t *testing.T) {
		big := strings.Repeat("a", 1<<20+8<<10)
		refused(t, "GET "+env.target("/big")+" HTTP/1.1\r\nHost: "+host+"\r\nX-Big: "+big+"\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge)
		// Many small headers count together.
		many := strings.Repeat("X-Many: "+strings.Repeat("m", 1000)+"\r\n", 1100)
		refused(t, "GET "+env.target("/big")+" HTTP/1.1\r\nHost: "+host+"\r\n"+many+"\r\n", http.StatusRequestHeaderFieldsTooLarge)
		// So does the request line.
		refused(t, "GET "+env.target("/"+big)+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge)
	})

	t.Run("absolute URL that does not parse", func(t *testing.T) {
		for _, target := range []string{
			"http://[::1/",
			"http://api.internal:" + env.up.port + "/%zz",
			"http://api%zz.internal/",
			"http://[::1]:80:80/",
		} {
			t.Run(target, func(t *testing.T) {
				refused(t, "GET "+target+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n", http.StatusBadRequest)
			})
		}
		for _, tt := range []struct{ target, contains string }{
			{"http://api.internal:99999/", "bad port"},
			{"http://:" + env.up.port + "/", "has no host"},
			{"gopher://api.internal/", "unsupported URL scheme"},
		} {
			t.Run(tt.target, func(t *testing.T) {
				seen := env.seenCount()
				resp, body, _ := hardOne(t, env.addr, "GET "+tt.target+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n", false)
				wantError(t, resp, body, http.StatusBadRequest, CodeBadRequest, tt.contains)
				if n := env.seenCount() - seen; n != 0 {
					t.Errorf("upstream got %d requests", n)
				}
			})
		}
	})

	t.Run("userinfo", func(t *testing.T) {
		seen := env.seenCount()
		for _, target := range []string{
			"http://user:USERINFO-SECRET-6@" + host + "/",
			"http://USERINFO-SECRET-6@" + host + "/",
		} {
			resp, body, _ := hardOne(t, env.addr, "GET "+target+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n", false)
			wantError(t, resp, body, http.StatusBadRequest, CodeBadRequest, "user info")
			if strings.Contains(body, "USERINFO-SECRET") {
				t.Errorf("answer repeats the URL's credentials: %q", body)
			}
		}
		if n := env.seenCount() - seen; n != 0 {
			t.Errorf("upstream got %d requests", n)
		}
	})

	t.Run("slowloris", func(t *testing.T) {
		c, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		// One byte of the head every 50ms: the head never completes
		// before ReadHeaderTimeout, however long the trickle goes on.
		go func() {
			head := "GET " + env.target("/slow") + " HTTP/1.1\r\nHost: " + host + "\r\nX-Slow: " + strings.Repeat("s", 1000)
			for i := range len(head) {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := c.Write([]byte{head[i]}); err != nil {
					return
				}
			}
		}()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		elapsed := time.Since(start)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after %s of partial headers; want it closed after ReadHeaderTimeout (%s)", elapsed, hardReadHeaderTimeout)
		}
		if elapsed < hardReadHeaderTimeout*8/10 || elapsed > hardReadHeaderTimeout+3*time.Second {
			t.Errorf("connection closed after %s; want about ReadHeaderTimeout (%s)", elapsed, hardReadHeaderTimeout)
		}
		// Go's server answers the unfinished request with a 400 (or, in
		// other versions, just closes); either way no 2xx.
		if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 4") {
			t.Errorf("got %q before the close; want nothing or a 4xx", b)
		}
		t.Logf("closed after %s with %q", elapsed.Round(time.Millisecond), hardFirstLine(string(b)))
	})

	t.Run("identity headers are stripped", func(t *testing.T) {
		seen := env.seenCount()
		raw := "GET " + env.target("/ids") + " HTTP/1.1\r\nHost: " + host + "\r\n" +
			"X-Forwarded-Client-Cert: By=spiffe://evil;Hash=1;Subject=\"CN=admin\"\r\n" +
			"x-forwarded-client-cert: second\r\n" +
			"x-internal-user: admin\r\nX-Internal-User: root\r\n" +
			"Connection: close\r\nX-Kept: yes\r\n\r\n"
		resp, body, _ := hardOne(t, env.addr, raw, false)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d %q", resp.StatusCode, body)
		}
		got := env.seenSince(seen)
		if len(got) != 1 {
			t.Fatalf("upstream got %d requests; want 1", len(got))
		}
		for _, h := range []string{"X-Forwarded-Client-Cert", "X-Internal-User"} {
			if v := got[0].header.Values(h); len(v) != 0 {
				t.Errorf("upstream saw forged %s: %q", h, v)
			}
		}
		if got[0].header.Get("X-Kept") != "yes" {
			t.Error("an ordinary header was stripped too")
		}
		// Through Go's client, with the header named in Connection (a
		// hop-by-hop trick must not bring it back either).
		c, tr := client()
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, env.target("/ids2"), nil)
		req.Header.Set("X-Forwarded-Client-Cert", "forged")
		req.Header.Set("Connection", "X-Forwarded-Client-Cert")
		req.Header.Set("X-Internal-User", "admin")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for _, r := range env.seenSince(seen + 1) {
			if r.header.Get("X-Forwarded-Client-Cert") != "" || r.header.Get("X-Internal-User") != "" {
				t.Errorf("upstream saw forged identity headers: %v", r.header)
			}
		}
	})

	t.Run("secrets stay out of the log", func(t *testing.T) {
		seen := env.seenCount()
		c, tr := client()
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodPost, env.target("/login?token=QUERY-SECRET-4"), strings.NewReader("x"))
		req.Header.Set("Authorization", "Bearer AUTHZ-SECRET-1")
		req.Header.Set("Cookie", "session=COOKIE-SECRET-2")
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("u:PROXY-SECRET-3")))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Set-Cookie"), "SETCOOKIE-SECRET-5") {
			t.Fatalf("status %d, Set-Cookie %q", resp.StatusCode, resp.Header.Get("Set-Cookie"))
		}
		got := env.seenSince(seen)
		if len(got) != 1 {
			t.Fatalf("upstream got %d requests; want 1", len(got))
		}
		// End-to-end credentials are the upstream's business and go on;
		// the proxy's own do not.
		if got[0].header.Get("Authorization") != "Bearer AUTHZ-SECRET-1" || got[0].header.Get("Cookie") != "session=COOKIE-SECRET-2" {
			t.Errorf("Authorization or Cookie not forwarded: %v", got[0].header)
		}
		if v := got[0].header.Get("Proxy-Authorization"); v != "" {
			t.Errorf("upstream saw Proxy-Authorization %q", v)
		}
		// The query string is not in the access log.
		for _, e := range env.logs.FilterMessage("request").All() {
			if s := fmt.Sprint(e.ContextMap()); strings.Contains(s, "QUERY-SECRET-4") {
				t.Errorf("query string in the access log: %s", s)
			}
		}
	})

	t.Run("loop to the proxy itself", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(env.addr)
		for _, target := range []string{"http://" + env.addr + "/loop", "http://localhost:" + port + "/loop"} {
			t.Run(target, func(t *testing.T) {
				entered := env.entered.Load()
				start := time.Now()
				resp, body, _ := hardOne(t, env.addr, "GET "+target+" HTTP/1.1\r\nHost: "+env.addr+"\r\n\r\n", false)
				elapsed := time.Since(start)
				wantError(t, resp, body, http.StatusLoopDetected, CodeBadRequest, "loops back")
				if n := env.entered.Load() - entered; n != 1 {
					t.Errorf("proxy handler entered %d times; want 1 (answered at once, never recursed)", n)
				}
				if elapsed > 2*time.Second {
					t.Errorf("loop answered after %s; want at once", elapsed)
				}
			})
		}
	})

	// Every log entry so far, at debug level, from the bad requests and
	// the good ones: no credential value anywhere.
	hardNoSecretsInLogs(t, env.logs, "AUTHZ-SECRET-1", "COOKIE-SECRET-2", "PROXY-SECRET-3",
		base64.StdEncoding.EncodeToString([]byte("u:PROXY-SECRET-3")), "SETCOOKIE-SECRET-5", "USERINFO-SECRET-6")
	if len(env.logs.All()) == 0 || env.logs.FilterMessage("forwarding").Len() == 0 {
		t.Error("no debug log entries recorded; the secrets check saw nothing")
	}

	// Afterwards: no goroutine left behind by any of the above, and the
	// proxy still serves.
	env.route.CloseIdleConnections()
	if n := hardSettleGoroutines(baseline, 2*time.Second); n > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the suite; baseline %d\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
	serves(t)
}

func hardFirstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// hardStableGoroutines waits until the goroutine count stops changing and
// returns it.
func hardStableGoroutines() int {
	n := runtime.NumGoroutine()
	for stable := 0; stable < 5; {
		time.Sleep(20 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

// hardSettleGoroutines polls until at most limit goroutines run, for up to
// wait, and returns the last count.
func hardSettleGoroutines(limit int, wait time.Duration) int {
	deadline := time.Now().Add(wait)
	for {
		n := runtime.NumGoroutine()
		if n <= limit || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}
