package app

import (
	"go.uber.org/zap"

	"github.com/mtlsproxy/mtlsproxy/proxy"
)

// logStartup logs the identities, routes and gateways, and the line that
// says the proxy serves.
func logStartup(logger *zap.Logger, pl *Plan, listeners []*listener) {
	for _, name := range sortedKeys(pl.identities) {
		leaf := pl.identities[name].Leaf()
		logger.Info("identity loaded", zap.String("identity", name), zap.String("subject", leaf.Subject.String()),
			zap.String("issuer", leaf.Issuer.String()), zap.Time("not_after", leaf.NotAfter))
	}
	describe := func(kind string, rp *routePlan, extra ...zap.Field) {
		fields := append([]zap.Field{zap.String("route", rp.opts.Name), zap.Strings("hosts", rp.hosts),
			zap.String("identity", rp.identity), zap.String("trust", rp.trust)}, extra...)
		if rp.opts.Identity != nil {
			fields = append(fields, zap.String("identity_subject", rp.opts.Identity.Leaf().Subject.String()),
				zap.Time("identity_not_after", rp.opts.Identity.Leaf().NotAfter))
		}
		logger.Info(kind, fields...)
	}
	mode := "forward"
	switch {
	case pl.upstream != nil && len(pl.routes) > 0:
		mode = "forward+gateway"
	case pl.upstream != nil:
		mode = "gateway"
	case len(pl.routes) == 0:
		mode = "gateways only"
	}
	main := ListenName(listeners[0].ln.Addr())
	for _, rp := range pl.routes {
		describe("route", rp, zap.Bool("connect_tunnel", rp.opts.Connect == proxy.ConnectTunnel))
	}
	if pl.upstream != nil {
		describe("gateway", pl.upstreamRoute, zap.String("upstream", pl.upstream.String()), zap.String("listen", main))
	}
	for _, g := range pl.gateways {
		describe("gateway", g.route, zap.String("upstream", g.upstream.String()), zap.String("listen", g.listen))
	}
	logger.Info("mtlsproxy started", zap.String("listen", main), zap.String("mode", mode),
		zap.Int("routes", len(pl.routes)), zap.Int("gateways", len(pl.gateways)))
}
