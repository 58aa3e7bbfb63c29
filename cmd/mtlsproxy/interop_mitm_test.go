package main

// Interop tests for connect: mitm (issue 10), as a new user would run it:
// "mtlsproxy ca init", a config with mitm routes, and tools that only know
// https:// URLs and HTTPS_PROXY (curl, Python requests) trusting the local
// CA, against a real nginx with "ssl_verify_client on". Like TestInterop,
// a missing peer skips the test locally and fails it with
// MTLSPROXY_REQUIRE_INTEROP=1.

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

func init() {
	// openssl shows what other verifiers than Go's make of the local CA.
	interopPeers["openssl"] = struct {
		candidates []string
		install    string
	}{[]string{"openssl", "/usr/bin/openssl"}, "apt-get install openssl"}
}

// mitmtInteropEnv is what the subtests of TestInteropMitm share.
type mitmtInteropEnv struct {
	pki       *pkitest.Set
	nginx     *nginxProcess
	mainPort  string // nginx: server cert from pki.CA, client cert required
	roguePort string // nginx: server cert from another CA
	caDir     string // made by "mtlsproxy ca init"
	caFile    string
	proxy     *runningProxy
}

// mitmtPermitted are the domains the local CA may sign for.
var mitmtPermitted = []string{"api.internal", "rogue.internal"}

func TestInteropMitm(t *testing.T) {
	nginxBin := requireBinary(t, "nginx")
	requireBinary(t, "curl")
	t.Parallel()

	env := &mitmtInteropEnv{pki: pkitest.New(t)}
	p := env.pki
	rogue, err := pki.NewCA("mitmt rogue CA")
	if err != nil {
		t.Fatal(err)
	}
	rogueLeaf := pkitest.Issue(t, rogue, pki.LeafOptions{CommonName: "rogue.internal",
		DNSNames: []string{"api.internal", "rogue.internal"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	rogueCert, rogueKey, err := rogueLeaf.WriteFiles(p.Dir, "mitmt-rogue")
	if err != nil {
		t.Fatal(err)
	}
	env.mainPort, env.roguePort = freePort(t), freePort(t)
	env.nginx = startNginx(t, nginxBin,
		nginxSite{Port: env.mainPort, Cert: p.ServerCert, Key: p.ServerKey, ClientCA: p.CAFile, ServerCAs: p.CA.Pool(),
			Content: "nginx main: dn=$ssl_client_s_dn uri=$request_uri\n"},
		nginxSite{Port: env.roguePort, Cert: rogueCert, Key: rogueKey, ClientCA: p.CAFile, ServerCAs: rogue.Pool(),
			Content: rogueContent + "\n"})

	// The local CA, made as the README says.
	env.caDir = filepath.Join(t.TempDir(), "mitm-ca")
	args := []string{"ca", "init", "--out", env.caDir}
	for _, d := range mitmtPermitted {
		args = append(args, "--permit", d)
	}
	if stdout, stderr, err := runOnce(nil, args...); err != nil {
		t.Fatalf("mtlsproxy %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
	}
	env.caFile = filepath.Join(env.caDir, "ca.crt")

	q := strconv.Quote
	route := func(name, host, port, connect string) string {
		return fmt.Sprintf("  - {name: %s, host: %s, identity: app, trust: internal, address: %s, connect: %s}\n",
			name, q(host), q("127.0.0.1:"+port), connect)
	}
	cfg := fmt.Sprintf("listen: 127.0.0.1:0\nlog: {level: info, format: json}\nmitm_ca: {cert: %s, key: %s}\n"+
		"identities:\n  app: {cert: %s, key: %s}\ntrust:\n  internal: {ca_files: [%s]}\nroutes:\n",
		q(env.caFile), q(filepath.Join(env.caDir, "ca.key")), q(p.ClientCert), q(p.ClientKey), q(p.CAFile)) +
		route("mitm", "api.internal", env.mainPort, "mitm") +
		route("rogue", "rogue.internal", env.roguePort, "mitm") +
		// Intercepted, but outside the CA's name constraints: clients must
		// refuse the leaf the proxy shows them.
		route("outside", "outside.example", env.mainPort, "mitm") +
		route("plain", "plain.internal", env.mainPort, "reject")
	file := filepath.Join(t.TempDir(), "mitm.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env.proxy = startRun(t, "--config", file)

	for _, tc := range []struct {
		name string
		run  func(*testing.T, *mitmtInteropEnv)
	}{
		{"NameConstraints", mitmtNameConstraints},
		{"CurlCacert", mitmtCurlCacert},
		{"CurlHTTP2", mitmtCurlHTTP2},
		{"CurlEnvironment", mitmtCurlEnvironment},
		{"PythonRequests", mitmtPythonRequests},
		{"CurlWithoutCA", mitmtCurlWithoutCA},
		{"OutsideConstraints", mitmtOutsideConstraints},
		{"HostNotAllowed", mitmtHostNotAllowed},
		{"UpstreamUnknownCA", mitmtUpstreamUnknownCA},
		{"StillAnswers", mitmtStillAnswers},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, env) })
	}
	if t.Failed() {
		t.Logf("proxy log:\n%s\nnginx:\n%s", env.proxy.Stderr, env.nginx.log())
	}
}

// url is https://host:PORT/uri on the main nginx.
func (env *mitmtInteropEnv) url(uri string) string {
	return "https://api.internal:" + env.mainPort + uri
}

// checkNginx checks a response the main nginx produced for uri after it
// verified our client certificate, and that it logged exactly one request.
func (env *mitmtInteropEnv) checkNginx(t *testing.T, r httpResult, uri string) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; headers %v; body %q\nstderr:\n%s", r.Status, r.Header, r.Body, r.Stderr)
	}
	if got := r.Header.Get("X-Client-DN"); got != env.pki.ClientSubject {
		t.Errorf("nginx saw client DN %q; want %q", got, env.pki.ClientSubject)
	}
	if want := "nginx main: dn=" + env.pki.ClientSubject + " uri=" + uri + "\n"; r.Body != want {
		t.Errorf("body %q; want %q", r.Body, want)
	}
	if !eventually(func() bool { return env.nginx.requests(uri) > 0 }) || env.nginx.requests(uri) != 1 {
		t.Errorf("nginx logged %d requests for %s; want 1", env.nginx.requests(uri), uri)
	}
}

// checkAccessMitm checks the access-log line of one request inside a
// tunnel of the "mitm" route.
func (env *mitmtInteropEnv) checkAccessMitm(t *testing.T, path string, status float64, code string) {
	t.Helper()
	checkAccess(t, env.proxy, path, map[string]any{"method": "GET", "host": "api.internal:" + env.mainPort,
		"route": "mitm", "identity": "app", "status": status, "error": code})
}

func mitmtNameConstraints(t *testing.T, env *mitmtInteropEnv) {
	openssl := requireBinary(t, "openssl")
	out, err := exec.Command(openssl, "x509", "-in", env.caFile, "-noout", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl x509: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{
		"X509v3 Name Constraints: critical", "Permitted:", "DNS:api.internal", "DNS:rogue.internal",
		"Excluded:", "IP:0.0.0.0/0.0.0.0", "IP:0:0:0:0:0:0:0:0/0:0:0:0:0:0:0:0",
		"CA:TRUE, pathlen:0", "Certificate Sign", "ASN1 OID: prime256v1",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl x509 -text of ca.crt does not show %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "DNS:outside.example") {
		t.Error("the CA permits outside.example, which was not asked for")
	}
	// OpenSSL, which curl and Python use, honours the constraints: a leaf
	// the same key signs for another name fails its verification.
	ca, err := tlsconf.LoadMitmCA(env.caFile, filepath.Join(env.caDir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	leaves := tlsconf.NewLeafCache(ca, 0, 0)
	dir := t.TempDir()
	for name, want := range map[string]string{"git.api.internal": ": OK", "evil.example": "permitted subtree violation"} {
		leaf, err := leaves.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command(openssl, "verify", "-CAfile", env.caFile, "-purpose", "sslserver", file).CombinedOutput()
		if !strings.Contains(string(out), want) {
			t.Errorf("openssl verify of a leaf for %s: %q; want %q", name, out, want)
		}
	}
}

func mitmtCurlCacert(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/mitm-curl?q=1"
	r := runCurl(t, curl, "-v", "--http1.1", "--cacert", env.caFile, "-x", "http://"+env.proxy.Addr, env.url(uri))
	env.checkNginx(t, r, uri)
	for _, want := range []string{"< HTTP/1.1 200", "issuer: O=mtlsproxy local MITM CA; CN=mtlsproxy local MITM CA", "subject: CN=api.internal"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("curl -v does not show %q:\n%s", want, r.Stderr)
		}
	}
	env.checkAccessMitm(t, "/whoami/mitm-curl", 200, "")
}

func mitmtCurlHTTP2(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/mitm-curl-h2"
	r := runCurl(t, curl, "-v", "--http2", "--cacert", env.caFile, "-x", "http://"+env.proxy.Addr, env.url(uri))
	env.checkNginx(t, r, uri)
	if !strings.Contains(r.Stderr, "< HTTP/2 200") {
		t.Errorf("curl --http2 did not speak HTTP/2 inside the tunnel:\n%s", r.Stderr)
	}
	env.checkAccessMitm(t, uri, 200, "")
}

// mitmtCurlEnv runs curl with extra environment variables and, unlike
// runCurl, proxy settings from them; stdout is returned in Body.
func mitmtCurlEnv(t *testing.T, curl string, extra []string, args ...string) httpResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, append([]string{"-q", "-sS", "--max-time", "30"}, args...)...)
	cmd.Env = append(envWithoutProxy(), extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return httpResult{Body: stdout.String(), Stderr: stderr.String(), Err: err}
}

// mitmtCurlEnvironment uses only the environment, as a script would:
// HTTPS_PROXY for the proxy and CURL_CA_BUNDLE for the local CA.
func mitmtCurlEnvironment(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/mitm-curl-env"
	r := mitmtCurlEnv(t, curl, []string{"HTTPS_PROXY=http://" + env.proxy.Addr, "CURL_CA_BUNDLE=" + env.caFile}, env.url(uri))
	if r.Err != nil {
		t.Fatalf("curl with HTTPS_PROXY and CURL_CA_BUNDLE: %v\n%s", r.Err, r.Stderr)
	}
	if want := "nginx main: dn=" + env.pki.ClientSubject + " uri=" + uri + "\n"; r.Body != want {
		t.Errorf("body %q; want %q", r.Body, want)
	}
	env.checkAccessMitm(t, uri, 200, "")
}

// mitmtPythonClient fetches argv[1] with requests, taking the proxy and
// the CA bundle from the environment (HTTPS_PROXY, REQUESTS_CA_BUNDLE),
// and prints the response as JSON, or the exception's class and text.
const mitmtPythonClient = `
import json, sys
import requests
try:
    r = requests.get(sys.argv[1], timeout=30)
    json.dump({"status": r.status_code, "headers": dict(r.headers), "body": r.text}, sys.stdout)
except requests.exceptions.RequestException as e:
    json.dump({"error": type(e).__name__ + ": " + str(e)}, sys.stdout)
`

type mitmtPythonResult struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
	Error   string            `json:"error"`
}

func mitmtRunPython(t *testing.T, py, target string, extra ...string) mitmtPythonResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-c", mitmtPythonClient, target)
	cmd.Env = append(envWithoutProxy(), extra...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python requests GET %s: %v\nstderr:\n%s", target, err, stderr.String())
	}
	var r mitmtPythonResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	return r
}

func mitmtPythonRequests(t *testing.T, env *mitmtInteropEnv) {
	py := requireBinary(t, "python3")
	uri := "/whoami/mitm-python"
	r := mitmtRunPython(t, py, env.url(uri), "HTTPS_PROXY=http://"+env.proxy.Addr, "REQUESTS_CA_BUNDLE="+env.caFile)
	if r.Error != "" {
		t.Fatalf("requests with HTTPS_PROXY and REQUESTS_CA_BUNDLE: %s", r.Error)
	}
	h := http.Header{}
	for k, v := range r.Headers {
		h.Set(k, v)
	}
	env.checkNginx(t, httpResult{Status: r.Status, Header: h, Body: r.Body}, uri)
	env.checkAccessMitm(t, uri, 200, "")

	// Without the bundle, requests refuses the local CA.
	uri = "/whoami/mitm-python-no-ca"
	r = mitmtRunPython(t, py, env.url(uri), "HTTPS_PROXY=http://"+env.proxy.Addr, "REQUESTS_CA_BUNDLE=", "CURL_CA_BUNDLE=")
	if !strings.Contains(r.Error, "SSLError") || !strings.Contains(r.Error, "CERTIFICATE_VERIFY_FAILED") {
		t.Errorf("requests without the local CA: %+v; want an SSLError with CERTIFICATE_VERIFY_FAILED", r)
	}
	if got := env.nginx.requests(uri); got != 0 {
		t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
	}
}

func mitmtCurlWithoutCA(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	before := strings.Count(env.proxy.Stderr.String(), "client refused the TLS handshake inside an intercepted tunnel")
	uri := "/whoami/mitm-no-ca"
	r := runCurl(t, curl, "-x", "http://"+env.proxy.Addr, env.url(uri))
	var ee *exec.ExitError
	if !errors.As(r.Err, &ee) || ee.ExitCode() != 60 {
		t.Errorf("curl without the local CA: %v; want exit status 60 (peer certificate cannot be authenticated)\n%s", r.Err, r.Stderr)
	}
	var warn map[string]any
	if !eventually(func() bool {
		warn = mitmtLogLine(env.proxy, "client refused the TLS handshake inside an intercepted tunnel", before)
		return warn != nil
	}) {
		t.Fatalf("no warning about the refused handshake in the proxy log:\n%s", env.proxy.Stderr)
	}
	if warn["level"] != "warn" || warn["host"] != "api.internal:"+env.mainPort {
		t.Errorf("warning %v; want level warn and host api.internal:%s", warn, env.mainPort)
	}
	for _, want := range []string{"install the mitm_ca certificate", "README"} {
		if msg, _ := warn["msg"].(string); !strings.Contains(msg, want) {
			t.Errorf("warning %q does not say %q", msg, want)
		}
	}
	if got := env.nginx.requests(uri); got != 0 {
		t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
	}
}

// mitmtLogLine returns the JSON log line of rp whose msg contains msg,
// skipping the first skip such lines, or nil.
func mitmtLogLine(rp *runningProxy, msg string, skip int) map[string]any {
	for _, l := range strings.Split(rp.Stderr.String(), "\n") {
		if !strings.Contains(l, msg) {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			return m
		}
	}
	return nil
}

// mitmtOutsideConstraints intercepts a host the CA may not sign for:
// curl and Python must refuse the leaf the proxy mints, because of the
// name constraints, and nothing reaches nginx.
func mitmtOutsideConstraints(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/outside"
	target := "https://outside.example:" + env.mainPort + uri
	r := runCurl(t, curl, "--cacert", env.caFile, "-x", "http://"+env.proxy.Addr, target)
	if r.Err == nil || !strings.Contains(r.Stderr, "permitted subtree violation") {
		t.Errorf("curl to a host outside the name constraints: %v; want a \"permitted subtree violation\"\n%s", r.Err, r.Stderr)
	}
	py := requireBinary(t, "python3")
	pr := mitmtRunPython(t, py, target, "HTTPS_PROXY=http://"+env.proxy.Addr, "REQUESTS_CA_BUNDLE="+env.caFile)
	if !strings.Contains(pr.Error, "SSLError") || !strings.Contains(pr.Error, "permitted subtree violation") {
		t.Errorf("requests to a host outside the name constraints: %+v; want an SSLError about the permitted subtree", pr)
	}
	if got := env.nginx.requests(uri); got != 0 {
		t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
	}
}

func mitmtHostNotAllowed(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	for _, tc := range []struct{ host, body string }{
		{"evil.internal", "no route allows this host"},
		{"plain.internal", "use http:// URLs"},
	} {
		uri := "/whoami/connect-" + tc.host
		r := runCurl(t, curl, "-v", "--cacert", env.caFile, "-x", "http://"+env.proxy.Addr,
			"https://"+tc.host+":"+env.mainPort+uri)
		if r.Err == nil {
			t.Errorf("%s: curl succeeded; want the CONNECT refused", tc.host)
		}
		if !strings.Contains(r.Stderr, "CONNECT tunnel failed, response 403") {
			t.Errorf("%s: curl stderr does not say the CONNECT got 403:\n%s", tc.host, r.Stderr)
		}
		if !verboseHasHeader(r.Stderr, "X-Mtlsproxy-Error: host-not-allowed") {
			t.Errorf("%s: curl -v shows no X-Mtlsproxy-Error: host-not-allowed:\n%s", tc.host, r.Stderr)
		}
		if r.Status != http.StatusForbidden {
			t.Errorf("%s: CONNECT status %d; want 403", tc.host, r.Status)
		}
		if got := env.nginx.requests(uri); got != 0 {
			t.Errorf("%s: nginx logged %d requests; want 0", tc.host, got)
		}
		var line map[string]any
		eventually(func() bool {
			for _, l := range strings.Split(env.proxy.Stderr.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(l), &m) == nil && m["method"] == "CONNECT" && m["host"] == tc.host+":"+env.mainPort {
					line = m
				}
			}
			return line != nil
		})
		if line == nil || line["status"] != 403.0 || line["error"] != "host-not-allowed" || !strings.Contains(fmt.Sprint(line["detail"]), tc.body) {
			t.Errorf("%s: access log of the CONNECT %v; want status 403, host-not-allowed, %q", tc.host, line, tc.body)
		}
	}
}

func mitmtUpstreamUnknownCA(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	for _, proto := range []string{"--http1.1", "--http2"} {
		uri := "/whoami/mitm-rogue" + strings.TrimPrefix(proto, "--")
		r := runCurl(t, curl, proto, "--cacert", env.caFile, "-x", "http://"+env.proxy.Addr,
			"https://rogue.internal:"+env.roguePort+uri)
		checkProxyError(t, r, http.StatusBadGateway, "upstream-tls")
		if !strings.Contains(r.Body, "unknown authority") {
			t.Errorf("%s: body %q does not mention the unknown authority", proto, r.Body)
		}
		if strings.Contains(r.Body, rogueContent) {
			t.Errorf("%s: body %q carries the rogue server's content", proto, r.Body)
		}
		if got := env.nginx.requests(uri); got != 0 {
			t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
		}
		checkAccess(t, env.proxy, uri, map[string]any{"route": "rogue", "status": 502.0, "error": "upstream-tls"})
	}
}

func mitmtStillAnswers(t *testing.T, env *mitmtInteropEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/mitm-final"
	r := runCurl(t, curl, "--cacert", env.caFile, "-x", "http://"+env.proxy.Addr, env.url(uri))
	env.checkNginx(t, r, uri)
	for _, uri := range []string{"/whoami/mitm-no-ca", "/whoami/outside", "/whoami/mitm-roguehttp1.1", "/whoami/mitm-roguehttp2", "/whoami/mitm-python-no-ca"} {
		if got := env.nginx.requests(uri); got != 0 {
			t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
		}
	}
	if s := env.proxy.Stderr.String(); strings.Contains(s, "panic") {
		t.Errorf("proxy log mentions a panic:\n%s", s)
	}
	key, _ := os.ReadFile(filepath.Join(env.caDir, "ca.key"))
	lines := strings.Split(strings.TrimSpace(string(key)), "\n")
	if s := env.proxy.Stderr.String(); strings.Contains(s, "PRIVATE KEY") || (len(lines) > 1 && strings.Contains(s, lines[1])) {
		t.Error("the proxy log contains CA key material")
	}
}
