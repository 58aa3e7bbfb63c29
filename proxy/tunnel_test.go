package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// tcpUpstream is a raw TCP server; handle runs for each connection, which
// is closed when handle returns.
func tcpUpstream(t testing.TB, handle func(net.Conn)) (port string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c)
			}()
		}
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port
}

// echo copies everything back and closes when the client half-closes.
func echo(c net.Conn) { _, _ = io.Copy(c, c) }

// tunnelProxy serves a proxy whose only route, "test", tunnels CONNECTs
// for tunnel.internal to 127.0.0.1:port.
func tunnelProxy(t testing.TB, set *pkitest.Set, port string, mod func(*RouteOptions)) *testProxy {
	t.Helper()
	return newTestProxy(t, set, []string{"tunnel.internal"}, func(ro *RouteOptions, o *Options) {
		ro.Connect = ConnectTunnel
		ro.Resolve["tunnel.internal:"+port] = "127.0.0.1:" + port
		if mod != nil {
			mod(ro)
		}
	})
}

// bufferedConn reads through r first: bytes that arrived right behind the
// CONNECT response are in r, not in the socket.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// connect sends "CONNECT target" followed by early in the same write, and
// returns the proxy's answer with the connection positioned right after it.
func (tp *testProxy) connect(t testing.TB, target string, early string) (*http.Response, *bufferedConn) {
	t.Helper()
	c, err := net.Dial("tcp", tp.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n%s", target, target, early); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: no HTTP response: %v", target, err)
	}
	return resp, &bufferedConn{Conn: c, r: br}
}

func closeWrite(t testing.TB, c net.Conn) {
	t.Helper()
	if bc, ok := c.(*bufferedConn); ok {
		c = bc.Conn
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// TestConnectTunnelCarriesClientTLS checks that a tunnel passes the
// client's own TLS through: the upstream sees the client's certificate,
// not the route's identity.
func TestConnectTunnelCarriesClientTLS(t *testing.T) {
	set := pkitest.New(t)
	own := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "tunnel-client", Client: true})
	up := newUpstream(t, set.ServerTLS(), whoami)
	tp := newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		resolveTo(up.port, "api.internal:"+up.port)(ro, o)
		ro.Connect = ConnectTunnel
	})

	resp, conn := tp.connect(t, "api.internal:"+up.port, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT status = %d; want 200", resp.StatusCode)
	}
	tc := tls.Client(conn, &tls.Config{RootCAs: set.CA.Pool(), ServerName: "api.internal",
		Certificates: []tls.Certificate{own.TLSCertificate()}})
	fmt.Fprintf(tc, "GET /in-tunnel HTTP/1.1\r\nHost: api.internal:%s\r\nConnection: close\r\n\r\n", up.port)
	r, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("request through the tunnel: %v", err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if want := "subject=" + own.Cert.Subject.String() + " uri=/in-tunnel"; string(body) != want {
		t.Errorf("upstream answered %q; want %q (the client's own certificate, not the route identity %q)",
			body, want, set.ClientSubject)
	}
	tc.Close()

	f := tp.accessLines(t, 1)[0].ContextMap()
	for k, want := range map[string]any{"method": "CONNECT", "host": "api.internal:" + up.port,
		"route": "test", "identity": "", "status": int64(200), "error": ""} {
		if f[k] != want {
			t.Errorf("access log %s = %#v; want %#v", k, f[k], want)
		}
	}
	for _, k := range []string{"bytes_in", "bytes_out"} {
		if n, _ := f[k].(int64); n <= 0 {
			t.Errorf("access log %s = %#v; want > 0", k, f[k])
		}
	}
}

// TestConnectTunnelEarlyBytes checks that bytes a client sends in the same
// write as its CONNECT (as clients that do not wait for the 200 do) reach
// the upstream, and that the access log counts exactly what went through.
func TestConnectTunnelEarlyBytes(t *testing.T) {
	set := pkitest.New(t)
	port := tcpUpstream(t, echo)
	tp := tunnelProxy(t, set, port, nil)

	resp, conn := tp.connect(t, "tunnel.internal:"+port, "early")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT status = %d; want 200", resp.StatusCode)
	}
	if _, err := io.WriteString(conn, "+late"); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, conn)
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if want := "early+late"; string(got) != want {
		t.Errorf("echo = %q; want %q", got, want)
	}

	f := tp.accessLines(t, 1)[0].ContextMap()
	for k, want := range map[string]any{"status": int64(200), "bytes_in": int64(10), "bytes_out": int64(10)} {
		if f[k] != want {
			t.Errorf("access log %s = %#v; want %#v", k, f[k], want)
		}
	}
}

func TestConnectErrors(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, _ := net.SplitHostPort(closed.Addr().String())
	closed.Close()

	tp := newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		resolveTo(up.port, "api.internal:"+up.port, "other.internal:"+up.port)(ro, o)
		o.Routes = append(o.Routes, NewRoute(RouteOptions{Name: "tunnel",
			Hosts:   []HostPattern{mustParseHostPattern("tunnel.internal")},
			Connect: ConnectTunnel,
			Resolve: Resolve{"tunnel.internal:" + closedPort: "127.0.0.1:" + closedPort}}))
	})
	tests := []struct {
		name, target   string
		status         int
		code, contains string
	}{
		{"reject route", "api.internal:" + up.port, 403, CodeHostNotAllowed, "http://api.internal:" + up.port + "/"},
		{"reject route default port", "api.internal:443", 403, CodeHostNotAllowed, "(http://api.internal/...)"},
		{"unrouted", "other.internal:" + up.port, 403, CodeHostNotAllowed, "no route allows this host"},
		{"no host", ":" + up.port, 400, CodeBadRequest, "is not host:port"},
		{"port out of range", "api.internal:99999", 400, CodeBadRequest, "is not host:port"},
		{"port zero", "tunnel.internal:0", 400, CodeBadRequest, "is not host:port"},
		{"upstream port closed", "tunnel.internal:" + closedPort, 502, CodeUpstreamConnect, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, conn := tp.connect(t, tt.target, "")
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			wantError(t, resp, string(body), tt.status, tt.code, tt.contains)
			if !resp.Close {
				t.Error("response does not close the connection")
			}
			if rest, err := io.ReadAll(conn); err != nil || len(rest) != 0 {
				t.Errorf("after the error: read %q, %v; want the proxy to close the connection", rest, err)
			}
		})
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("upstream accepted %d connections; want 0", n)
	}
	for _, e := range tp.accessLines(t, len(tests)) {
		f := e.ContextMap()
		if f["method"] != "CONNECT" || f["status"] == int64(0) || f["status"] == int64(200) || f["error"] == "" {
			t.Errorf("access log line %v; want a failed CONNECT with its status and error code", f)
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-accepted
	if a == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	for _, c := range []net.Conn{a, d} {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

type relayResult struct{ aToB, bToA int64 }

// startRelay relays between the proxy ends of two connections and returns
// the outer ends: client (behind a) and server (behind b).
func startRelay(t testing.TB, idle time.Duration) (client, server *net.TCPConn, done <-chan relayResult) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	ch := make(chan relayResult, 1)
	go func() {
		var r relayResult
		r.aToB, r.bToA = relay(a, b, idle)
		ch <- r
	}()
	return client, server, ch
}

func TestRelayHalfClose(t *testing.T) {
	tests := []struct {
		name string
		// first half-closes after sending req; second still answers
		firstIsClient bool
	}{
		{"client closes first", true},
		{"server closes first", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server, done := startRelay(t, 10*time.Second)
			first, second := client, server
			if !tt.firstIsClient {
				first, second = server, client
			}
			if _, err := io.WriteString(first, "request"); err != nil {
				t.Fatal(err)
			}
			if err := first.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(second)
			if err != nil || string(got) != "request" {
				t.Fatalf("other side read %q, %v; want \"request\" then EOF", got, err)
			}
			// The half-closed side still receives.
			if _, err := io.WriteString(second, "a longer response"); err != nil {
				t.Fatalf("write after the peer's half-close: %v", err)
			}
			buf := make([]byte, len("a longer response"))
			if _, err := io.ReadFull(first, buf); err != nil || string(buf) != "a longer response" {
				t.Fatalf("half-closed side read %q, %v; want the response", buf, err)
			}
			select {
			case <-done:
				t.Fatal("relay ended while one direction was still open")
			default:
			}
			if err := second.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if rest, err := io.ReadAll(first); err != nil || len(rest) != 0 {
				t.Errorf("after both half-closes: read %q, %v; want EOF", rest, err)
			}
			select {
			case r := <-done:
				want := relayResult{aToB: 7, bToA: 17}
				if !tt.firstIsClient {
					want = relayResult{aToB: 17, bToA: 7}
				}
				if r != want {
					t.Errorf("relay counted %+v; want %+v", r, want)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("relay did not end after both sides half-closed")
			}
		})
	}
}

// TestTunnelIdleTimeout runs a tunnel with a 200ms idle limit: silence in
// both directions closes it; bytes flowing in only one direction keep it
// open.
func TestTunnelIdleTimeout(t *testing.T) {
	const (
		idle   = 200 * time.Millisecond
		tick   = 50 * time.Millisecond
		stream = 600 * time.Millisecond
	)
	set := pkitest.New(t)
	ticks := int(stream / tick)

	// silent reads until EOF and never writes.
	silent := tcpUpstream(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	// talker sends a byte every tick for stream, then goes quiet.
	talker := tcpUpstream(t, func(c net.Conn) {
		for i := 0; i < ticks; i++ {
			if _, err := c.Write([]byte{'.'}); err != nil {
				return
			}
			time.Sleep(tick)
		}
		_, _ = io.Copy(io.Discard, c)
	})
	// listener answers "ok" after receiving ticks bytes, then goes quiet.
	listener := tcpUpstream(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, ticks)); err != nil {
			return
		}
		_, _ = io.WriteString(c, "ok")
		_, _ = io.Copy(io.Discard, c)
	})

	tests := []struct {
		name string
		port string
		// talk runs on the client end and returns what it read before EOF.
		talk func(t *testing.T, c net.Conn) string
		want string
	}{
		{"idle", silent, func(t *testing.T, c net.Conn) string {
			b, _ := io.ReadAll(c)
			return string(b)
		}, ""},
		{"upstream talks", talker, func(t *testing.T, c net.Conn) string {
			b, _ := io.ReadAll(c)
			return string(b)
		}, strings.Repeat(".", ticks)},
		{"client talks", listener, func(t *testing.T, c net.Conn) string {
			for i := 0; i < ticks; i++ {
				if _, err := c.Write([]byte{'.'}); err != nil {
					t.Errorf("write %d: %v", i, err)
					break
				}
				time.Sleep(tick)
			}
			b, _ := io.ReadAll(c)
			return string(b)
		}, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tp := tunnelProxy(t, set, tt.port, func(ro *RouteOptions) { ro.Timeouts.TunnelIdle = idle })
			resp, conn := tp.connect(t, "tunnel.internal:"+tt.port, "")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT status = %d; want 200", resp.StatusCode)
			}
			start := time.Now()
			got := tt.talk(t, conn)
			elapsed := time.Since(start)
			if got != tt.want {
				t.Errorf("client read %q before EOF; want %q", got, tt.want)
			}
			lower := idle * 3 / 4
			if tt.want != "" {
				lower = stream + idle*3/4
			}
			if elapsed < lower || elapsed > lower+3*time.Second {
				t.Errorf("tunnel closed after %v; want between %v and %v", elapsed, lower, lower+3*time.Second)
			}
		})
	}
}

// TestTunnelGoroutinesExit opens and closes many tunnels, in both closing
// orders, and checks that no goroutine outlives them.
func TestTunnelGoroutinesExit(t *testing.T) {
	set := pkitest.New(t)
	echoPort := tcpUpstream(t, echo)
	// hangup answers one line, then closes without waiting for the client.
	hangupPort := tcpUpstream(t, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		_, _ = io.WriteString(c, line)
	})
	tp := newTestProxy(t, set, []string{"tunnel.internal"}, func(ro *RouteOptions, _ *Options) {
		ro.Connect = ConnectTunnel
		ro.Resolve["tunnel.internal:"+echoPort] = "127.0.0.1:" + echoPort
		ro.Resolve["tunnel.internal:"+hangupPort] = "127.0.0.1:" + hangupPort
	})
	one := func(t *testing.T, i int) {
		port, clientCloses := echoPort, i%2 == 0
		if i%3 == 0 {
			port = hangupPort
		}
		resp, conn := tp.connect(t, "tunnel.internal:"+port, "")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("tunnel %d: CONNECT status = %d", i, resp.StatusCode)
			return
		}
		msg := fmt.Sprintf("tunnel %d\n", i)
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Errorf("tunnel %d: write: %v", i, err)
			return
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
			t.Errorf("tunnel %d: read %q, %v; want %q", i, buf, err, msg)
		}
		if clientCloses {
			conn.Close()
			return
		}
		closeWrite(t, conn)
		_, _ = io.Copy(io.Discard, conn)
		conn.Close()
	}

	one(t, 0) // warm up: the first connection starts long-lived goroutines
	tp.accessLines(t, 1)
	before := runtime.NumGoroutine()
	for stable := 0; stable < 5; {
		time.Sleep(20 * time.Millisecond)
		if n := runtime.NumGoroutine(); n == before {
			stable++
		} else {
			before, stable = n, 0
		}
	}
	settle := func(limit int) int {
		deadline := time.Now().Add(2 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= limit || time.Now().After(deadline) {
				return n
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	const tunnels = 30
	t.Run("tunnels", func(t *testing.T) {
		for i := 1; i <= tunnels; i++ {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				one(t, i)
			})
		}
	})
	const slack = 3
	if after := settle(before + slack); after > before+slack {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before %d tunnels, %d after; want at most %d more\n%s",
			before, tunnels, after, slack, buf[:runtime.Stack(buf, true)])
	}
	lines := tp.accessLines(t, tunnels+1)
	if len(lines) != tunnels+1 {
		t.Errorf("got %d access log lines; want %d", len(lines), tunnels+1)
	}
	for _, e := range lines {
		f := e.ContextMap()
		if f["status"] != int64(200) || f["bytes_in"] == int64(0) || f["bytes_out"] == int64(0) {
			t.Errorf("access log line %v; want status 200 and bytes both ways", f)
		}
	}
}
