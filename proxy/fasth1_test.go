package proxy

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// writeRequestHead must put on the wire what http.Request.Write would.
func TestWriteRequestHeadMatchesRequestWrite(t *testing.T) {
	mk := func(method, rawURL string, h http.Header, closeConn bool) *http.Request {
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Fatal(err)
		}
		if h == nil {
			h = http.Header{}
		}
		return &http.Request{Method: method, URL: u, Header: h, Close: closeConn, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	}
	tests := []*http.Request{
		mk("GET", "https://api.internal/", nil, false),
		mk("GET", "https://api.internal:8443/a/b?q=1&r=%20x", http.Header{"Accept": {"*/*"}, "X-Multi": {"1", "2"}}, false),
		mk("HEAD", "https://api.internal/caf%C3%A9/a%2Fb", http.Header{"User-Agent": {"curl/8"}}, true),
		mk("OPTIONS", "https://[::1]:8443/x", http.Header{"User-Agent": {""}, "Cookie": {"a=b"}}, false),
	}
	for _, req := range tests {
		t.Run(req.Method+" "+req.URL.String(), func(t *testing.T) {
			var want, got bytes.Buffer
			if err := req.Write(&want); err != nil {
				t.Fatal(err)
			}
			bw := bufio.NewWriter(&got)
			writeRequestHead(bw, req)
			_ = bw.Flush()
			parse := func(b []byte) *http.Request {
				r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
				if err != nil {
					t.Fatalf("parse %q: %v", b, err)
				}
				return r
			}
			w, g := parse(want.Bytes()), parse(got.Bytes())
			if g.Method != w.Method || g.RequestURI != w.RequestURI || g.Host != w.Host || g.Close != w.Close {
				t.Errorf("got %s %s host %s close %v; want %s %s host %s close %v",
					g.Method, g.RequestURI, g.Host, g.Close, w.Method, w.RequestURI, w.Host, w.Close)
			}
			if !reflect.DeepEqual(g.Header, w.Header) {
				t.Errorf("headers:\n got  %v\n want %v", g.Header, w.Header)
			}
		})
	}
}

// An upstream that closes an idle pooled connection must not fail the next
// request: the fast path retries a bodiless request once on a new
// connection when the old one turns out to be closed.
func TestFastPathRetriesConnectionClosedByUpstream(t *testing.T) {
	set := pkitest.New(t)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(whoami))
	srv.TLS = set.ServerTLS()
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	tp := newTestProxy(t, set, []string{"api.internal"}, func(ro *RouteOptions, o *Options) {
		ro.Resolve["api.internal:"+port] = "127.0.0.1:" + port
		ro.HTTP2 = false
	})
	for i := 0; i < 3; i++ {
		resp, body := tp.get(t, "http://api.internal:"+port+"/again")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "uri=/again") {
			t.Fatalf("request %d: %d %q; want 200", i, resp.StatusCode, body)
		}
		time.Sleep(300 * time.Millisecond) // the upstream closes the idle connection
	}
	if n := conns.Load(); n < 3 {
		t.Errorf("upstream saw %d connections; want 3 (each idle one closed by it)", n)
	}
}

func TestFastPathClosesLongIdleConnections(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	r := NewRoute(RouteOptions{Name: "t", Hosts: []HostPattern{mustParseHostPattern("api.internal")},
		RootCAs: set.CA.Pool(), Timeouts: Timeouts{IdleConn: 200 * time.Millisecond},
		Resolve: Resolve{"api.internal:" + up.port: "127.0.0.1:" + up.port}})
	f := r.conns.Load().fast
	key := "api.internal:" + up.port
	var conns []*h1Conn
	for i := 0; i < 3; i++ {
		pc, err := f.dial(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, pc)
	}
	f.put(key, conns[0])
	f.put(key, conns[1])
	time.Sleep(300 * time.Millisecond)
	f.put(key, conns[2])
	f.mu.Lock()
	n := len(f.idle[key])
	f.mu.Unlock()
	if n != 1 {
		t.Errorf("idle pool holds %d connections; want 1 (the two idle past the timeout closed)", n)
	}
	if _, err := conns[0].tc.Write([]byte("x")); err == nil {
		t.Errorf("a connection idle past the timeout is still open")
	}
}

func TestFastPathSweepsIdleConnectionsWithoutTraffic(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), whoami)
	r := NewRoute(RouteOptions{Name: "t", Hosts: []HostPattern{mustParseHostPattern("api.internal")},
		RootCAs: set.CA.Pool(), Timeouts: Timeouts{IdleConn: 150 * time.Millisecond},
		Resolve: Resolve{"api.internal:" + up.port: "127.0.0.1:" + up.port}})
	f := r.conns.Load().fast
	key := "api.internal:" + up.port
	pc, err := f.dial(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	f.put(key, pc)
	deadline := time.Now().Add(3 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.idle[key])
		f.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle connection still pooled after %s without traffic", 3*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := pc.tc.Write([]byte("x")); err == nil {
		t.Errorf("swept connection is still open")
	}
}
