package proxy

// An upstream that chooses HTTP/2 with the accelerator on: the
// connections the accelerator dials to learn it must not outlive
// Route.Refresh (its contract: "no request after the swap reuses a
// connection made before it") nor an upstream restart. (They once did: the
// accelerator handed such a connection to http.Transport, which kept it
// unwatched.)

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// h2FirstGets sends two concurrent first GETs, so that both accelerator
// dials start before either learns that the upstream speaks HTTP/2.
func h2FirstGets(t *testing.T) (rt *Route, up *httptest.Server, send func(method, path string) (string, error), hellos func() []string, hs *atomic.Int64) {
	set := pkitest.New(t)
	hs = new(atomic.Int64)
	var (
		mu   sync.Mutex
		seen []string // client address of each handshake, in order
	)
	hellos = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
	up = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, r.RemoteAddr)
	}))
	cfg := set.ServerTLS()
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		n := hs.Add(1)
		mu.Lock()
		seen = append(seen, h.Conn.RemoteAddr().String())
		mu.Unlock()
		// Both first dials of the accelerator start before either knows
		// the upstream speaks HTTP/2; the second finishes after the first
		// request has put its HTTP/2 connection in http.Transport's pool.
		switch n {
		case 1:
			time.Sleep(50 * time.Millisecond)
		case 2:
			time.Sleep(400 * time.Millisecond)
		}
		return nil, nil
	}
	up.TLS = cfg
	up.EnableHTTP2 = true
	up.Config.ErrorLog = log.New(io.Discard, "", 0)
	up.StartTLS()
	t.Cleanup(up.Close)
	_, port, _ := net.SplitHostPort(up.Listener.Addr().String())
	host := "api.internal:" + port

	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	rt = NewRoute(RouteOptions{Name: "h2", Hosts: []HostPattern{mustParseHostPattern("api.internal")}, Identity: id,
		RootCAs: set.CA.Pool(), Resolve: Resolve{host: "127.0.0.1:" + port}, HTTP2: true, FastPath: true,
		Timeouts: Timeouts{ResponseHeader: 3 * time.Second}})
	t.Cleanup(rt.CloseIdleConnections)
	if rt.conns.Load().fast == nil {
		t.Skip("accelerator not usable here")
	}

	send = func(method, path string) (string, error) {
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader("x")
		}
		req, _ := http.NewRequest(method, "https://"+host+path, body)
		ex := &exchange{start: time.Now(), host: host}
		resp, err := rt.send(req, ex)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	var wg sync.WaitGroup
	for _, p := range []string{"/a", "/b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := send("GET", p); err != nil {
				t.Errorf("GET %s: %v", p, err)
			}
		}()
	}
	wg.Wait()
	return rt, up, send, hellos, hs
}

func TestH2AcceleratorDialsDoNotSurviveRefresh(t *testing.T) {
	rt, _, send, hellos, hs := h2FirstGets(t)
	before := hellos()

	// The trust (or the identity) changes: Refresh must start over.
	rt.SetRootCAs(rt.tlsOpts.RootCAs)

	from, err := send("POST", "/after-refresh")
	if err != nil {
		t.Fatalf("POST after Refresh: %v", err)
	}
	for _, a := range before {
		if a == from {
			t.Errorf("request after Refresh went out on %s, a connection handshaken before Refresh (handshakes before: %q, total now %d)",
				from, before, hs.Load())
		}
	}
}

// TestH2AcceleratorDialsNotStale: the left-over handed-off connection has no idle
// timeout and is not checked; when the upstream drops its connections (a
// restart), http.Transport's next dial is that dead connection, which it
// does not retry (it is not "reused"), and the request fails.
func TestH2AcceleratorDialsNotStale(t *testing.T) {
	_, up, send, _, _ := h2FirstGets(t)
	up.CloseClientConnections() // the upstream restarts
	time.Sleep(100 * time.Millisecond)
	if _, err := send("GET", "/after-restart"); err != nil {
		t.Errorf("GET after the upstream closed its connections: %v; want a new connection and 200", err)
	}
}
