package proxy

// HTTP fidelity (issue 6) against Go upstreams over mutual TLS: streaming
// both ways, Expect: 100-continue, WebSocket in forward and gateway mode
// with close propagation and no leaks, h2c upgrades dropped, trailers,
// bodiless responses that keep the client connection usable, encodings and
// lengths untouched, Via and X-Forwarded-For, HTTP/2 to the upstream.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"golang.org/x/net/websocket"
)

// fidWait bounds every wait for something the proxy should pass on at once.
const fidWait = 5 * time.Second

// fidModes run a test with an HTTP/1.1-only upstream and route, and with an
// upstream that offers HTTP/2 and a route that takes it.
var fidModes = []struct {
	name string
	h2   bool
}{{"h1", false}, {"h2", true}}

// fidUpstream is an httptest server requiring a client certificate from
// the set's CA, offering HTTP/2 by ALPN when h2 is set.
type fidUpstream struct {
	srv   *httptest.Server
	port  string
	conns atomic.Int64 // TCP connections accepted
}

func fidNewUpstream(t testing.TB, set *pkitest.Set, h2 bool, h http.HandlerFunc) *fidUpstream {
	t.Helper()
	u := &fidUpstream{}
	u.srv = httptest.NewUnstartedServer(h)
	u.srv.TLS = set.ServerTLS()
	u.srv.EnableHTTP2 = h2
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

// url is the absolute-form URL of path on the upstream, as a forward-proxy
// client sends it.
func (u *fidUpstream) url(path string) string { return "http://api.internal:" + u.port + path }

// fidForward serves a forward proxy whose route carries api.internal to up
// and offers HTTP/2 when h2 is set.
func fidForward(t testing.TB, set *pkitest.Set, up *fidUpstream, h2 bool, mod func(*RouteOptions, *Options)) *testProxy {
	t.Helper()
	return newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		resolveTo(up.port, "api.internal:"+up.port)(ro, o)
		ro.HTTP2 = h2
		if mod != nil {
			mod(ro, o)
		}
	})
}

// fidGateway serves a gateway to https://api.internal:PORT/ and returns its
// host:port.
func fidGateway(t testing.TB, set *pkitest.Set, up *fidUpstream, h2 bool) string {
	t.Helper()
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse("https://api.internal:" + up.port)
	route := NewRoute(RouteOptions{Name: "gw", Hosts: []HostPattern{mustParseHostPattern("api.internal:" + up.port)},
		Identity: id, RootCAs: set.CA.Pool(), HTTP2: h2,
		Resolve: Resolve{"api.internal:" + up.port: "127.0.0.1:" + up.port}})
	p, err := New(Options{Upstream: base, UpstreamRoute: route})
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(serveProxy(t, p), "http://")
	t.Cleanup(route.CloseIdleConnections)
	return addr
}

// fidWithin runs f and fails the test if it does not return within d.
func fidWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: nothing after %v", what, d)
	}
}

// TestFidStreamEachEventBeforeNext checks that every event of a stream
// reaches the client before the upstream sends the next one: the upstream
// waits until the client has read the previous event, so a proxy that
// buffered anything would stall here.
func TestFidStreamEachEventBeforeNext(t *testing.T) {
	for _, m := range fidModes {
		for _, ct := range []string{"text/event-stream", "application/octet-stream"} {
			t.Run(m.name+"/"+ct, func(t *testing.T) {
				set := pkitest.New(t)
				const events = 5
				next := make(chan struct{})
				up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", ct)
					for i := range events {
						fmt.Fprintf(w, "data: event %d\n\n", i)
						w.(http.Flusher).Flush()
						if i == events-1 {
							return
						}
						select {
						case <-next:
						case <-r.Context().Done():
							return
						case <-time.After(2 * fidWait):
							return
						}
					}
				})
				tp := fidForward(t, set, up, m.h2, nil)
				var resp *http.Response
				var err error
				fidWithin(t, fidWait, "response headers (held back with the first event)", func() {
					resp, err = tp.client().Get(up.url("/events"))
				})
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ct {
					t.Fatalf("status %d, Content-Type %q; want 200 %s", resp.StatusCode, resp.Header.Get("Content-Type"), ct)
				}
				br := bufio.NewReader(resp.Body)
				for i := range events {
					var ev string
					fidWithin(t, fidWait, fmt.Sprintf("event %d (the proxy held it back)", i), func() {
						a, _ := br.ReadString('\n')
						b, _ := br.ReadString('\n')
						ev = a + b
					})
					if want := fmt.Sprintf("data: event %d\n\n", i); ev != want {
						t.Fatalf("event %d = %q; want %q", i, ev, want)
					}
					if i < events-1 {
						select {
						case next <- struct{}{}:
						case <-time.After(fidWait):
							t.Fatalf("upstream did not wait for event %d to be read", i)
						}
					}
				}
				if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
					t.Errorf("after the last event: %q, %v; want a clean end", rest, err)
				}
			})
		}
	}
}

// TestFidRequestBodyStreams checks that a request body goes upstream as it
// arrives: the client sends the first half, and sends the rest only once
// the upstream has read the first half.
func TestFidRequestBodyStreams(t *testing.T) {
	first := "first:" + strings.Repeat("a", 1000) + ";"
	second := "second:" + strings.Repeat("b", 1000)
	for _, m := range fidModes {
		for _, sized := range []bool{false, true} {
			name := m.name + "/chunked"
			if sized {
				name = m.name + "/content-length"
			}
			t.Run(name, func(t *testing.T) {
				set := pkitest.New(t)
				gotFirst := make(chan string, 1)
				seenLength := make(chan int64, 1)
				up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
					seenLength <- r.ContentLength
					b := make([]byte, len(first))
					if _, err := io.ReadFull(r.Body, b); err != nil {
						http.Error(w, err.Error(), 500)
						return
					}
					gotFirst <- string(b)
					rest, err := io.ReadAll(r.Body)
					if err != nil {
						http.Error(w, err.Error(), 500)
						return
					}
					fmt.Fprintf(w, "%d+%d", len(b), len(rest))
				})
				tp := fidForward(t, set, up, m.h2, nil)
				pr, pw := io.Pipe()
				req, _ := http.NewRequest(http.MethodPost, up.url("/upload"), pr)
				if sized {
					req.ContentLength = int64(len(first) + len(second))
				}
				type result struct {
					resp *http.Response
					body string
					err  error
				}
				done := make(chan result, 1)
				go func() {
					resp, err := tp.client().Do(req)
					if err != nil {
						done <- result{err: err}
						return
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					done <- result{resp, string(b), err}
				}()
				if _, err := io.WriteString(pw, first); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-gotFirst:
					if got != first {
						t.Fatalf("upstream read %q first", got)
					}
				case r := <-done:
					t.Fatalf("request ended before the body was complete: %v", r.err)
				case <-time.After(fidWait):
					pw.CloseWithError(errors.New("test gave up"))
					t.Fatalf("upstream had not received the first half after %v: the body is buffered", fidWait)
				}
				if _, err := io.WriteString(pw, second); err != nil {
					t.Fatal(err)
				}
				pw.Close()
				r := <-done
				if r.err != nil {
					t.Fatal(r.err)
				}
				if want := fmt.Sprintf("%d+%d", len(first), len(second)); r.resp.StatusCode != 200 || r.body != want {
					t.Errorf("got %d %q; want 200 %q", r.resp.StatusCode, r.body, want)
				}
				want := int64(-1)
				if sized {
					want = int64(len(first) + len(second))
				}
				if got := <-seenLength; got != want {
					t.Errorf("upstream saw Content-Length %d; want %d", got, want)
				}
			})
		}
	}
}

// fidCountingReader counts Read calls that returned bytes.
type fidCountingReader struct {
	r     io.Reader
	reads atomic.Int64
}

func (c *fidCountingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.reads.Add(1)
	}
	return n, err
}

// TestFidExpectContinue checks that "Expect: 100-continue" works end to
// end: the 100 from the upstream reaches the client, which then sends the
// body long before its own ExpectContinueTimeout; and an upstream that
// answers without reading lets the client skip sending the body.
func TestFidExpectContinue(t *testing.T) {
	for _, m := range fidModes {
		t.Run(m.name, func(t *testing.T) {
			set := pkitest.New(t)
			up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/reject" {
					http.Error(w, "too large", http.StatusRequestEntityTooLarge)
					return
				}
				b, err := io.ReadAll(r.Body)
				if err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
				fmt.Fprintf(w, "got %d bytes", len(b))
			})
			tp := fidForward(t, set, up, m.h2, nil)
			const clientWait = 20 * time.Second
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
				Proxy: http.ProxyURL(tp.url), ExpectContinueTimeout: clientWait}}
			defer client.CloseIdleConnections()

			send := func(path string) (resp *http.Response, body string, got100 bool, reads int64, took time.Duration) {
				t.Helper()
				payload := strings.Repeat("x", 100<<10)
				cr := &fidCountingReader{r: strings.NewReader(payload)}
				req, _ := http.NewRequest(http.MethodPost, up.url(path), cr)
				req.ContentLength = int64(len(payload))
				req.Header.Set("Expect", "100-continue")
				var g atomic.Bool
				req = req.WithContext(httptrace.WithClientTrace(req.Context(),
					&httptrace.ClientTrace{Got100Continue: func() { g.Store(true) }}))
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("POST %s: %v", path, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return resp, string(b), g.Load(), cr.reads.Load(), time.Since(start)
			}

			resp, body, got100, reads, took := send("/accept")
			if resp.StatusCode != 200 || body != fmt.Sprintf("got %d bytes", 100<<10) {
				t.Errorf("accept: got %d %q; want 200 with the whole body", resp.StatusCode, body)
			}
			if !got100 {
				t.Errorf("accept: the client got no 100 Continue")
			}
			if took > clientWait/2 {
				t.Errorf("accept: took %v: the client waited out its ExpectContinueTimeout instead of getting a 100", took)
			}
			if reads == 0 {
				t.Errorf("accept: the client never sent the body")
			}

			resp, _, got100, reads, _ = send("/reject")
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("reject: status %d; want 413", resp.StatusCode)
			}
			if got100 || reads != 0 {
				t.Errorf("reject: got 100 Continue = %v and the client read its body %d times; want neither (the upstream refused it)", got100, reads)
			}
		})
	}
}

// fidWSGUID is the RFC 6455 key suffix.
const fidWSGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// fidWSConn is a minimal RFC 6455 client: masked frames out, unmasked in,
// no fragmentation.
type fidWSConn struct {
	c  net.Conn
	br *bufio.Reader
}

// fidWSDial opens a WebSocket through the proxy at proxyAddr, with target
// as the request target (absolute-form for a forward proxy, a path for a
// gateway).
func fidWSDial(t testing.TB, proxyAddr, target, host string) *fidWSConn {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(fidWait))
	k := make([]byte, 16)
	_, _ = rand.Read(k)
	key := base64.StdEncoding.EncodeToString(k)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://%s\r\n\r\n", target, host, key, host)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("WebSocket handshake for %s: %v", target, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("WebSocket handshake for %s: status %d %q; want 101", target, resp.StatusCode, b)
	}
	sum := sha1.Sum([]byte(key + fidWSGUID))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		t.Fatalf("Sec-WebSocket-Accept %q; want %q", got, want)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("101 without Upgrade: websocket: %v", resp.Header)
	}
	_ = c.SetDeadline(time.Time{})
	return &fidWSConn{c: c, br: br}
}

func (w *fidWSConn) write(op byte, payload []byte) error {
	hdr := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	hdr = append(hdr, mask...)
	masked := make([]byte, len(payload))
	for i := range payload {
		masked[i] = payload[i] ^ mask[i%4]
	}
	_ = w.c.SetWriteDeadline(time.Now().Add(fidWait))
	_, err := w.c.Write(append(hdr, masked...))
	return err
}

// read returns the next frame, waiting at most fidWait.
func (w *fidWSConn) read() (op byte, payload []byte, err error) {
	_ = w.c.SetReadDeadline(time.Now().Add(fidWait))
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if h[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame is masked")
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(w.br, payload)
	return h[0] & 0x0f, payload, err
}

// fidWSUpstream is an echo server: it greets with the client certificate's
// common name, echoes text, closes on "close-please", and reports every
// session's end on ended.
func fidWSUpstream(t testing.TB, set *pkitest.Set, h2 bool) (*fidUpstream, chan string) {
	ended := make(chan string, 100)
	ws := websocket.Server{Handler: func(ws *websocket.Conn) {
		r := ws.Request()
		defer func() { ended <- r.URL.Path }()
		cn := "none"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		if err := websocket.Message.Send(ws, "welcome "+cn); err != nil {
			return
		}
		for {
			var msg string
			if err := websocket.Message.Receive(ws, &msg); err != nil {
				return
			}
			if msg == "close-please" {
				_ = ws.Close()
				return
			}
			if err := websocket.Message.Send(ws, "echo: "+msg); err != nil {
				return
			}
		}
	}}
	return fidNewUpstream(t, set, h2, ws.ServeHTTP), ended
}

// fidFDs counts the process's open file descriptors, or -1 without /proc.
func fidFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// TestFidWebSocket runs WebSocket sessions through forward and gateway
// proxies over mTLS, with an upstream that also offers HTTP/2: messages go
// both ways, a close by either side reaches the other, and after 20
// sessions no goroutine or file descriptor is left behind.
func TestFidWebSocket(t *testing.T) {
	for _, mode := range []struct {
		name    string
		gateway bool
		h2      bool
	}{{"forward-h1", false, false}, {"forward-h2", false, true}, {"gateway-h2", true, true}} {
		t.Run(mode.name, func(t *testing.T) {
			set := pkitest.New(t)
			up, ended := fidWSUpstream(t, set, mode.h2)
			var proxyAddr string
			target := func(path string) string { return up.url(path) }
			if mode.gateway {
				proxyAddr = fidGateway(t, set, up, mode.h2)
				target = func(path string) string { return path }
			} else {
				proxyAddr = fidForward(t, set, up, mode.h2, nil).url.Host
			}
			host := "api.internal:" + up.port
			wantEnded := func(path string) {
				t.Helper()
				select {
				case got := <-ended:
					if got != path {
						t.Fatalf("upstream session %s ended; want %s", got, path)
					}
				case <-time.After(fidWait):
					t.Fatalf("%s: the upstream's side is still open %v after the client closed", path, fidWait)
				}
			}
			big := strings.Repeat("0123456789abcdef", 10<<10) // 160 KiB, several TCP segments
			session := func(i int) {
				t.Helper()
				path := fmt.Sprintf("/ws/%d", i)
				ws := fidWSDial(t, proxyAddr, target(path), host)
				op, p, err := ws.read()
				if err != nil || op != 1 || string(p) != "welcome test-client" {
					t.Fatalf("%s: greeting op=%d %q, %v; want text \"welcome test-client\" (the route's identity)", path, op, p, err)
				}
				for _, msg := range []string{"ping " + path, big} {
					if err := ws.write(1, []byte(msg)); err != nil {
						t.Fatalf("%s: send: %v", path, err)
					}
					op, p, err := ws.read()
					if err != nil || op != 1 || string(p) != "echo: "+msg {
						t.Fatalf("%s: echo op=%d %d bytes, %v; want text \"echo: \" + the %d bytes sent", path, op, len(p), err, len(msg))
					}
				}
				switch i % 3 {
				case 0: // the client closes politely
					if err := ws.write(8, []byte{0x03, 0xe8}); err != nil {
						t.Fatal(err)
					}
					ws.c.Close()
					wantEnded(path)
				case 1: // the client drops the TCP connection
					ws.c.Close()
					wantEnded(path)
				case 2: // the upstream closes
					if err := ws.write(1, []byte("close-please")); err != nil {
						t.Fatal(err)
					}
					op, _, err := ws.read()
					if err != nil || op != 8 {
						t.Fatalf("%s: after the upstream closed: op=%d, %v; want a close frame", path, op, err)
					}
					if _, _, err := ws.read(); !errors.Is(err, io.EOF) {
						t.Fatalf("%s: after the close frame: %v; want EOF (the proxy must close the client connection)", path, err)
					}
					ws.c.Close()
					wantEnded(path)
				}
			}

			session(-1) // warm up: lazily started goroutines and pools
			time.Sleep(50 * time.Millisecond)
			g0, fd0 := runtime.NumGoroutine(), fidFDs()
			const sessions = 20
			for i := range sessions {
				session(i)
			}
			// A leak would grow with the sessions; allow for a little noise.
			const slack = 3
			var g, fd int
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				g, fd = runtime.NumGoroutine(), fidFDs()
				if g <= g0+slack && fd <= fd0+slack {
					break
				}
				if time.Now().After(deadline) {
					var stacks bytes.Buffer
					_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
					t.Fatalf("after %d sessions: %d goroutines (%d before), %d fds (%d before)\n%s",
						sessions, g, g0, fd, fd0, stacks.String())
				}
			}
			t.Logf("goroutines %d -> %d, fds %d -> %d", g0, g, fd0, fd)
		})
	}
}

// fidRaw is one client connection to the proxy, for requests whose
// framing matters.
type fidRaw struct {
	c  net.Conn
	br *bufio.Reader
}

func fidDialRaw(t testing.TB, addr string) *fidRaw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &fidRaw{c: c, br: bufio.NewReader(c)}
}

// roundTrip writes the raw request head and reads the final response and
// its body; informational (1xx) responses are skipped.
func (r *fidRaw) roundTrip(t testing.TB, method, head string) (*http.Response, string) {
	t.Helper()
	_ = r.c.SetDeadline(time.Now().Add(fidWait))
	defer func() { _ = r.c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(r.c, head); err != nil {
		t.Fatalf("%s: write: %v", method, err)
	}
	for {
		resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: reading the response: %v (the connection is out of step)", head, err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%q: reading the body: %v", head, err)
		}
		return resp, string(b)
	}
}

// idle checks that nothing more arrives: a body sent after a bodiless
// response would be read here.
func (r *fidRaw) idle(t testing.TB) {
	t.Helper()
	if n := r.br.Buffered(); n > 0 {
		b, _ := r.br.Peek(n)
		t.Fatalf("%d stray bytes after the last response: %q", n, b)
	}
	_ = r.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	b := make([]byte, 64)
	if n, err := r.c.Read(b); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the last response: %q, %v; want nothing (connection idle)", b[:n], err)
	}
	_ = r.c.SetReadDeadline(time.Time{})
}

// TestFidH2CUpgradeDropped checks that a client's "Upgrade: h2c" and
// HTTP2-Settings never reach the upstream, that the request is answered
// normally, and that the connection then carries another request.
func TestFidH2CUpgradeDropped(t *testing.T) {
	for _, m := range fidModes {
		t.Run(m.name, func(t *testing.T) {
			set := pkitest.New(t)
			seen := make(chan http.Header, 4)
			up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Clone()
				fmt.Fprintf(w, "plain %s", r.URL.Path)
			})
			tp := fidForward(t, set, up, m.h2, nil)
			c := fidDialRaw(t, tp.url.Host)
			host := "api.internal:" + up.port
			// As RFC 7540 section 3.2 has it, and with the headers not (all)
			// named in Connection, as a sloppy client might send them.
			for _, conn := range []string{"Upgrade, HTTP2-Settings", "Upgrade", ""} {
				connHeader := ""
				if conn != "" {
					connHeader = "Connection: " + conn + "\r\n"
				}
				resp, body := c.roundTrip(t, "GET", "GET "+up.url("/h2c")+" HTTP/1.1\r\nHost: "+host+"\r\n"+
					connHeader+"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
				if resp.StatusCode != 200 || body != "plain /h2c" {
					t.Fatalf("Connection: %s: got %d %q; want 200 \"plain /h2c\" (no switch of protocols)", conn, resp.StatusCode, body)
				}
				if v := resp.Header.Get("Upgrade"); v != "" {
					t.Errorf("Connection: %s: response carries Upgrade %q", conn, v)
				}
				h := <-seen
				for _, name := range []string{"Upgrade", "Http2-Settings", "Connection"} {
					if v, ok := h[name]; ok {
						t.Errorf("Connection: %s: upstream saw %s: %q", conn, name, v)
					}
				}
			}
			resp, body := c.roundTrip(t, "GET", "GET "+up.url("/after")+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
			if resp.StatusCode != 200 || body != "plain /after" {
				t.Errorf("next request on the connection: %d %q; want 200 \"plain /after\"", resp.StatusCode, body)
			}
		})
	}
}

// TestFidTrailers checks that response trailers (announced in Trailer, and
// set late with http.TrailerPrefix) and request trailers pass.
func TestFidTrailers(t *testing.T) {
	for _, m := range fidModes {
		t.Run(m.name, func(t *testing.T) {
			set := pkitest.New(t)
			up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.Header().Set("Trailer", "X-Body-Sha256")
				w.Header().Set("X-Seen-Request-Trailer", r.Trailer.Get("X-Request-Sum"))
				h := sha256.New()
				for i := range 3 {
					chunk := fmt.Sprintf("chunk %d of %d;", i, len(b))
					_, _ = io.WriteString(w, chunk)
					h.Write([]byte(chunk))
					w.(http.Flusher).Flush()
				}
				w.Header().Set("X-Body-Sha256", fmt.Sprintf("%x", h.Sum(nil)))
				w.Header().Set(http.TrailerPrefix+"X-Late", "late-value")
			})
			tp := fidForward(t, set, up, m.h2, nil)
			// A POST with request trailers, and a bodiless GET (which may
			// take a different path upstream than requests with bodies).
			for _, method := range []string{http.MethodPost, http.MethodGet} {
				var body io.Reader
				if method == http.MethodPost {
					body = io.MultiReader(strings.NewReader("request body"))
				}
				req, _ := http.NewRequest(method, up.url("/trailers"), body)
				if method == http.MethodPost {
					req.Trailer = http.Header{"X-Request-Sum": {"req-trailer-value"}}
				}
				resp, got := tp.do(t, req)
				if resp.StatusCode != 200 {
					t.Fatalf("%s: status %d %q", method, resp.StatusCode, got)
				}
				sum := sha256.Sum256([]byte(got))
				if got, want := resp.Trailer.Get("X-Body-Sha256"), fmt.Sprintf("%x", sum); got != want {
					t.Errorf("%s: trailer X-Body-Sha256 = %q; want %q (trailers %v)", method, got, want, resp.Trailer)
				}
				if got := resp.Trailer.Get("X-Late"); got != "late-value" {
					t.Errorf("%s: trailer X-Late = %q; want late-value (trailers %v)", method, got, resp.Trailer)
				}
				if method == http.MethodPost {
					if got := resp.Header.Get("X-Seen-Request-Trailer"); got != "req-trailer-value" {
						t.Errorf("upstream saw request trailer X-Request-Sum %q; want req-trailer-value", got)
					}
				}
			}
		})
	}
}

// fidBodiless answers /head, /204, /304, /103 and anything else.
func fidBodiless(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/head":
		w.Header().Set("Content-Length", "12345")
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.Method != http.MethodHead {
			_, _ = w.Write(bytes.Repeat([]byte("h"), 12345))
		}
	case "/204":
		w.WriteHeader(http.StatusNoContent)
	case "/304":
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = io.WriteString(w, "full body")
	case "/103":
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "after hints")
	default:
		fmt.Fprintf(w, "final %s", r.URL.Path)
	}
}

// TestFidBodilessFramingKeepsConnection sends HEAD, 204, 304 and a 103
// followed by further requests over one client connection: a proxy that
// framed any of them wrong would leave the connection out of step.
func TestFidBodilessFramingKeepsConnection(t *testing.T) {
	for _, m := range fidModes {
		t.Run(m.name, func(t *testing.T) {
			set := pkitest.New(t)
			up := fidNewUpstream(t, set, m.h2, fidBodiless)
			tp := fidForward(t, set, up, m.h2, nil)
			c := fidDialRaw(t, tp.url.Host)
			host := "Host: api.internal:" + up.port + "\r\n"

			resp, body := c.roundTrip(t, "HEAD", "HEAD "+up.url("/head")+" HTTP/1.1\r\n"+host+"\r\n")
			if resp.StatusCode != 200 || body != "" || resp.ContentLength != 12345 || resp.Header.Get("Content-Length") != "12345" {
				t.Errorf("HEAD: %d, Content-Length %q (%d), body %q; want 200 with Content-Length 12345 and no body",
					resp.StatusCode, resp.Header.Get("Content-Length"), resp.ContentLength, body)
			}
			resp, body = c.roundTrip(t, "GET", "GET "+up.url("/204")+" HTTP/1.1\r\n"+host+"\r\n")
			if resp.StatusCode != 204 || body != "" {
				t.Errorf("204: %d %q", resp.StatusCode, body)
			}
			resp, body = c.roundTrip(t, "GET", "GET "+up.url("/304")+" HTTP/1.1\r\n"+host+"If-None-Match: \"v1\"\r\n\r\n")
			if resp.StatusCode != 304 || body != "" || resp.Header.Get("ETag") != `"v1"` {
				t.Errorf("304: %d %q ETag %q", resp.StatusCode, body, resp.Header.Get("ETag"))
			}
			resp, body = c.roundTrip(t, "GET", "GET "+up.url("/103")+" HTTP/1.1\r\n"+host+"\r\n")
			if resp.StatusCode != 200 || body != "after hints" {
				t.Errorf("103 then 200: %d %q", resp.StatusCode, body)
			}
			resp, body = c.roundTrip(t, "GET", "GET "+up.url("/head")+" HTTP/1.1\r\n"+host+"\r\n")
			if resp.StatusCode != 200 || len(body) != 12345 {
				t.Errorf("GET /head: %d, %d bytes; want 200 with 12345", resp.StatusCode, len(body))
			}
			resp, body = c.roundTrip(t, "GET", "GET "+up.url("/final")+" HTTP/1.1\r\n"+host+"\r\n")
			if resp.StatusCode != 200 || body != "final /final" {
				t.Errorf("final request on the same connection: %d %q", resp.StatusCode, body)
			}
			c.idle(t)
		})
	}
}

// TestFidEncodingAndLength checks that the client's Accept-Encoding goes
// upstream as it is (and none is added), that a gzip body comes back
// byte for byte with its Content-Encoding and Content-Length, and that a
// request's Content-Length is kept.
func TestFidEncodingAndLength(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = io.WriteString(zw, strings.Repeat("compressible text ", 1000))
	_ = zw.Close()
	for _, m := range fidModes {
		t.Run(m.name, func(t *testing.T) {
			set := pkitest.New(t)
			up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
				n, _ := io.Copy(io.Discard, r.Body)
				w.Header().Set("X-Seen-Accept-Encoding", strings.Join(r.Header.Values("Accept-Encoding"), "|"))
				w.Header().Set("X-Seen-Content-Length", fmt.Sprintf("%d/%d/%v", r.ContentLength, n, r.TransferEncoding))
				w.Header().Set("Content-Encoding", "gzip")
				w.Header().Set("Content-Type", "text/plain")
				w.Header().Set("Content-Length", fmt.Sprint(gz.Len()))
				_, _ = w.Write(gz.Bytes())
			})
			tp := fidForward(t, set, up, m.h2, nil)
			for _, ae := range []string{"br", "gzip, br;q=0.5", ""} {
				req, _ := http.NewRequest(http.MethodPost, up.url("/enc"), bytes.NewReader(make([]byte, 777)))
				if ae != "" {
					req.Header.Set("Accept-Encoding", ae)
				}
				resp, body := tp.do(t, req) // DisableCompression: the client adds nothing
				if got := resp.Header.Get("X-Seen-Accept-Encoding"); got != ae {
					t.Errorf("client Accept-Encoding %q: upstream saw %q", ae, got)
				}
				if got := resp.Header.Get("X-Seen-Content-Length"); got != "777/777/[]" {
					t.Errorf("upstream saw ContentLength/read/TransferEncoding %s; want 777/777/[]", got)
				}
				if !bytes.Equal([]byte(body), gz.Bytes()) {
					t.Errorf("body: %d bytes; want the %d gzip bytes untouched", len(body), gz.Len())
				}
				if resp.Header.Get("Content-Encoding") != "gzip" || resp.ContentLength != int64(gz.Len()) ||
					resp.Header.Get("Content-Length") != fmt.Sprint(gz.Len()) {
					t.Errorf("Content-Encoding %q, Content-Length %q (%d); want gzip, %d",
						resp.Header.Get("Content-Encoding"), resp.Header.Get("Content-Length"), resp.ContentLength, gz.Len())
				}
			}
		})
	}
}

// TestFidForwardedHeaders checks that no X-Forwarded-For (or Forwarded)
// is added, and that Via is added only when Options.Via is set, after any
// Via already there, in both directions.
func TestFidForwardedHeaders(t *testing.T) {
	for _, m := range fidModes {
		for _, via := range []string{"", "mtlsproxy"} {
			t.Run(fmt.Sprintf("%s/via=%q", m.name, via), func(t *testing.T) {
				set := pkitest.New(t)
				up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
					for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-Ip", "Via"} {
						w.Header().Set("X-Seen-"+h, strings.Join(r.Header.Values(h), "|"))
					}
					if r.URL.Path == "/cached" {
						w.Header().Set("Via", "1.1 upstream-cache")
					}
				})
				tp := fidForward(t, set, up, m.h2, func(_ *RouteOptions, o *Options) { o.Via = via })
				respProto := "1.1"
				if m.h2 {
					respProto = "2"
				}
				for _, tc := range []struct {
					path, clientVia, upVia, clientSees string
				}{
					{"/plain", "", "1.1 mtlsproxy", respProto + " mtlsproxy"},
					{"/cached", "1.0 fred", "1.0 fred, 1.1 mtlsproxy", "1.1 upstream-cache, " + respProto + " mtlsproxy"},
				} {
					req, _ := http.NewRequest(http.MethodGet, up.url(tc.path), nil)
					if tc.clientVia != "" {
						req.Header.Set("Via", tc.clientVia)
					}
					resp, _ := tp.do(t, req)
					for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-Ip"} {
						if v := resp.Header.Get("X-Seen-" + h); v != "" {
							t.Errorf("%s: upstream saw %s %q; want none", tc.path, h, v)
						}
					}
					wantUp, wantClient := tc.upVia, tc.clientSees
					if via == "" {
						wantUp, wantClient = tc.clientVia, ""
						if tc.path == "/cached" {
							wantClient = "1.1 upstream-cache"
						}
					}
					if got := resp.Header.Get("X-Seen-Via"); got != wantUp {
						t.Errorf("%s: upstream saw Via %q; want %q", tc.path, got, wantUp)
					}
					if got := strings.Join(resp.Header.Values("Via"), "|"); got != wantClient {
						t.Errorf("%s: client saw Via %q; want %q", tc.path, got, wantClient)
					}
				}
			})
		}
	}
}

// fidBarrier holds requests until n have arrived, so that they are truly
// concurrent upstream, and records which connections carried them.
type fidBarrier struct {
	n       int
	mu      sync.Mutex
	arrived int
	all     chan struct{}
	remotes map[string]int
}

func newFidBarrier(n int) *fidBarrier {
	return &fidBarrier{n: n, all: make(chan struct{}), remotes: map[string]int{}}
}

func (b *fidBarrier) wait(r *http.Request) {
	b.mu.Lock()
	b.arrived++
	b.remotes[r.RemoteAddr]++
	if b.arrived == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-time.After(fidWait):
	}
}

// TestFidHTTP2Upstream checks that a route with HTTP2 speaks HTTP/2 to an
// upstream that offers it (and HTTP/1.1 without), in forward and gateway
// mode, and that concurrent requests share one upstream connection.
func TestFidHTTP2Upstream(t *testing.T) {
	for _, tc := range []struct {
		name    string
		http2   bool
		gateway bool
	}{{"forward-http2", true, false}, {"forward-http1", false, false}, {"gateway-http2", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			set := pkitest.New(t)
			const n = 20
			var barrier atomic.Pointer[fidBarrier]
			up := fidNewUpstream(t, set, true, func(w http.ResponseWriter, r *http.Request) {
				barrier.Load().wait(r)
				fmt.Fprintf(w, "%d %s", r.ProtoMajor, r.Proto)
			})
			var client *http.Client
			var target func(string) string
			if tc.gateway {
				addr := fidGateway(t, set, up, tc.http2)
				client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: n}}
				target = func(p string) string { return "http://" + addr + p }
			} else {
				tp := fidForward(t, set, up, tc.http2, nil)
				client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(tp.url), MaxIdleConnsPerHost: n}}
				target = up.url
			}
			defer client.CloseIdleConnections()
			want := "1 HTTP/1.1"
			if tc.http2 {
				want = "2 HTTP/2.0"
			}
			burst := func(phase string) *fidBarrier {
				b := newFidBarrier(n)
				barrier.Store(b)
				var wg sync.WaitGroup
				errs := make(chan string, n)
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						resp, err := client.Get(target(fmt.Sprintf("/%s/%d", phase, i)))
						if err != nil {
							errs <- err.Error()
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 || string(body) != want {
							errs <- fmt.Sprintf("%s request %d: %d %q; want 200 %q", phase, i, resp.StatusCode, body, want)
						}
					}()
				}
				wg.Wait()
				close(errs)
				for e := range errs {
					t.Error(e)
				}
				if b.arrived != n {
					t.Fatalf("%s: %d requests reached the upstream; want %d", phase, b.arrived, n)
				}
				return b
			}

			// Cold: the pool is empty. net/http may dial a connection per
			// waiting request (golang/go#13957), but HTTP/2 requests must
			// all be multiplexed on one of them.
			cold := burst("cold")
			// Dials the cold burst started may still be completing: count
			// them once the number stops moving.
			coldConns := fidSettled(&up.conns)
			t.Logf("cold burst of %d: %d upstream TLS connections dialed, requests carried on %d", n, coldConns, len(cold.remotes))
			if tc.http2 && len(cold.remotes) != 1 {
				t.Errorf("cold: %d concurrent HTTP/2 requests were carried on %d connections; want 1 (multiplexed): %v", n, len(cold.remotes), cold.remotes)
			}
			if !tc.http2 && len(cold.remotes) < 2 {
				t.Errorf("cold: %d concurrent HTTP/1.1 requests were carried on %d connection; the test did not make them concurrent", n, len(cold.remotes))
			}
			// Warm: the pooled HTTP/2 connection carries everything, and
			// no new connection is made.
			warm := burst("warm")
			if tc.http2 {
				if d := up.conns.Load() - coldConns; d != 0 || len(warm.remotes) != 1 {
					t.Errorf("warm: %d concurrent HTTP/2 requests opened %d new upstream connections and were carried on %d; want 0 and 1",
						n, d, len(warm.remotes))
				}
				for addr := range warm.remotes {
					if cold.remotes[addr] == 0 {
						t.Errorf("warm: requests went over %s, not the pooled connection %v", addr, cold.remotes)
					}
				}
			}
		})
	}
}

// TestFidPooledDefaultPort checks that sequential requests to an upstream
// on the default port (http://api.internal/ goes to port 443) reuse one
// pooled upstream connection, with and without bodies.
func TestFidPooledDefaultPort(t *testing.T) {
	for _, m := range fidModes {
		for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
			t.Run(m.name+"/"+method, func(t *testing.T) {
				set := pkitest.New(t)
				up := fidNewUpstream(t, set, m.h2, func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					fmt.Fprintf(w, "pooled %s", r.URL.Path)
				})
				tp := fidForward(t, set, up, m.h2, func(ro *RouteOptions, _ *Options) {
					ro.Resolve["api.internal:443"] = "127.0.0.1:" + up.port
				})
				const n = 10
				for i := range n {
					var body io.Reader
					if method == http.MethodPost {
						body = strings.NewReader("some body")
					}
					req, _ := http.NewRequest(method, fmt.Sprintf("http://api.internal/p/%d", i), body)
					resp, got := tp.do(t, req)
					want := fmt.Sprintf("pooled /p/%d", i)
					if method == http.MethodHead {
						want = ""
					}
					if resp.StatusCode != 200 || got != want {
						t.Fatalf("request %d: %d %q; want 200 %q", i, resp.StatusCode, got, want)
					}
				}
				// With the accelerator on, the first bodiless request
				// learns that the upstream takes h2 on a connection that is
				// then closed: one more.
				want := int64(1)
				if m.h2 && method != http.MethodPost && testFastPath {
					want = 2
				}
				if c := up.conns.Load(); c != want {
					t.Errorf("%d sequential %s requests to the default port opened %d upstream connections; want %d (pooled)", n, method, c, want)
				}
			})
		}
	}
}

// fidSettled returns n's value once it has not changed for 200 ms (at
// most 5 s).
func fidSettled(n *atomic.Int64) int64 {
	v := n.Load()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		if w := n.Load(); w == v {
			return v
		} else {
			v = w
		}
	}
	return v
}
