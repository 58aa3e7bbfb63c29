package app

import (
	"crypto/tls"
	"errors"
	"io"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/cfgtest"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"go.uber.org/zap/zapcore"
)

// cfgtLoad reads and loads a config file as run and check do. It returns
// the problems (with paths unexpanded), or the error that stopped
// reading, and the plan.
func cfgtLoad(t testing.TB, f *cfgtest.Files, text string) (pl *Plan, problems []string, err error) {
	t.Helper()
	cfg, err := config.Load(f.Write(t, text))
	if err != nil {
		return nil, nil, errors.New(f.Unexpand(err.Error()))
	}
	pl, err = Load(cfg)
	var pe *config.Error
	if errors.As(err, &pe) {
		for _, p := range pe.Lines() {
			problems = append(problems, f.Unexpand(p))
		}
	} else if err != nil {
		t.Fatalf("load: %v", err)
	}
	return pl, problems, nil
}

// cfgtKnownKeys is the list an unknown-key message ends with: the YAML
// keys of v's type, sorted.
func cfgtKnownKeys(v any) string {
	return "known keys: " + strings.Join(yamlKeys(reflect.TypeOf(v)), ", ")
}

func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		name, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if opts == "inline" {
			keys = append(keys, yamlKeys(t.Field(i).Type)...)
		} else if name != "" && name != "-" {
			keys = append(keys, name)
		}
	}
	sort.Strings(keys)
	return keys
}

// cfgtParse parses run's flags with env as the environment, as run does,
// and loads what they describe.
func cfgtParse(env map[string]string, args ...string) (*Plan, error) {
	r := config.NewRun()
	r.FlagSet().SetOutput(io.Discard)
	if err := r.FlagSet().Parse(args); err != nil {
		return nil, err
	}
	cfg, err := r.Config(func(k string) string { return env[k] })
	if err != nil {
		return nil, err
	}
	return Load(cfg)
}

func TestConfigProblems(t *testing.T) {
	f := cfgtest.New(t)
	route := func(lines ...string) string {
		return cfgtest.Base + "routes:\n" + strings.Join(lines, "\n") + "\n"
	}
	tests := []struct {
		name string
		text string
		want []string // every problem, in order, exactly
	}{
		{"unknown top-level key",
			"listn: 127.0.0.1:8080\n" + route("  - {host: a.internal, identity: app}"),
			[]string{`$FILE:1: listn: unknown key "listn" in the top level (` + cfgtKnownKeys(config.Config{}) + `)`}},
		{"unknown key in a route",
			route("  - host: a.internal", "    identity: app", "    hots: [b.internal]"),
			[]string{`$FILE:9: routes[0].hots: unknown key "hots" in a route (` + cfgtKnownKeys(config.Route{}) + `)`}},
		{"unknown key in a gateway",
			cfgtest.Base + "gateways:\n  - listen: 127.0.0.1:8081\n    upstream: https://api.internal\n    identity: app\n    host: api.internal\n",
			[]string{`$FILE:10: gateways[0].host: unknown key "host" in a gateway (` + cfgtKnownKeys(config.Gateway{}) + `)`}},
		{"unknown key in an identity",
			"identities:\n  app:\n    cert: $CERT\n    key: $KEY\n    pass: secret\nroutes:\n  - {host: a.internal, identity: app}\n",
			[]string{`$FILE:5: identities.app.pass: unknown key "pass" in an identity (` + cfgtKnownKeys(config.Identity{}) + `)`}},
		{"unknown key in verify",
			route("  - host: a.internal", "    identity: app", "    verify: {sans: [x]}"),
			[]string{`$FILE:9: routes[0].verify.sans: unknown key "sans" in verify (` + cfgtKnownKeys(config.Verify{}) + `)`}},
		{"wrong type",
			cfgtest.Base + "routes: 5\n",
			[]string{"$FILE:6: routes: want a list", "$FILE:6: routes: nothing is allowed: add at least one route or gateway"}},
		{"missing cert file",
			"identities:\n  app: {cert: $MISSING, key: $KEY}\nroutes:\n  - {host: a.internal, identity: app}\n",
			[]string{"$FILE:2: identities.app.cert: open $DIR/missing.pem: no such file or directory"}},
		{"identity without key",
			"identities:\n  app: {cert: $CERT}\nroutes:\n  - {host: a.internal, identity: app}\n",
			[]string{"$FILE:2: identities.app.key: required (or give pkcs12 instead of cert and key)"}},
		{"key does not match cert",
			"identities:\n  app: {cert: $CERT, key: $SERVERKEY}\nroutes:\n  - {host: a.internal, identity: app}\n",
			[]string{`$FILE:2: identities.app: load identity "app": key $DIR/server.key: private key (ECDSA P-256) does not match certificate (ECDSA P-256, subject "CN=test-client,O=mtlsproxy test") (certificate $DIR/client.crt)`}},
		{"trust bundle with no certificate",
			"identities:\n  app: {cert: $CERT, key: $KEY}\ntrust:\n  t: {ca_files: [$NOCERT]}\nroutes:\n  - {host: a.internal, identity: app, trust: t}\n",
			[]string{"$FILE:4: trust.t.ca_files[0]: CA bundle $DIR/nocert.pem: no PEM CERTIFICATE block found"}},
		{"trust bundle file missing",
			"identities:\n  app: {cert: $CERT, key: $KEY}\ntrust:\n  t:\n    ca_files:\n      - $CA\n      - $MISSING\nroutes:\n  - {host: a.internal, identity: app, trust: t}\n",
			[]string{"$FILE:7: trust.t.ca_files[1]: read CA bundle: open $DIR/missing.pem: no such file or directory"}},
		{"trust with neither ca_files nor system",
			"identities:\n  app: {cert: $CERT, key: $KEY}\ntrust:\n  t: {system: false}\nroutes:\n  - {host: a.internal, identity: app, trust: t}\n",
			[]string{"$FILE:4: trust.t: give ca_files, or system: true for the system roots"}},
		{"unknown identity",
			route("  - host: a.internal", "    identity: bank"),
			[]string{`$FILE:8: routes[0].identity: unknown identity "bank" (known identities: app, other)`}},
		{"unknown trust",
			route("  - host: a.internal", "    identity: app", "    trust: public"),
			[]string{`$FILE:9: routes[0].trust: unknown trust bundle "public" (known trust bundles: internal)`}},
		{"no identities defined",
			"routes:\n  - {host: a.internal, identity: app}\n",
			[]string{`$FILE:2: routes[0].identity: unknown identity "app" (no identities are defined)`}},
		{"identity missing",
			route("  - host: a.internal"),
			[]string{"$FILE:7: routes[0].identity: required: an identity name, or none for no client certificate"}},
		{"reserved identity name none",
			"identities:\n  none: {cert: $CERT, key: $KEY}\nroutes:\n  - {host: a.internal, identity: none}\n",
			[]string{`$FILE:2: identities.none: "none" is reserved: it means no client certificate`}},
		{"host and hosts",
			route("  - host: a.internal", "    hosts: [b.internal]", "    identity: app"),
			[]string{"$FILE:7: routes[0]: give host or hosts, not both"}},
		{"no host",
			route("  - identity: app"),
			[]string{"$FILE:7: routes[0].host: required: the upstream host this route carries (api.internal, *.corp.example, optional :port)"}},
		{"bad host pattern",
			route("  - host: api.*.internal", "    identity: app"),
			[]string{`$FILE:7: routes[0].host: host pattern "api.*.internal": a wildcard is only allowed as the whole first label (*.example.com)`}},
		{"bad pattern in hosts",
			route("  - hosts:", "      - a.internal", "      - a.internal:0", "    identity: app"),
			[]string{`$FILE:9: routes[0].hosts[1]: host pattern "a.internal:0": bad port "0"`}},
		{"bad pin",
			route("  - host: a.internal", "    identity: app", "    verify:", "      pins: [sha256/abc]"),
			[]string{`$FILE:10: routes[0].verify.pins[0]: pin "sha256/abc": decodes to 2 bytes; a SHA-256 pin has 32`}},
		{"empty SAN",
			route("  - host: a.internal", "    identity: app", `    verify: {san: [" "]}`),
			[]string{"$FILE:9: routes[0].verify.san[0]: empty name"}},
		{"bad min_tls",
			route("  - host: a.internal", "    identity: app", "    min_tls: 1.1"),
			[]string{`$FILE:9: routes[0].min_tls: "1.1": want 1.2 or 1.3`}},
		{"bad server_name",
			route("  - host: a.internal", "    identity: app", "    server_name: '*.internal'"),
			[]string{`$FILE:9: routes[0].server_name: "*.internal" is not a host name`}},
		{"bad address",
			route("  - host: a.internal", "    identity: app", "    address: 10.0.0.5"),
			[]string{`$FILE:9: routes[0].address: "10.0.0.5": want HOST:PORT, such as 10.0.0.5:8443`}},
		{"connect mitm",
			route("  - host: a.internal", "    identity: app", "    connect: mitm"),
			[]string{"$FILE:9: routes[0].connect: mitm needs a local CA: add mitm_ca: {cert, key} (make one with: mtlsproxy ca init --out DIR)"}},
		{"connect bogus",
			route("  - host: a.internal", "    identity: app", "    connect: bogus"),
			[]string{`$FILE:9: routes[0].connect: "bogus": want reject, tunnel or mitm`}},
		{"duplicate route names",
			route("  - {name: api, host: a.internal, identity: app}", "  - {name: api, host: b.internal, identity: app}"),
			[]string{`$FILE:8: routes[1].name: name "api" is already used by routes[0]`}},
		{"duplicate default names are not an error",
			route("  - {host: a.internal, identity: app}", "  - {host: a.internal, identity: other}"),
			nil},
		{"gateway without listen and upstream",
			cfgtest.Base + "gateways:\n  - identity: app\n",
			[]string{
				"$FILE:7: gateways[0].listen: required: the address this gateway listens on, such as 127.0.0.1:8081",
				"$FILE:7: gateways[0].upstream: required: the https:// URL this gateway forwards to",
			}},
		{"gateway http upstream",
			cfgtest.Base + "gateways:\n  - listen: 127.0.0.1:8081\n    upstream: http://api.internal\n    identity: app\n",
			[]string{`$FILE:8: gateways[0].upstream: "http://api.internal": must start with https://`}},
		{"gateway listen not loopback",
			cfgtest.Base + "gateways:\n  - listen: 0.0.0.0:8081\n    upstream: https://api.internal\n    identity: app\n",
			[]string{`$FILE:7: gateways[0].listen: 0.0.0.0:8081: "0.0.0.0" is not a loopback address, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or set unsafe_listen: true in the config file`}},
		{"gateway listen not loopback, unsafe_listen",
			"unsafe_listen: true\n" + cfgtest.Base + "gateways:\n  - listen: 0.0.0.0:8081\n    upstream: https://api.internal\n    identity: app\n",
			nil},
		{"gateway identity unknown",
			cfgtest.Base + "gateways:\n  - listen: 127.0.0.1:8081\n    upstream: https://api.internal\n    identity: bank\n",
			[]string{`$FILE:9: gateways[0].identity: unknown identity "bank" (known identities: app, other)`}},
		{"admin",
			"admin: 127.0.0.1:9901\n" + route("  - {host: a.internal, identity: app}"),
			nil},
		{"admin not loopback",
			"admin: 0.0.0.0:9901\n" + route("  - {host: a.internal, identity: app}"),
			[]string{`$FILE:1: admin: 0.0.0.0:9901: "0.0.0.0" is not a loopback address, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or set unsafe_listen: true in the config file`}},
		{"timeouts",
			"timeouts:\n  dial: 2s\n  tls_handshake: -1s\n  handshake: 1s\nmax_connections: -1\n" + route("  - {host: a.internal, identity: app}"),
			[]string{
				`$FILE:3: timeouts.tls_handshake: -1s: want a positive duration (0 means 10s)`,
				`$FILE:4: timeouts.handshake: unknown key "handshake" in timeouts (` + cfgtKnownKeys(config.Timeouts{}) + `)`,
				`$FILE:5: max_connections: -1: want 0 (no limit) or more`,
			}},
		{"workers",
			"workers: 2\n" + route("  - {host: a.internal, identity: app}"),
			nil},
		{"workers 0 means 1",
			"workers: 0\n" + route("  - {host: a.internal, identity: app}"),
			nil},
		{"workers out of range",
			"workers: 65\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: workers: 65: want 1 to 64 (0 means 1)"}},
		{"workers with pprof",
			"workers: 2\npprof: true\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: workers: 2: the profiler sees one process; profile with one worker"}},
		{"reload_interval negative",
			"reload_interval: -1m\nexpiry_warning: 48h\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: reload_interval: -1m0s: want 0 (off) or a positive duration"}},
		{"timeout not a duration",
			"timeouts: {dial: fast}\n" + route("  - {host: a.internal, identity: app}"),
			[]string{`$FILE:1: timeouts.dial: "fast": want a duration such as 500ms, 10s or 2m`}},
		{"mitm_ca",
			"mitm_ca: {cert: ca.crt, key: ca.key}\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: mitm_ca: read MITM CA certificate: open ca.crt: no such file or directory"}},
		{"pkcs12 files missing",
			"identities:\n  bank:\n    pkcs12: $MISSING\n    password_file: $DIR/nopass\nroutes:\n  - {host: a.internal, identity: bank}\n",
			[]string{
				"$FILE:3: identities.bank.pkcs12: open $DIR/missing.pem: no such file or directory",
				"$FILE:4: identities.bank.password_file: open $DIR/nopass: no such file or directory",
			}},
		{"pkcs12 and cert",
			"identities:\n  bank: {pkcs12: $P12, password_file: $P12PASS, cert: $CERT, key: $KEY}\nroutes:\n  - {host: a.internal, identity: bank}\n",
			[]string{"$FILE:2: identities.bank: give cert and key, or pkcs12, not both"}},
		{"pkcs12 wrong password",
			"identities:\n  bank: {pkcs12: $P12, password_file: $CA}\nroutes:\n  - {host: a.internal, identity: bank}\n",
			[]string{"$FILE:2: identities.bank: load identity \"bank\": decrypt PKCS#12 $DIR/other.p12: wrong password? (from $DIR/ca.crt)"}},
		{"pkcs12 without password",
			"identities:\n  bank: {pkcs12: $P12}\nroutes:\n  - {host: a.internal, identity: bank}\n",
			[]string{"$FILE:2: identities.bank: load identity \"bank\": decrypt PKCS#12 $DIR/other.p12: it needs a password: give its password file"}},
		{"no routes and no gateways",
			cfgtest.Base,
			[]string{"$FILE: routes: nothing is allowed: add at least one route or gateway"}},
		{"bad log level and format",
			"log:\n  level: loud\n  format: xml\n" + route("  - {host: a.internal, identity: app}"),
			[]string{
				`$FILE:2: log.level: "loud": want debug, info, warn or error`,
				`$FILE:3: log.format: "xml": want json or console`,
			}},
		{"bad resolve",
			"resolve:\n  - api.internal:443\n" + route("  - {host: a.internal, identity: app}"),
			[]string{`$FILE:2: resolve[0]: "api.internal:443": want HOST:PORT:ADDR`}},
		{"identity none is accepted",
			route("  - {host: a.internal, identity: none}"),
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got, err := cfgtLoad(t, f, tt.text)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

// TestConfigListenProblem checks the top-level listen address, which is
// validated like --listen.
func TestConfigListenProblem(t *testing.T) {
	f := cfgtest.New(t)
	rest := cfgtest.Base + "routes:\n  - {host: a.internal, identity: app}\n"
	_, got, err := cfgtLoad(t, f, "listen: 0.0.0.0:8080\n"+rest)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("problems %q; want one", got)
	}
	for _, w := range []string{"$FILE", "listen", `"0.0.0.0" is not a loopback address`, "unsafe"} {
		if !strings.Contains(got[0], w) {
			t.Errorf("problem %q; want it to contain %q", got[0], w)
		}
	}
	if _, got, _ = cfgtLoad(t, f, "listen: 0.0.0.0:8080\nunsafe_listen: true\n"+rest); got != nil {
		t.Errorf("with unsafe_listen: problems %q; want none", got)
	}
}

func TestConfigUnreadable(t *testing.T) {
	f := cfgtest.New(t)
	tests := []struct {
		name, text, want string
	}{
		{"empty file", "", "$FILE: the file is empty"},
		{"only a comment", "# nothing\n", "$FILE: the file is empty"},
		{"invalid YAML", "routes:\n  - host: a\n identity: app\n", "$FILE: line 2: did not find expected key"},
		{"tab indentation", "routes:\n\t- host: a\n", "$FILE: line 2: found character that cannot start any token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, probs, err := cfgtLoad(t, f, tt.text)
			if err == nil {
				t.Fatalf("no error; problems %q", probs)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error %q; want %q", got, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := config.Load(f.Missing)
		if err == nil || err.Error() != "--config: open "+f.Missing+": no such file or directory" {
			t.Errorf("error %v; want --config: open %s: no such file or directory", err, f.Missing)
		}
	})
}

var cfgtAllProblemsWant = []string{
	`$FILE:1: admin: 0.0.0.0:9901: "0.0.0.0" is not a loopback address, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or set unsafe_listen: true in the config file`,
	`$FILE:2: log.level: "loud": want debug, info, warn or error`,
	`$FILE:4: routes[0].host: host pattern "api.*.internal": a wildcard is only allowed as the whole first label (*.example.com)`,
	`$FILE:5: routes[0].identity: unknown identity "bank" (known identities: app, none)`,
	`$FILE:6: routes[0].trust: unknown trust bundle "public" (known trust bundles: empty)`,
	"$FILE:7: routes[0].connect: mitm needs a local CA: add mitm_ca: {cert, key} (make one with: mtlsproxy ca init --out DIR)",
	"$FILE:8: routes[1]: give host or hosts, not both",
	`$FILE:12: routes[1].min_tls: "1.0": want 1.2 or 1.3`,
	`$FILE:13: routes[1].verify.sans: unknown key "sans" in verify (` + cfgtKnownKeys(config.Verify{}) + `)`,
	"$FILE:15: identities.app.cert: open $DIR/missing.pem: no such file or directory",
	`$FILE:16: identities.none: "none" is reserved: it means no client certificate`,
	"$FILE:18: trust.empty.ca_files[0]: CA bundle $DIR/nocert.pem: no PEM CERTIFICATE block found",
	`$FILE:21: gateways[0].upstream: "http://api.internal": must start with https://`,
	`$FILE:23: gateways[0].verify.pins[0]: pin "nope": decodes to 3 bytes; a SHA-256 pin has 32`,
}

// TestConfigAllProblems checks that one bad file yields every problem at
// once, sorted by line although validation visits identities and trust
// before routes.
func TestConfigAllProblems(t *testing.T) {
	f := cfgtest.New(t)
	want := cfgtAllProblemsWant
	_, got, err := cfgtLoad(t, f, cfgtest.AllProblems)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// run reports the same list, with a count first.
	_, err = cfgtParse(nil, "--config", f.Config)
	if err == nil {
		t.Fatal("run succeeded; want the problems")
	}
	wantErr := "14 problems:\n  " + strings.Join(want, "\n  ")
	if got := f.Unexpand(err.Error()); got != wantErr {
		t.Errorf("run error:\n%s\nwant:\n%s", got, wantErr)
	}
}

func TestConfigPlan(t *testing.T) {
	f := cfgtest.New(t)
	pl, probs, err := cfgtLoad(t, f, cfgtest.Valid)
	if err != nil || probs != nil {
		t.Fatalf("valid config: error %v, problems %q", err, probs)
	}
	if pl.cfg.Listen != "127.0.0.1:0" || pl.cfg.UnsafeListen {
		t.Errorf("listen %q, unsafe %v; want 127.0.0.1:0, false", pl.cfg.Listen, pl.cfg.UnsafeListen)
	}
	if got := pl.level.Level(); got != zapcore.DebugLevel {
		t.Errorf("log level %v; want debug", got)
	}
	if pl.cfg.Log.Format != "console" {
		t.Errorf("log format %q; want console", pl.cfg.Log.Format)
	}
	if want := (proxy.Resolve{"b.internal:443": "127.0.0.1:8443"}); !reflect.DeepEqual(pl.resolve, want) {
		t.Errorf("resolve %v; want %v", pl.resolve, want)
	}
	if got := sortedKeys(pl.identities); !reflect.DeepEqual(got, []string{"app", "bank", "other"}) {
		t.Errorf("identities %q; want app, bank, other", got)
	}
	for name, want := range map[string]string{"app": f.ClientSubject, "other": f.OtherSubject, "bank": f.OtherSubject} {
		if got := pl.identities[name].Leaf().Subject.String(); got != want {
			t.Errorf("identity %s has subject %q; want %q", name, got, want)
		}
	}

	pin, err := tlsconf.ParsePin("sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	if err != nil {
		t.Fatal(err)
	}
	type routeWant struct {
		name, identity, trust string
		hosts                 []string
		serverName, address   string
		san                   []string
		pins                  []tlsconf.Pin
		minVersion            uint16
		connect               proxy.ConnectPolicy
		rootCAs               bool
	}
	wantRoutes := []routeWant{
		{name: "api.internal", identity: "app", trust: "internal", hosts: []string{"api.internal"},
			minVersion: tls.VersionTLS12, connect: proxy.ConnectReject, rootCAs: true},
		{name: "bees", identity: "other", trust: "both", hosts: []string{"b.internal", "*.b.internal:8443"},
			serverName: "api.internal", address: "127.0.0.1:9443", san: []string{"spiffe://corp/api", "api.internal"},
			pins: []tlsconf.Pin{pin}, minVersion: tls.VersionTLS13, connect: proxy.ConnectTunnel, rootCAs: true},
		{name: "open.internal:8443", identity: "none", trust: "system roots", hosts: []string{"open.internal:8443"},
			minVersion: tls.VersionTLS12, connect: proxy.ConnectReject},
		{name: "bank.internal", identity: "bank", trust: "system roots", hosts: []string{"bank.internal"},
			minVersion: tls.VersionTLS12, connect: proxy.ConnectReject},
	}
	got := func(rp *routePlan) routeWant {
		var hosts []string
		for _, h := range rp.opts.Hosts {
			hosts = append(hosts, h.String())
		}
		if !reflect.DeepEqual(hosts, rp.hosts) {
			t.Errorf("route %s: parsed hosts %q; written %q", rp.opts.Name, hosts, rp.hosts)
		}
		if !reflect.DeepEqual(rp.opts.Resolve, pl.resolve) {
			t.Errorf("route %s: resolve %v; want the file's %v", rp.opts.Name, rp.opts.Resolve, pl.resolve)
		}
		wantID := pl.identities[rp.identity]
		if rp.opts.Identity != wantID {
			t.Errorf("route %s: identity %p; want %q (%p)", rp.opts.Name, rp.opts.Identity, rp.identity, wantID)
		}
		return routeWant{name: rp.opts.Name, identity: rp.identity, trust: rp.trust, hosts: hosts,
			serverName: rp.opts.ServerName, address: rp.opts.Address, san: rp.opts.VerifySAN, pins: rp.opts.Pins,
			minVersion: rp.opts.MinVersion, connect: rp.opts.Connect, rootCAs: rp.opts.RootCAs != nil}
	}
	if len(pl.routes) != len(wantRoutes) {
		t.Fatalf("%d routes; want %d", len(pl.routes), len(wantRoutes))
	}
	for i, rp := range pl.routes {
		if g := got(rp); !reflect.DeepEqual(g, wantRoutes[i]) {
			t.Errorf("routes[%d] = %+v\nwant %+v", i, g, wantRoutes[i])
		}
	}

	wantGateways := []struct {
		name, listen, upstream string
		route                  routeWant
	}{
		{"gateway 127.0.0.1:0", "127.0.0.1:0", "https://api.internal",
			routeWant{name: "gateway 127.0.0.1:0", identity: "other", trust: "internal", hosts: []string{"api.internal:443"},
				minVersion: tls.VersionTLS12, rootCAs: true}},
		{"gw2", "127.0.0.1:0", "https://gw.internal:8443/base",
			routeWant{name: "gw2", identity: "app", trust: "internal", hosts: []string{"gw.internal:8443"},
				minVersion: tls.VersionTLS12, rootCAs: true}},
	}
	if len(pl.gateways) != len(wantGateways) {
		t.Fatalf("%d gateways; want %d", len(pl.gateways), len(wantGateways))
	}
	for i, g := range pl.gateways {
		w := wantGateways[i]
		if g.name != w.name || g.listen != w.listen || g.upstream.String() != w.upstream {
			t.Errorf("gateways[%d] = %q on %q to %q; want %q on %q to %q", i, g.name, g.listen, g.upstream, w.name, w.listen, w.upstream)
		}
		if r := got(g.route); !reflect.DeepEqual(r, w.route) {
			t.Errorf("gateways[%d].route = %+v\nwant %+v", i, r, w.route)
		}
	}
	// The gateway route allows its upstream's port only.
	h := pl.gateways[0].route.opts.Hosts[0]
	if !h.Match("api.internal", "443") || h.Match("api.internal", "8443") {
		t.Errorf("gateway pattern %s: want it to match api.internal:443 only", h)
	}
}

// TestConfigFlagsAndFile checks which flags override the file, that flag
// defaults do not, and that the single-identity flags are refused.
func TestConfigFlagsAndFile(t *testing.T) {
	f := cfgtest.New(t)
	file := f.Write(t, cfgtest.Valid)
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // exact, or a substring when it starts with "..."
		check   func(t *testing.T, pl *Plan)
	}{
		{"file values, not flag defaults", nil, []string{"--config", file}, "", func(t *testing.T, pl *Plan) {
			if pl.cfg.Listen != "127.0.0.1:0" || pl.level.Level() != zapcore.DebugLevel || pl.cfg.Log.Format != "console" {
				t.Errorf("listen %q, level %v, format %q; want the file's 127.0.0.1:0, debug, console", pl.cfg.Listen, pl.level.Level(), pl.cfg.Log.Format)
			}
		}},
		{"--listen", nil, []string{"--config", file, "--listen", "127.0.0.1:7"}, "", func(t *testing.T, pl *Plan) {
			if pl.cfg.Listen != "127.0.0.1:7" {
				t.Errorf("listen %q; want 127.0.0.1:7", pl.cfg.Listen)
			}
		}},
		{"MTLSPROXY_LISTEN", map[string]string{"MTLSPROXY_LISTEN": "unix:/tmp/x.sock"}, []string{"--config", file}, "", func(t *testing.T, pl *Plan) {
			if pl.cfg.Listen != "unix:/tmp/x.sock" {
				t.Errorf("listen %q; want unix:/tmp/x.sock", pl.cfg.Listen)
			}
		}},
		{"--log-level and --log-format", nil, []string{"--config", file, "--log-level", "warn", "--log-format", "json"}, "", func(t *testing.T, pl *Plan) {
			if pl.level.Level() != zapcore.WarnLevel || pl.cfg.Log.Format != "json" {
				t.Errorf("level %v, format %q; want warn, json", pl.level.Level(), pl.cfg.Log.Format)
			}
		}},
		{"--resolve", nil, []string{"--config", file, "--resolve", "b.internal:443:127.0.0.9", "--resolve", "c.internal:443:127.0.0.2"}, "", func(t *testing.T, pl *Plan) {
			want := proxy.Resolve{"b.internal:443": "127.0.0.9:443", "c.internal:443": "127.0.0.2:443"}
			if !reflect.DeepEqual(pl.resolve, want) {
				t.Errorf("resolve %v; want %v", pl.resolve, want)
			}
			if !reflect.DeepEqual(pl.routes[0].opts.Resolve, want) {
				t.Errorf("route resolve %v; want %v", pl.routes[0].opts.Resolve, want)
			}
		}},
		{"--unsafe-listen", nil, []string{"--config", file, "--listen", "0.0.0.0:0", "--unsafe-listen"}, "", func(t *testing.T, pl *Plan) {
			if pl.cfg.Listen != "0.0.0.0:0" || !pl.cfg.UnsafeListen {
				t.Errorf("listen %q, unsafe %v; want 0.0.0.0:0, true", pl.cfg.Listen, pl.cfg.UnsafeListen)
			}
		}},
		{"MTLSPROXY_CONFIG", map[string]string{"MTLSPROXY_CONFIG": file}, nil, "", func(t *testing.T, pl *Plan) {
			if len(pl.routes) != 4 || len(pl.gateways) != 2 {
				t.Errorf("%d routes, %d gateways; want the file's 4 and 2", len(pl.routes), len(pl.gateways))
			}
		}},
		{"--listen not loopback", nil, []string{"--config", file, "--listen", "0.0.0.0:0"}, `..."0.0.0.0" is not a loopback address`, nil},
		{"single-identity flags", nil, []string{"--config", file, "--cert", f.ClientCert, "--allow", "a.internal", "--upstream", "https://a.internal"},
			"--cert, --allow, --upstream cannot be combined with --config: describe identities and routes in the file", nil},
		{"every single-identity flag", nil, []string{"--config", file, "--cert", "c", "--key", "k", "--cacert", "ca", "--allow", "a", "--upstream", "u", "--server-name", "s"},
			"--cert, --key, --cacert, --allow, --upstream, --server-name cannot be combined with --config: describe identities and routes in the file", nil},
		{"single-identity flag from the environment", map[string]string{"MTLSPROXY_CACERT": f.CAFile}, []string{"--config", file},
			"--cacert cannot be combined with --config: describe identities and routes in the file", nil},
		{"missing file", nil, []string{"--config", f.Missing}, "--config: open $DIR/missing.pem: no such file or directory", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl, err := cfgtParse(tt.env, tt.args...)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("no error; want %q", tt.wantErr)
				}
				got := f.Unexpand(err.Error())
				if sub, ok := strings.CutPrefix(tt.wantErr, "..."); ok && !strings.Contains(got, sub) {
					t.Errorf("error %q; want it to contain %q", got, sub)
				} else if !ok && got != tt.wantErr {
					t.Errorf("error %q; want %q", got, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("plan: %v", err)
			}
			tt.check(t, pl)
		})
	}
}

// FuzzDecodeConfig checks that no input makes reading or validating a
// config file panic, and that every problem names the file.
func FuzzDecodeConfig(f *testing.F) {
	files := cfgtest.New(f)
	seeds := []string{cfgtest.Valid, cfgtest.Base, "", "routes: 5\n", "routes:\n  - host: a\n identity: app\n",
		"identities:\n  none: {cert: $CERT, key: $KEY}\n", "gateways:\n  - listen: 0.0.0.0:1\n    upstream: http://x\n",
		"routes:\n  - {host: '*.a', hosts: [b], identity: none, connect: mitm, verify: {pins: [x], san: ['']}, min_tls: 1}\n",
		"a: &a [*a, *a]\nb: *a\n", "identities: {app: {pkcs12: x}}\ntrust: {t: {}}\nadmin: x\nmitm_ca: {}\n"}
	for _, s := range seeds {
		f.Add([]byte(files.Expand(s)))
	}
	// Only the fixture files may be opened: a fuzzed path such as
	// /dev/zero or a FIFO would hang the reader. The PKCS#12 file is left
	// out too: its key derivation makes each run slow enough to stall the
	// fuzzer (TestConfigPlan loads it).
	allowed := map[string]bool{}
	for _, p := range []string{files.ClientCert, files.ClientKey, files.OtherCert, files.OtherKey, files.ServerKey, files.CAFile, files.NoCert} {
		allowed[p] = true
	}
	safe := func(p string) string {
		if allowed[p] {
			return p
		}
		return files.Missing
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Decode("fuzz.yaml", data)
		if err != nil {
			return
		}
		for name, ic := range cfg.Identities {
			ic.Cert, ic.Key, ic.PKCS12, ic.PasswordFile = safe(ic.Cert), safe(ic.Key), safe(ic.PKCS12), safe(ic.PasswordFile)
			cfg.Identities[name] = ic
		}
		for name, tc := range cfg.Trust {
			for i := range tc.CAFiles {
				tc.CAFiles[i] = safe(tc.CAFiles[i])
			}
			cfg.Trust[name] = tc
		}
		pl, err := Load(cfg)
		if err != nil {
			var pe *config.Error
			if !errors.As(err, &pe) {
				t.Fatalf("problems error is %T", err)
			}
			for _, p := range pe.Lines() {
				if !strings.HasPrefix(p, "fuzz.yaml:") {
					t.Errorf("problem %q does not start with the file name", p)
				}
			}
			return
		}
		if len(pl.routes)+len(pl.gateways) == 0 {
			t.Errorf("no problems, but nothing is routed")
		}
		for _, rp := range pl.routes {
			if len(rp.opts.Hosts) == 0 || (rp.identity != config.IdentityNone && rp.opts.Identity == nil) {
				t.Errorf("no problems, but route %q has hosts %v and identity %q = %v", rp.opts.Name, rp.opts.Hosts, rp.identity, rp.opts.Identity)
			}
		}
		for _, g := range pl.gateways {
			if g.upstream == nil || len(g.route.opts.Hosts) != 1 {
				t.Errorf("no problems, but gateway %q has upstream %v and hosts %v", g.name, g.upstream, g.route.opts.Hosts)
			}
		}
	})
}

// TestLoadUnsafeListen checks --unsafe-listen without opening a port on
// every interface.
func TestLoadUnsafeListen(t *testing.T) {
	s := cfgtest.New(t)
	for _, unsafe := range []bool{false, true} {
		args := []string{"--listen", "0.0.0.0:8080", "--cert", s.ClientCert, "--key", s.ClientKey, "--allow", "api.internal"}
		if unsafe {
			args = append(args, "--unsafe-listen")
		}
		pl, err := cfgtParse(nil, args...)
		if unsafe {
			if err != nil {
				t.Errorf("with --unsafe-listen: %v", err)
			} else if len(pl.routes) != 1 || pl.routes[0].opts.Identity == nil || len(pl.routes[0].opts.Hosts) != 1 {
				t.Errorf("routes %+v; want one route with an identity and one host", pl.routes)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "--unsafe-listen") {
			t.Errorf("error %v; want one naming --unsafe-listen", err)
		}
	}
}

// TestLoadWorkers checks --workers and workers: alike: 0 means one
// worker, as an absent setting does.
func TestLoadWorkers(t *testing.T) {
	s := cfgtest.New(t)
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string // "" for no error
		n    int
	}{
		{nil, nil, "", 1},
		{[]string{"--workers", "2"}, nil, "", 2},
		{[]string{"--workers", "0"}, nil, "", 1},
		{nil, map[string]string{"MTLSPROXY_WORKERS": "4"}, "", 4},
		{nil, map[string]string{"MTLSPROXY_WORKERS": "0"}, "", 1},
		{[]string{"--workers", "-1"}, nil, "--workers: -1: want 1 to 64 (0 means 1)", 0},
		{[]string{"--workers", "65"}, nil, "--workers: 65: want 1 to 64 (0 means 1)", 0},
		{nil, map[string]string{"MTLSPROXY_WORKERS": "65"}, "MTLSPROXY_WORKERS: 65: want 1 to 64 (0 means 1)", 0},
		{[]string{"--workers", "2", "--pprof"}, nil, "--workers: 2: the profiler sees one process; profile with one worker", 0},
	} {
		args := append([]string{"--cert", s.ClientCert, "--key", s.ClientKey, "--allow", "api.internal"}, c.args...)
		pl, err := cfgtParse(c.env, args...)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v %v: %v", c.args, c.env, err)
		case c.want == "" && pl.cfg.Workers != c.n:
			t.Errorf("%v %v: %d workers; want %d", c.args, c.env, pl.cfg.Workers, c.n)
		case c.want != "" && (err == nil || err.Error() != c.want):
			t.Errorf("%v %v: error %v; want %q", c.args, c.env, err, c.want)
		}
	}
}
