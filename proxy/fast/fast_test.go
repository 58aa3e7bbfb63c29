package fast

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// rawUpstream is a TLS server that reads each request with
// http.ReadRequest and answers with the raw bytes answer returns for it
// (n counts requests on the connection, from 0); keep false closes the
// connection after the answer, after is written later, unasked.
type rawUpstream struct {
	addr  string
	conns atomic.Int64
	mu    sync.Mutex
	open  []net.Conn
	ln    net.Listener
}

type answerFunc func(req *http.Request, n int) (raw string, keep bool, after string)

func newRawUpstream(t *testing.T, set *pkitest.Set, answer answerFunc) *rawUpstream {
	t.Helper()
	cfg := set.ServerTLS()
	// Whole answers in one record, so that what follows a response can
	// sit inside the client's TLS connection rather than in its socket.
	cfg.DynamicRecordSizingDisabled = true
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{addr: ln.Addr().String(), ln: ln}
	go u.serve(answer)
	t.Cleanup(u.stop)
	return u
}

func (u *rawUpstream) serve(answer answerFunc) {
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.conns.Add(1)
		u.mu.Lock()
		u.open = append(u.open, c)
		u.mu.Unlock()
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for n := 0; ; n++ {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				raw, keep, after := answer(req, n)
				if _, err := io.WriteString(c, raw); err != nil {
					return
				}
				if after != "" {
					time.Sleep(100 * time.Millisecond)
					_, _ = io.WriteString(c, after)
				}
				if !keep {
					return
				}
			}
		}()
	}
}

// stop closes the listener and every connection, as a restart does.
func (u *rawUpstream) stop() {
	_ = u.ln.Close()
	u.mu.Lock()
	for _, c := range u.open {
		_ = c.Close()
	}
	u.open = nil
	u.mu.Unlock()
}

func newClient(t *testing.T, set *pkitest.Set) *Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: set.CA.Pool(), ServerName: "api.internal", MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{cert}}
	c := &Client{Dial: func(ctx context.Context, addr string) (*tls.Conn, error) {
		var d tls.Dialer
		d.Config = cfg
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return conn.(*tls.Conn), nil
	}, ResponseHeaderTimeout: 2 * time.Second}
	t.Cleanup(func() { c.CloseIdleConnections(true) })
	if !c.Usable() {
		t.Skip("this platform cannot check idle connections: the accelerator is not used here")
	}
	return c
}

// get sends a request for path and returns the status and body, or the
// error.
func get(t *testing.T, c *Client, addr, method, path string) (int, string, bool, error) {
	t.Helper()
	req, err := http.NewRequest(method, "https://api.internal"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, reused, err := c.RoundTrip(req.WithContext(ctx), addr)
	if err != nil {
		return 0, "", reused, err
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, string(b), reused, err
}

// echoed is a well-framed answer naming the request's path.
func echoed(req *http.Request) string {
	body := "for " + req.URL.Path
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// TestOverrunNeverReachesNextRequest: an upstream answer that sends more
// than its framing says (or sends it late) must not be read as the
// answer to the next request over the pooled connection.
func TestOverrunNeverReachesNextRequest(t *testing.T) {
	set := pkitest.New(t)
	big := strings.Repeat("x", 9000)
	bogus := func(path string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: " + fmt.Sprint(len("bogus "+path)) + "\r\n\r\nbogus " + path
	}
	for _, tc := range []struct {
		name   string
		method string
		first  func(req *http.Request) (raw, after string)
	}{
		{"body on HEAD", http.MethodHead, func(r *http.Request) (string, string) {
			return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + bogus("/1"), ""
		}},
		{"body on 204", http.MethodGet, func(r *http.Request) (string, string) {
			return "HTTP/1.1 204 No Content\r\n\r\n" + bogus("/1"), ""
		}},
		{"body on 304", http.MethodGet, func(r *http.Request) (string, string) {
			return "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", ""
		}},
		{"short Content-Length", http.MethodGet, func(r *http.Request) (string, string) {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + bogus("/1"), ""
		}},
		{"CL and TE", http.MethodGet, func(r *http.Request) (string, string) {
			return "HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + bogus("/1"), ""
		}},
		{"unsolicited later", http.MethodGet, func(r *http.Request) (string, string) {
			return echoed(r), bogus("/1")
		}},
		{"leftover past 4 KiB in one record", http.MethodGet, func(r *http.Request) (string, string) {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + big + bogus("/1"), ""
		}},
		{"leftover held by TLS, not the read buffer", http.MethodGet, func(r *http.Request) (string, string) {
			// The answer fills the 4 KiB read buffer exactly; what follows
			// it in the same TLS record stays inside the TLS connection.
			head := "HTTP/1.1 200 OK\r\nContent-Length: 4055\r\n\r\n"
			return head + strings.Repeat("y", 4096-len(head)) + bogus("/1"), ""
		}},
		{"unsolicited 101", http.MethodGet, func(r *http.Request) (string, string) {
			return echoed(r), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) {
				if req.URL.Path == "/0" {
					raw, after := tc.first(req)
					return raw, true, after
				}
				return echoed(req), true, ""
			})
			c := newClient(t, set)
			if _, _, _, err := get(t, c, up.addr, tc.method, "/0"); err != nil {
				t.Logf("first request: %v", err)
			}
			time.Sleep(200 * time.Millisecond) // the late bytes arrive while the connection is idle
			status, body, _, err := get(t, c, up.addr, http.MethodGet, "/1")
			if err != nil || status != 200 || body != "for /1" {
				t.Errorf("second request: %d %q %v; want 200 \"for /1\"", status, body, err)
			}
		})
	}
}

// TestRestartCostsNothing: pooled connections that the upstream closed
// (a restart) are noticed before use, or retried once if the close
// crosses the request: no GET fails.
func TestRestartCostsNothing(t *testing.T) {
	set := pkitest.New(t)
	answer := func(req *http.Request, n int) (string, bool, string) { return echoed(req), true, "" }
	up := newRawUpstream(t, set, answer)
	c := newClient(t, set)
	// The first request learns the protocol; until it has, concurrent
	// ones are left to the other transport.
	if _, _, _, err := get(t, c, up.addr, http.MethodGet, "/first"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 { // fill the pool with several connections
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, _, err := get(t, c, up.addr, http.MethodGet, fmt.Sprintf("/fill%d", i)); err != nil {
				t.Errorf("fill: %v", err)
			}
		}()
	}
	wg.Wait()
	addr := up.addr
	up.stop()
	ln, err := tls.Listen("tcp", addr, set.ServerTLS())
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", addr, err)
	}
	up2 := &rawUpstream{addr: addr, ln: ln}
	go up2.serve(answer)
	t.Cleanup(up2.stop)
	for i := range 100 {
		path := fmt.Sprintf("/after%d", i)
		if status, body, _, err := get(t, c, addr, http.MethodGet, path); err != nil || body != "for "+path {
			t.Fatalf("GET %s after the restart: %d %q %v", path, status, body, err)
		}
	}
}

// TestSilentCloseAfterThree: an upstream that closes each connection
// without a word after three answers fails no GET.
func TestSilentCloseAfterThree(t *testing.T) {
	set := pkitest.New(t)
	up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) { return echoed(req), n < 2, "" })
	c := newClient(t, set)
	for i := range 300 {
		path := fmt.Sprintf("/s%d", i)
		if status, body, _, err := get(t, c, up.addr, http.MethodGet, path); err != nil || body != "for "+path {
			t.Fatalf("GET %s: %d %q %v", path, status, body, err)
		}
	}
	if n := up.conns.Load(); n < 100 || n > 101 {
		t.Errorf("%d upstream connections for 300 GETs of 3 per connection; want 100", n)
	}
}

// TestReuse: well-framed answers keep one connection.
func TestReuse(t *testing.T) {
	set := pkitest.New(t)
	up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) {
		if req.Method == http.MethodHead {
			return "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, ""
		}
		if n%2 == 1 {
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfor \r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(req.URL.Path), req.URL.Path), true, ""
		}
		return "HTTP/1.1 100 Continue\r\n\r\n" + echoed(req), true, ""
	})
	c := newClient(t, set)
	for i := range 20 {
		method := http.MethodGet
		if i%5 == 4 {
			method = http.MethodHead
		}
		path := fmt.Sprintf("/r%d", i)
		status, body, reused, err := get(t, c, up.addr, method, path)
		want := "for " + path
		if method == http.MethodHead {
			want = ""
		}
		if err != nil || status != 200 || body != want || reused != (i > 0) {
			t.Fatalf("%s %s: %d %q reused=%v %v; want 200 %q reused=%v", method, path, status, body, reused, err, want, i > 0)
		}
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("%d upstream connections; want 1", n)
	}
}

// TestNotReusedUnlessReadToEnd: a body closed before its end, or a
// response that says Connection: close, closes the connection.
func TestNotReusedUnlessReadToEnd(t *testing.T) {
	set := pkitest.New(t)
	up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) {
		if req.URL.Path == "/close" {
			return "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", true, ""
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", true, ""
	})
	c := newClient(t, set)
	req, _ := http.NewRequest(http.MethodGet, "https://api.internal/partial", nil)
	resp, _, err := c.RoundTrip(req, up.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 3))
	_ = resp.Body.Close()
	if _, _, reused, err := get(t, c, up.addr, http.MethodGet, "/close"); err != nil || reused {
		t.Errorf("after a body closed early: reused=%v %v; want a new connection", reused, err)
	}
	if _, _, reused, err := get(t, c, up.addr, http.MethodGet, "/x"); err != nil || reused {
		t.Errorf("after Connection: close: reused=%v %v; want a new connection", reused, err)
	}
}

// TestColdBurstDialsOnce: while the first connection learns the
// upstream's protocol, other first requests are left to the other
// transport instead of dialing a connection each.
func TestColdBurstDialsOnce(t *testing.T) {
	set := pkitest.New(t)
	up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) {
		time.Sleep(20 * time.Millisecond)
		return echoed(req), true, ""
	})
	c := newClient(t, set)
	var wg sync.WaitGroup
	var sent, declined atomic.Int64
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _, err := get(t, c, up.addr, http.MethodGet, fmt.Sprintf("/cold%d", i))
			switch {
			case errors.Is(err, ErrHTTP2):
				declined.Add(1)
			case err == nil:
				sent.Add(1)
			default:
				t.Errorf("cold request: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := up.conns.Load(); n > sent.Load() || sent.Load()+declined.Load() != 10 || sent.Load() < 1 {
		t.Errorf("%d connections for %d requests sent, %d left to the other transport", n, sent.Load(), declined.Load())
	}
	if _, _, reused, err := get(t, c, up.addr, http.MethodGet, "/warm"); err != nil || !reused {
		t.Errorf("after the protocol is known: reused=%v %v; want the pooled connection", reused, err)
	}
}

// TestHTTP2Declined: an upstream that chooses h2 gets nothing from this
// client, which says so before sending.
func TestHTTP2Declined(t *testing.T) {
	set := pkitest.New(t)
	cfg := set.ServerTLS()
	cfg.NextProtos = []string{"h2"}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); time.Sleep(time.Second); c.Close() }()
		}
	}()
	c := newClient(t, set)
	inner := c.Dial
	c.Dial = func(ctx context.Context, addr string) (*tls.Conn, error) {
		conn, err := inner(ctx, addr)
		if err != nil {
			return nil, err
		}
		// As a route offering HTTP/2 dials.
		_ = conn.Close()
		var d tls.Dialer
		cert, _ := tls.LoadX509KeyPair(set.ClientCert, set.ClientKey)
		d.Config = &tls.Config{RootCAs: set.CA.Pool(), ServerName: "api.internal", NextProtos: []string{"h2", "http/1.1"},
			Certificates: []tls.Certificate{cert}}
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return nc.(*tls.Conn), nil
	}
	if _, _, _, err := get(t, c, ln.Addr().String(), http.MethodGet, "/"); !errors.Is(err, ErrHTTP2) {
		t.Fatalf("err = %v; want ErrHTTP2", err)
	}
	if c.Usable() {
		t.Errorf("still usable after an upstream chose HTTP/2")
	}
}

// TestTimeoutAndCancel: a silent upstream times out at
// ResponseHeaderTimeout without a retry; a cancelled request returns at
// once.
func TestTimeoutAndCancel(t *testing.T) {
	set := pkitest.New(t)
	var got atomic.Int64
	up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) {
		got.Add(1)
		time.Sleep(3 * time.Second)
		return echoed(req), false, ""
	})
	c := newClient(t, set)
	c.ResponseHeaderTimeout = 200 * time.Millisecond
	start := time.Now()
	_, _, _, err := get(t, c, up.addr, http.MethodGet, "/slow")
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() || time.Since(start) > 2*time.Second {
		t.Errorf("silent upstream: %v after %v; want a timeout after about 200ms", err, time.Since(start))
	}
	c.ResponseHeaderTimeout = 10 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.internal/cancel", nil)
	time.AfterFunc(100*time.Millisecond, cancel)
	start = time.Now()
	if _, _, err := c.RoundTrip(req, up.addr); !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Errorf("cancelled request: %v after %v; want context.Canceled at once", err, time.Since(start))
	}
	if n := got.Load(); n != 2 {
		t.Errorf("upstream got %d requests; want 2 (no retry after a timeout)", n)
	}
}

// FuzzFastReuse sends a request that the upstream answers with arbitrary
// bytes, then a second request for a path the bytes cannot know: if the
// second answer is a response at all, it must be the upstream's answer to
// the second request, whatever the first bytes said about their framing.
func FuzzFastReuse(f *testing.F) {
	set := pkitest.New(f)
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",
		"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nxxxx",
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, first []byte, head bool) {
		up := newRawUpstream(t, set, func(req *http.Request, n int) (string, bool, string) {
			if req.URL.Path == "/0" {
				return string(first), true, ""
			}
			return echoed(req), true, ""
		})
		c := newClient(t, set)
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, method, "https://api.internal/0", nil)
		if resp, _, err := c.RoundTrip(req, up.addr); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		cancel()
		path := fmt.Sprintf("/1-%d", time.Now().UnixNano())
		status, body, reused, err := get(t, c, up.addr, http.MethodGet, path)
		if err == nil && body != "for "+path {
			t.Fatalf("second request (reused=%v) got %d %q; want the upstream's answer to it, after a first answer of %q", reused, status, body, first)
		}
	})
}
