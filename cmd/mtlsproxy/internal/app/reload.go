package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// reload re-reads every identity and trust bundle (SIGHUP, a file
// change, or the periodic re-read). A file that fails to load is logged
// once per distinct error and counted, and the previous state stays in
// use. After a successful swap, idle upstream connections made with the
// old certificate or pool are closed, so new requests use the new one;
// requests in flight finish on their connections.
func (rt *runtime) reload(reason string) {
	rt.reloadMu.Lock()
	defer rt.reloadMu.Unlock()
	for _, name := range sortedKeys(rt.pl.identities) {
		id := rt.pl.identities[name]
		before := id.Certificate()
		if err := id.Reload(); err != nil {
			if rt.lastErr[name] != err.Error() {
				rt.lastErr[name] = err.Error()
				rt.reloads.WithLabelValues(name, "error").Inc()
				rt.logger.Error("identity reload failed; keeping the previous certificate",
					zap.String("identity", name), zap.String("reason", reason), zap.Error(err))
			}
			continue
		}
		delete(rt.lastErr, name)
		after := id.Certificate()
		if bytes.Equal(before.Certificate[0], after.Certificate[0]) {
			continue
		}
		rt.reloads.WithLabelValues(name, "ok").Inc()
		for _, r := range rt.routes[name] {
			r.Refresh()
		}
		rt.logger.Info("identity reloaded: new certificate in use", zap.String("identity", name), zap.String("reason", reason),
			zap.String("subject", after.Leaf.Subject.String()), zap.Time("not_after", after.Leaf.NotAfter))
		rt.warnExpiry(name, id)
	}
	if rt.leaves != nil {
		rt.reloadMitmCA(reason)
	}
	for _, name := range sortedKeys(rt.pl.trusts) {
		src := rt.pl.trusts[name]
		sum, err := fileSum(src.files)
		if err == nil && sum == rt.trustSums[name] {
			continue
		}
		var pool *x509.CertPool
		if err == nil {
			pool, err = tlsconf.LoadTrust(src.files, src.system)
		}
		key := "trust:" + name
		if err != nil {
			if rt.lastErr[key] != err.Error() {
				rt.lastErr[key] = err.Error()
				rt.logger.Error("trust bundle reload failed; keeping the previous CAs", zap.String("trust", name),
					zap.String("reason", reason), zap.Error(err))
			}
			continue
		}
		delete(rt.lastErr, key)
		rt.trustSums[name] = sum
		for _, r := range rt.routesByTrust[name] {
			r.SetRootCAs(pool)
		}
		rt.logger.Info("trust bundle reloaded", zap.String("trust", name), zap.String("reason", reason))
	}
}

// reloadMitmCA re-reads the local CA; a new one replaces the minted leaves.
func (rt *runtime) reloadMitmCA(reason string) {
	old := rt.leaves.CA()
	ca, err := tlsconf.LoadMitmCA(old.Files())
	if err != nil {
		if rt.lastErr["mitm_ca"] != err.Error() {
			rt.lastErr["mitm_ca"] = err.Error()
			rt.logger.Error("MITM CA reload failed; keeping the previous CA", zap.String("reason", reason), zap.Error(err))
		}
		return
	}
	delete(rt.lastErr, "mitm_ca")
	if bytes.Equal(ca.Certificate().Raw, old.Certificate().Raw) {
		return
	}
	rt.leaves.SetCA(ca)
	rt.logger.Info("MITM CA reloaded", zap.String("reason", reason), zap.String("subject", ca.Certificate().Subject.String()))
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

// fileSum is a digest of the files' contents, to notice a changed bundle.
func fileSum(files []string) ([32]byte, error) {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return [32]byte{}, fmt.Errorf("read CA bundle: %w", err)
		}
		h.Write(b)
		h.Write([]byte{0})
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// watchFiles reloads on file changes and every reload interval.
func (rt *runtime) watchFiles(ctx context.Context) error {
	var files []string
	for _, id := range rt.pl.identities {
		files = append(files, id.Source().Files()...)
	}
	for _, t := range rt.pl.trusts {
		files = append(files, t.files...)
	}
	if rt.leaves != nil {
		c, k := rt.leaves.CA().Files()
		files = append(files, c, k)
	}
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
