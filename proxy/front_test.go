package proxy

import (
	"net"
	"net/http"
	"testing"
	"time"
)

// serveProxy runs p the way the command does: a Server in front of Go's
// server. It returns the listener's URL.
func serveProxy(t testing.TB, p *Proxy) string {
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
	return "http://" + ln.Addr().String()
}
