package app

import (
	"context"
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

// Options are what Serve needs besides the plan.
type Options struct {
	// Logger is the operational logger; Access writes one line per
	// request.
	Logger, Access *zap.Logger
	// OnListen, if set, is called with each listener's name ("listen",
	// "admin", or a gateway's name) and address once it accepts
	// connections.
	OnListen func(name string, addr net.Addr)
	// Inherited are a worker's listening sockets from its supervisor,
	// taken in order instead of opening the client listeners.
	Inherited []*os.File
}

// runtime is a running proxy: its listeners, routes, identities, metrics
// and readiness.
type runtime struct {
	pl      *Plan
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

	// set is the reloadable material; reloadMu keeps one reload's news
	// together in the log.
	set           *tlsconf.Set
	reloadMu      sync.Mutex
	routesByTrust map[string][]*proxy.Route
}

type listener struct {
	name string
	ln   net.Listener
	srv  *http.Server
	// front, on proxy listeners, is the proxy's server around srv.
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

// Serve runs the proxy described by pl until ctx ends, then drains it.
func Serve(ctx context.Context, pl *Plan, o Options) error {
	logger, access := o.Logger, o.Access
	rt := &runtime{pl: pl, logger: logger, reg: prometheus.NewRegistry(), routes: map[string][]*proxy.Route{},
		routesByTrust: map[string][]*proxy.Route{}, inherited: o.Inherited}
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
	rt.set = rt.sources()
	defer rt.closeListeners()
	if err := rt.listen(access); err != nil {
		return err
	}
	logStartup(logger, pl, rt.listeners)
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
				errc <- fmt.Errorf("%s %s: %w", l.name, ListenName(l.ln.Addr()), err)
			}
		}()
	}
	rt.listening.Store(true)
	for _, l := range all {
		if o.OnListen != nil {
			o.OnListen(l.name, l.ln.Addr())
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
func (rt *runtime) listen(access *zap.Logger) error {
	pl := rt.pl
	newRoute := func(rp *routePlan) *proxy.Route {
		rp.opts.Timeouts = pl.proxyTimeouts()
		rp.opts.Metrics = rt.metrics
		rp.opts.FastPath = pl.cfg.FastPathEnabled()
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
		if err := open("listen", pl.cfg.Listen, main); err != nil {
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
		o.StripHeaders, o.Self = pl.cfg.StripHeaders, self
		if t.l.name == "listen" {
			o.Mitm = rt.leaves
		}
		// Callers authenticate on the forward listener, and on a gateway
		// that lists clients (a gateway is not a proxy, so tools do not
		// send proxy credentials to it unasked).
		if t.l.name == "listen" || (o.UpstreamRoute != nil && len(o.UpstreamRoute.Clients()) > 0) {
			o.Clients = pl.clients
		}
		if pl.cfg.Via {
			o.Via = "mtlsproxy"
		}
		h, err := proxy.New(o)
		if err != nil {
			return fmt.Errorf("%s: %w", t.l.name, err)
		}
		t.l.srv.Handler = h
		t.l.front = &proxy.Server{Proxy: h, HTTP: t.l.srv, Metrics: rt.metrics, Front: pl.cfg.FastPathEnabled()}
	}
	if rt.inherited != nil && rt.nextFile != len(rt.inherited) {
		return fmt.Errorf("the parent passed %d listening sockets, more than this configuration has", len(rt.inherited))
	}
	if pl.cfg.Admin != "" {
		h := admin.Handler(admin.Options{Ready: rt.ready, Gatherer: rt.reg, Level: pl.level, Pprof: pl.cfg.Pprof})
		l, err := rt.open("admin", pl.cfg.Admin, false, h)
		if err != nil {
			return err
		}
		rt.adminSrv = l
	}
	return nil
}

// open opens a listener: the admin listener (client false) or one for
// clients, which a worker takes from its parent instead.
func (rt *runtime) open(name, addr string, client bool, h http.Handler) (*listener, error) {
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
		ReadHeaderTimeout: rt.pl.cfg.Timeouts.ClientReadHeader,
		IdleTimeout:       rt.pl.cfg.Timeouts.ClientIdle,
		// 64 KiB of request line and headers, like a generous nginx
		// large_client_header_buffers; more gets 431.
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       zap.NewStdLog(rt.logger.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
	}
	if client {
		srv.ConnState = rt.metrics.ConnState
		if rt.pl.cfg.MaxConnections > 0 {
			ln = netutil.LimitListener(ln, rt.pl.cfg.MaxConnections)
		}
	}
	return &listener{name: name, ln: ln, srv: srv}, nil
}

func (rt *runtime) closeListeners() {
	for _, l := range rt.listeners {
		_ = l.ln.Close()
	}
	if rt.adminSrv != nil {
		_ = rt.adminSrv.srv.Close()
	}
}

// ready is /readyz: nil when every listener is up, every identity is
// loaded and within its validity period, and the proxy is not draining.
func (rt *runtime) ready() error {
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
func (rt *runtime) drain() {
	rt.draining.Store(true)
	rt.logger.Info("draining: no new connections; waiting for in-flight requests",
		zap.Duration("shutdown_timeout", rt.pl.cfg.Timeouts.Shutdown))
	ctx, cancel := context.WithTimeout(context.Background(), rt.pl.cfg.Timeouts.Shutdown)
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
