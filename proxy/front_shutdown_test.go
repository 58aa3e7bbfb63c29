package proxy

// Shutdown closes a connection that has sent part of a request head at
// once, with the front on as Go's server alone does (a head not yet whole
// is idle, not in progress). The front once held such a connection until
// ReadHeaderTimeout.

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestShutdownWithHalfSentHead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		front bool
		// served sends one whole request first (a keep-alive connection).
		served bool
	}{
		{"reference/new", false, false},
		{"front/new", true, false},
		{"reference/keepalive", false, true},
		{"front/keepalive", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := advNewEnv(t, nil)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: env.p, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 10 * time.Second,
				MaxHeaderBytes: 64 << 10, ErrorLog: log.New(io.Discard, "", 0)}
			s := &Server{Proxy: env.p, HTTP: srv, Front: tc.front}
			go func() { _ = s.Serve(ln) }()
			t.Cleanup(func() { _ = s.Close() })
			c := advDial(t, ln.Addr().String())
			if tc.served {
				c.send(advGet("GET", env.host, "/first"))
				if resp, _, _ := c.final("GET"); resp.StatusCode != 200 {
					t.Fatalf("first request: %d", resp.StatusCode)
				}
			}
			// Part of a head, then nothing.
			c.send("GET http://" + env.host + "/half HTTP/1.1\r\nHost: " + env.host + "\r\n")
			time.Sleep(100 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err = s.Shutdown(ctx)
			if err != nil || time.Since(start) > 500*time.Millisecond {
				t.Errorf("Shutdown with a half-sent head: %v after %v; want nil at once (as Go's server alone)",
					err, time.Since(start).Round(time.Millisecond))
			}
		})
	}
}
