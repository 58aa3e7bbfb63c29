package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// serveProxy runs p the way the command does: a Server in front of Go's
// server. It returns the listener's URL.
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
	s := &Server{Proxy: p, HTTP: srv}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return s, "http://" + ln.Addr().String()
}

// TestServerTakesSimpleRequests checks that GETs and HEADs from a
// standard client are served by Server itself, on one connection, and
// that the first request it does not take hands the connection over
// without losing it.
func TestServerTakesSimpleRequests(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %q", r.Method, r.URL.RequestURI(), b)
	})
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	target := "http://api.internal:" + up.port
	for i := range 5 {
		_, body := tp.get(t, fmt.Sprintf("%s/get/%d?q=%d", target, i, i))
		if want := fmt.Sprintf(`GET /get/%d?q=%d ""`, i, i); body != want {
			t.Fatalf("body = %q; want %q", body, want)
		}
	}
	req, _ := http.NewRequest(http.MethodHead, target+"/head", nil)
	if resp, body := tp.do(t, req); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	if n := tp.front.handoffs.Load(); n != 0 {
		t.Fatalf("%d connections handed over after simple requests; want 0: Server did not take them", n)
	}
	req, _ = http.NewRequest(http.MethodPost, target+"/post", strings.NewReader("payload"))
	if _, body := tp.do(t, req); body != `POST /post "payload"` {
		t.Fatalf("POST: body = %q", body)
	}
	if n := tp.front.handoffs.Load(); n != 1 {
		t.Fatalf("%d connections handed over after a POST; want 1", n)
	}
	// The handed-over connection goes on serving GETs through goproxy.
	if _, body := tp.get(t, target+"/after"); body != `GET /after ""` {
		t.Fatalf("GET after POST: body = %q", body)
	}
	if got := up.requests.Load(); got != 8 {
		t.Errorf("upstream saw %d requests; want 8", got)
	}
	if got := len(tp.accessLines(t, 8)); got != 8 {
		t.Errorf("%d access log lines; want 8", got)
	}
}

// TestServerTakesRequestsForHTTP2Upstreams checks that simple requests to
// an upstream that chose HTTP/2 stay on the direct path (through
// http.Transport) instead of handing their connections over, and reach
// the upstream as the goproxy path would send them.
func TestServerTakesRequestsForHTTP2Upstreams(t *testing.T) {
	set := pkitest.New(t)
	up := fidNewUpstream(t, set, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s ua=%q xid=%q xfcc=%q", r.Method, r.URL.RequestURI(), r.Header.Get("User-Agent"),
			r.Header.Get("X-Id"), r.Header.Get("X-Forwarded-Client-Cert"))
	})
	tp := fidForward(t, set, up, true, nil)
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://api.internal:%s/h2/%d?q=1", up.port, i), nil)
		req.Header.Set("User-Agent", "probe/1")
		req.Header.Set("x-id", "abc")
		req.Header.Set("X-Forwarded-Client-Cert", "forged")
		resp, body := tp.do(t, req)
		want := fmt.Sprintf(`GET /h2/%d?q=1 ua="probe/1" xid="abc" xfcc=""`, i)
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("request %d: %d %q; want 200 %q", i, resp.StatusCode, body, want)
		}
		if got := resp.Header.Get("X-Proto"); got != "HTTP/2.0" {
			t.Fatalf("upstream saw %q; want HTTP/2.0", got)
		}
	}
	if n := tp.front.handoffs.Load(); n != 0 {
		t.Fatalf("%d connections handed over for simple requests to an HTTP/2 upstream; want 0", n)
	}
	lines := tp.accessLines(t, 3)
	if len(lines) != 3 {
		t.Fatalf("%d access log lines; want 3", len(lines))
	}
	found := false
	for _, l := range lines {
		// The third request found the pooled HTTP/2 connection.
		if f := l.ContextMap(); f["path"] == "/h2/2" {
			found = true
			if f["status"] != int64(200) || f["reused"] != true {
				t.Errorf("access log: %v", f)
			}
		}
	}
	if !found {
		t.Errorf("no access log line for /h2/2")
	}
}

// TestServerSlowUpstreamHeads checks that a response head that arrives in
// pieces more than a client-check step apart (an early 103, a head split
// across packets) is still read under the whole response-header timeout.
func TestServerSlowUpstreamHeads(t *testing.T) {
	set := pkitest.New(t)
	up := advNewRawUpstream(t, set, func(req *http.Request, w *bufio.Writer) bool {
		switch req.URL.Path {
		case "/early-hints":
			w.WriteString("HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
			_ = w.Flush()
			time.Sleep(700 * time.Millisecond)
			w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		case "/split-head":
			w.WriteString("HTTP/1.1 200 OK\r\n")
			_ = w.Flush()
			time.Sleep(700 * time.Millisecond)
			w.WriteString("Content-Length: 2\r\n\r\nok")
		}
		return true
	})
	p := advNewProxy(t, set, nil, up.port)
	_, addr := advFront(t, p, 5*time.Second, 10*time.Second)
	for _, path := range []string{"/early-hints", "/split-head"} {
		c := advDial(t, addr)
		c.send(advGet("GET", "api.internal:"+up.port, path))
		resp, body, _ := c.final("GET")
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("%s: %d %q; want 200 \"ok\"", path, resp.StatusCode, body)
		}
	}
}

// TestServerKeepsConnectionsAfterSlowRequests checks that the client
// checks made while an upstream thinks do not leave a short deadline on
// the connection: with no client timeouts at all, and with an idle
// timeout under a second.
func TestServerKeepsConnectionsAfterSlowRequests(t *testing.T) {
	set := pkitest.New(t)
	for _, tc := range []struct {
		name         string
		header, idle time.Duration
		delay, pause time.Duration
	}{
		{"no timeouts", 0, 0, 700 * time.Millisecond, 0},
		{"short idle timeout", time.Second, 300 * time.Millisecond, 200 * time.Millisecond, 150 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := advNewUpstream(t, set, func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(tc.delay)
				fmt.Fprint(w, r.URL.Path)
			})
			p := advNewProxy(t, set, nil, up.port)
			_, addr := advFront(t, p, tc.header, tc.idle)
			c := advDial(t, addr)
			for i := range 3 {
				if i == 2 {
					time.Sleep(tc.pause)
				}
				path := fmt.Sprintf("/slow/%d", i)
				c.send(advGet("GET", "api.internal:"+up.port, path))
				resp, body, err := c.next("GET", 5*time.Second)
				if err != nil {
					t.Fatalf("request %d on the same connection: %v", i, err)
				}
				if resp.StatusCode != 200 || body != path {
					t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
				}
			}
		})
	}
}

// TestTruncatedUpstreamBodyIsNotCompleted checks that a chunked body the
// upstream cuts short reaches the client as cut short on both paths (a
// GET on the direct path, a POST through goproxy), never as a whole
// response.
func TestTruncatedUpstreamBodyIsNotCompleted(t *testing.T) {
	set := pkitest.New(t)
	up := advNewRawUpstream(t, set, func(req *http.Request, w *bufio.Writer) bool {
		w.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		return false // close without the last chunk
	})
	p := advNewProxy(t, set, nil, up.port)
	_, addr := advFront(t, p, 5*time.Second, 10*time.Second)
	pu, _ := url.Parse("http://" + addr)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		req, _ := http.NewRequest(method, "http://api.internal:"+up.port+"/cut", strings.NewReader(""))
		if method == http.MethodPost {
			req.Body = io.NopCloser(strings.NewReader("x"))
			req.ContentLength = 1
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("%s: body %q read to a clean end; want an error (the upstream cut it short)", method, b)
		}
		if string(b) != "hello" {
			t.Errorf("%s: body %q; want the part the upstream sent, \"hello\"", method, b)
		}
	}
}

// TestServerReusesIdleGoroutines checks that connections one after
// another are served by the goroutine that served the first, and that
// the waiting goroutines leave when the server closes.
func TestServerReusesIdleGoroutines(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.URL.Path)
	})
	tp := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	tp.front.idleWait.Store(int64(time.Minute)) // however slow the machine
	waitIdle := func(want int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for tp.front.idleWorkers.Load() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d idle goroutines; want %d", tp.front.idleWorkers.Load(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i := range 5 {
		c, err := net.Dial("tcp", tp.url.Host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET http://api.internal:%s/n%d HTTP/1.1\r\nHost: api.internal:%s\r\nConnection: close\r\n\r\n", up.port, i, up.port)
		b, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil || !strings.HasSuffix(string(b), fmt.Sprintf("\r\n\r\n/n%d", i)) {
			t.Fatalf("request %d: %q, %v", i, b, err)
		}
		waitIdle(1)
	}
	if n := tp.front.workers.Load(); n != 1 {
		t.Errorf("%d goroutines started for 5 connections one after another; want 1", n)
	}
	if n := tp.front.handoffs.Load(); n != 0 {
		t.Errorf("%d connections handed over; want 0", n)
	}
	// Left idle, a waiting goroutine leaves on its own: the one waiting
	// now still has a minute to go, so one more connection, then a short
	// wait.
	tp.front.idleWait.Store(int64(100 * time.Millisecond))
	c, err := net.Dial("tcp", tp.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET http://api.internal:%s/idle HTTP/1.1\r\nHost: api.internal:%s\r\nConnection: close\r\n\r\n", up.port, up.port)
	if b, err := io.ReadAll(c); err != nil || !strings.HasSuffix(string(b), "/idle") {
		t.Fatalf("request: %q, %v", b, err)
	}
	_ = c.Close()
	waitIdle(0)
	// And the next connection starts one again.
	c, err = net.Dial("tcp", tp.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET http://api.internal:%s/last HTTP/1.1\r\nHost: api.internal:%s\r\nConnection: close\r\n\r\n", up.port, up.port)
	if b, err := io.ReadAll(c); err != nil || !strings.HasSuffix(string(b), "/last") {
		t.Fatalf("request after the idle goroutine left: %q, %v", b, err)
	}
	_ = c.Close()
	waitIdle(1)
	if n := tp.front.workers.Load(); n != 2 {
		t.Errorf("%d goroutines started; want 2", n)
	}
	_ = tp.front.Close()
	waitIdle(0)
}
