// Package app is mtlsproxy's runtime, built from a config.Config: it loads
// the identities, trust bundles and local CA a Config names, opens the
// listeners (TCP and unix:), builds the routes and gateways, serves the
// admin endpoints, reloads TLS material (SIGHUP, file watch, timer),
// reports readiness and drains on shutdown. It also runs the --workers
// supervisor and the probe behind "check --dial".
package app

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"go.uber.org/zap"
)

// Plan is a valid configuration with its TLS material loaded: everything
// needed to start.
type Plan struct {
	cfg        *config.Config
	level      zap.AtomicLevel
	socketMode os.FileMode
	resolve    proxy.Resolve
	identities map[string]*tlsconf.Identity
	// trusts are the reloadable trust bundles by name.
	trusts map[string]*tlsconf.TrustBundle
	routes []*routePlan
	// upstream and upstreamRoute make the main listener a gateway too
	// (run --upstream).
	upstream      *url.URL
	upstreamRoute *routePlan
	gateways      []*gatewayPlan
	clients       proxy.Clients
	mitmCA        *tlsconf.MitmCA
	warnings      []string
}

// routePlan is one route, or the route behind a gateway.
type routePlan struct {
	opts     proxy.RouteOptions
	identity string // identity name, or "none"
	trust    string // trust bundle name, or "system roots"
	trustKey string // key in Plan.trusts, or "" for the system roots
	hosts    []string
}

type gatewayPlan struct {
	name     string
	listen   string
	upstream *url.URL
	route    *routePlan
}

// Load validates cfg, fills its defaults and loads the identities, trust
// bundles, client passwords and local CA it names. Every problem, the
// files that do not load included, is in the returned *config.Error,
// named by field path and line or by flag.
func Load(cfg *config.Config) (*Plan, error) {
	probs := cfg.Problems()
	probs.Include(cfg.Validate())
	cfg.SetDefaults()
	p := &Plan{cfg: cfg, resolve: proxy.Resolve{}, identities: map[string]*tlsconf.Identity{}, trusts: map[string]*tlsconf.TrustBundle{}}
	for name, id := range cfg.Identities {
		if loaded := loadIdentity(name, id, probs); loaded != nil {
			p.identities[name] = loaded
		}
	}
	for name, t := range cfg.Trust {
		if b := loadTrust(name, t, probs); b != nil {
			p.trusts[name] = b
		}
	}
	p.clients = loadClients(cfg.Clients, probs)
	p.mitmCA = loadMitmCA(cfg.MitmCA, probs)
	if err := probs.Err(); err != nil {
		return nil, err
	}
	p.level, _ = config.ParseLevel(cfg.Log.Level)
	p.socketMode, _ = config.ParseSocketMode(cfg.SocketMode)
	for _, r := range cfg.Resolve {
		k, v, _ := config.ParseResolve(r)
		p.resolve[k] = v
	}
	routeNames, gatewayNames := cfg.Names()
	for i, r := range cfg.Routes {
		p.routes = append(p.routes, p.route(i, r, routeNames[i]))
	}
	for i, g := range cfg.Gateways {
		p.gateways = append(p.gateways, p.gateway(g, gatewayNames[i]))
	}
	if g := cfg.Upstream; g != nil {
		gp := p.gateway(*g, config.FlagGatewayRoute)
		p.upstream, p.upstreamRoute = gp.upstream, gp.route
	}
	return p, nil
}

// Config is the configuration the plan was loaded from, defaults filled.
func (p *Plan) Config() *config.Config { return p.cfg }

// Level is the loggers' level, which /loglevel changes.
func (p *Plan) Level() zap.AtomicLevel { return p.level }

// Warnings are legal settings that are probably not meant.
func (p *Plan) Warnings() []string { return p.warnings }

func (p *Plan) peer(u config.Peer, rp *routePlan) {
	rp.identity = u.Identity
	if u.Identity != config.IdentityNone {
		rp.opts.Identity = p.identities[u.Identity]
	}
	rp.trust = "system roots"
	if u.Trust != "" {
		rp.trust, rp.trustKey = u.Trust, u.Trust
		rp.opts.RootCAs = p.trusts[u.Trust].Pool()
		if p.cfg.File() == "" {
			// The flags name the files, not a bundle.
			rp.trust = strings.Join(p.cfg.Trust[u.Trust].CAFiles, ",")
		}
	}
	rp.opts.ServerName = u.ServerName
	rp.opts.Address = u.Address
	rp.opts.HTTP2 = u.HTTP2Enabled()
	rp.opts.Resolve = p.resolve
	rp.opts.VerifySAN = u.Verify.SAN
	for _, s := range u.Verify.Pins {
		pin, _ := tlsconf.ParsePin(s)
		rp.opts.Pins = append(rp.opts.Pins, pin)
	}
	rp.opts.MinVersion = tls.VersionTLS12
	if u.MinTLS == "1.3" {
		rp.opts.MinVersion = tls.VersionTLS13
	}
}

func (p *Plan) route(i int, r config.Route, name string) *routePlan {
	rp := &routePlan{hosts: r.RouteHosts()}
	rp.opts.Name = name
	for _, h := range rp.hosts {
		hp, _ := proxy.ParseHostPattern(h)
		rp.opts.Hosts = append(rp.opts.Hosts, hp)
	}
	p.peer(r.Peer, rp)
	switch r.Connect {
	case "tunnel":
		rp.opts.Connect = proxy.ConnectTunnel
	case "mitm":
		rp.opts.Connect = proxy.ConnectMitm
		constraints := p.mitmCA.Certificate().PermittedDNSDomains
		for _, h := range rp.opts.Hosts {
			if d := h.Domain(); d != "" && !Permitted(constraints, d) {
				p.warnings = append(p.warnings, fmt.Sprintf("routes[%d].host: %s is outside the MITM CA's permitted domains (%s): clients that honour name constraints will refuse its certificates; make a CA that permits it (mtlsproxy ca init --permit %s)",
					i, h, strings.Join(constraints, ", "), d))
			}
		}
	}
	rp.opts.Clients = r.Clients
	return rp
}

func (p *Plan) gateway(g config.Gateway, name string) *gatewayPlan {
	u, _ := config.ParseUpstream(g.Upstream)
	hp, _ := config.UpstreamPattern(u)
	gp := &gatewayPlan{name: name, listen: g.Listen, upstream: u,
		route: &routePlan{hosts: []string{hp.String()}}}
	gp.route.opts.Name, gp.route.opts.Hosts = name, []proxy.HostPattern{hp}
	p.peer(g.Peer, gp.route)
	gp.route.opts.Clients = g.Clients
	return gp
}

// Permitted reports whether domain falls under a CA's permitted DNS name
// constraints (none means unconstrained).
func Permitted(constraints []string, domain string) bool {
	if len(constraints) == 0 {
		return true
	}
	for _, c := range constraints {
		c = strings.ToLower(c)
		if strings.HasPrefix(c, ".") {
			if strings.HasSuffix(domain, c) {
				return true
			}
			continue
		}
		if domain == c || strings.HasSuffix(domain, "."+c) {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// proxyTimeouts are the upstream side's timeouts.
func (p *Plan) proxyTimeouts() proxy.Timeouts {
	t := p.cfg.Timeouts
	return proxy.Timeouts{Dial: t.Dial, TLSHandshake: t.TLSHandshake, ResponseHeader: t.ResponseHeader,
		IdleConn: t.IdleConn, TunnelIdle: t.TunnelIdle}
}
