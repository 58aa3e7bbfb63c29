package main

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"
	"software.sslmate.com/src/go-pkcs12"
)

// cfgtFiles is a test PKI on disk for config files: the placeholders a
// config text may use, and the files they stand for.
type cfgtFiles struct {
	*pkitest.Set
	// Other is a second client identity with another subject.
	Other               *pki.Leaf
	OtherCert, OtherKey string
	OtherSubject        string
	// P12 holds Other's key and chain, encrypted with the password in
	// P12Pass.
	P12, P12Pass            string
	NoCert, Missing, Config string
	vars                    []string // placeholder, value pairs for strings.NewReplacer
}

// cfgtNewFiles makes the PKI in a fresh directory.
func cfgtNewFiles(t testing.TB) *cfgtFiles {
	t.Helper()
	f := &cfgtFiles{Set: pkitest.New(t)}
	f.Other = pkitest.Issue(t, f.CA, pki.LeafOptions{CommonName: "other-client", Client: true})
	var err error
	if f.OtherCert, f.OtherKey, err = f.Other.WriteFiles(f.Dir, "other"); err != nil {
		t.Fatal(err)
	}
	f.OtherSubject = f.Other.Cert.Subject.String()
	p12, err := pkcs12.Modern.Encode(f.Other.Key, f.Other.Cert, nil, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	f.P12, f.P12Pass = filepath.Join(f.Dir, "other.p12"), filepath.Join(f.Dir, "other.pass")
	if err := os.WriteFile(f.P12, p12, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.P12Pass, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file with no CERTIFICATE block, for a trust bundle that trusts
	// nothing.
	f.NoCert = filepath.Join(f.Dir, "nocert.pem")
	if err := os.WriteFile(f.NoCert, []byte("# no certificates here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.Missing = filepath.Join(f.Dir, "missing.pem")
	f.Config = filepath.Join(f.Dir, "config.yaml")
	// strings.Replacer tries the pairs in order: longer names first, so
	// that $P12 does not eat the start of $P12PASS.
	f.vars = []string{
		"$OTHERCERT", f.OtherCert, "$OTHERKEY", f.OtherKey,
		"$SERVERCERT", f.ServerCert, "$SERVERKEY", f.ServerKey,
		"$P12PASS", f.P12Pass, "$P12", f.P12,
		"$MISSING", f.Missing, "$NOCERT", f.NoCert,
		"$CERT", f.ClientCert, "$KEY", f.ClientKey, "$CA", f.CAFile, "$DIR", f.Dir,
	}
	return f
}

// expand replaces the placeholders in text.
func (f *cfgtFiles) expand(text string) string {
	return strings.NewReplacer(f.vars...).Replace(text)
}

// write expands text into the config file and returns its path.
func (f *cfgtFiles) write(t testing.TB, text string) string {
	t.Helper()
	if err := os.WriteFile(f.Config, []byte(f.expand(text)), 0o644); err != nil {
		t.Fatal(err)
	}
	return f.Config
}

// unexpand turns the paths in s back into placeholders ($DIR for the
// directory), so that expected messages can be written down.
func (f *cfgtFiles) unexpand(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, f.Config, "$FILE"), f.Dir, "$DIR")
}

// cfgtLoad reads and validates a config file as run and check do. It
// returns the problems (with paths unexpanded), or the error that stopped
// reading, and the plan.
func cfgtLoad(t testing.TB, f *cfgtFiles, text string) (pl *plan, problems []string, err error) {
	t.Helper()
	fc, probs, err := readConfigFile(f.write(t, text))
	if err != nil {
		return nil, nil, errors.New(f.unexpand(err.Error()))
	}
	pl = planFromFile(fc, probs)
	if perr := probs.err(); perr != nil {
		var pe *problemsError
		if !errors.As(perr, &pe) {
			t.Fatalf("problems error is %T; want *problemsError", perr)
		}
		for _, p := range pe.list {
			problems = append(problems, f.unexpand(p))
		}
	}
	return pl, problems, nil
}

// cfgtKnownKeys is the list an unknown-key message ends with. The keys
// themselves are checked against the documented ones in
// TestConfigKnownKeys, so that adding a key does not break every case.
func cfgtKnownKeys(typeName string) string {
	return "known keys: " + strings.Join(knownKeys(typeName), ", ")
}

// cfgtBase declares two identities and one trust bundle on lines 1 to 5, so
// that the cases below can add routes from line 6 on.
const cfgtBase = `identities:
  app: {cert: $CERT, key: $KEY}
  other: {cert: $OTHERCERT, key: $OTHERKEY}
trust:
  internal: {ca_files: [$CA]}
`

// cfgtValid is a complete, valid config file.
const cfgtValid = `# every feature of the config file
listen: 127.0.0.1:0
log: {level: debug, format: console}
resolve: [b.internal:443:127.0.0.1:8443]
identities:
  app: {cert: $CERT, key: $KEY}
  other:
    cert: $OTHERCERT
    key: $OTHERKEY
  bank: {pkcs12: $P12, password_file: $P12PASS}
trust:
  internal: {ca_files: [$CA]}
  both: {ca_files: [$CA], system: true}
routes:
  - host: api.internal
    identity: app
    trust: internal
  - name: bees
    hosts: [b.internal, "*.b.internal:8443"]
    identity: other
    trust: both
    server_name: api.internal
    address: 127.0.0.1:9443
    verify:
      san: [spiffe://corp/api, api.internal]
      pins: [sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=]
    min_tls: "1.3"
    connect: tunnel
  - host: open.internal:8443
    identity: none
    connect: reject
  - host: bank.internal
    identity: bank
gateways:
  - listen: 127.0.0.1:0
    upstream: https://api.internal
    identity: other
    trust: internal
  - name: gw2
    listen: 127.0.0.1:0
    upstream: https://gw.internal:8443/base
    identity: app
    trust: internal
    min_tls: "1.2"
`

func TestConfigProblems(t *testing.T) {
	f := cfgtNewFiles(t)
	route := func(lines ...string) string {
		return cfgtBase + "routes:\n" + strings.Join(lines, "\n") + "\n"
	}
	tests := []struct {
		name string
		text string
		want []string // every problem, in order, exactly
	}{
		{"unknown top-level key",
			"listn: 127.0.0.1:8080\n" + route("  - {host: a.internal, identity: app}"),
			[]string{`$FILE:1: listn: unknown key "listn" in the top level (` + cfgtKnownKeys("fileConfig") + `)`}},
		{"unknown key in a route",
			route("  - host: a.internal", "    identity: app", "    hots: [b.internal]"),
			[]string{`$FILE:9: routes[0].hots: unknown key "hots" in a route (` + cfgtKnownKeys("routeConfig") + `)`}},
		{"unknown key in a gateway",
			cfgtBase + "gateways:\n  - listen: 127.0.0.1:8081\n    upstream: https://api.internal\n    identity: app\n    host: api.internal\n",
			[]string{`$FILE:10: gateways[0].host: unknown key "host" in a gateway (` + cfgtKnownKeys("gatewayConfig") + `)`}},
		{"unknown key in an identity",
			"identities:\n  app:\n    cert: $CERT\n    key: $KEY\n    pass: secret\nroutes:\n  - {host: a.internal, identity: app}\n",
			[]string{`$FILE:5: identities.app.pass: unknown key "pass" in an identity (` + cfgtKnownKeys("identityConfig") + `)`}},
		{"unknown key in verify",
			route("  - host: a.internal", "    identity: app", "    verify: {sans: [x]}"),
			[]string{`$FILE:9: routes[0].verify.sans: unknown key "sans" in verify (` + cfgtKnownKeys("verifyConfig") + `)`}},
		{"wrong type",
			cfgtBase + "routes: 5\n",
			[]string{"$FILE:6: cannot unmarshal !!int `5` into []a route", "$FILE:6: routes: nothing is allowed: add at least one route or gateway"}},
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
			cfgtBase + "gateways:\n  - identity: app\n",
			[]string{
				"$FILE:7: gateways[0].listen: required: the address this gateway listens on, such as 127.0.0.1:8081",
				"$FILE:7: gateways[0].upstream: required: the https:// URL this gateway forwards to",
			}},
		{"gateway http upstream",
			cfgtBase + "gateways:\n  - listen: 127.0.0.1:8081\n    upstream: http://api.internal\n    identity: app\n",
			[]string{`$FILE:8: gateways[0].upstream: "http://api.internal": must start with https://`}},
		{"gateway listen not loopback",
			cfgtBase + "gateways:\n  - listen: 0.0.0.0:8081\n    upstream: https://api.internal\n    identity: app\n",
			[]string{`$FILE:7: gateways[0].listen: 0.0.0.0:8081: "0.0.0.0" is not a loopback address, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or set unsafe_listen: true in the config file`}},
		{"gateway listen not loopback, unsafe_listen",
			"unsafe_listen: true\n" + cfgtBase + "gateways:\n  - listen: 0.0.0.0:8081\n    upstream: https://api.internal\n    identity: app\n",
			nil},
		{"gateway identity unknown",
			cfgtBase + "gateways:\n  - listen: 127.0.0.1:8081\n    upstream: https://api.internal\n    identity: bank\n",
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
				`$FILE:3: timeouts.tls_handshake: -1s: want a positive duration`,
				`$FILE:4: timeouts.handshake: unknown key "handshake" in timeouts (` + cfgtKnownKeys("timeoutsConfig") + `)`,
				`$FILE:5: max_connections: -1: want 0 (no limit) or more`,
			}},
		{"workers",
			"workers: 2\n" + route("  - {host: a.internal, identity: app}"),
			nil},
		{"workers out of range",
			"workers: 65\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: workers: 65: want 1 to 64"}},
		{"workers with pprof",
			"workers: 2\npprof: true\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: workers: 2: the profiler sees one process; profile with one worker"}},
		{"reload_interval negative",
			"reload_interval: -1m\nexpiry_warning: 48h\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: reload_interval: -1m0s: want 0 (off) or a positive duration"}},
		{"timeout not a duration",
			"timeouts: {dial: fast}\n" + route("  - {host: a.internal, identity: app}"),
			[]string{"$FILE:1: cannot unmarshal !!str `fast` into time.Duration"}},
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
			cfgtBase,
			[]string{"$FILE: routes: nothing is allowed: add at least one route or gateway"}},
		{"bad log level and format",
			"log:\n  level: loud\n  format: xml\n" + route("  - {host: a.internal, identity: app}"),
			[]string{
				`$FILE:2: log.level: "loud": want debug, info, warn or error`,
				`$FILE:3: log.format: "xml": want json or console`,
			}},
		{"bad resolve",
			"resolve:\n  - api.internal:443\n" + route("  - {host: a.internal, identity: app}"),
			[]string{`$FILE:2: resolve[0]: --resolve "api.internal:443": want HOST:PORT:ADDR`}},
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

// TestConfigKnownKeys checks that the keys listed in unknown-key messages
// are sorted and include every key the design documents.
func TestConfigKnownKeys(t *testing.T) {
	tests := []struct {
		typeName string
		want     []string // at least these
	}{
		{"fileConfig", []string{"admin", "gateways", "identities", "listen", "log", "mitm_ca", "resolve", "routes", "trust", "unsafe_listen"}},
		{"routeConfig", []string{"address", "connect", "host", "hosts", "identity", "min_tls", "name", "server_name", "trust", "verify"}},
		{"gatewayConfig", []string{"address", "identity", "listen", "min_tls", "name", "server_name", "trust", "upstream", "verify"}},
		{"identityConfig", []string{"cert", "key", "password_file", "pkcs12"}},
		{"trustConfig", []string{"ca_files", "system"}},
		{"verifyConfig", []string{"pins", "san"}},
		{"logConfig", []string{"format", "level"}},
		{"mitmCAConfig", []string{"cert", "key"}},
	}
	for _, tt := range tests {
		t.Run(tt.typeName, func(t *testing.T) {
			got := knownKeys(tt.typeName)
			if !sort.StringsAreSorted(got) {
				t.Errorf("known keys %q are not sorted", got)
			}
			have := map[string]bool{}
			for _, k := range got {
				if have[k] {
					t.Errorf("known keys %q list %q twice", got, k)
				}
				have[k] = true
			}
			for _, w := range tt.want {
				if !have[w] {
					t.Errorf("known keys %q lack %q", got, w)
				}
			}
			if section := yamlSection[tt.typeName]; section == "" {
				t.Errorf("no section name for %s in unknown-key messages", tt.typeName)
			}
		})
	}
}

// TestConfigListenProblem checks the top-level listen address, which is
// validated like --listen.
func TestConfigListenProblem(t *testing.T) {
	f := cfgtNewFiles(t)
	rest := cfgtBase + "routes:\n  - {host: a.internal, identity: app}\n"
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
	f := cfgtNewFiles(t)
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
		_, _, err := readConfigFile(f.Missing)
		if err == nil || err.Error() != "--config: open "+f.Missing+": no such file or directory" {
			t.Errorf("error %v; want --config: open %s: no such file or directory", err, f.Missing)
		}
	})
}

// cfgtAllProblems is a config file with one problem of each kind on
// its own line; cfgtAllProblemsWant lists them.
const cfgtAllProblems = `admin: 0.0.0.0:9901
log: {level: loud}
routes:
  - host: api.*.internal
    identity: bank
    trust: public
    connect: mitm
  - name: x
    hosts: [a.internal]
    host: b.internal
    identity: app
    min_tls: "1.0"
    verify: {sans: [x]}
identities:
  app: {cert: $MISSING, key: $KEY}
  none: {cert: $CERT, key: $KEY}
trust:
  empty: {ca_files: [$NOCERT]}
gateways:
  - listen: 127.0.0.1:8081
    upstream: http://api.internal
    identity: app
    verify: {pins: [nope]}
`

var cfgtAllProblemsWant = []string{
	`$FILE:1: admin: 0.0.0.0:9901: "0.0.0.0" is not a loopback address, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or set unsafe_listen: true in the config file`,
	`$FILE:2: log.level: "loud": want debug, info, warn or error`,
	`$FILE:4: routes[0].host: host pattern "api.*.internal": a wildcard is only allowed as the whole first label (*.example.com)`,
	`$FILE:5: routes[0].identity: unknown identity "bank" (known identities: app, none)`,
	`$FILE:6: routes[0].trust: unknown trust bundle "public" (known trust bundles: empty)`,
	"$FILE:7: routes[0].connect: mitm needs a local CA: add mitm_ca: {cert, key} (make one with: mtlsproxy ca init --out DIR)",
	"$FILE:8: routes[1]: give host or hosts, not both",
	`$FILE:12: routes[1].min_tls: "1.0": want 1.2 or 1.3`,
	`$FILE:13: routes[1].verify.sans: unknown key "sans" in verify (` + cfgtKnownKeys("verifyConfig") + `)`,
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
	f := cfgtNewFiles(t)
	want := cfgtAllProblemsWant
	_, got, err := cfgtLoad(t, f, cfgtAllProblems)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// run reports the same list, with a count first.
	_, _, err = runOnce(nil, "run", "--config", f.Config)
	if err == nil {
		t.Fatal("run succeeded; want the problems")
	}
	wantErr := "14 problems:\n  " + strings.Join(want, "\n  ")
	if got := f.unexpand(err.Error()); got != wantErr {
		t.Errorf("run error:\n%s\nwant:\n%s", got, wantErr)
	}
}

func TestConfigPlan(t *testing.T) {
	f := cfgtNewFiles(t)
	pl, probs, err := cfgtLoad(t, f, cfgtValid)
	if err != nil || probs != nil {
		t.Fatalf("valid config: error %v, problems %q", err, probs)
	}
	if pl.listen != "127.0.0.1:0" || pl.unsafeListen {
		t.Errorf("listen %q, unsafe %v; want 127.0.0.1:0, false", pl.listen, pl.unsafeListen)
	}
	if got := pl.level.Level(); got != zapcore.DebugLevel {
		t.Errorf("log level %v; want debug", got)
	}
	if pl.format != "console" {
		t.Errorf("log format %q; want console", pl.format)
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
	f := cfgtNewFiles(t)
	file := f.write(t, cfgtValid)
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // exact, or a substring when it starts with "..."
		check   func(t *testing.T, pl *plan)
	}{
		{"file values, not flag defaults", nil, []string{"--config", file}, "", func(t *testing.T, pl *plan) {
			if pl.listen != "127.0.0.1:0" || pl.level.Level() != zapcore.DebugLevel || pl.format != "console" {
				t.Errorf("listen %q, level %v, format %q; want the file's 127.0.0.1:0, debug, console", pl.listen, pl.level.Level(), pl.format)
			}
		}},
		{"--listen", nil, []string{"--config", file, "--listen", "127.0.0.1:7"}, "", func(t *testing.T, pl *plan) {
			if pl.listen != "127.0.0.1:7" {
				t.Errorf("listen %q; want 127.0.0.1:7", pl.listen)
			}
		}},
		{"MTLSPROXY_LISTEN", map[string]string{"MTLSPROXY_LISTEN": "unix:/tmp/x.sock"}, []string{"--config", file}, "", func(t *testing.T, pl *plan) {
			if pl.listen != "unix:/tmp/x.sock" {
				t.Errorf("listen %q; want unix:/tmp/x.sock", pl.listen)
			}
		}},
		{"--log-level and --log-format", nil, []string{"--config", file, "--log-level", "warn", "--log-format", "json"}, "", func(t *testing.T, pl *plan) {
			if pl.level.Level() != zapcore.WarnLevel || pl.format != "json" {
				t.Errorf("level %v, format %q; want warn, json", pl.level.Level(), pl.format)
			}
		}},
		{"--resolve", nil, []string{"--config", file, "--resolve", "b.internal:443:127.0.0.9", "--resolve", "c.internal:443:127.0.0.2"}, "", func(t *testing.T, pl *plan) {
			want := proxy.Resolve{"b.internal:443": "127.0.0.9:443", "c.internal:443": "127.0.0.2:443"}
			if !reflect.DeepEqual(pl.resolve, want) {
				t.Errorf("resolve %v; want %v", pl.resolve, want)
			}
			if !reflect.DeepEqual(pl.routes[0].opts.Resolve, want) {
				t.Errorf("route resolve %v; want %v", pl.routes[0].opts.Resolve, want)
			}
		}},
		{"--unsafe-listen", nil, []string{"--config", file, "--listen", "0.0.0.0:0", "--unsafe-listen"}, "", func(t *testing.T, pl *plan) {
			if pl.listen != "0.0.0.0:0" || !pl.unsafeListen {
				t.Errorf("listen %q, unsafe %v; want 0.0.0.0:0, true", pl.listen, pl.unsafeListen)
			}
		}},
		{"MTLSPROXY_CONFIG", map[string]string{"MTLSPROXY_CONFIG": file}, nil, "", func(t *testing.T, pl *plan) {
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
			cfg, err := parseWithEnv(tt.env, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			pl, err := cfg.plan()
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("no error; want %q", tt.wantErr)
				}
				got := f.unexpand(err.Error())
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
	files := cfgtNewFiles(f)
	seeds := []string{cfgtValid, cfgtBase, "", "routes: 5\n", "routes:\n  - host: a\n identity: app\n",
		"identities:\n  none: {cert: $CERT, key: $KEY}\n", "gateways:\n  - listen: 0.0.0.0:1\n    upstream: http://x\n",
		"routes:\n  - {host: '*.a', hosts: [b], identity: none, connect: mitm, verify: {pins: [x], san: ['']}, min_tls: 1}\n",
		"a: &a [*a, *a]\nb: *a\n", "identities: {app: {pkcs12: x}}\ntrust: {t: {}}\nadmin: x\nmitm_ca: {}\n"}
	for _, s := range seeds {
		f.Add([]byte(files.expand(s)))
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
		cfg, lines, err := decodeConfig(data)
		var te *yaml.TypeError
		if err != nil && !errors.As(err, &te) {
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
		probs := &configProblems{file: "fuzz.yaml", lines: lines}
		pl := planFromFile(cfg, probs)
		if err := probs.err(); err != nil {
			var pe *problemsError
			if !errors.As(err, &pe) {
				t.Fatalf("problems error is %T", err)
			}
			for _, p := range pe.list {
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
			if len(rp.opts.Hosts) == 0 || (rp.identity != identityNone && rp.opts.Identity == nil) {
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
