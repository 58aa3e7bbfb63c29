package proxy

import (
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus metrics. Labels are route names and
// codes, never raw hosts or paths, so cardinality stays bounded. A nil
// *Metrics records nothing.
type Metrics struct {
	requests   *prometheus.CounterVec
	errors     *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	handshakes *prometheus.CounterVec
	openConns  prometheus.Gauge
	tunnels    prometheus.Gauge

	mu     sync.Mutex
	routes map[string]*routeMetrics
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mtlsproxy_requests_total",
			Help: "Requests handled, by route and HTTP status code sent to the client.",
		}, []string{"route", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mtlsproxy_errors_total",
			Help: "Requests mtlsproxy answered itself, by route and error code (host-not-allowed, upstream-tls, ...).",
		}, []string{"route", "error"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mtlsproxy_request_duration_seconds",
			Help:    "Time from receiving a request to the end of its response, by route.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mtlsproxy_upstream_handshakes_total",
			Help: "Full or resumed upstream TLS handshakes, by route and result (ok, error).",
		}, []string{"route", "result"}),
		openConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mtlsproxy_open_connections",
			Help: "Client connections currently open on the proxy listeners.",
		}),
		tunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mtlsproxy_open_tunnels",
			Help: "CONNECT tunnels currently open.",
		}),
		routes: map[string]*routeMetrics{},
	}
	reg.MustRegister(m.requests, m.errors, m.duration, m.handshakes, m.openConns, m.tunnels)
	return m
}

// ConnState tracks open client connections; use it as http.Server.ConnState.
func (m *Metrics) ConnState(_ net.Conn, s http.ConnState) {
	if m == nil {
		return
	}
	switch s {
	case http.StateNew:
		m.openConns.Inc()
	case http.StateClosed, http.StateHijacked:
		m.openConns.Dec()
	}
}

// routeMetrics holds one route's resolved series, so the request path does
// no label lookups (and no allocation) once a status has been seen.
type routeMetrics struct {
	m           *Metrics
	name        string
	duration    prometheus.Observer
	handshakeOK prometheus.Counter
	handshakeKO prometheus.Counter

	mu     sync.RWMutex
	status map[int]prometheus.Counter
	errs   map[string]prometheus.Counter
}

func (m *Metrics) route(name string) *routeMetrics {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if rm, ok := m.routes[name]; ok {
		return rm
	}
	rm := &routeMetrics{
		m:           m,
		name:        name,
		duration:    m.duration.WithLabelValues(name),
		handshakeOK: m.handshakes.WithLabelValues(name, "ok"),
		handshakeKO: m.handshakes.WithLabelValues(name, "error"),
		status:      map[int]prometheus.Counter{},
		errs:        map[string]prometheus.Counter{},
	}
	m.routes[name] = rm
	return rm
}

func (rm *routeMetrics) observe(status int, code string, seconds float64) {
	if rm == nil {
		return
	}
	rm.duration.Observe(seconds)
	rm.mu.RLock()
	c, ok := rm.status[status]
	e, eok := rm.errs[code]
	rm.mu.RUnlock()
	if !ok || (code != "" && !eok) {
		rm.mu.Lock()
		if c, ok = rm.status[status]; !ok {
			c = rm.m.requests.WithLabelValues(rm.name, strconv.Itoa(status))
			rm.status[status] = c
		}
		if code != "" {
			if e, eok = rm.errs[code]; !eok {
				e = rm.m.errors.WithLabelValues(rm.name, code)
				rm.errs[code] = e
			}
		}
		rm.mu.Unlock()
	}
	c.Inc()
	if code != "" {
		e.Inc()
	}
}

func (rm *routeMetrics) handshake(err error) {
	if rm == nil {
		return
	}
	if err != nil {
		rm.handshakeKO.Inc()
	} else {
		rm.handshakeOK.Inc()
	}
}
