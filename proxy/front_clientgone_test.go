package proxy

// A client that leaves while the body of its answer is pending (a long
// poll, server-sent events, a slow generator) cancels the upstream
// request at once, on the front as on Go's server (whose read ahead sees
// the close). The front once watched the client only until the answer's
// head arrived.

import (
	"net/http"
	"testing"
	"time"
)

func TestFrontClientGoneWhileBodyPending(t *testing.T) {
	released := make(chan string, 4)
	env := advNewEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			released <- "cancelled"
		case <-time.After(3 * time.Second):
			released <- "never cancelled"
			_, _ = w.Write([]byte("late"))
		}
	})
	for _, tc := range []struct{ name, addr string }{{"reference", env.sAddr}, {"front", env.fAddr}} {
		t.Run(tc.name, func(t *testing.T) {
			c := advDial(t, tc.addr)
			c.send(advGet("GET", env.host, "/longpoll"))
			time.Sleep(300 * time.Millisecond) // the head has reached the proxy
			_ = c.c.Close()
			start := time.Now()
			select {
			case how := <-released:
				if d := time.Since(start); how != "cancelled" || d > time.Second {
					t.Errorf("upstream request after the client left: %s after %v; want cancelled at once", how, d.Round(time.Millisecond))
				}
			case <-time.After(5 * time.Second):
				t.Fatal("upstream handler never returned")
			}
		})
	}
}
