package app

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// fakeWorkers serves n workers' admin endpoints on unix sockets. Each
// answers /readyz and /metrics only once every worker has been asked
// (or after 5s): asked one after the other, the first would wait for the
// others, which are asked only after it.
func fakeWorkers(t *testing.T, n int, ready func(i int) int) []*workerProc {
	t.Helper()
	var all sync.WaitGroup
	all.Add(n)
	together := func() bool {
		done := make(chan struct{})
		go func() { all.Wait(); close(done) }()
		select {
		case <-done:
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
	dir := t.TempDir()
	procs := make([]*workerProc, n)
	for i := range procs {
		reg := prometheus.NewRegistry()
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "fake_total", Help: "a counter"})
		c.Add(float64(i + 1))
		reg.MustRegister(c)
		metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
		var once sync.Once
		mux := http.NewServeMux()
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			once.Do(all.Done)
			if !together() {
				http.Error(w, "not ready: asked alone", http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(ready(i))
		})
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
			once.Do(all.Done)
			if !together() {
				http.Error(w, "asked alone", http.StatusServiceUnavailable)
				return
			}
			metrics.ServeHTTP(w, r)
		})
		sock := filepath.Join(dir, "w"+string(rune('0'+i))+".sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: mux}}
		srv.Start()
		t.Cleanup(srv.Close)
		procs[i] = &workerProc{index: i, admin: sock}
	}
	return procs
}

// TestSupervisorAdminAsksWorkersAtOnce checks that /readyz and /metrics of
// the supervisor ask every worker at the same time, and merge what they
// say.
func TestSupervisorAdminAsksWorkersAtOnce(t *testing.T) {
	t.Run("readyz", func(t *testing.T) {
		h := supervisorAdmin(fakeWorkers(t, 3, func(int) int { return http.StatusOK }), zap.NewAtomicLevel())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		if rec.Code != http.StatusOK {
			t.Errorf("/readyz = %d %q; want 200", rec.Code, rec.Body)
		}
	})
	t.Run("readyz names the unready worker", func(t *testing.T) {
		h := supervisorAdmin(fakeWorkers(t, 3, func(i int) int {
			if i == 2 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		}), zap.NewAtomicLevel())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "worker 2") {
			t.Errorf("/readyz = %d %q; want 503 naming worker 2", rec.Code, rec.Body)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		h := supervisorAdmin(fakeWorkers(t, 3, func(int) int { return http.StatusOK }), zap.NewAtomicLevel())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		body := rec.Body.String()
		for _, want := range []string{`fake_total{worker="0"} 1`, `fake_total{worker="1"} 2`, `fake_total{worker="2"} 3`} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %q:\n%s", want, body)
			}
		}
	})
}
