package config

import (
	"fmt"
	"net"
	"runtime"
	"sort"
	"strings"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

// errNothingAllowed is the run flags allowing no host at all.
const errNothingAllowed = "nothing is allowed: add --allow HOST (repeatable; '*.corp.example' for a domain, '*' for any host) for forward mode, or --upstream https://HOST[:PORT] for gateway mode"

// Validate checks c and reports every problem at once, as an *Error: each
// names its field path and line, or the flag or variable its value came
// from. It reads no files (the runtime reports those it cannot load the
// same way) and does not change c; zero values that stand for defaults
// are valid.
func (c *Config) Validate() error {
	v := &validator{c: c, p: c.Problems()}
	v.p.list = append(v.p.list, c.src.decode...)
	v.general()
	v.timeouts()
	v.identities()
	for name, t := range sorted(c.Trust) {
		if len(t.CAFiles) == 0 && !t.System {
			v.p.Add("trust."+name, "give ca_files, or system: true for the system roots")
		}
	}
	c.names(v.p) // reports repeated names
	for i, r := range c.Routes {
		v.route(i, r)
	}
	for i, g := range c.Gateways {
		v.gateway(fmt.Sprintf("gateways[%d]", i), g)
	}
	if c.Upstream != nil {
		v.gateway("upstream", *c.Upstream)
	}
	if len(c.Routes) == 0 && len(c.Gateways) == 0 && c.Upstream == nil {
		if c.src.flagsOnly {
			v.p.Add("", errNothingAllowed)
		} else {
			v.p.Add("routes", "nothing is allowed: add at least one route or gateway")
		}
	}
	return v.p.Err()
}

type validator struct {
	c *Config
	p *Problems
}

// listenFix is how to allow a non-loopback address at path: in the file,
// unless the address came from a flag.
func (v *validator) listenFix(path string) string {
	if where, _ := v.c.src.where(path); v.c.src.file != "" && !strings.HasPrefix(where, "-") && !strings.HasPrefix(where, "MTLSPROXY_") {
		return "set unsafe_listen: true in the config file"
	}
	return "add --unsafe-listen"
}

func (v *validator) listen(path, addr string) {
	if err := checkListen(addr, v.c.UnsafeListen, v.listenFix(path)); err != nil {
		v.p.Add(path, "%v", err)
	}
}

func (v *validator) general() {
	c := v.c
	v.listen("listen", or(c.Listen, DefaultListen))
	if c.Admin != "" {
		v.listen("admin", c.Admin)
	}
	if _, err := ParseSocketMode(or(c.SocketMode, DefaultSocketMode)); err != nil {
		v.p.Add("socket_mode", "%v", err)
	}
	for i, h := range c.StripHeaders {
		if !validHeaderName(h) {
			v.p.Add(fmt.Sprintf("strip_headers[%d]", i), "%q is not a header name", h)
		}
	}
	for name, cl := range sorted(c.Clients) {
		switch {
		case strings.Contains(name, ":"):
			v.p.Add("clients."+name, "a client name cannot contain ':'")
		case cl.PasswordFile == "":
			v.p.Add("clients."+name+".password_file", "required: a file holding the client's password")
		}
	}
	if c.MaxConnections < 0 {
		v.p.Add("max_connections", "%d: want 0 (no limit) or more", c.MaxConnections)
	}
	switch n := c.Workers; {
	case n < 0 || n > MaxWorkers:
		v.p.Add("workers", "%d: want 1 to %d (0 means 1)", n, MaxWorkers)
	case n > 1 && runtime.GOOS != "linux":
		v.p.Add("workers", "%d: more than one worker is supported on Linux only", n)
	case n > 1 && c.Pprof:
		v.p.Add("workers", "%d: the profiler sees one process; profile with one worker", n)
	}
	if c.ReloadInterval != nil && *c.ReloadInterval < 0 {
		v.p.Add("reload_interval", "%s: want 0 (off) or a positive duration", *c.ReloadInterval)
	}
	if c.MitmCA != nil && (c.MitmCA.Cert == "" || c.MitmCA.Key == "") {
		v.p.Add("mitm_ca", "give cert and key (make them with: mtlsproxy ca init --out DIR)")
	}
	if _, err := ParseLevel(or(c.Log.Level, DefaultLogLevel)); err != nil {
		v.p.Add("log.level", "%v", err)
	}
	if err := checkFormat(or(c.Log.Format, DefaultLogFormat)); err != nil {
		v.p.Add("log.format", "%v", err)
	}
	for i, r := range c.Resolve {
		if _, _, err := ParseResolve(r); err != nil {
			v.p.Add(fmt.Sprintf("resolve[%d]", i), "%v", err)
		}
	}
}

func (v *validator) timeouts() {
	t := v.c.Timeouts
	for _, f := range t.fields() {
		if *f.v < 0 {
			v.p.Add("timeouts."+f.key, "%s: want a positive duration (0 means %s)", *f.v, f.def)
		}
	}
}

func (v *validator) identities() {
	for name, id := range sorted(v.c.Identities) {
		path := "identities." + name
		if name == IdentityNone {
			v.p.Add(path, "%q is reserved: it means no client certificate", IdentityNone)
			continue
		}
		if id.PKCS12 != "" {
			if id.Cert != "" || id.Key != "" {
				v.p.Add(path, "give cert and key, or pkcs12, not both")
			}
			continue
		}
		for _, f := range []struct{ key, file string }{{"cert", id.Cert}, {"key", id.Key}} {
			if f.file == "" {
				v.p.Add(path+"."+f.key, "required (or give pkcs12 instead of cert and key)")
			}
		}
	}
}

// peer checks the settings routes and gateways share.
func (v *validator) peer(path string, u Peer) {
	c := v.c
	switch _, declared := c.Identities[u.Identity]; {
	case u.Identity == "" && !c.src.flagsOnly:
		v.p.Add(path+".identity", "required: an identity name, or none for no client certificate")
	case u.Identity == "" || u.Identity == IdentityNone || declared:
	case c.src.flagsOnly:
		// The flags named no identity; that is reported already.
	default:
		v.p.Add(path+".identity", "unknown identity %q%s", u.Identity, known("identities", keys(c.Identities)))
	}
	if _, declared := c.Trust[u.Trust]; u.Trust != "" && !declared {
		v.p.Add(path+".trust", "unknown trust bundle %q%s", u.Trust, known("trust bundles", keys(c.Trust)))
	}
	if u.ServerName != "" && !validServerName(u.ServerName) {
		v.p.Add(path+".server_name", "%q is not a host name", u.ServerName)
	}
	if u.Address != "" {
		if _, port, err := net.SplitHostPort(u.Address); err != nil || !validPort(port) {
			v.p.Add(path+".address", "%q: want HOST:PORT, such as 10.0.0.5:8443", u.Address)
		}
	}
	for i, s := range u.Verify.SAN {
		if strings.TrimSpace(s) == "" {
			v.p.Add(fmt.Sprintf("%s.verify.san[%d]", path, i), "empty name")
		}
	}
	for i, s := range u.Verify.Pins {
		if _, err := tlsconf.ParsePin(s); err != nil {
			v.p.Add(fmt.Sprintf("%s.verify.pins[%d]", path, i), "%v", err)
		}
	}
	switch u.MinTLS {
	case "", "1.2", "1.3":
	default:
		v.p.Add(path+".min_tls", "%q: want 1.2 or 1.3", u.MinTLS)
	}
}

func (v *validator) clients(path string, names []string) {
	for i, n := range names {
		if _, ok := v.c.Clients[n]; !ok {
			v.p.Add(fmt.Sprintf("%s.clients[%d]", path, i), "unknown client %q%s", n, known("clients", keys(v.c.Clients)))
		}
	}
}

func (v *validator) route(i int, r Route) {
	path := fmt.Sprintf("routes[%d]", i)
	switch {
	case r.Host != "" && len(r.Hosts) > 0:
		v.p.Add(path, "give host or hosts, not both")
	case r.Host == "" && len(r.Hosts) == 0:
		v.p.Add(path+".host", "required: the upstream host this route carries (api.internal, *.corp.example, optional :port)")
	}
	for j, h := range r.RouteHosts() {
		if _, err := proxy.ParseHostPattern(h); err != nil {
			hp := path + ".host"
			if r.Host == "" {
				hp = fmt.Sprintf("%s.hosts[%d]", path, j)
			}
			v.p.Add(hp, "%v", err)
		}
	}
	v.peer(path, r.Peer)
	switch r.Connect {
	case "", "reject", "tunnel":
	case "mitm":
		if v.c.MitmCA == nil {
			v.p.Add(path+".connect", "mitm needs a local CA: add mitm_ca: {cert, key} (make one with: mtlsproxy ca init --out DIR)")
		}
	default:
		v.p.Add(path+".connect", "%q: want reject, tunnel or mitm", r.Connect)
	}
	v.clients(path, r.Clients)
}

func (v *validator) gateway(path string, g Gateway) {
	if path != "upstream" {
		if g.Listen == "" {
			v.p.Add(path+".listen", "required: the address this gateway listens on, such as 127.0.0.1:8081")
		} else {
			v.listen(path+".listen", g.Listen)
		}
	}
	if g.Upstream == "" {
		v.p.Add(path+".upstream", "required: the https:// URL this gateway forwards to")
	} else if u, err := ParseUpstream(g.Upstream); err != nil {
		v.p.Add(path+".upstream", "%v", err)
	} else if _, err := UpstreamPattern(u); err != nil {
		v.p.Add(path+".upstream", "%v", err)
	}
	v.peer(path, g.Peer)
	v.clients(path, g.Clients)
}

// names are the routes' and gateways' names: the configured one, or a
// default (a route's first host, "gateway LISTEN"). A repeated explicit
// name is a problem (when p is not nil); a repeated default gets the field
// path appended.
func (c *Config) names(p *Problems) (routes, gateways []string) {
	used := map[string]string{}
	unique := func(path, name, def string) string {
		explicit := name != ""
		if !explicit {
			name = def
		}
		if prev, dup := used[name]; dup {
			if explicit && p != nil {
				p.Add(path+".name", "name %q is already used by %s", name, prev)
			}
			name = name + "#" + path
		}
		used[name] = path
		return name
	}
	for i, r := range c.Routes {
		path := fmt.Sprintf("routes[%d]", i)
		def := path
		if h := r.RouteHosts(); len(h) > 0 {
			def = h[0]
		}
		routes = append(routes, unique(path, r.Name, def))
	}
	for i, g := range c.Gateways {
		path := fmt.Sprintf("gateways[%d]", i)
		def := path
		if g.Listen != "" {
			def = "gateway " + g.Listen
		}
		gateways = append(gateways, unique(path, g.Name, def))
	}
	return routes, gateways
}

// Names are the names of the routes and gateways, in order: the
// configured ones, or their defaults.
func (c *Config) Names() (routes, gateways []string) { return c.names(nil) }

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// sorted ranges over m in key order, so that problems come out the same
// way every time.
func sorted[V any](m map[string]V) func(func(string, V) bool) {
	return func(yield func(string, V) bool) {
		for _, k := range keys(m) {
			if !yield(k, m[k]) {
				return
			}
		}
	}
}

func known(what string, names []string) string {
	if len(names) == 0 {
		return " (no " + what + " are defined)"
	}
	return " (known " + what + ": " + strings.Join(names, ", ") + ")"
}
