package app

import (
	"context"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// sources are the runtime's reloadable TLS material, in the order of the
// reload's log lines: identities, the MITM CA, trust bundles.
func (rt *runtime) sources() *tlsconf.Set {
	set := tlsconf.NewSet()
	for _, name := range sortedKeys(rt.pl.identities) {
		set.Add(rt.pl.identities[name])
	}
	if rt.leaves != nil {
		set.Add(rt.leaves)
	}
	for _, name := range sortedKeys(rt.pl.trusts) {
		set.Add(rt.pl.trusts[name])
	}
	return set
}

// reload re-reads every identity, trust bundle and the MITM CA (SIGHUP, a
// file change, or the periodic re-read). The set reports only news: a
// change, or a failure other than the one reported last, which is logged
// and counted while the previous material stays in use. After a change,
// the routes that use the material start over with it: idle upstream
// connections made with the old certificate or pool are closed, so new
// requests use the new one; requests in flight finish on their
// connections.
func (rt *runtime) reload(reason string) {
	rt.reloadMu.Lock()
	defer rt.reloadMu.Unlock()
	for _, r := range rt.set.Reload(reason) {
		switch src := r.Source.(type) {
		case *tlsconf.Identity:
			rt.identityReloaded(src, r)
		case *tlsconf.TrustBundle:
			switch {
			case r.Err != nil:
				rt.logger.Error("trust bundle reload failed; keeping the previous CAs", zap.String("trust", r.Name),
					zap.String("reason", reason), zap.Error(r.Err))
			case r.Changed:
				for _, route := range rt.routesByTrust[r.Name] {
					route.SetRootCAs(src.Pool())
				}
				rt.logger.Info("trust bundle reloaded", zap.String("trust", r.Name), zap.String("reason", reason))
			}
		case *tlsconf.LeafCache:
			switch {
			case r.Err != nil:
				rt.logger.Error("MITM CA reload failed; keeping the previous CA", zap.String("reason", reason), zap.Error(r.Err))
			case r.Changed:
				rt.logger.Info("MITM CA reloaded", zap.String("reason", reason), zap.String("subject", src.CA().Certificate().Subject.String()))
			}
		}
	}
}

func (rt *runtime) identityReloaded(id *tlsconf.Identity, r tlsconf.Result) {
	name := r.Name
	switch {
	case r.Err != nil:
		rt.reloads.WithLabelValues(name, "error").Inc()
		rt.logger.Error("identity reload failed; keeping the previous certificate",
			zap.String("identity", name), zap.String("reason", r.Reason), zap.Error(r.Err))
	case r.Changed:
		rt.reloads.WithLabelValues(name, "ok").Inc()
		for _, route := range rt.routes[name] {
			route.Refresh()
		}
		leaf := id.Leaf()
		rt.logger.Info("identity reloaded: new certificate in use", zap.String("identity", name), zap.String("reason", r.Reason),
			zap.String("subject", leaf.Subject.String()), zap.Time("not_after", leaf.NotAfter))
		rt.warnExpiry(name, id)
	}
}

// warnExpiry logs a warning when an identity is within the expiry-warning
// window or outside its validity period.
func (rt *runtime) warnExpiry(name string, id *tlsconf.Identity) {
	leaf := id.Leaf()
	now := time.Now()
	switch {
	case id.Expired(now):
		rt.logger.Warn("client certificate is outside its validity period; its routes answer 503 identity-unavailable until it is renewed",
			zap.String("identity", name), zap.Time("not_before", leaf.NotBefore), zap.Time("not_after", leaf.NotAfter))
	case leaf.NotAfter.Sub(now) < *rt.pl.cfg.ExpiryWarning:
		rt.logger.Warn("client certificate expires soon", zap.String("identity", name),
			zap.Time("not_after", leaf.NotAfter), zap.Duration("expires_in", leaf.NotAfter.Sub(now).Round(time.Minute)))
	}
}

// watchFiles reloads on file changes and every reload interval.
func (rt *runtime) watchFiles(ctx context.Context) error {
	files := rt.set.Files()
	if len(files) == 0 {
		return nil
	}
	return tlsconf.Watch(ctx, tlsconf.WatchOptions{
		Files:    files,
		Interval: *rt.pl.cfg.ReloadInterval,
		OnChange: rt.reload,
		OnError: func(err error) {
			rt.logger.Warn("file watcher error; the periodic re-read still applies", zap.Error(err))
		},
	})
}

// expiryCollector exports each identity's NotAfter, read at scrape time so
// that reloads show up.
type expiryCollector struct {
	ids map[string]*tlsconf.Identity
}

var expiryDesc = prometheus.NewDesc("mtlsproxy_certificate_expiry_timestamp_seconds",
	"NotAfter of the client certificate in use, as Unix seconds, by identity.", []string{"identity"}, nil)

func (e *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (e *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	for name, id := range e.ids {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(id.Leaf().NotAfter.Unix()), name)
	}
}
