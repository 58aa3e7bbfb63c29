// Package admin serves mtlsproxy's admin endpoints: liveness, readiness,
// Prometheus metrics and the log level.
package admin

import (
	"fmt"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Options configure the admin handler.
type Options struct {
	// Ready reports why the process is not ready to serve, or nil when it
	// is. If nil, the process is always ready.
	Ready func() error
	// Gatherer serves /metrics. If nil, /metrics answers 404.
	Gatherer prometheus.Gatherer
	// Pprof serves Go's profiler at /debug/pprof/ (for contributors
	// measuring the proxy; off by default).
	Pprof bool
	// Level is served at /loglevel (GET, and PUT {"level":"debug"}). If
	// zero, /loglevel answers 404.
	Level zap.AtomicLevel
	// LevelHandler, if set, serves /loglevel instead of Level (which
	// must still be set), to act on more than this process.
	LevelHandler http.Handler
}

// Handler returns the admin mux:
//
//	/healthz   200 while the process serves
//	/readyz    200 when Ready returns nil, else 503 with the reason
//	/metrics   Prometheus text format
//	/loglevel  zap's level handler
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				text(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
				return
			}
		}
		text(w, http.StatusOK, "ready")
	})
	if o.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	if o.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if o.Level != (zap.AtomicLevel{}) {
		var h http.Handler = o.Level
		if o.LevelHandler != nil {
			h = o.LevelHandler
		}
		mux.Handle("/loglevel", h)
	}
	return mux
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintln(w, msg)
}
