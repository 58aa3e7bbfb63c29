package main

// Interop tests: mtlsproxy between peers that no one on this project wrote.
// nginx with "ssl_verify_client on" is the upstream; curl and Python
// requests are the clients. A missing peer skips the test locally, and
// .ci/run sets MTLSPROXY_REQUIRE_INTEROP=1 so that a skip fails CI instead.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// peerTimeout bounds every curl, python and nginx start-up.
const peerTimeout = 30 * time.Second

// interopPeers describes each peer requireBinary knows: where to look, and
// how to install it on Debian.
var interopPeers = map[string]struct {
	candidates []string
	install    string
}{
	"nginx": {[]string{"nginx", "/usr/sbin/nginx"}, "apt-get install nginx-light"},
	"curl":  {[]string{"curl"}, "apt-get install curl"},
	// python3 means a Python that can import requests.
	"python3": {[]string{"python3", "/usr/bin/python3"}, "apt-get install python3-requests"},
}

var peerCache sync.Map // name -> path, for peers already found

// requireBinary returns the path of the interop peer name ("nginx", "curl"
// or "python3" with requests). If it is missing, the test is skipped, or
// fails when MTLSPROXY_REQUIRE_INTEROP=1 (as in CI).
func requireBinary(t *testing.T, name string) string {
	t.Helper()
	if p, ok := peerCache.Load(name); ok {
		return p.(string)
	}
	peer, ok := interopPeers[name]
	if !ok {
		t.Fatalf("requireBinary: unknown peer %q", name)
	}
	var tried []string
	for _, c := range peer.candidates {
		p, err := exec.LookPath(c)
		if err != nil {
			if filepath.IsAbs(c) {
				tried = append(tried, c+": not found")
			} else {
				tried = append(tried, c+": not in $PATH")
			}
			continue
		}
		if name == "python3" {
			out, err := exec.Command(p, "-c", "import requests").CombinedOutput()
			if err != nil {
				tried = append(tried, fmt.Sprintf("%s: cannot import requests (%v: %s)", p, err, lastLine(string(out))))
				continue
			}
		}
		peerCache.Store(name, p)
		return p
	}
	msg := fmt.Sprintf("interop peer %s is missing (%s); install it with %q", name, strings.Join(tried, "; "), peer.install)
	if v, _ := strconv.ParseBool(os.Getenv("MTLSPROXY_REQUIRE_INTEROP")); v {
		t.Fatalf("%s: MTLSPROXY_REQUIRE_INTEROP=1 requires every interop peer", msg)
	}
	t.Skipf("skipping interop test: %s (set MTLSPROXY_REQUIRE_INTEROP=1 to fail instead)", msg)
	return ""
}

// lastLine is the last line of s: a Python traceback ends with the error.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// interopEnv is one nginx with two TLS servers and two proxies in front of
// it, shared by the subtests of TestInterop.
type interopEnv struct {
	pki       *pkitest.Set
	nginx     *nginxProcess
	mainPort  string // nginx: server cert from pki.CA, client cert required
	roguePort string // nginx: server cert from another CA
	rogueCA   *x509.CertPool
	forward   *runningProxy
	gateway   *runningProxy
}

const rogueContent = "ROGUE-NGINX-CONTENT"

func TestInterop(t *testing.T) {
	nginxBin := requireBinary(t, "nginx")
	t.Parallel()

	env := &interopEnv{pki: pkitest.New(t)}
	rogue, err := pki.NewCA("rogue CA")
	if err != nil {
		t.Fatal(err)
	}
	env.rogueCA = rogue.Pool()
	rogueLeaf := pkitest.Issue(t, rogue, pki.LeafOptions{CommonName: "api.internal",
		DNSNames: pkitest.ServerNames, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	rogueCert, rogueKey, err := rogueLeaf.WriteFiles(env.pki.Dir, "rogue-server")
	if err != nil {
		t.Fatal(err)
	}

	backend := httptest.NewServer(http.HandlerFunc(hashBackend))
	t.Cleanup(backend.Close)
	env.mainPort, env.roguePort = freePort(t), freePort(t)
	mainSite := nginxSite{Port: env.mainPort, Cert: env.pki.ServerCert, Key: env.pki.ServerKey,
		ClientCA: env.pki.CAFile, ServerCAs: env.pki.CA.Pool(), Backend: backend.Listener.Addr().String(),
		Content: "nginx main: dn=$ssl_client_s_dn uri=$request_uri\n"}
	rogueSite := nginxSite{Port: env.roguePort, Cert: rogueCert, Key: rogueKey,
		ClientCA: env.pki.CAFile, ServerCAs: env.rogueCA, Content: rogueContent + "\n"}
	env.nginx = startNginx(t, nginxBin, mainSite, rogueSite)

	p := env.pki
	env.forward = startRun(t, "--listen", "127.0.0.1:0",
		"--cert", p.ClientCert, "--key", p.ClientKey, "--cacert", p.CAFile,
		"--allow", "api.internal",
		"--resolve", "api.internal:"+env.mainPort+":127.0.0.1",
		"--resolve", "api.internal:443:127.0.0.1:"+env.mainPort,
		"--resolve", "api.internal:"+env.roguePort+":127.0.0.1",
		// Reachable, but not allowed: the identity must never go there.
		"--resolve", "evil.internal:"+env.mainPort+":127.0.0.1")
	env.gateway = startRun(t, "--listen", "127.0.0.1:0",
		"--cert", p.ClientCert, "--key", p.ClientKey, "--cacert", p.CAFile,
		"--upstream", "https://api.internal:"+env.mainPort,
		"--resolve", "api.internal:"+env.mainPort+":127.0.0.1")

	// The subtests share the proxies and read their access logs, so they run
	// in order; the last one checks that the proxies survived the rest.
	for _, tc := range []struct {
		name string
		run  func(*testing.T, *interopEnv)
	}{
		{"CurlForward", testCurlForward},
		{"CurlForwardDefaultPort", testCurlForwardDefaultPort},
		{"PythonForward", testPythonForward},
		{"PythonGateway", testPythonGateway},
		{"CurlGateway", testCurlGateway},
		{"ConnectionReuse", testConnectionReuse},
		{"LargeBody", testLargeBody},
		{"UpstreamUnknownCA", testUpstreamUnknownCA},
		{"HostNotAllowed", testHostNotAllowed},
		{"ConnectRefused", testConnectRefused},
		{"StillAnswers", testStillAnswers},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, env) })
	}
	if t.Failed() {
		t.Logf("forward proxy log:\n%s\ngateway proxy log:\n%s\nnginx:\n%s",
			env.forward.Stderr, env.gateway.Stderr, env.nginx.log())
	}
}

// checkWhoami checks a response that nginx's main server produced for uri,
// after it verified our client certificate.
func checkWhoami(t *testing.T, env *interopEnv, r httpResult, uri string) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; headers %v; body %q", r.Status, r.Header, r.Body)
	}
	if got := r.Header.Get("X-Client-DN"); got != env.pki.ClientSubject {
		t.Errorf("nginx saw client DN %q; want %q", got, env.pki.ClientSubject)
	}
	if want := "nginx main: dn=" + env.pki.ClientSubject + " uri=" + uri + "\n"; r.Body != want {
		t.Errorf("body %q; want %q", r.Body, want)
	}
	if got := r.Header.Get("X-Mtlsproxy-Error"); got != "" {
		t.Errorf("X-Mtlsproxy-Error %q on a success", got)
	}
	// nginx logs a request after it has sent the response.
	if !eventually(func() bool { return env.nginx.requests(uri) > 0 }) || env.nginx.requests(uri) != 1 {
		t.Errorf("nginx logged %d requests for %s; want 1", env.nginx.requests(uri), uri)
	}
}

// eventually reports whether cond becomes true within a few seconds. Logs
// are written after the response has gone out, so a client can finish
// before the line is there.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// checkAccess finds the one access-log line of rp for path and checks the
// given fields.
func checkAccess(t *testing.T, rp *runningProxy, path string, want map[string]any) map[string]any {
	t.Helper()
	var lines []map[string]any
	eventually(func() bool { lines = accessLog(t, rp, path); return len(lines) > 0 })
	if len(lines) != 1 {
		t.Fatalf("%d access-log lines for %s; want 1\n%s", len(lines), path, rp.Stderr)
	}
	for k, w := range want {
		if got := lines[0][k]; got != w {
			t.Errorf("access log %s: %s = %v; want %v", path, k, got, w)
		}
	}
	return lines[0]
}

func testCurlForward(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/curl-forward?q=1"
	r := runCurl(t, curl, "-x", "http://"+env.forward.Addr, "http://api.internal:"+env.mainPort+uri)
	checkWhoami(t, env, r, uri)
	checkAccess(t, env.forward, "/whoami/curl-forward", map[string]any{
		"method": "GET", "host": "api.internal:" + env.mainPort, "route": "forward", "identity": "default",
		"status": 200.0, "tls_version": "TLS 1.3", "error": ""})
}

func testCurlForwardDefaultPort(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	// http://api.internal/ is port 80, which mtlsproxy sends to 443, which
	// --resolve api.internal:443:127.0.0.1:PORT points at nginx.
	uri := "/whoami/default-port"
	r := runCurl(t, curl, "-x", "http://"+env.forward.Addr, "http://api.internal"+uri)
	checkWhoami(t, env, r, uri)
	checkAccess(t, env.forward, uri, map[string]any{"host": "api.internal:443", "status": 200.0})
}

func testPythonForward(t *testing.T, env *interopEnv) {
	py := requireBinary(t, "python3")
	uri := "/whoami/python-forward"
	r := runPython(t, py, "http://api.internal:"+env.mainPort+uri, "http://"+env.forward.Addr)
	checkWhoami(t, env, r, uri)
	checkAccess(t, env.forward, uri, map[string]any{"route": "forward", "status": 200.0})

	// Unlike curl, requests keeps an explicit :80 in the request line
	// (GET http://api.internal:80/...): it must go to port 443 too.
	uri = "/whoami/python-port-80"
	r = runPython(t, py, "http://api.internal:80"+uri, "http://"+env.forward.Addr)
	checkWhoami(t, env, r, uri)
	checkAccess(t, env.forward, uri, map[string]any{"host": "api.internal:443", "status": 200.0})
}

func testPythonGateway(t *testing.T, env *interopEnv) {
	py := requireBinary(t, "python3")
	uri := "/whoami/python-gateway"
	r := runPython(t, py, "http://"+env.gateway.Addr+uri, "")
	checkWhoami(t, env, r, uri)
	checkAccess(t, env.gateway, uri, map[string]any{
		"route": "gateway", "host": "api.internal:" + env.mainPort, "status": 200.0})
}

func testCurlGateway(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	uri := "/whoami/curl-gateway?a=b"
	r := runCurl(t, curl, "http://"+env.gateway.Addr+uri)
	checkWhoami(t, env, r, uri)
	checkAccess(t, env.gateway, "/whoami/curl-gateway", map[string]any{"route": "gateway", "status": 200.0})
}

// testConnectionReuse sends requests from separate curl processes, each
// with "Connection: close". That header is about the client's connection
// only: the pooled upstream TLS connection must survive it, which nginx
// shows by counting several requests on one connection.
func testConnectionReuse(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	const n = 30
	var onReused, closed int
	for i := range n {
		uri := fmt.Sprintf("/reuse/%d", i)
		r := runCurl(t, curl, "-x", "http://"+env.forward.Addr, "-H", "Connection: close",
			"http://api.internal:"+env.mainPort+uri)
		checkWhoami(t, env, r, uri)
		if t.Failed() {
			return
		}
		if c, _ := strconv.Atoi(r.Header.Get("X-Conn-Requests")); c > 1 {
			onReused++
		}
		if strings.EqualFold(r.Header.Get("Connection"), "close") {
			closed++
		}
	}
	// The first request may open a connection; after that every request
	// should find it idle in the pool. Allow a little slack for a
	// connection that had not been returned to the pool in time.
	const atLeast = n - 3
	if onReused < atLeast {
		t.Errorf("nginx saw %d of %d requests on an already used connection; want at least %d (is the client's Connection: close passed upstream?)",
			onReused, n, atLeast)
	}
	if closed != n {
		t.Errorf("%d of %d responses told curl \"Connection: close\"; want all: the client asked for it", closed, n)
	}
	reused := 0
	for i := range n {
		if line := checkAccess(t, env.forward, fmt.Sprintf("/reuse/%d", i), map[string]any{"status": 200.0}); line["reused"] == true {
			reused++
		}
	}
	if reused < atLeast {
		t.Errorf("access log: reused=true on %d of %d requests; want at least %d", reused, n, atLeast)
	}
}

// testLargeBody streams 50 MB of random bytes through the proxy and nginx
// to a Go backend that hashes what arrived.
func testLargeBody(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	const size = 50 << 20
	file := filepath.Join(t.TempDir(), "body.bin")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wantSum := hex.EncodeToString(h.Sum(nil))

	r := runCurl(t, curl, "-x", "http://"+env.forward.Addr, "--data-binary", "@"+file,
		"-H", "Content-Type: application/octet-stream", "http://api.internal:"+env.mainPort+"/upload/large")
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; headers %v; body %q", r.Status, r.Header, r.Body)
	}
	var got backendReport
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil {
		t.Fatalf("backend answer %q: %v", r.Body, err)
	}
	if got.SHA256 != wantSum || got.Bytes != size {
		t.Errorf("backend received %d bytes with SHA-256 %s; want %d bytes with %s", got.Bytes, got.SHA256, size, wantSum)
	}
	if got.DN != env.pki.ClientSubject {
		t.Errorf("nginx passed client DN %q to the backend; want %q", got.DN, env.pki.ClientSubject)
	}
	if got.Method != "POST" || got.Path != "/upload/large" {
		t.Errorf("backend saw %s %s; want POST /upload/large", got.Method, got.Path)
	}
	checkAccess(t, env.forward, "/upload/large", map[string]any{"method": "POST", "status": 200.0, "bytes_in": float64(size)})
}

func testUpstreamUnknownCA(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	// Control: the rogue server works for a client that trusts its CA, so
	// the 502 below comes from verification, not from a broken server.
	ctl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: env.rogueCA, ServerName: "api.internal",
		Certificates: []tls.Certificate{env.pki.Client.TLSCertificate()}}}}
	defer ctl.CloseIdleConnections()
	resp, err := ctl.Get("https://127.0.0.1:" + env.roguePort + "/control")
	if err != nil {
		t.Fatalf("control request to the rogue server: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), rogueContent) {
		t.Fatalf("control request: body %q; want %q", body, rogueContent)
	}

	uri := "/whoami/rogue"
	r := runCurl(t, curl, "-x", "http://"+env.forward.Addr, "http://api.internal:"+env.roguePort+uri)
	checkProxyError(t, r, http.StatusBadGateway, "upstream-tls")
	if !strings.Contains(r.Body, "unknown authority") {
		t.Errorf("body %q does not mention the unknown authority", r.Body)
	}
	if strings.Contains(r.Body, rogueContent) {
		t.Errorf("body %q carries the rogue server's content", r.Body)
	}
	if got := env.nginx.requests(uri); got != 0 {
		t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
	}
	checkAccess(t, env.forward, uri, map[string]any{"status": 502.0, "error": "upstream-tls"})
}

// checkProxyError checks an error that mtlsproxy answered itself.
func checkProxyError(t *testing.T, r httpResult, status int, code string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("status %d; want %d", r.Status, status)
	}
	if got := r.Header.Get("X-Mtlsproxy-Error"); got != code {
		t.Errorf("X-Mtlsproxy-Error %q; want %q", got, code)
	}
	if !strings.HasPrefix(r.Body, "mtlsproxy: ") {
		t.Errorf("body %q; want it to start with %q", r.Body, "mtlsproxy: ")
	}
	if got := r.Header.Get("X-Client-DN"); got != "" {
		t.Errorf("X-Client-DN %q: the answer came from nginx", got)
	}
}

func testHostNotAllowed(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	// evil.internal resolves to the real nginx, so a proxy that dialed it
	// would get a 200 with our DN.
	uri := "/whoami/evil"
	r := runCurl(t, curl, "-x", "http://"+env.forward.Addr, "http://evil.internal:"+env.mainPort+uri)
	checkProxyError(t, r, http.StatusForbidden, "host-not-allowed")
	if strings.Contains(r.Body, "nginx main") {
		t.Errorf("body %q carries nginx content", r.Body)
	}
	if got := env.nginx.requests(uri); got != 0 {
		t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
	}
	checkAccess(t, env.forward, uri, map[string]any{"status": 403.0, "error": "host-not-allowed", "tls_version": ""})
}

func testConnectRefused(t *testing.T, env *interopEnv) {
	curl := requireBinary(t, "curl")
	// -p makes curl tunnel with CONNECT; mtlsproxy refuses every tunnel,
	// since a tunnel cannot carry the client certificate.
	r := runCurl(t, curl, "-v", "-p", "-x", "http://"+env.forward.Addr,
		"--cacert", env.pki.CAFile, "https://api.internal:"+env.mainPort+"/whoami/connect")
	if r.Err == nil {
		t.Fatalf("curl through a CONNECT tunnel succeeded; want it refused\nstderr:\n%s", r.Stderr)
	}
	if !strings.Contains(r.Stderr, "CONNECT tunnel failed, response 403") {
		t.Errorf("curl stderr does not say %q:\n%s", "CONNECT tunnel failed, response 403", r.Stderr)
	}
	if !verboseHasHeader(r.Stderr, "X-Mtlsproxy-Error: host-not-allowed") {
		t.Errorf("curl -v shows no %q header:\n%s", "X-Mtlsproxy-Error: host-not-allowed", r.Stderr)
	}
	if r.Status != http.StatusForbidden {
		t.Errorf("CONNECT status %d (from curl -D); want 403", r.Status)
	}
	if got := env.nginx.requests("/whoami/connect"); got != 0 {
		t.Errorf("nginx logged %d requests through the tunnel; want 0", got)
	}
}

// verboseHasHeader reports whether curl -v output shows the response header
// line h ("< Name: value"), case-insensitively on the name.
func verboseHasHeader(verbose, h string) bool {
	for _, line := range strings.Split(verbose, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(line, "<"))
		if strings.EqualFold(line, h) {
			return true
		}
	}
	return false
}

// testStillAnswers checks that both proxies still serve after everything
// above, with Go's client so that it runs whatever peers are installed.
func testStillAnswers(t *testing.T, env *interopEnv) {
	proxyURL, _ := url.Parse("http://" + env.forward.Addr)
	viaProxy := &http.Client{Timeout: peerTimeout, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	direct := &http.Client{Timeout: peerTimeout, Transport: &http.Transport{Proxy: nil}}
	for _, tc := range []struct {
		client *http.Client
		target string
	}{
		{viaProxy, "http://api.internal:" + env.mainPort + "/whoami/final-forward"},
		{direct, "http://" + env.gateway.Addr + "/whoami/final-gateway"},
	} {
		resp, err := tc.client.Get(tc.target)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.target, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		tc.client.CloseIdleConnections()
		if err != nil {
			t.Fatalf("GET %s: reading body: %v", tc.target, err)
		}
		u, _ := url.Parse(tc.target)
		checkWhoami(t, env, httpResult{Status: resp.StatusCode, Header: resp.Header, Body: string(body)}, u.Path)
	}
	// By now nginx has logged everything that reached it.
	for _, uri := range []string{"/whoami/rogue", "/whoami/evil", "/whoami/connect"} {
		if got := env.nginx.requests(uri); got != 0 {
			t.Errorf("nginx logged %d requests for %s; want 0", got, uri)
		}
	}
	for name, rp := range map[string]*runningProxy{"forward": env.forward, "gateway": env.gateway} {
		if s := rp.Stderr.String(); strings.Contains(s, "panic") {
			t.Errorf("%s proxy log mentions a panic:\n%s", name, s)
		}
	}
}

// httpResult is a response as a client program reported it.
type httpResult struct {
	Status int
	Header http.Header
	Body   string
	Stderr string
	Err    error // the client's exit status
}

// runCurl runs curl with args, without any proxy from the environment or
// ~/.curlrc. Status and Header are those of the last response curl got.
func runCurl(t *testing.T, curl string, args ...string) httpResult {
	t.Helper()
	dir := t.TempDir()
	hdr, body := filepath.Join(dir, "headers"), filepath.Join(dir, "body")
	args = append([]string{"-q", "-sS", "--max-time", "30", "-D", hdr, "-o", body}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, args...)
	cmd.Env = envWithoutProxy()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	r := httpResult{Err: cmd.Run(), Stderr: stderr.String()}
	h, _ := os.ReadFile(hdr)
	b, _ := os.ReadFile(body)
	r.Body = string(b)
	var err error
	if r.Status, r.Header, err = parseLastHeaderBlock(string(h)); err != nil && r.Err == nil {
		t.Fatalf("curl %s: %v\nheaders: %q\nstderr:\n%s", strings.Join(args, " "), err, h, r.Stderr)
	}
	if r.Err != nil && r.Status == 0 {
		t.Logf("curl %s: %v\nstderr:\n%s", strings.Join(args, " "), r.Err, r.Stderr)
	}
	return r
}

// parseLastHeaderBlock parses curl's -D output, which holds one block per
// response (a CONNECT answer or a 100 Continue come before the final one).
func parseLastHeaderBlock(s string) (int, http.Header, error) {
	blocks := strings.Split(strings.TrimSpace(s), "\r\n\r\n")
	last := blocks[len(blocks)-1]
	if last == "" {
		return 0, nil, fmt.Errorf("no response headers")
	}
	statusLine, rest, _ := strings.Cut(last, "\r\n")
	f := strings.Fields(statusLine)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") {
		return 0, nil, fmt.Errorf("bad status line %q", statusLine)
	}
	status, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, nil, fmt.Errorf("bad status line %q", statusLine)
	}
	mh, err := textproto.NewReader(bufio.NewReader(strings.NewReader(rest + "\r\n\r\n"))).ReadMIMEHeader()
	if err != nil {
		return 0, nil, fmt.Errorf("headers %q: %w", rest, err)
	}
	return status, http.Header(mh), nil
}

// pythonClient fetches argv[1] with requests, through the HTTP proxy
// argv[2] if it is not empty, and prints the response as JSON. trust_env
// is off so that proxy variables in the environment play no part.
const pythonClient = `
import json, sys
import requests
url, proxy = sys.argv[1], sys.argv[2]
s = requests.Session()
s.trust_env = False
kw = {"timeout": 30}
if proxy:
    kw["proxies"] = {"http": proxy}
r = s.get(url, **kw)
json.dump({"status": r.status_code, "headers": dict(r.headers), "body": r.text}, sys.stdout)
`

func runPython(t *testing.T, py, target, proxy string) httpResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-c", pythonClient, target, proxy)
	cmd.Env = envWithoutProxy()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python requests GET %s (proxy %q): %v\nstderr:\n%s", target, proxy, err, stderr.String())
	}
	var got struct {
		Status  int               `json:"status"`
		Headers map[string]string `json:"headers"`
		Body    string            `json:"body"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	h := http.Header{}
	for k, v := range got.Headers {
		h.Add(k, v)
	}
	return httpResult{Status: got.Status, Header: h, Body: got.Body, Stderr: stderr.String()}
}

// envWithoutProxy is the environment without proxy settings, which would
// otherwise change where curl sends requests.
func envWithoutProxy() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// accessLog returns the proxy's access-log lines for path.
func accessLog(t *testing.T, rp *runningProxy, path string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(rp.Stderr.String(), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", l, err)
		}
		if m["logger"] == "access" && m["path"] == path {
			lines = append(lines, m)
		}
	}
	return lines
}

// backendReport is what hashBackend answers.
type backendReport struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	DN     string `json:"dn"` // the client DN nginx verified
}

// hashBackend is the plain-HTTP server behind nginx: it reports the SHA-256
// of the request body it received.
func hashBackend(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "backend: reading body: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(backendReport{Method: r.Method, Path: r.URL.Path, Bytes: n,
		SHA256: hex.EncodeToString(h.Sum(nil)), DN: r.Header.Get("X-Client-DN")})
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// nginxSite is one TLS server block that requires a client certificate.
type nginxSite struct {
	Port      string
	Cert, Key string
	ClientCA  string         // verifies client certificates
	ServerCAs *x509.CertPool // verifies Cert, to probe readiness
	Backend   string         // if set, /upload/ is proxied to this host:port
	Content   string         // nginx "return 200" body for every other path
}

type nginxProcess struct {
	dir    string
	stderr *syncBuffer
}

func (n *nginxProcess) log() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "access.log"))
	return n.stderr.String() + "\naccess.log:\n" + string(b)
}

// requests counts the requests for uri in nginx's access log.
func (n *nginxProcess) requests(uri string) int {
	b, _ := os.ReadFile(filepath.Join(n.dir, "access.log"))
	c := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == uri {
			c++
		}
	}
	return c
}

// startNginx runs nginx in the foreground, single-process, with everything
// it writes inside a temporary directory, until the test ends.
func startNginx(t *testing.T, bin string, sites ...nginxSite) *nginxProcess {
	t.Helper()
	n := &nginxProcess{dir: t.TempDir(), stderr: &syncBuffer{}}
	n.run(t, bin, nginxConfig(n.dir, bin, sites), sites...)
	return n
}

// run writes config into n's directory, starts nginx with it until the
// test ends, and waits until every site answers TLS.
func (n *nginxProcess) run(t *testing.T, bin, config string, sites ...nginxSite) {
	t.Helper()
	conf := filepath.Join(n.dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", n.dir, "-c", conf, "-e", "stderr")
	cmd.Stdout, cmd.Stderr = n.stderr, n.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	for _, s := range sites {
		if err := waitTLS(s, exited); err != nil {
			t.Fatalf("nginx on port %s: %v\nnginx output:\n%s\nconfig:\n%s", s.Port, err, n.stderr, config)
		}
	}
}

// waitTLS waits until the site completes a TLS handshake.
func waitTLS(s nginxSite, exited <-chan error) error {
	deadline := time.Now().Add(peerTimeout)
	cfg := &tls.Config{RootCAs: s.ServerCAs, ServerName: "api.internal"}
	for {
		d := &net.Dialer{Timeout: time.Second}
		c, err := tls.DialWithDialer(d, "tcp", "127.0.0.1:"+s.Port, cfg)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("nginx exited: %v", werr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no TLS handshake after %v: %v", peerTimeout, err)
		}
	}
}

func nginxConfig(dir, bin string, sites []nginxSite) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, `daemon off;
master_process off;
worker_processes 1;
pid %s;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    log_format interop '$request_uri $status $connection_requests "$ssl_client_s_dn"';
    client_body_temp_path %s;
    proxy_temp_path %s;
`, q(filepath.Join(dir, "nginx.pid")), q(filepath.Join(dir, "client_body")), q(filepath.Join(dir, "proxy")))
	// Paths of modules this nginx lacks would be unknown directives.
	v, _ := exec.Command(bin, "-V").CombinedOutput()
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !bytes.Contains(v, []byte("--without-http_"+m+"_module")) {
			fmt.Fprintf(&b, "    %s_temp_path %s;\n", m, q(filepath.Join(dir, m)))
		}
	}
	for _, s := range sites {
		fmt.Fprintf(&b, `    server {
        listen 127.0.0.1:%s ssl;
        server_name api.internal;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000;
        keepalive_timeout 120s;
        access_log %s interop;
        add_header X-Client-DN $ssl_client_s_dn always;
        add_header X-Conn-Requests $connection_requests always;
        default_type text/plain;
        location / { return 200 %s; }
`, s.Port, q(s.Cert), q(s.Key), q(s.ClientCA), q(filepath.Join(dir, "access.log")), q(s.Content))
		if s.Backend != "" {
			fmt.Fprintf(&b, `        location /upload/ {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            client_max_body_size 0;
            proxy_set_header X-Client-DN $ssl_client_s_dn;
        }
`, s.Backend)
		}
		b.WriteString("    }\n")
	}
	b.WriteString("}\n")
	return b.String()
}
