package main

// connect: mitm in the command (issue 10): "ca init" (flags, domains from
// a config's mitm routes, refusing to overwrite, errors), mitm_ca in the
// config file, and an in-process run that intercepts CONNECTs, with a
// reload of the local CA.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/cfgtest"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// mitmtReadCA parses DIR/ca.crt.
func mitmtReadCA(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("ca.crt: no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func mitmtPool(cert *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(cert)
	return p
}

func TestMitmCAInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	stdout, stderr, err := runOnce(nil, "ca", "init", "--out", dir, "--permit", "api.internal", "--permit", "Corp.Example.")
	if err != nil {
		t.Fatalf("ca init: %v\nstderr: %s", err, stderr)
	}
	crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	for _, want := range []string{
		"wrote " + crt + " and " + key + " (key mode 0600)",
		"permitted domains: api.internal, corp.example\n",
		"mitm_ca: {cert: " + crt + ", key: " + key + "}",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not say %q:\n%s", want, stdout)
		}
	}
	if stderr != "" {
		t.Errorf("stderr %q; want nothing", stderr)
	}
	keyPEM, _ := os.ReadFile(key)
	if bytes.Contains([]byte(stdout), keyPEM) || strings.Contains(stdout, "PRIVATE KEY") {
		t.Error("ca init printed the key")
	}
	for file, want := range map[string]fs.FileMode{crt: 0o644, key: 0o600} {
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %v", file, fi.Mode(), err, want)
		}
	}
	ca := mitmtReadCA(t, dir)
	if want := []string{"api.internal", "corp.example"}; !reflect.DeepEqual(ca.PermittedDNSDomains, want) || !ca.PermittedDNSDomainsCritical {
		t.Errorf("permitted domains %q (critical %v); want %q, critical", ca.PermittedDNSDomains, ca.PermittedDNSDomainsCritical, want)
	}
	if ca.Subject.CommonName != "mtlsproxy local MITM CA" {
		t.Errorf("common name %q; want the default", ca.Subject.CommonName)
	}
	if _, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || !ca.IsCA {
		t.Errorf("CA key %T, IsCA %v; want an ECDSA CA", ca.PublicKey, ca.IsCA)
	}

	// Never overwritten, whatever the flags.
	_, _, err = runOnce(nil, "ca", "init", "--out", dir, "--permit", "other.example")
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("ca init into an existing CA: %v; want \"already exists\"", err)
	}
	if again, _ := os.ReadFile(key); !bytes.Equal(again, keyPEM) {
		t.Error("the key was overwritten")
	}

	// --name sets the common name.
	named := filepath.Join(t.TempDir(), "named")
	if _, stderr, err := runOnce(nil, "ca", "init", "--out", named, "--permit", "api.internal", "--name", "Team X MITM CA"); err != nil {
		t.Fatalf("ca init --name: %v %s", err, stderr)
	}
	if cn := mitmtReadCA(t, named).Subject.CommonName; cn != "Team X MITM CA" {
		t.Errorf("--name: common name %q", cn)
	}
}

// TestMitmCAInitFromConfig derives the permitted domains from a config's
// mitm routes: the host of an exact pattern (without its port), the suffix
// of a wildcard, each once; other routes do not count. The config may
// already name the CA files that ca init is about to write.
func TestMitmCAInitFromConfig(t *testing.T) {
	f := cfgtest.New(t)
	caDir := filepath.Join(f.Dir, "mitm")
	cfg := f.Write(t, cfgtest.Base+`mitm_ca: {cert: $DIR/mitm/ca.crt, key: $DIR/mitm/ca.key}
routes:
  - {host: "api.internal:8443", identity: app, trust: internal, connect: mitm}
  - {hosts: ["*.corp.example", "git.corp.example", "API.internal"], identity: app, trust: internal, connect: mitm}
  - {host: tunnel.example, identity: app, trust: internal, connect: tunnel}
  - {host: plain.example, identity: app, trust: internal}
  - {host: "10.1.2.3", identity: app, trust: internal, connect: mitm}
`)
	stdout, stderr, err := runOnce(nil, "ca", "init", "--out", caDir, "--config", cfg)
	if err != nil {
		t.Fatalf("ca init --config: %v\nstderr: %s", err, stderr)
	}
	want := []string{"api.internal", "corp.example", "git.corp.example"}
	if got := mitmtReadCA(t, caDir).PermittedDNSDomains; !reflect.DeepEqual(got, want) {
		t.Errorf("permitted domains %q; want %q", got, want)
	}
	if !strings.Contains(stdout, "permitted domains: "+strings.Join(want, ", ")) {
		t.Errorf("stdout:\n%s", stdout)
	}
	// The config is now complete: it validates.
	if stdout, _, err := runOnce(nil, "check", "--config", cfg); err != nil || !strings.Contains(stdout, ": ok:") {
		t.Errorf("check of the config after ca init: %v\n%s", err, stdout)
	}

	// --permit wins over --config.
	only := filepath.Join(f.Dir, "only")
	if _, _, err := runOnce(nil, "ca", "init", "--out", only, "--config", cfg, "--permit", "just.example"); err != nil {
		t.Fatal(err)
	}
	if got := mitmtReadCA(t, only).PermittedDNSDomains; !reflect.DeepEqual(got, []string{"just.example"}) {
		t.Errorf("--permit with --config: permitted %q; want just.example only", got)
	}
}

func TestMitmCAInitErrors(t *testing.T) {
	f := cfgtest.New(t)
	noMitm := filepath.Join(f.Dir, "nomitm.yaml")
	if err := os.WriteFile(noMitm, []byte(f.Expand(cfgtest.Base+"routes:\n  - {host: a.internal, identity: app, connect: tunnel}\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	anyHost := filepath.Join(f.Dir, "any.yaml")
	if err := os.WriteFile(anyHost, []byte(f.Expand(cfgtest.Base+"routes:\n  - {host: \"*\", identity: app, connect: mitm}\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		usage  bool   // errUsage, with the usage on stderr
		want   string // in the error or, for usage errors, on stderr
		stdout string // in stdout
	}{
		{name: "no subcommand", args: []string{"ca"}, usage: true, want: "want the subcommand init"},
		{name: "unknown subcommand", args: []string{"ca", "make"}, usage: true, want: "want the subcommand init"},
		{name: "no --out", args: []string{"ca", "init", "--permit", "a.example"}, usage: true, want: "--out DIR is required"},
		{name: "unknown flag", args: []string{"ca", "init", "--out", "x", "--allow", "a.example"}, usage: true, want: "flag provided but not defined: -allow"},
		{name: "stray argument", args: []string{"ca", "init", "--out", "x", "a.example"}, usage: true, want: `unexpected argument "a.example"`},
		{name: "nothing to permit", args: []string{"ca", "init", "--out", "$OUT"}, want: "no domains to permit: give --permit DOMAIN, or --config with connect: mitm routes"},
		{name: "config without mitm routes", args: []string{"ca", "init", "--out", "$OUT", "--config", noMitm}, want: "no domains to permit"},
		{name: "config with only a * mitm route", args: []string{"ca", "init", "--out", "$OUT", "--config", anyHost}, want: "no domains to permit"},
		{name: "config missing", args: []string{"ca", "init", "--out", "$OUT", "--config", f.Missing}, want: "no such file or directory"},
		{name: "wildcard", args: []string{"ca", "init", "--out", "$OUT", "--permit", "*.corp.example"}, want: `--permit "*.corp.example": want a domain name such as corp.example`},
		{name: "with a port", args: []string{"ca", "init", "--out", "$OUT", "--permit", "api.internal:443"}, want: `--permit "api.internal:443": want a domain name`},
		{name: "IPv4 address", args: []string{"ca", "init", "--out", "$OUT", "--permit", "10.1.2.3"}, want: `--permit "10.1.2.3": want a domain name`},
		{name: "IPv6 address", args: []string{"ca", "init", "--out", "$OUT", "--permit", "[::1]"}, want: `--permit "[::1]": want a domain name`},
		{name: "any host", args: []string{"ca", "init", "--out", "$OUT", "--permit", "*"}, want: `--permit "*": want a domain name`},
		{name: "empty", args: []string{"ca", "init", "--out", "$OUT", "--permit", ""}, want: `--permit "": want a domain name`},
		{name: "help", args: []string{"ca", "--help"}, stdout: "Usage: mtlsproxy ca init --out DIR"},
		{name: "init help", args: []string{"ca", "init", "--help"}, stdout: "name constraints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			args := append([]string{}, tt.args...)
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "$OUT", out)
			}
			stdout, stderr, err := runOnce(nil, args...)
			switch {
			case tt.stdout != "":
				if err != nil || !strings.Contains(stdout, tt.stdout) {
					t.Errorf("%v: %v; stdout %q; want %q", args, err, stdout, tt.stdout)
				}
			case tt.usage:
				if !errors.Is(err, errUsage) {
					t.Errorf("error %v; want errUsage", err)
				}
				if !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "Usage: mtlsproxy ca init") {
					t.Errorf("stderr %q; want %q and the usage", stderr, tt.want)
				}
			default:
				if err == nil || errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %v; want one containing %q", err, tt.want)
				}
			}
			if _, err := os.Stat(out); tt.stdout == "" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s was created by a failed ca init", out)
			}
		})
	}
}

// mitmtRun is an in-process "mtlsproxy run --config" with a mitm route to
// a Go mTLS upstream.
type mitmtRun struct {
	set   *pkitest.Set
	up    *httptest.Server
	port  string
	caDir string
	rp    *runningProxy
}

func mitmtStartRun(t *testing.T) *mitmtRun {
	t.Helper()
	env := &mitmtRun{set: pkitest.New(t)}
	env.up = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		subject := "none"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			subject = r.TLS.PeerCertificates[0].Subject.String()
		}
		fmt.Fprintf(w, "subject=%s uri=%s", subject, r.URL.RequestURI())
	}))
	env.up.TLS = env.set.ServerTLS()
	env.up.StartTLS()
	t.Cleanup(env.up.Close)
	_, env.port, _ = net.SplitHostPort(env.up.Listener.Addr().String())
	env.caDir = filepath.Join(env.set.Dir, "mitm")
	if _, _, err := runOnce(nil, "ca", "init", "--out", env.caDir, "--permit", "api.internal"); err != nil {
		t.Fatal(err)
	}
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
log: {level: info, format: json}
reload_interval: 1s
mitm_ca: {cert: %s, key: %s}
identities:
  app: {cert: %s, key: %s}
trust:
  internal: {ca_files: [%s]}
routes:
  - {name: mitm, host: api.internal, identity: app, trust: internal, address: "127.0.0.1:%s", connect: mitm}
  - {name: plain, host: plain.internal, identity: app, trust: internal, address: "127.0.0.1:%s"}
`, q(filepath.Join(env.caDir, "ca.crt")), q(filepath.Join(env.caDir, "ca.key")), q(env.set.ClientCert), q(env.set.ClientKey),
		q(env.set.CAFile), env.port, env.port)
	file := filepath.Join(env.set.Dir, "mitm.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env.rp = startRun(t, "--config", file)
	return env
}

func (env *mitmtRun) client(roots *x509.CertPool) *http.Client {
	pu, _ := url.Parse("http://" + env.rp.Addr)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu),
		TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
}

// get fetches target, returning the body and the certificate the client
// was shown.
func (env *mitmtRun) get(c *http.Client, target string) (int, string, *x509.Certificate, error) {
	resp, err := c.Get(target)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	var leaf *x509.Certificate
	if resp.TLS != nil {
		leaf = resp.TLS.PeerCertificates[0]
	}
	return resp.StatusCode, string(b), leaf, err
}

// TestMitmRun runs the command with a mitm route: a client trusting the
// CA that ca init wrote reaches the upstream with the route's identity
// through HTTPS_PROXY-style CONNECT; a route without connect: mitm still
// refuses CONNECT; the access log has the inner request; the CA key never
// reaches the log; a new CA on disk is picked up without a restart.
func TestMitmRun(t *testing.T) {
	env := mitmtStartRun(t)
	oldCA := mitmtReadCA(t, env.caDir)
	c := env.client(mitmtPool(oldCA))
	target := "https://api.internal:" + env.port + "/e2e?x=1"
	status, body, leaf, err := env.get(c, target)
	if err != nil {
		t.Fatalf("GET %s through the proxy: %v\nlog:\n%s", target, err, env.rp.Stderr)
	}
	if want := "subject=" + env.set.ClientSubject + " uri=/e2e?x=1"; status != 200 || body != want {
		t.Errorf("GET %s: %d %q; want 200 %q", target, status, body, want)
	}
	if leaf.Issuer.String() != oldCA.Subject.String() {
		t.Errorf("client was shown a certificate from %q; want the local CA", leaf.Issuer)
	}
	checkAccess(t, env.rp, "/e2e", map[string]any{"method": "GET", "host": "api.internal:" + env.port,
		"route": "mitm", "identity": "app", "status": 200.0, "error": ""})

	// The plain route refuses CONNECT, as before.
	_, _, _, err = env.get(c, "https://plain.internal:"+env.port+"/refused")
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("CONNECT to a route without connect: mitm: %v; want 403 Forbidden", err)
	}

	// A client that does not trust the CA: refused, and the log says so.
	if _, _, _, err := env.get(env.client(x509.NewCertPool()), target); err == nil {
		t.Error("a client without the local CA got through")
	}
	if !eventually(func() bool {
		return strings.Contains(env.rp.Stderr.String(), "client refused the TLS handshake inside an intercepted tunnel")
	}) {
		t.Errorf("no warning about the refused handshake in the log:\n%s", env.rp.Stderr)
	}

	// A new CA replaces the files: new tunnels get leaves from it.
	next := filepath.Join(t.TempDir(), "next")
	if _, _, err := runOnce(nil, "ca", "init", "--out", next, "--permit", "api.internal"); err != nil {
		t.Fatal(err)
	}
	newCA := mitmtReadCA(t, next)
	for _, name := range []string{"ca.key", "ca.crt"} {
		b, err := os.ReadFile(filepath.Join(next, name))
		if err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(env.caDir, name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(env.caDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if !eventually(func() bool { return strings.Contains(env.rp.Stderr.String(), "MITM CA reloaded") }) {
		t.Fatalf("no \"MITM CA reloaded\" in the log:\n%s", env.rp.Stderr)
	}
	fresh := env.client(mitmtPool(newCA))
	status, body, leaf, err = env.get(fresh, "https://api.internal:"+env.port+"/after-reload")
	if err != nil || status != 200 || !strings.Contains(body, env.set.ClientSubject) {
		t.Fatalf("after the CA reload: %d %q %v", status, body, err)
	}
	if leaf.Issuer.String() != newCA.Subject.String() || leaf.CheckSignatureFrom(newCA) != nil {
		t.Errorf("after the reload the leaf comes from %q; want the new CA", leaf.Issuer)
	}
	if _, _, _, err := env.get(env.client(mitmtPool(oldCA)), target); err == nil {
		t.Error("after the reload a client trusting only the old CA still got through")
	}

	log := env.rp.Stderr.String()
	for _, dir := range []string{env.caDir, next} {
		k, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
		body := strings.Join(strings.Split(strings.TrimSpace(string(k)), "\n")[1:2], "")
		if strings.Contains(log, "PRIVATE KEY") || (body != "" && strings.Contains(log, body)) {
			t.Errorf("the log contains CA key material")
		}
	}
	if strings.Contains(log, "no name constraints") {
		t.Errorf("warning about name constraints for a constrained CA:\n%s", log)
	}
}

// TestMitmRunUnconstrainedCA starts with a CA that has no name
// constraints (made elsewhere): it works, with a warning at start-up.
func TestMitmRunUnconstrainedCA(t *testing.T) {
	set := pkitest.New(t)
	ca, err := pki.NewCA("unconstrained")
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := ca.WriteCert(set.Dir, "unconstrained")
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	caKey := filepath.Join(set.Dir, "unconstrained.key")
	if err := os.WriteFile(caKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(set.Dir, "run.yaml")
	cfg := fmt.Sprintf("listen: 127.0.0.1:0\nmitm_ca: {cert: %q, key: %q}\nidentities:\n  app: {cert: %q, key: %q}\nroutes:\n  - {host: api.internal, identity: app, connect: mitm}\n",
		caCert, caKey, set.ClientCert, set.ClientKey)
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rp := startRun(t, "--config", file)
	if !eventually(func() bool {
		return strings.Contains(rp.Stderr.String(), "the MITM CA has no name constraints")
	}) {
		t.Errorf("no warning about the unconstrained CA:\n%s", rp.Stderr)
	}
}
