package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"go.uber.org/zap"
)

// plan is a validated configuration, from flags or from a file, with
// identities and trust bundles loaded: everything needed to start.
type plan struct {
	listen       string
	unsafeListen bool
	level        zap.AtomicLevel
	format       string
	resolve      proxy.Resolve
	identities   map[string]*tlsconf.Identity
	routes       []*routePlan
	// upstream and upstreamRoute make the main listener a gateway too
	// (--upstream).
	upstream      *url.URL
	upstreamRoute *routePlan
	gateways      []*gatewayPlan
	// admin is the admin listener address, or "".
	admin string
	pprof bool
	// warnings are logged at start-up: legal, but probably not meant.
	warnings []string
	// mitmCA signs the leaves of connect: mitm tunnels, if configured.
	mitmCA *tlsconf.MitmCA
	via    bool
	// clients must authenticate when not empty.
	clients      proxy.Clients
	stripHeaders []string
	socketMode   os.FileMode
	maxConns     int
	// workers is the number of serving processes: 1 serves in this one.
	workers int
	// upstream is the upstream side of every route; the rest are the
	// client side.
	timeouts          proxy.Timeouts
	readHeaderTimeout time.Duration
	clientIdleTimeout time.Duration
	shutdownTimeout   time.Duration
	// trusts are the reloadable trust bundles by name.
	trusts map[string]trustSource
	// reloadInterval re-reads identities and trust bundles; 0 is off.
	reloadInterval time.Duration
	// expiryWarning is how long before NotAfter a warning is logged.
	expiryWarning time.Duration
	// declared names, loaded or not, so that a route naming an identity
	// that failed to load is not also reported as unknown.
	declared map[string]bool
}

// routePlan is one route, or the route behind a gateway.
type routePlan struct {
	opts     proxy.RouteOptions
	identity string // identity name, or "none"
	trust    string // trust bundle name, or "system roots"
	trustKey string // key in plan.trusts, or "" for the system roots
	hosts    []string
}

// trustSource is where a trust bundle comes from, for reloading it.
type trustSource struct {
	files  []string
	system bool
}

type gatewayPlan struct {
	name     string
	listen   string
	upstream *url.URL
	route    *routePlan
}

// identityNone in a route or gateway means: no client certificate.
const identityNone = "none"

// planFromFile validates a decoded config file. Every problem is added to
// probs with its field path; the plan is usable only if probs is empty.
func planFromFile(cfg *fileConfig, probs *configProblems) *plan {
	pl := &plan{listen: cfg.Listen, unsafeListen: cfg.UnsafeListen, format: cfg.Log.Format,
		resolve: proxy.Resolve{}, identities: map[string]*tlsconf.Identity{}, declared: map[string]bool{},
		trusts: map[string]trustSource{}}
	pl.reloadInterval, pl.expiryWarning = time.Minute, 7*24*time.Hour
	if cfg.ReloadInterval != nil {
		pl.reloadInterval = *cfg.ReloadInterval
		if pl.reloadInterval < 0 {
			probs.add("reload_interval", "%s: want 0 (off) or a positive duration", pl.reloadInterval)
		}
	}
	if cfg.ExpiryWarning != nil {
		pl.expiryWarning = *cfg.ExpiryWarning
	}
	for name := range cfg.Identities {
		pl.declared["identity:"+name] = true
	}
	for name := range cfg.Trust {
		pl.declared["trust:"+name] = true
	}
	if pl.listen == "" {
		pl.listen = "127.0.0.1:8080"
	}
	if err := checkListen("listen", pl.listen, pl.unsafeListen); err != nil {
		probs.add("listen", "%v", strings.TrimPrefix(err.Error(), "listen "))
	}
	if cfg.Admin != "" {
		if err := checkListen("admin", cfg.Admin, cfg.UnsafeListen); err != nil {
			probs.add("admin", "%v", strings.TrimPrefix(err.Error(), "admin "))
		}
	}
	pl.admin, pl.maxConns, pl.via, pl.stripHeaders, pl.pprof = cfg.Admin, cfg.MaxConnections, cfg.Via, cfg.StripHeaders, cfg.Pprof
	sm := cfg.SocketMode
	if sm == "" {
		sm = "0660"
	}
	var err error
	if pl.socketMode, err = parseSocketMode(sm); err != nil {
		probs.add("socket_mode", "%v", err)
	}
	for i, h := range cfg.StripHeaders {
		if !validHeaderName(h) {
			probs.add(fmt.Sprintf("strip_headers[%d]", i), "%q is not a header name", h)
		}
	}
	pl.clients = loadClients(cfg.Clients, probs)
	if cfg.MaxConnections < 0 {
		probs.add("max_connections", "%d: want 0 (no limit) or more", cfg.MaxConnections)
	}
	pl.workers = cfg.Workers
	if pl.workers == 0 {
		pl.workers = 1
	}
	if err := checkWorkers(pl.workers, cfg.Pprof); err != nil {
		probs.add("workers", "%v", err)
	}
	fileTimeouts(cfg.Timeouts, pl, probs)
	pl.mitmCA = loadMitmCA(cfg.MitmCA, probs)
	level := cfg.Log.Level
	if level == "" {
		level = "info"
	}
	if pl.level, err = parseLevel(level); err != nil {
		probs.add("log.level", "%v", err)
	}
	if pl.format == "" {
		pl.format = "json"
	}
	if err := checkFormat(pl.format); err != nil {
		probs.add("log.format", "%v", err)
	}
	for i, r := range cfg.Resolve {
		k, v, err := parseResolve(r)
		if err != nil {
			probs.add(fmt.Sprintf("resolve[%d]", i), "%v", err)
			continue
		}
		pl.resolve[k] = v
	}
	for _, name := range sortedKeys(cfg.Identities) {
		if id := loadIdentity(name, cfg.Identities[name], probs); id != nil {
			pl.identities[name] = id
		}
	}
	pools := map[string]*x509.CertPool{}
	for _, name := range sortedKeys(cfg.Trust) {
		if pool := loadTrust(name, cfg.Trust[name], probs); pool != nil {
			pools[name] = pool
			pl.trusts[name] = trustSource{files: cfg.Trust[name].CAFiles, system: cfg.Trust[name].System}
		}
	}
	fb := &fileBuilder{cfg: cfg, pl: pl, pools: pools, probs: probs, names: map[string]string{}}
	for i, r := range cfg.Routes {
		pl.routes = append(pl.routes, fb.route(i, r))
	}
	for i, g := range cfg.Gateways {
		pl.gateways = append(pl.gateways, fb.gateway(i, g))
	}
	if len(cfg.Routes) == 0 && len(cfg.Gateways) == 0 {
		probs.add("routes", "nothing is allowed: add at least one route or gateway")
	}
	return pl
}

// upstreamOptions validates the settings routes and gateways share and
// fills rp.
func upstreamOptions(path string, u upstreamConfig, pl *plan, pools map[string]*x509.CertPool, rp *routePlan, probs *configProblems) {
	switch u.Identity {
	case "":
		probs.add(path+".identity", "required: an identity name, or none for no client certificate")
	case identityNone:
		rp.identity = identityNone
	default:
		rp.identity = u.Identity
		id, ok := pl.identities[u.Identity]
		if !ok && !pl.declared["identity:"+u.Identity] {
			probs.add(path+".identity", "unknown identity %q%s", u.Identity, known("identities", declaredNames(pl.declared, "identity:")))
		}
		rp.opts.Identity = id
	}
	rp.trust = "system roots"
	if u.Trust != "" {
		rp.trust, rp.trustKey = u.Trust, u.Trust
		pool, ok := pools[u.Trust]
		if !ok && !pl.declared["trust:"+u.Trust] {
			probs.add(path+".trust", "unknown trust bundle %q%s", u.Trust, known("trust bundles", declaredNames(pl.declared, "trust:")))
		}
		rp.opts.RootCAs = pool
	}
	if u.ServerName != "" && !validServerName(u.ServerName) {
		probs.add(path+".server_name", "%q is not a host name", u.ServerName)
	}
	rp.opts.ServerName = u.ServerName
	if u.Address != "" {
		if _, port, err := net.SplitHostPort(u.Address); err != nil || !validPort(port) {
			probs.add(path+".address", "%q: want HOST:PORT, such as 10.0.0.5:8443", u.Address)
		}
	}
	rp.opts.Address = u.Address
	rp.opts.HTTP2 = u.HTTP2 == nil || *u.HTTP2
	rp.opts.Resolve = pl.resolve
	for i, s := range u.Verify.SAN {
		if strings.TrimSpace(s) == "" {
			probs.add(fmt.Sprintf("%s.verify.san[%d]", path, i), "empty name")
		}
	}
	rp.opts.VerifySAN = u.Verify.SAN
	for i, s := range u.Verify.Pins {
		pin, err := tlsconf.ParsePin(s)
		if err != nil {
			probs.add(fmt.Sprintf("%s.verify.pins[%d]", path, i), "%v", err)
			continue
		}
		rp.opts.Pins = append(rp.opts.Pins, pin)
	}
	switch u.MinTLS {
	case "", "1.2":
		rp.opts.MinVersion = tls.VersionTLS12
	case "1.3":
		rp.opts.MinVersion = tls.VersionTLS13
	default:
		probs.add(path+".min_tls", "%q: want 1.2 or 1.3", u.MinTLS)
	}
}

func loadIdentity(name string, ic identityConfig, probs *configProblems) *tlsconf.Identity {
	path := "identities." + name
	if name == identityNone {
		probs.add(path, "%q is reserved: it means no client certificate", identityNone)
		return nil
	}
	src := tlsconf.IdentitySource{CertFile: ic.Cert, KeyFile: ic.Key, KeyPassFile: ic.PasswordFile}
	files := []struct{ key, file string }{{"cert", ic.Cert}, {"key", ic.Key}}
	if ic.PKCS12 != "" {
		if ic.Cert != "" || ic.Key != "" {
			probs.add(path, "give cert and key, or pkcs12, not both")
			return nil
		}
		src = tlsconf.IdentitySource{PKCS12File: ic.PKCS12, PKCS12PassFile: ic.PasswordFile}
		files = []struct{ key, file string }{{"pkcs12", ic.PKCS12}}
	}
	if ic.PasswordFile != "" {
		files = append(files, struct{ key, file string }{"password_file", ic.PasswordFile})
	}
	ok := true
	for _, f := range files {
		if f.file == "" {
			probs.add(path+"."+f.key, "required (or give pkcs12 instead of cert and key)")
			ok = false
		} else if fh, err := os.Open(f.file); err != nil {
			probs.add(path+"."+f.key, "%v", err)
			ok = false
		} else {
			_ = fh.Close()
		}
	}
	if !ok {
		return nil
	}
	id, err := tlsconf.LoadIdentity(name, src)
	if err != nil {
		probs.add(path, "%v", err)
		return nil
	}
	return id
}

func loadTrust(name string, tc trustConfig, probs *configProblems) *x509.CertPool {
	path := "trust." + name
	if len(tc.CAFiles) == 0 && !tc.System {
		probs.add(path, "give ca_files, or system: true for the system roots")
		return nil
	}
	ok := true
	for i, f := range tc.CAFiles {
		if _, err := tlsconf.LoadTrust([]string{f}, false); err != nil {
			probs.add(fmt.Sprintf("%s.ca_files[%d]", path, i), "%v", err)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	pool, err := tlsconf.LoadTrust(tc.CAFiles, tc.System)
	if err != nil {
		probs.add(path, "%v", err)
		return nil
	}
	return pool
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func declaredNames(declared map[string]bool, prefix string) []string {
	var names []string
	for k := range declared {
		if name, ok := strings.CutPrefix(k, prefix); ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

func known(what string, names []string) string {
	if len(names) == 0 {
		return " (no " + what + " are defined)"
	}
	return " (known " + what + ": " + strings.Join(names, ", ") + ")"
}

// checkClients validates a route's or gateway's client list.
func checkClients(path string, names []string, defined map[string]clientConfig, probs *configProblems) []string {
	for i, n := range names {
		if _, ok := defined[n]; !ok {
			probs.add(fmt.Sprintf("%s.clients[%d]", path, i), "unknown client %q%s", n, known("clients", sortedKeys(defined)))
		}
	}
	return names
}

func parseSocketMode(s string) (os.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("%q: want an octal file mode such as 0660", s)
	}
	if n&0o002 != 0 {
		return 0, fmt.Errorf("%q: a world-writable socket lets any local user borrow the identity", s)
	}
	return os.FileMode(n), nil
}

func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for _, c := range h {
		if c > 127 || !(c == '-' || c == '_' || c == '.' || c == '!' || c == '#' || c == '$' || c == '%' || c == '&' || c == '\'' ||
			c == '*' || c == '+' || c == '^' || c == '`' || c == '|' || c == '~' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// permitted reports whether domain falls under the CA's permitted DNS
// name constraints (none means unconstrained).
func permitted(constraints []string, domain string) bool {
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

// loadClients reads the callers' password files.
func loadClients(clients map[string]clientConfig, probs *configProblems) proxy.Clients {
	if len(clients) == 0 {
		return nil
	}
	passwords := map[string]string{}
	for _, name := range sortedKeys(clients) {
		path := "clients." + name
		pf := clients[name].PasswordFile
		if pf == "" {
			probs.add(path+".password_file", "required: a file holding the client's password")
			continue
		}
		b, err := os.ReadFile(pf)
		if err != nil {
			probs.add(path+".password_file", "%v", err)
			continue
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			probs.add(path+".password_file", "%s is empty", pf)
			continue
		}
		if strings.Contains(name, ":") {
			probs.add(path, "a client name cannot contain ':'")
			continue
		}
		passwords[name] = pw
	}
	return proxy.NewClients(passwords)
}

// fileTimeouts validates the timeouts and fills in their defaults.
func fileTimeouts(t timeoutsConfig, pl *plan, probs *configProblems) {
	for _, d := range []struct {
		key string
		v   *time.Duration
		def time.Duration
	}{
		{"dial", &t.Dial, 10 * time.Second}, {"tls_handshake", &t.TLSHandshake, 10 * time.Second},
		{"response_header", &t.ResponseHeader, 60 * time.Second}, {"idle_conn", &t.IdleConn, 90 * time.Second},
		{"tunnel_idle", &t.TunnelIdle, 5 * time.Minute}, {"client_read_header", &t.ClientReadHeader, 30 * time.Second},
		{"client_idle", &t.ClientIdle, 2 * time.Minute}, {"shutdown", &t.Shutdown, 30 * time.Second},
	} {
		switch {
		case *d.v < 0:
			probs.add("timeouts."+d.key, "%s: want a positive duration", *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	pl.timeouts = proxy.Timeouts{Dial: t.Dial, TLSHandshake: t.TLSHandshake, ResponseHeader: t.ResponseHeader,
		IdleConn: t.IdleConn, TunnelIdle: t.TunnelIdle}
	pl.readHeaderTimeout, pl.clientIdleTimeout, pl.shutdownTimeout = t.ClientReadHeader, t.ClientIdle, t.Shutdown
}

// loadMitmCA loads the local CA of connect: mitm routes, if configured.
func loadMitmCA(m *mitmCAConfig, probs *configProblems) *tlsconf.MitmCA {
	if m == nil {
		return nil
	}
	if m.Cert == "" || m.Key == "" {
		probs.add("mitm_ca", "give cert and key (make them with: mtlsproxy ca init --out DIR)")
		return nil
	}
	ca, err := tlsconf.LoadMitmCA(m.Cert, m.Key)
	if err != nil {
		probs.add("mitm_ca", "%v", err)
		return nil
	}
	return ca
}

// fileBuilder turns the config file's routes and gateways into plans.
type fileBuilder struct {
	cfg   *fileConfig
	pl    *plan
	pools map[string]*x509.CertPool
	probs *configProblems
	names map[string]string // route and gateway names in use, by path
}

// uniqueName is name, or def when name is empty; a repeated explicit name
// is a problem, a repeated default gets the path appended.
func (fb *fileBuilder) uniqueName(path, name, def string) string {
	explicit := name != ""
	if !explicit {
		name = def
	}
	if prev, dup := fb.names[name]; dup {
		if explicit {
			fb.probs.add(path+".name", "name %q is already used by %s", name, prev)
		}
		name = name + "#" + path
	}
	fb.names[name] = path
	return name
}

// route validates routes[i].
func (fb *fileBuilder) route(i int, r routeConfig) *routePlan {
	cfg, pl, probs := fb.cfg, fb.pl, fb.probs
	path := fmt.Sprintf("routes[%d]", i)
	hosts := r.Hosts
	switch {
	case r.Host != "" && len(r.Hosts) > 0:
		probs.add(path, "give host or hosts, not both")
	case r.Host != "":
		hosts = []string{r.Host}
	case len(r.Hosts) == 0:
		probs.add(path+".host", "required: the upstream host this route carries (api.internal, *.corp.example, optional :port)")
	}
	rp := &routePlan{hosts: hosts}
	for j, h := range hosts {
		p, err := proxy.ParseHostPattern(h)
		if err != nil {
			hp := path + ".host"
			if r.Host == "" {
				hp = fmt.Sprintf("%s.hosts[%d]", path, j)
			}
			probs.add(hp, "%v", err)
			continue
		}
		rp.opts.Hosts = append(rp.opts.Hosts, p)
	}
	def := path
	if len(hosts) > 0 {
		def = hosts[0]
	}
	rp.opts.Name = fb.uniqueName(path, r.Name, def)
	upstreamOptions(path, r.upstreamConfig, pl, fb.pools, rp, probs)
	switch r.Connect {
	case "", "reject":
	case "tunnel":
		rp.opts.Connect = proxy.ConnectTunnel
	case "mitm":
		rp.opts.Connect = proxy.ConnectMitm
		if cfg.MitmCA == nil {
			probs.add(path+".connect", "mitm needs a local CA: add mitm_ca: {cert, key} (make one with: mtlsproxy ca init --out DIR)")
		} else if pl.mitmCA != nil {
			for _, h := range rp.opts.Hosts {
				if d := h.Domain(); d != "" && !permitted(pl.mitmCA.Certificate().PermittedDNSDomains, d) {
					pl.warnings = append(pl.warnings, fmt.Sprintf("%s.host: %s is outside the MITM CA's permitted domains (%s): clients that honour name constraints will refuse its certificates; make a CA that permits it (mtlsproxy ca init --permit %s)",
						path, h, strings.Join(pl.mitmCA.Certificate().PermittedDNSDomains, ", "), d))
				}
			}
		}
	default:
		probs.add(path+".connect", "%q: want reject, tunnel or mitm", r.Connect)
	}
	rp.opts.Clients = checkClients(path, r.Clients, cfg.Clients, probs)
	return rp
}

// gateway validates gateways[i].
func (fb *fileBuilder) gateway(i int, g gatewayConfig) *gatewayPlan {
	cfg, pl, probs := fb.cfg, fb.pl, fb.probs
	path := fmt.Sprintf("gateways[%d]", i)
	gp := &gatewayPlan{listen: g.Listen, route: &routePlan{}}
	if g.Listen == "" {
		probs.add(path+".listen", "required: the address this gateway listens on, such as 127.0.0.1:8081")
	} else if err := checkListen("listen", g.Listen, cfg.UnsafeListen); err != nil {
		probs.add(path+".listen", "%v", strings.TrimPrefix(err.Error(), "listen "))
	}
	if g.Upstream == "" {
		probs.add(path+".upstream", "required: the https:// URL this gateway forwards to")
	} else if u, err := parseUpstream(g.Upstream); err != nil {
		probs.add(path+".upstream", "%v", strings.TrimPrefix(err.Error(), "--upstream "))
	} else if p, err := upstreamPattern(u); err != nil {
		probs.add(path+".upstream", "%v", err)
	} else {
		gp.upstream = u
		gp.route.opts.Hosts = []proxy.HostPattern{p}
		gp.route.hosts = []string{p.String()}
	}
	def := path
	if g.Listen != "" {
		def = "gateway " + g.Listen
	}
	gp.name = fb.uniqueName(path, g.Name, def)
	gp.route.opts.Name = gp.name
	upstreamOptions(path, g.upstreamConfig, pl, fb.pools, gp.route, probs)
	gp.route.opts.Clients = checkClients(path, g.Clients, cfg.Clients, probs)
	return gp
}
