package admin_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/proxy/admin"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// serve sends one request to h and returns the recorded response.
func serve(h http.Handler, method, target, body string) *httptest.ResponseRecorder {
	var req *http.Request
	if body == "" {
		req = httptest.NewRequest(method, target, nil)
	} else {
		req = httptest.NewRequest(method, target, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestHealthz(t *testing.T) {
	// A Ready that fails must not make the process look dead: /healthz is
	// liveness, not readiness.
	h := admin.Handler(admin.Options{Ready: func() error { return errors.New("draining") }, Level: zap.NewAtomicLevel()})
	w := serve(h, http.MethodGet, "/healthz", "")
	if w.Code != http.StatusOK || w.Body.String() != "ok\n" {
		t.Errorf("GET /healthz = %d %q; want 200 %q", w.Code, w.Body, "ok\n")
	}
	if got := w.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("GET /healthz Cache-Control = %q; want no-store", got)
	}
}

func TestReadyz(t *testing.T) {
	for _, c := range []struct {
		name       string
		ready      func() error
		wantStatus int
		wantBody   string
	}{
		{"no Ready func", nil, http.StatusOK, "ready\n"},
		{"ready", func() error { return nil }, http.StatusOK, "ready\n"},
		{"not ready", func() error { return errors.New(`identity "app" is outside its validity period`) },
			http.StatusServiceUnavailable, "not ready: identity \"app\" is outside its validity period\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := admin.Handler(admin.Options{Ready: c.ready, Level: zap.NewAtomicLevel()})
			w := serve(h, http.MethodGet, "/readyz", "")
			if w.Code != c.wantStatus || w.Body.String() != c.wantBody {
				t.Errorf("GET /readyz = %d %q; want %d %q", w.Code, w.Body, c.wantStatus, c.wantBody)
			}
			if got := w.Header().Get("Content-Type"); !strings.HasPrefix(got, "text/plain") {
				t.Errorf("Content-Type = %q; want text/plain", got)
			}
		})
	}
}

// TestReadyzAsksEveryTime checks that readiness is not cached: a probe
// sees a change (a drain starting) on its next request.
func TestReadyzAsksEveryTime(t *testing.T) {
	var err error
	h := admin.Handler(admin.Options{Ready: func() error { return err }, Level: zap.NewAtomicLevel()})
	if w := serve(h, http.MethodGet, "/readyz", ""); w.Code != http.StatusOK {
		t.Fatalf("GET /readyz = %d; want 200", w.Code)
	}
	err = errors.New("draining: shutting down")
	if w := serve(h, http.MethodGet, "/readyz", ""); w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "draining") {
		t.Errorf("GET /readyz after Ready fails = %d %q; want 503 naming the reason", w.Code, w.Body)
	}
}

func TestMethods(t *testing.T) {
	h := admin.Handler(admin.Options{Gatherer: prometheus.NewRegistry(), Level: zap.NewAtomicLevel()})
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed},
		{http.MethodPut, "/healthz", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/readyz", http.StatusMethodNotAllowed},
		{http.MethodPost, "/metrics", http.StatusMethodNotAllowed},
		{http.MethodPost, "/loglevel", http.StatusMethodNotAllowed},
		{http.MethodHead, "/healthz", http.StatusOK},
		{http.MethodHead, "/readyz", http.StatusOK},
		{http.MethodGet, "/", http.StatusNotFound},
		{http.MethodGet, "/debug/pprof/", http.StatusNotFound},
	} {
		if w := serve(h, c.method, c.path, ""); w.Code != c.want {
			t.Errorf("%s %s = %d; want %d", c.method, c.path, w.Code, c.want)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "admin_test_things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(7)
	h := admin.Handler(admin.Options{Gatherer: reg, Level: zap.NewAtomicLevel()})
	w := serve(h, http.MethodGet, "/metrics", "")
	if w.Code != http.StatusOK {
		t.Fatalf("GET /metrics = %d; want 200\n%s", w.Code, w.Body)
	}
	if !strings.Contains(w.Body.String(), "admin_test_things_total 7\n") {
		t.Errorf("GET /metrics lacks the registered counter:\n%s", w.Body)
	}
	if got := w.Header().Get("Content-Type"); !strings.HasPrefix(got, "text/plain") {
		t.Errorf("GET /metrics Content-Type = %q; want the Prometheus text format", got)
	}
}

func TestMetricsAbsentWithoutGatherer(t *testing.T) {
	h := admin.Handler(admin.Options{Level: zap.NewAtomicLevel()})
	if w := serve(h, http.MethodGet, "/metrics", ""); w.Code != http.StatusNotFound {
		t.Errorf("GET /metrics without a Gatherer = %d; want 404", w.Code)
	}
}

func TestLogLevel(t *testing.T) {
	level := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	h := admin.Handler(admin.Options{Level: level})
	get := func() string {
		t.Helper()
		w := serve(h, http.MethodGet, "/loglevel", "")
		if w.Code != http.StatusOK {
			t.Fatalf("GET /loglevel = %d %q; want 200", w.Code, w.Body)
		}
		var p struct{ Level string }
		if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
			t.Fatalf("GET /loglevel body %q: %v", w.Body, err)
		}
		return p.Level
	}
	if got := get(); got != "info" {
		t.Errorf("GET /loglevel = %q; want info", got)
	}
	w := serve(h, http.MethodPut, "/loglevel", `{"level":"debug"}`)
	if w.Code != http.StatusOK {
		t.Fatalf("PUT /loglevel debug = %d %q; want 200", w.Code, w.Body)
	}
	if got := level.Level(); got != zapcore.DebugLevel {
		t.Errorf("after PUT debug, the AtomicLevel is %v; want debug", got)
	}
	if got := get(); got != "debug" {
		t.Errorf("GET /loglevel after PUT = %q; want debug", got)
	}
	// A bad level is refused and changes nothing.
	w = serve(h, http.MethodPut, "/loglevel", `{"level":"loud"}`)
	if w.Code != http.StatusBadRequest {
		t.Errorf("PUT /loglevel loud = %d %q; want 400", w.Code, w.Body)
	}
	if got := level.Level(); got != zapcore.DebugLevel {
		t.Errorf("after a refused PUT, the AtomicLevel is %v; want debug still", got)
	}
}
