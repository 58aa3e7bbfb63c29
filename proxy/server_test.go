package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// testFastPath is whether the tests' routes use the HTTP/1.1 accelerator
// (package fast): on unless MTLSPROXY_TEST_FAST_PATH=0, so that the
// whole suite runs both ways.
var testFastPath = os.Getenv("MTLSPROXY_TEST_FAST_PATH") != "0"

// serveProxy serves p on a Server on a loopback port and returns its URL.
func serveProxy(t testing.TB, p *Proxy) string {
	t.Helper()
	_, u := serveFront(t, p)
	return u
}

// serveFront is serveProxy that also returns the Server.
func serveFront(t testing.TB, p *Proxy) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		MaxHeaderBytes: 64 << 10}
	s := &Server{Proxy: p, HTTP: srv, Front: testFastPath}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return s, "http://" + ln.Addr().String()
}

// TestOptionsStarKeepsStep: Go's server would answer "OPTIONS *" itself,
// unseen by the proxy; here the proxy answers it, and a CL+TE request
// after it on the same connection is read by its chunked framing and
// closes the connection: the plain GET after it is never served, and
// nothing hidden in the CL+TE request's body reaches the upstream.
func TestOptionsStarKeepsStep(t *testing.T) {
	env := advNewEnv(t, nil)
	h := env.host
	c := advDial(t, env.fAddr)
	c.send("OPTIONS * HTTP/1.1\r\nHost: " + h + "\r\n\r\n")
	resp, body, _ := c.final("OPTIONS")
	if resp.StatusCode != 200 || body != "" || resp.Close {
		t.Fatalf("OPTIONS *: %d %q close=%v; want 200, empty, kept", resp.StatusCode, body, resp.Close)
	}
	hidden := "0\r\n\r\n" + advGet("GET", h, "/hidden")
	c.send("POST http://" + h + "/clte HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: " + strconv.Itoa(len(hidden)) +
		"\r\nTransfer-Encoding: chunked\r\n\r\n" + hidden + advGet("GET", h, "/innocent"))
	resp, body, _ = c.final("POST")
	if resp.StatusCode != 200 || body != "POST /clte" || !resp.Close {
		t.Errorf("CL+TE POST: %d %q close=%v; want 200 \"POST /clte\", Connection: close", resp.StatusCode, body, resp.Close)
	}
	if !c.closed(advWait) {
		t.Errorf("connection still open after the CL+TE request")
	}
	var got []string
	for _, r := range env.up.seen() {
		got = append(got, r.Method+" "+r.URI)
	}
	if want := []string{"POST /clte"}; !reflect.DeepEqual(got, want) {
		t.Errorf("upstream saw %q; want %q", got, want)
	}
}

// TestHTTP10TransferEncodingRefused: Go's server ignores
// Transfer-Encoding on HTTP/1.0 and would take the chunks for the next
// request; RFC 9112 section 6.1 calls such framing faulty.
func TestHTTP10TransferEncodingRefused(t *testing.T) {
	env := advNewEnv(t, nil)
	h := env.host
	for _, te := range []string{"Transfer-Encoding: chunked", "transfer-encoding: chunked", "TRANSFER-ENCODING: gzip, chunked"} {
		c := advDial(t, env.fAddr)
		c.send("POST http://" + h + "/te10 HTTP/1.0\r\nHost: " + h + "\r\nConnection: keep-alive\r\n" + te +
			"\r\n\r\n" + "1c\r\n" + advGet("GET", h, "/x") + "\r\n0\r\n\r\n")
		resp, body, _ := c.final("POST")
		if resp.StatusCode != 400 || resp.Header.Get(ErrorHeader) != CodeBadRequest || !strings.Contains(body, "HTTP/1.0") {
			t.Errorf("%s: %d %s=%q %q; want 400 bad-request", te, resp.StatusCode, ErrorHeader, resp.Header.Get(ErrorHeader), body)
		}
		if !c.closed(advWait) {
			t.Errorf("%s: connection still open", te)
		}
	}
	if seen := env.up.seen(); len(seen) != 0 {
		t.Errorf("upstream saw %d requests; want none", len(seen))
	}
}

// TestRequestHeadLimitExact: the request line and headers together may be
// 64 KiB, not a byte more (net/http alone allows 4 KiB beyond
// MaxHeaderBytes).
func TestRequestHeadLimitExact(t *testing.T) {
	env := advNewEnv(t, nil)
	h := env.host
	head := func(size int) string {
		start := "GET http://" + h + "/big HTTP/1.1\r\nHost: " + h + "\r\nX-Pad: "
		pad := size - len(start) - len("\r\n\r\n")
		return start + strings.Repeat("a", pad) + "\r\n\r\n"
	}
	for _, tc := range []struct {
		size   int
		status int
	}{{64 << 10, 200}, {64<<10 + 1, 431}, {60 << 10, 200}} {
		c := advDial(t, env.fAddr)
		raw := head(tc.size)
		if len(raw) != tc.size {
			t.Fatalf("head is %d bytes; want %d", len(raw), tc.size)
		}
		c.send(raw)
		resp, _, _ := c.final("GET")
		if resp.StatusCode != tc.status {
			t.Errorf("%d-byte head: %d; want %d", tc.size, resp.StatusCode, tc.status)
		}
	}
}

// TestMalformedChunkedBody: a request body the client framed badly is
// the client's error (400), not the upstream's, and the connection
// closes: the rest of the body cannot be found.
func TestMalformedChunkedBody(t *testing.T) {
	env := advNewEnv(t, nil)
	h := env.host
	for _, body := range []string{"zz\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n", "5\r\nhel"} {
		c := advDial(t, env.fAddr)
		c.send("POST http://" + h + "/chunks HTTP/1.1\r\nHost: " + h + "\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
		if body == "5\r\nhel" {
			closeWrite(t, c.c)
		}
		resp, rb, _ := c.final("POST")
		if resp.StatusCode != 400 || resp.Header.Get(ErrorHeader) != CodeBadRequest || !strings.Contains(rb, "request body") {
			t.Errorf("%q: %d %s=%q %q; want 400 bad-request about the request body", body, resp.StatusCode, ErrorHeader,
				resp.Header.Get(ErrorHeader), rb)
		}
		if strings.Contains(rb, "network connection") || strings.Contains(rb, "net/http") {
			t.Errorf("%q: Go-internal text reaches the client: %q", body, rb)
		}
	}
}

// TestPanicAnswersEveryPath: a panic anywhere in the request path answers
// 500 internal, writes an access line, and leaves the proxy serving.
func TestPanicAnswersEveryPath(t *testing.T) {
	env := mitmtStart(t, false, nil)
	var arm atomic.Value
	env.tp.handler.testHook = func(point string) {
		if want, _ := arm.Load().(string); want == point {
			panic("test panic at " + point)
		}
	}
	addr := env.tp.url.Host
	for _, tc := range []struct {
		name, point string
		do          func(t *testing.T) (*http.Response, string)
	}{
		{"forward", "decide", func(t *testing.T) (*http.Response, string) {
			return seamRaw(t, addr, "GET http://"+env.host+"/x HTTP/1.1\r\nHost: "+env.host+"\r\n\r\n")
		}},
		{"forward response", "response", func(t *testing.T) (*http.Response, string) {
			return seamRaw(t, addr, "GET http://"+env.host+"/x HTTP/1.1\r\nHost: "+env.host+"\r\n\r\n")
		}},
		{"CONNECT", "decide", func(t *testing.T) (*http.Response, string) {
			return seamRaw(t, addr, "CONNECT "+env.host+" HTTP/1.1\r\nHost: "+env.host+"\r\n\r\n")
		}},
		{"mitm", "roundtrip", func(t *testing.T) (*http.Response, string) {
			se := &seamEnv{addr: addr, roots: env.roots}
			return se.seamMitm(t, env.host, "api.internal", env.host, "")
		}},
		{"mitm response", "response", func(t *testing.T) (*http.Response, string) {
			se := &seamEnv{addr: addr, roots: env.roots}
			return se.seamMitm(t, env.host, "api.internal", env.host, "")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env.tp.logs.TakeAll()
			arm.Store(tc.point)
			resp, body := tc.do(t)
			arm.Store("")
			wantError(t, resp, body, 500, codeInternal, "internal error")
			found := false
			for _, e := range env.tp.accessLines(t, 1) {
				if e.ContextMap()["error"] == codeInternal && e.ContextMap()["status"] == int64(500) {
					found = true
				}
			}
			if !found {
				t.Errorf("no access line with 500 internal")
			}
			if n := env.tp.logs.FilterMessage("panic while handling a request").Len(); n != 1 {
				t.Errorf("%d panic log lines; want 1", n)
			}
			// Still serving.
			if resp, body := seamRaw(t, addr, "GET http://"+env.host+"/ok HTTP/1.1\r\nHost: "+env.host+"\r\n\r\n"); resp.StatusCode != 200 {
				t.Errorf("after the panic: %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestEarlyAnswerBeforeBody: an upstream that answers (and closes)
// before it has read a large request body: the client gets the answer,
// as nginx relays it, not a 502.
func TestEarlyAnswerBeforeBody(t *testing.T) {
	set := pkitest.New(t)
	up := advNewRawUpstreamNoDrain(t, set, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n")
	p := advNewProxy(t, set, nil, up)
	_, addr := advFront(t, p, time.Second, 10*time.Second)
	c := advDial(t, addr)
	h := "api.internal:" + up
	body := strings.Repeat("x", 8<<20)
	go func() {
		_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c.c, "POST http://"+h+"/upload HTTP/1.1\r\nHost: "+h+"\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	}()
	resp, rb, _ := c.final("POST")
	if resp.StatusCode != 413 || rb != "too big\n" {
		t.Errorf("got %d %s=%q %q; want the upstream's 413", resp.StatusCode, ErrorHeader, resp.Header.Get(ErrorHeader), rb)
	}
}

// advNewRawUpstreamNoDrain is an mTLS upstream that reads a request head
// only and answers answer at once, then closes.
func advNewRawUpstreamNoDrain(t testing.TB, set *pkitest.Set, answer string) (port string) {
	t.Helper()
	var n atomic.Int64
	ln, err := tls.Listen("tcp", "127.0.0.1:0", advTLS(set, &n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(c, answer)
				time.Sleep(50 * time.Millisecond)
			}()
		}
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port
}

// teWatchReference is the simple statement of what teWatch notes: some
// line of b starts with "transfer-encoding", in any case.
func teWatchReference(b []byte) bool {
	for _, line := range strings.Split(string(b), "\n") {
		if len(line) >= len(teName) && strings.EqualFold(line[:len(teName)], teName) {
			return true
		}
	}
	return false
}

// FuzzTEWatch holds teWatch's scanner, fed in arbitrary splits, to the
// simple reference, and to net/http: whenever http.ReadRequest reads a
// request framed by Transfer-Encoding from the bytes, the watch saw it.
func FuzzTEWatch(f *testing.F) {
	for _, s := range []string{
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\nTRANSFER-ENCODING: chunked\n\n0\n\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Transfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n",
		"transfer-encodin",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, split uint8) {
		w := &teWatch{}
		step := int(split)%17 + 1
		for i := 0; i < len(b); i += step {
			w.scan(b[i:min(i+step, len(b))])
		}
		want := teWatchReference(b)
		if got := w.seen.Load(); got != want {
			t.Fatalf("scan in steps of %d: seen %v; reference %v for %q", step, got, want, b)
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(string(b))))
		if err == nil && len(req.TransferEncoding) > 0 && !w.seen.Load() {
			t.Fatalf("net/http read a Transfer-Encoding request the watch did not see: %q", b)
		}
	})
}

// TestFrontTakesSimpleRequests: with the accelerator on, plain GETs and
// HEADs on a connection are the front's (nothing is handed to Go's
// server), and the first request it does not take hands the connection
// over with nothing lost; the parity tests would otherwise compare the
// reference with itself.
func TestFrontTakesSimpleRequests(t *testing.T) {
	if !testFastPath {
		t.Skip("MTLSPROXY_TEST_FAST_PATH=0: no front")
	}
	env := advNewEnv(t, nil)
	h := env.host
	c := advDial(t, env.fAddr)
	for i, m := range []string{"GET", "HEAD", "GET"} {
		c.send(advGet(m, h, fmt.Sprintf("/simple%d", i)))
		if resp, _, _ := c.final(m); resp.StatusCode != 200 {
			t.Fatalf("%s /simple%d: %d", m, i, resp.StatusCode)
		}
	}
	if n := env.front.front.handoffs.Load(); n != 0 {
		t.Fatalf("%d connections handed over after simple requests; want 0", n)
	}
	c.send("POST http://" + h + "/body HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 4\r\n\r\nbody" + advGet("GET", h, "/after"))
	if resp, body, _ := c.final("POST"); resp.StatusCode != 200 || body != "POST /body" {
		t.Fatalf("POST after simple requests: %d %q", resp.StatusCode, body)
	}
	if resp, body, _ := c.final("GET"); resp.StatusCode != 200 || body != "GET /after" {
		t.Fatalf("GET after the hand-over: %d %q", resp.StatusCode, body)
	}
	if n := env.front.front.handoffs.Load(); n != 1 {
		t.Errorf("%d connections handed over; want 1", n)
	}
	var got []string
	for _, r := range env.up.seen() {
		got = append(got, r.Method+" "+r.URI)
	}
	if want := []string{"GET /simple0", "HEAD /simple1", "GET /simple2", "POST /body", "GET /after"}; !reflect.DeepEqual(got, want) {
		t.Errorf("upstream saw %q; want %q", got, want)
	}
}
