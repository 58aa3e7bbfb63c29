package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/proxy/admin"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"
)

// proxyRuntime is a running proxy: its listeners, routes, identities, metrics
// and readiness.
type proxyRuntime struct {
	pl      *plan
	logger  *zap.Logger
	reg     *prometheus.Registry
	metrics *proxy.Metrics
	reloads *prometheus.CounterVec
	// routes by identity name, to drop idle connections after a reload.
	routes    map[string][]*proxy.Route
	all       []*proxy.Route
	listeners []*listener
	adminSrv  *listener
	// inherited are a worker's listening sockets from its parent, taken
	// in order (nextFile) instead of opening the listeners.
	inherited []*os.File
	nextFile  int
	listening atomic.Bool
	draining  atomic.Bool

	// leaves mints the certificates of connect: mitm tunnels.
	leaves *tlsconf.LeafCache

	reloadMu      sync.Mutex
	lastErr       map[string]string
	trustSums     map[string][32]byte
	routesByTrust map[string][]*proxy.Route
}

type listener struct {
	name string
	ln   net.Listener
	srv  *http.Server
	// front, on proxy listeners, takes simple requests itself and hands
	// the other connections to srv.
	front *proxy.Server
}

func (l *listener) serve() error {
	if l.front != nil {
		return l.front.Serve(l.ln)
	}
	return l.srv.Serve(l.ln)
}

func (l *listener) shutdown(ctx context.Context) error {
	if l.front != nil {
		return l.front.Shutdown(ctx)
	}
	return l.srv.Shutdown(ctx)
}

func (l *listener) close() error {
	if l.front != nil {
		return l.front.Close()
	}
	return l.srv.Close()
}

// serve runs the proxy described by pl until ctx ends, then drains it.
func (c *cli) serve(ctx context.Context, pl *plan, logger, access *zap.Logger) error {
	rt := &proxyRuntime{pl: pl, logger: logger, reg: prometheus.NewRegistry(), routes: map[string][]*proxy.Route{},
		lastErr: map[string]string{}, trustSums: map[string][32]byte{}, routesByTrust: map[string][]*proxy.Route{},
		inherited: c.inherited}
	for name, src := range pl.trusts {
		if sum, err := fileSum(src.files); err == nil {
			rt.trustSums[name] = sum
		}
	}
	rt.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rt.metrics = proxy.NewMetrics(rt.reg)
	rt.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mtlsproxy_reloads_total",
		Help: "Identity reloads, by identity and result (ok, error). A failed reload keeps the previous certificate.",
	}, []string{"identity", "result"})
	rt.reg.MustRegister(rt.reloads, &expiryCollector{ids: pl.identities})
	for name := range pl.identities {
		rt.reloads.WithLabelValues(name, "ok")
		rt.reloads.WithLabelValues(name, "error")
	}
	defer func() {
		for _, r := range rt.all {
			r.CloseIdleConnections()
		}
	}()
	if pl.mitmCA != nil {
		rt.leaves = tlsconf.NewLeafCache(pl.mitmCA, 0, 0)
		if !pl.mitmCA.Constrained() {
			logger.Warn("the MITM CA has no name constraints: if its key leaks, it can impersonate any site; make a constrained one with: mtlsproxy ca init --permit DOMAIN")
		}
	}
	defer rt.closeListeners()
	if err := rt.listen(access); err != nil {
		return err
	}
	logStartup(logger, pl, rt.listeners[0].ln.Addr())
	for _, w := range pl.warnings {
		logger.Warn(w)
	}
	for _, name := range sortedKeys(pl.identities) {
		rt.warnExpiry(name, pl.identities[name])
		if loose := pl.identities[name].Source().LooseFiles(); len(loose) > 0 {
			logger.Warn("secret files are readable by group or others; restrict them (chmod 600) so only mtlsproxy's user can read the key",
				zap.String("identity", name), zap.Strings("files", loose))
		}
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := rt.watchFiles(wctx); err != nil {
		logger.Warn("cannot watch certificate files; relying on the periodic re-read and SIGHUP", zap.Error(err))
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	errc := make(chan error, len(rt.listeners)+1)
	all := rt.listeners
	if rt.adminSrv != nil {
		all = append(append([]*listener{}, all...), rt.adminSrv)
	}
	for _, l := range all {
		go func() {
			if err := l.serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s %s: %w", l.name, listenName(l.ln.Addr()), err)
			}
		}()
	}
	rt.listening.Store(true)
	for _, l := range all {
		if c.onListen != nil {
			c.onListen(l.name, l.ln.Addr())
		}
	}
	for {
		select {
		case <-hup:
			rt.reload("SIGHUP")
		case err := <-errc:
			rt.drain()
			return err
		case <-ctx.Done():
			rt.drain()
			return nil
		}
	}
}

// listen opens every listener; on error the ones already open are closed
// by the caller.
func (rt *proxyRuntime) listen(access *zap.Logger) error {
	pl := rt.pl
	newRoute := func(rp *routePlan) *proxy.Route {
		rp.opts.Timeouts = pl.timeouts
		rp.opts.Metrics = rt.metrics
		r := proxy.NewRoute(rp.opts)
		rt.routes[rp.identity] = append(rt.routes[rp.identity], r)
		if rp.trustKey != "" {
			rt.routesByTrust[rp.trustKey] = append(rt.routesByTrust[rp.trustKey], r)
		}
		rt.all = append(rt.all, r)
		return r
	}
	type pending struct {
		l *listener
		o proxy.Options
	}
	var todo []pending
	open := func(name, addr string, o proxy.Options) error {
		l, err := rt.open(name, addr, true, nil)
		if err != nil {
			return err
		}
		rt.listeners = append(rt.listeners, l)
		todo = append(todo, pending{l, o})
		return nil
	}
	main := proxy.Options{}
	for _, rp := range pl.routes {
		main.Routes = append(main.Routes, newRoute(rp))
	}
	if pl.upstream != nil {
		main.Upstream, main.UpstreamRoute = pl.upstream, newRoute(pl.upstreamRoute)
	}
	if len(main.Routes) > 0 || main.Upstream != nil {
		if err := open("listen", pl.listen, main); err != nil {
			return err
		}
	}
	for _, g := range pl.gateways {
		if err := open(g.name, g.listen, proxy.Options{Upstream: g.upstream, UpstreamRoute: newRoute(g.route)}); err != nil {
			return err
		}
	}
	// The handlers are built once every listener is open, so that each
	// knows all of the proxy's own addresses and refuses to loop.
	var self []string
	for _, l := range rt.listeners {
		if l.ln.Addr().Network() == "tcp" {
			self = append(self, l.ln.Addr().String())
		}
	}
	for _, t := range todo {
		o := t.o
		o.Logger, o.AccessLog, o.Metrics = rt.logger, access, rt.metrics
		o.StripHeaders, o.Self = pl.stripHeaders, self
		if t.l.name == "listen" {
			o.Mitm = rt.leaves
		}
		// Callers authenticate on the forward listener, and on a gateway
		// that lists clients (a gateway is not a proxy, so tools do not
		// send proxy credentials to it unasked).
		if t.l.name == "listen" || (o.UpstreamRoute != nil && len(o.UpstreamRoute.Clients()) > 0) {
			o.Clients = pl.clients
		}
		if pl.via {
			o.Via = "mtlsproxy"
		}
		h, err := proxy.New(o)
		if err != nil {
			return fmt.Errorf("%s: %w", t.l.name, err)
		}
		t.l.srv.Handler = h
		t.l.front = &proxy.Server{Proxy: h, HTTP: t.l.srv, Metrics: rt.metrics}
	}
	if rt.inherited != nil && rt.nextFile != len(rt.inherited) {
		return fmt.Errorf("the parent passed %d listening sockets, more than this configuration has", len(rt.inherited))
	}
	if pl.admin != "" {
		h := admin.Handler(admin.Options{Ready: rt.ready, Gatherer: rt.reg, Level: pl.level, Pprof: pl.pprof})
		l, err := rt.open("admin", pl.admin, false, h)
		if err != nil {
			return err
		}
		rt.adminSrv = l
	}
	return nil
}

// open opens a listener: the admin listener (client false) or one for
// clients, which a worker takes from its parent instead.
func (rt *proxyRuntime) open(name, addr string, client bool, h http.Handler) (*listener, error) {
	var ln net.Listener
	var err error
	if rt.inherited != nil && client {
		ln, err = rt.inherit(name, addr)
	} else if ln, err = listen(addr, rt.pl.socketMode); err != nil {
		err = fmt.Errorf("%s: %w", name, err)
	}
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: rt.pl.readHeaderTimeout,
		IdleTimeout:       rt.pl.clientIdleTimeout,
		// 64 KiB of request line and headers, like a generous nginx
		// large_client_header_buffers; more gets 431.
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       zap.NewStdLog(rt.logger.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
	if client {
		srv.ConnState = rt.metrics.ConnState
		if rt.pl.maxConns > 0 {
			ln = netutil.LimitListener(ln, rt.pl.maxConns)
		}
	}
	return &listener{name: name, ln: ln, srv: srv}, nil
}

func (rt *proxyRuntime) closeListeners() {
	for _, l := range rt.listeners {
		_ = l.ln.Close()
	}
	if rt.adminSrv != nil {
		_ = rt.adminSrv.srv.Close()
	}
}

// ready is /readyz: nil when every listener is up, every identity is
// loaded and within its validity period, and the proxy is not draining.
func (rt *proxyRuntime) ready() error {
	if rt.draining.Load() {
		return errors.New("draining: shutting down")
	}
	if !rt.listening.Load() {
		return errors.New("listeners are not up yet")
	}
	now := time.Now()
	var bad []string
	for _, name := range sortedKeys(rt.pl.identities) {
		id := rt.pl.identities[name]
		if id.Expired(now) {
			leaf := id.Leaf()
			bad = append(bad, fmt.Sprintf("identity %q is outside its validity period (%s to %s)", name,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// drain stops accepting connections, lets in-flight requests finish for up
// to the shutdown timeout, then closes what is left.
func (rt *proxyRuntime) drain() {
	rt.draining.Store(true)
	rt.logger.Info("draining: no new connections; waiting for in-flight requests",
		zap.Duration("shutdown_timeout", rt.pl.shutdownTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), rt.pl.shutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, l := range rt.listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.shutdown(ctx); err != nil {
				rt.logger.Warn("shutdown timeout reached; closing the remaining connections", zap.String("listener", l.name))
				_ = l.close()
			}
		}()
	}
	wg.Wait()
	if rt.adminSrv != nil {
		_ = rt.adminSrv.srv.Close()
	}
	rt.logger.Info("stopped")
}

// reload re-reads every identity and trust bundle (SIGHUP, a file
// change, or the periodic re-read). A file that fails to load is logged
// once per distinct error and counted, and the previous state stays in
// use. After a successful swap, idle upstream connections made with the
// old certificate or pool are closed, so new requests use the new one;
// requests in flight finish on their connections.
func (rt *proxyRuntime) reload(reason string) {
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
func (rt *proxyRuntime) reloadMitmCA(reason string) {
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
func (rt *proxyRuntime) warnExpiry(name string, id *tlsconf.Identity) {
	leaf := id.Leaf()
	now := time.Now()
	switch {
	case id.Expired(now):
		rt.logger.Warn("client certificate is outside its validity period; its routes answer 503 identity-unavailable until it is renewed",
			zap.String("identity", name), zap.Time("not_before", leaf.NotBefore), zap.Time("not_after", leaf.NotAfter))
	case leaf.NotAfter.Sub(now) < rt.pl.expiryWarning:
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
func (rt *proxyRuntime) watchFiles(ctx context.Context) error {
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
		Interval: rt.pl.reloadInterval,
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
