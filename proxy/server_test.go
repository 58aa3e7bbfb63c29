package proxy

import (
	"net"
	"net/http"
	"testing"
	"time"
)

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
	s := &Server{Proxy: p, HTTP: srv}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return s, "http://" + ln.Addr().String()
}
