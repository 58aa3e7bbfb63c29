package proxy

import (
	"errors"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsRegistersEveryFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	// Vectors only show up once a series exists.
	m.route("r").observe(200, "", 0.01)
	m.route("r").handshake(nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{
		"mtlsproxy_requests_total", "mtlsproxy_request_duration_seconds",
		"mtlsproxy_upstream_handshakes_total", "mtlsproxy_open_connections", "mtlsproxy_open_tunnels",
	} {
		if !got[name] {
			t.Errorf("registry lacks %s; has %v", name, got)
		}
	}
	// Registering twice on one registry is a programming error that
	// MustRegister reports by panicking; a fresh registry must not.
	NewMetrics(prometheus.NewRegistry())
}

func TestMetricsRouteObserve(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	fwd := m.route("forward")
	if again := m.route("forward"); again != fwd {
		t.Errorf("route(%q) twice: got two routeMetrics; want the cached one", "forward")
	}
	for range 3 {
		fwd.observe(200, "", 0.002)
	}
	fwd.observe(502, CodeUpstreamTLS, 0.5)
	m.route("").observe(403, CodeHostNotAllowed, 0.0001)

	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{`requests{forward,200}`, m.requests.WithLabelValues("forward", "200"), 3},
		{`requests{forward,502}`, m.requests.WithLabelValues("forward", "502"), 1},
		{`requests{"",403}`, m.requests.WithLabelValues("", "403"), 1},
		{`errors{forward,upstream-tls}`, m.errors.WithLabelValues("forward", CodeUpstreamTLS), 1},
		{`errors{"",host-not-allowed}`, m.errors.WithLabelValues("", CodeHostNotAllowed), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v; want %v", c.name, got, c.want)
		}
	}
	// Successes add no error series: forward has exactly one.
	if n := testutil.CollectAndCount(m.errors, "mtlsproxy_errors_total"); n != 2 {
		t.Errorf("mtlsproxy_errors_total has %d series; want 2 (one per route with an error)", n)
	}
	if n := testutil.CollectAndCount(m.requests); n != 3 {
		t.Errorf("mtlsproxy_requests_total has %d series; want 3", n)
	}
	if n := testutil.CollectAndCount(m.duration); n != 2 {
		t.Errorf("mtlsproxy_request_duration_seconds has %d series; want 2 (forward and unrouted)", n)
	}

	fwd.handshake(nil)
	fwd.handshake(nil)
	fwd.handshake(errors.New("bad certificate"))
	if got := testutil.ToFloat64(m.handshakes.WithLabelValues("forward", "ok")); got != 2 {
		t.Errorf("handshakes{forward,ok} = %v; want 2", got)
	}
	if got := testutil.ToFloat64(m.handshakes.WithLabelValues("forward", "error")); got != 1 {
		t.Errorf("handshakes{forward,error} = %v; want 1", got)
	}
}

func TestMetricsDurationHistogram(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	rm := m.route("forward")
	rm.observe(200, "", 0.003)
	rm.observe(200, "", 0.2)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mtlsproxy_request_duration_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 2 {
			t.Errorf("histogram count = %d; want 2", h.GetSampleCount())
		}
		if got, want := h.GetSampleSum(), 0.203; got < want-1e-9 || got > want+1e-9 {
			t.Errorf("histogram sum = %v; want %v", got, want)
		}
		for _, b := range h.GetBucket() {
			var want uint64
			switch {
			case b.GetUpperBound() >= 0.2:
				want = 2
			case b.GetUpperBound() >= 0.003:
				want = 1
			}
			if b.GetCumulativeCount() != want {
				t.Errorf("bucket le=%v: %d; want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
			}
		}
		return
	}
	t.Fatal("no mtlsproxy_request_duration_seconds family")
}

func TestMetricsNilIsSafe(t *testing.T) {
	var m *Metrics
	rm := m.route("forward")
	if rm != nil {
		t.Fatalf("(*Metrics)(nil).route = %v; want nil", rm)
	}
	// None of these may panic.
	rm.observe(200, "", 0.1)
	rm.observe(502, CodeUpstreamConnect, 0.1)
	rm.handshake(nil)
	rm.handshake(errors.New("x"))
	m.ConnState(nil, http.StateNew)
	m.ConnState(nil, http.StateClosed)

	// A route or proxy built without Metrics works and records nothing.
	r := NewRoute(RouteOptions{Name: "plain"})
	if r.metrics != nil {
		t.Errorf("route without Metrics has metrics %v; want nil", r.metrics)
	}
}

func TestMetricsConnState(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	steps := []struct {
		s    http.ConnState
		want float64
	}{
		{http.StateNew, 1},
		{http.StateNew, 2},
		{http.StateNew, 3},
		{http.StateActive, 3},
		{http.StateIdle, 3},
		{http.StateClosed, 2},
		{http.StateHijacked, 1}, // a CONNECT tunnel or upgrade leaves the server
		{http.StateActive, 1},
		{http.StateClosed, 0},
	}
	for i, s := range steps {
		m.ConnState(nil, s.s)
		if got := testutil.ToFloat64(m.openConns); got != s.want {
			t.Fatalf("step %d (%v): open connections = %v; want %v", i, s.s, got, s.want)
		}
	}
}

// TestMetricsObserveDoesNotAllocate guards the request path: once a route
// has seen a status and an error code, recording another costs no
// allocation (no label lookup, no strconv).
func TestMetricsObserveDoesNotAllocate(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	rm := m.route("forward")
	rm.observe(200, "", 0.001)
	rm.observe(502, CodeUpstreamTLS, 0.001)
	for _, c := range []struct {
		name   string
		status int
		code   string
	}{
		{"success", 200, ""},
		{"error", 502, CodeUpstreamTLS},
	} {
		if n := testing.AllocsPerRun(1000, func() { rm.observe(c.status, c.code, 0.001) }); n != 0 {
			t.Errorf("%s: observe allocates %v times per call; want 0", c.name, n)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { rm.handshake(nil) }); n != 0 {
		t.Errorf("handshake allocates %v times per call; want 0", n)
	}
}

func BenchmarkMetricsObserve(b *testing.B) {
	rm := NewMetrics(prometheus.NewRegistry()).route("forward")
	rm.observe(200, "", 0.001)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rm.observe(200, "", 0.001)
		}
	})
}
