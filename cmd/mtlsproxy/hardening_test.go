package main

// Hardening tests against "mtlsproxy run" in-process: listener safety
// (loopback by default, unix sockets with a safe mode, stale and live
// socket files), caller credentials from the config file, loop refusal,
// and a raw-bytes bad-input suite against the real listener.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// hardRun is "mtlsproxy run" started in-process, with every listener's
// address by name ("listen", or the gateway's name), stoppable by the test.
type hardRun = inProcessRun

// hardStart runs "mtlsproxy run args..." and waits for n listeners.
func hardStart(t *testing.T, n int, args ...string) *hardRun {
	t.Helper()
	return startRunUntil(t, atLeast(n), args...)
}

// hardEnv is a PKI, an upstream that reports the client certificate and
// records requests, and a directory for config and password files.
type hardEnv struct {
	set  *pkitest.Set
	up   *httptest.Server
	port string
	dir  string

	mu   sync.Mutex
	seen []hardSeenReq
}

type hardSeenReq struct {
	uri    string
	header http.Header
	body   string
	length int64
}

func hardNewEnv(t *testing.T) *hardEnv {
	t.Helper()
	env := &hardEnv{set: pkitest.New(t)}
	// Unix socket paths are limited to about 100 bytes: keep the
	// directory short.
	dir, err := os.MkdirTemp("", "hard")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	env.dir = dir
	env.up = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		env.mu.Lock()
		env.seen = append(env.seen, hardSeenReq{uri: r.RequestURI, header: r.Header.Clone(), body: string(b), length: r.ContentLength})
		env.mu.Unlock()
		subject := "none"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			subject = r.TLS.PeerCertificates[0].Subject.String()
		}
		w.Header().Set("Set-Cookie", "sess=SETCOOKIE-SECRET-5")
		fmt.Fprintf(w, "subject=%s uri=%s", subject, r.URL.RequestURI())
	}))
	env.up.TLS = env.set.ServerTLS()
	env.up.Config.ErrorLog = log.New(io.Discard, "", 0)
	env.up.StartTLS()
	t.Cleanup(env.up.Close)
	_, env.port, _ = net.SplitHostPort(env.up.Listener.Addr().String())
	return env
}

func (env *hardEnv) seenCount() int {
	env.mu.Lock()
	defer env.mu.Unlock()
	return len(env.seen)
}

func (env *hardEnv) seenSince(n int) []hardSeenReq {
	env.mu.Lock()
	defer env.mu.Unlock()
	return append([]hardSeenReq(nil), env.seen[n:]...)
}

// file writes name in the env's directory and returns its path.
func (env *hardEnv) file(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(env.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// config writes a config file: the trust bundle "corp" and the identity
// "app" from the PKI, then extra (YAML at the top level, with {{port}},
// {{dir}}, {{cert}}, {{key}}, {{ca}} expanded; indented lines at its start
// add identities).
func (env *hardEnv) config(t *testing.T, extra string) string {
	t.Helper()
	r := strings.NewReplacer("{{port}}", env.port, "{{dir}}", env.dir, "{{cert}}", env.set.ClientCert,
		"{{key}}", env.set.ClientKey, "{{ca}}", env.set.CAFile)
	text := r.Replace(`trust:
  corp: {ca_files: ["{{ca}}"]}
identities:
  app: {cert: "{{cert}}", key: "{{key}}"}
` + extra)
	return env.file(t, fmt.Sprintf("config-%d.yaml", time.Now().UnixNano()), text)
}

// flags are the single-identity run flags for env's upstream.
func (env *hardEnv) flags(extra ...string) []string {
	return append([]string{"--cert", env.set.ClientCert, "--key", env.set.ClientKey, "--cacert", env.set.CAFile,
		"--resolve", "api.internal:" + env.port + ":127.0.0.1", "--log-level", "debug"}, extra...)
}

// hardUnixClient is an HTTP client whose every connection goes to the
// unix socket at path; with viaProxy it sends proxy requests (absolute
// URLs), as to a forward listener.
func hardUnixClient(path string, viaProxy bool) (*http.Client, *http.Transport) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	if viaProxy {
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: "unix-proxy"})
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

// hardProxyClient sends requests through the HTTP proxy at addr.
func hardProxyClient(addr string) (*http.Client, *http.Transport) {
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr}), DisableCompression: true}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

func hardGet(t *testing.T, c *http.Client, target string, header ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func hardBasicAuth(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func TestHardListenUnsafe(t *testing.T) {
	env := hardNewEnv(t)
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", ":0", "192.0.2.1:0"} {
		t.Run(addr, func(t *testing.T) {
			_, _, err := runOnce(nil, append([]string{"run"}, env.flags("--allow", "api.internal", "--listen", addr)...)...)
			if err == nil || !strings.Contains(err.Error(), "--unsafe-listen") || !strings.Contains(err.Error(), addr) {
				t.Errorf("run --listen %s: %v; want an error naming %s and --unsafe-listen", addr, err, addr)
			}
			// With the flag, the same address passes validation.
			if _, err := loadRun(nil, env.flags("--allow", "api.internal", "--listen", addr, "--unsafe-listen")...); err != nil {
				t.Errorf("--listen %s --unsafe-listen: %v; want it accepted", addr, err)
			}
		})
	}
	t.Run("admin", func(t *testing.T) {
		_, _, err := runOnce(nil, append([]string{"run"}, env.flags("--allow", "api.internal", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0")...)...)
		if err == nil || !strings.Contains(err.Error(), "--admin") || !strings.Contains(err.Error(), "--unsafe-listen") {
			t.Errorf("--admin 0.0.0.0:0: %v; want an error naming --admin and --unsafe-listen", err)
		}
	})
	t.Run("config file", func(t *testing.T) {
		cfg := env.config(t, `listen: 0.0.0.0:0
gateways:
  - listen: 0.0.0.0:0
    upstream: https://api.internal:{{port}}
    identity: app
    trust: corp
`)
		_, _, err := runOnce(nil, "run", "--config", cfg)
		if err == nil || !strings.Contains(err.Error(), "unsafe_listen") || !strings.Contains(err.Error(), "gateways[0].listen") {
			t.Errorf("config with 0.0.0.0 listeners: %v; want problems for listen and gateways[0].listen naming unsafe_listen", err)
		}
	})
}

// TestHardUnixSockets serves gateways on unix sockets from a config file:
// a stale socket file is replaced, the mode is 0660, requests are served,
// a live socket is refused, and the file is removed on shutdown.
func TestHardUnixSockets(t *testing.T) {
	env := hardNewEnv(t)
	open := filepath.Join(env.dir, "open.sock")
	locked := filepath.Join(env.dir, "locked.sock")

	// A crash leaves a socket file nobody listens on.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: open, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if fi, err := os.Lstat(open); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("stale socket file not left behind: %v %v", fi, err)
	}

	pw := env.file(t, "ci.pw", "ci-unix-pass\n")
	cfg := env.config(t, `clients:
  ci: {password_file: "`+pw+`"}
gateways:
  - name: open
    listen: unix:{{dir}}/open.sock
    upstream: https://api.internal:{{port}}
    address: 127.0.0.1:{{port}}
    identity: app
    trust: corp
  - name: locked
    listen: unix:{{dir}}/locked.sock
    upstream: https://api.internal:{{port}}/base
    address: 127.0.0.1:{{port}}
    identity: app
    trust: corp
    clients: [ci]
`)
	run := hardStart(t, 2, "--config", cfg)
	if run.addrs["open"] != open || run.addrs["locked"] != locked {
		t.Fatalf("listeners %v; want open at %s and locked at %s", run.addrs, open, locked)
	}
	for _, p := range []string{open, locked} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
			t.Errorf("%s: mode %s; want a socket with mode 0660 (not world-writable)", p, fi.Mode())
		}
	}

	subject := env.set.ClientSubject
	t.Run("serves over the socket", func(t *testing.T) {
		c, tr := hardUnixClient(open, false)
		defer tr.CloseIdleConnections()
		status, _, body := hardGet(t, c, "http://gateway/x?y=1")
		if status != http.StatusOK || body != "subject="+subject+" uri=/x?y=1" {
			t.Errorf("GET over %s: %d %q; want 200 with the identity", open, status, body)
		}
	})
	t.Run("gateway with clients requires credentials", func(t *testing.T) {
		c, tr := hardUnixClient(locked, false)
		defer tr.CloseIdleConnections()
		status, h, body := hardGet(t, c, "http://gateway/y")
		if status != http.StatusProxyAuthRequired || h.Get(proxy.ErrorHeader) != proxy.CodeProxyAuthRequired || h.Get("Proxy-Authenticate") == "" {
			t.Errorf("no credentials: %d %v %q; want 407 with Proxy-Authenticate", status, h, body)
		}
		status, _, body = hardGet(t, c, "http://gateway/y", "Proxy-Authorization", hardBasicAuth("ci", "wrong"))
		if status != http.StatusProxyAuthRequired {
			t.Errorf("wrong password: %d %q; want 407", status, body)
		}
		status, _, body = hardGet(t, c, "http://gateway/y", "Proxy-Authorization", hardBasicAuth("ci", "ci-unix-pass"))
		if status != http.StatusOK || body != "subject="+subject+" uri=/base/y" {
			t.Errorf("right credentials: %d %q; want 200", status, body)
		}
		for _, r := range env.seenSince(0) {
			if v := r.header.Get("Proxy-Authorization"); v != "" {
				t.Errorf("upstream saw Proxy-Authorization %q", v)
			}
		}
	})

	t.Run("live socket refused", func(t *testing.T) {
		// Another mtlsproxy on the same socket.
		_, _, err := runOnce(nil, "run", "--config", cfg)
		if err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), open) {
			t.Errorf("second run on %s: %v; want an error saying it is in use", open, err)
		}
		// Another program's socket.
		other := filepath.Join(env.dir, "other.sock")
		ln, err := net.Listen("unix", other)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, _, err = runOnce(nil, append([]string{"run"}, env.flags("--allow", "api.internal", "--listen", "unix:"+other)...)...)
		if err == nil || !strings.Contains(err.Error(), "in use") {
			t.Errorf("run on another program's socket: %v; want an error saying it is in use", err)
		}
		if c, err := net.DialTimeout("unix", other, time.Second); err != nil {
			t.Errorf("the other program's socket no longer works: %v", err)
		} else {
			c.Close()
		}
		// The refused runs left the first one's sockets alone.
		c, tr := hardUnixClient(open, false)
		defer tr.CloseIdleConnections()
		if status, _, body := hardGet(t, c, "http://gateway/still"); status != http.StatusOK {
			t.Errorf("first run after the refused ones: %d %q", status, body)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		plain := env.file(t, "plain.sock", "keep me")
		_, _, err := runOnce(nil, append([]string{"run"}, env.flags("--allow", "api.internal", "--listen", "unix:"+plain)...)...)
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("run on a regular file: %v; want an error saying it is not a socket", err)
		}
		if b, err := os.ReadFile(plain); err != nil || string(b) != "keep me" {
			t.Errorf("regular file at the socket path was changed: %q %v", b, err)
		}
	})

	if err := run.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, p := range []string{open, locked} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after shutdown: %v; want it removed", p, err)
		}
	}
}

// TestHardUnixForwardListener is the forward listener on a unix socket
// with --socket-mode: the mode is applied and forward requests work.
func TestHardUnixForwardListener(t *testing.T) {
	env := hardNewEnv(t)
	sock := filepath.Join(env.dir, "fwd.sock")
	run := hardStart(t, 1, env.flags("--allow", "api.internal", "--listen", "unix:"+sock, "--socket-mode", "0600")...)
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %s; want 0600 from --socket-mode", fi.Mode())
	}
	c, tr := hardUnixClient(sock, true)
	defer tr.CloseIdleConnections()
	status, _, body := hardGet(t, c, "http://api.internal:"+env.port+"/fwd")
	if status != http.StatusOK || body != "subject="+env.set.ClientSubject+" uri=/fwd" {
		t.Errorf("forward request over the socket: %d %q", status, body)
	}
	if err := run.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after shutdown: %v; want it removed", err)
	}
}

func TestHardSocketModeRefused(t *testing.T) {
	env := hardNewEnv(t)
	for _, mode := range []string{"0666", "0777", "0662", "0602"} {
		cfg := env.config(t, `socket_mode: "`+mode+`"
routes:
  - host: api.internal
    identity: app
    trust: corp
`)
		_, _, err := runOnce(nil, "run", "--config", cfg, "--listen", "unix:"+filepath.Join(env.dir, "m.sock"))
		if err == nil || !strings.Contains(err.Error(), "socket_mode") || !strings.Contains(err.Error(), "world-writable") {
			t.Errorf("socket_mode %s: %v; want a socket_mode problem saying world-writable", mode, err)
		}
		_, _, err = runOnce(nil, append([]string{"run"}, env.flags("--allow", "api.internal", "--socket-mode", mode)...)...)
		if err == nil || !strings.Contains(err.Error(), "--socket-mode") {
			t.Errorf("--socket-mode %s: %v; want an error naming --socket-mode", mode, err)
		}
	}
	for _, mode := range []string{"abc", "0999", "1777", "-1"} {
		cfg := env.config(t, `socket_mode: "`+mode+`"
routes:
  - host: api.internal
    identity: app
    trust: corp
`)
		if _, _, err := runOnce(nil, "run", "--config", cfg); err == nil || !strings.Contains(err.Error(), "socket_mode") {
			t.Errorf("socket_mode %s: %v; want a socket_mode problem", mode, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(env.dir, "m.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused run created its socket: %v", err)
	}
}

func TestHardClientsConfig(t *testing.T) {
	env := hardNewEnv(t)
	pw := env.file(t, "ci.pw", "ci-pass\n")
	empty := env.file(t, "empty.pw", "\n")
	route := `routes:
  - host: api.internal
    identity: app
    trust: corp
`
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"missing password file", "clients:\n  ci: {password_file: \"{{dir}}/nope.pw\"}\n" + route,
			[]string{"clients.ci.password_file", "nope.pw"}},
		{"no password file", "clients:\n  ci: {}\n" + route, []string{"clients.ci.password_file", "required"}},
		{"empty password file", "clients:\n  ci: {password_file: \"" + empty + "\"}\n" + route,
			[]string{"clients.ci.password_file", "is empty"}},
		{"colon in the name", "clients:\n  \"c:i\": {password_file: \"" + pw + "\"}\n" + route,
			[]string{"clients.c:i", "cannot contain ':'"}},
		{"route names an unknown client", "clients:\n  ci: {password_file: \"" + pw + "\"}\n" + route + "    clients: [ci, nobody]\n",
			[]string{"routes[0].clients[1]", `unknown client "nobody"`, "known clients: ci"}},
		{"route clients without any clients", route + "    clients: [ci]\n",
			[]string{"routes[0].clients[0]", `unknown client "ci"`, "no clients are defined"}},
		{"gateway names an unknown client", "clients:\n  ci: {password_file: \"" + pw + "\"}\n" + `gateways:
  - listen: 127.0.0.1:0
    upstream: https://api.internal:{{port}}
    identity: app
    trust: corp
    clients: [backup]
`, []string{"gateways[0].clients[0]", `unknown client "backup"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runOnce(nil, "run", "--config", env.config(t, tt.yaml))
			if err == nil {
				t.Fatal("run succeeded; want a config problem")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "ci-pass") {
				t.Errorf("error shows a password: %q", err)
			}
		})
	}
}

// TestHardLoop sends requests for the proxy's own listeners through it,
// with --allow '*': each is answered at once with 508.
func TestHardLoop(t *testing.T) {
	env := hardNewEnv(t)
	t.Run("flags", func(t *testing.T) {
		run := hardStart(t, 1, env.flags("--allow", "*", "--listen", "127.0.0.1:0")...)
		addr := run.addrs["listen"]
		_, port, _ := net.SplitHostPort(addr)
		c, tr := hardProxyClient(addr)
		defer tr.CloseIdleConnections()
		for _, target := range []string{"http://" + addr + "/loop", "http://localhost:" + port + "/", "http://127.0.0.1:" + port + "/?x"} {
			start := time.Now()
			status, h, body := hardGet(t, c, target)
			if status != http.StatusLoopDetected || h.Get(proxy.ErrorHeader) != proxy.CodeBadRequest || !strings.Contains(body, "loops back") {
				t.Errorf("GET %s: %d %s %q; want 508 bad-request saying it loops back", target, status, h.Get(proxy.ErrorHeader), body)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("GET %s answered after %s; want at once", target, d)
			}
		}
		// Access lines are flushed every 100ms.
		if !eventually(func() bool { return strings.Count(run.stderr.String(), `"status":508`) >= 3 }) {
			t.Errorf("access log has no line per 508\n%s", run.stderr)
		}
		time.Sleep(200 * time.Millisecond)
		if n := strings.Count(run.stderr.String(), `"status":508`); n != 3 {
			t.Errorf("%d access-log lines with status 508; want 3 (one per request, no recursion)\n%s", n, run.stderr)
		}
	})
	t.Run("gateway address", func(t *testing.T) {
		// A request through the forward listener for one of the gateway
		// listeners is a loop too.
		cfg := env.config(t, `listen: 127.0.0.1:0
routes:
  - host: "*"
    identity: app
    trust: corp
gateways:
  - name: gw
    listen: 127.0.0.1:0
    upstream: https://api.internal:{{port}}
    address: 127.0.0.1:{{port}}
    identity: app
    trust: corp
`)
		run := hardStart(t, 2, "--config", cfg)
		c, tr := hardProxyClient(run.addrs["listen"])
		defer tr.CloseIdleConnections()
		status, _, body := hardGet(t, c, "http://"+run.addrs["gw"]+"/")
		if status != http.StatusLoopDetected {
			t.Errorf("GET the gateway through the forward listener: %d %q; want 508", status, body)
		}
	})
}

// TestHardRawSuite speaks raw bytes to the real listener of a running
// mtlsproxy and checks each answer, that nothing unintended reaches the
// upstream, that no secret is logged at debug level, and that afterwards
// the process still serves with no goroutines left over.
func TestHardRawSuite(t *testing.T) {
	env := hardNewEnv(t)
	run := hardStart(t, 1, env.flags("--allow", "*", "--listen", "127.0.0.1:0", "--read-header-timeout", "500ms",
		"--strip-header", "X-Internal-User", "--http2=false")...)
	addr := run.addrs["listen"]
	host := "api.internal:" + env.port
	target := func(p string) string { return "http://" + host + p }

	serves := func(t *testing.T, path string) {
		t.Helper()
		c, tr := hardProxyClient(addr)
		defer tr.CloseIdleConnections()
		if status, _, body := hardGet(t, c, target(path)); status != http.StatusOK || body != "subject="+env.set.ClientSubject+" uri="+path {
			t.Fatalf("proxy does not serve: %d %q", status, body)
		}
	}
	// Warm up both upstream paths (bodiless requests and requests with a
	// body may use separate pools), then take the goroutine baseline.
	serves(t, "/warm")
	{
		c, tr := hardProxyClient(addr)
		resp, err := c.Post(target("/warm-post"), "text/plain", strings.NewReader("warm"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
	}
	baseline := hardGoroutinesStable()

	// raw writes raw (while reading) and returns the first response, and
	// whether the proxy then closed the connection.
	raw := func(t *testing.T, raw string) (*http.Response, string, bool) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		go func() { _, _ = io.WriteString(c, raw) }()
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no response to %.60q: %v", raw, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = br.ReadByte()
		return resp, string(b), err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
	}
	refused := func(t *testing.T, req string, status int) {
		t.Helper()
		seen := env.seenCount()
		resp, body, closed := raw(t, req)
		if resp.StatusCode != status {
			t.Errorf("status %d %q; want %d", resp.StatusCode, body, status)
		}
		if !closed {
			t.Errorf("connection left open after %d", resp.StatusCode)
		}
		if n := env.seenCount() - seen; n != 0 {
			t.Errorf("upstream got %d requests; want 0", n)
		}
	}

	t.Run("garbage", func(t *testing.T) { refused(t, "GARBAGE\r\n\r\n", http.StatusBadRequest) })
	t.Run("binary", func(t *testing.T) {
		refused(t, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", http.StatusBadRequest)
	})
	t.Run("invalid header name", func(t *testing.T) {
		refused(t, "GET "+target("/h")+" HTTP/1.1\r\nHost: "+host+"\r\nBad Name: v\r\n\r\n", http.StatusBadRequest)
	})
	t.Run("repeated differing Content-Length", func(t *testing.T) {
		refused(t, "POST "+target("/cl")+" HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", http.StatusBadRequest)
	})
	t.Run("malformed absolute URL", func(t *testing.T) {
		refused(t, "GET http://[::1/ HTTP/1.1\r\nHost: "+host+"\r\n\r\n", http.StatusBadRequest)
	})
	t.Run("header over 1 MiB", func(t *testing.T) {
		refused(t, "GET "+target("/big")+" HTTP/1.1\r\nHost: "+host+"\r\nX-Big: "+strings.Repeat("b", 1<<20+8<<10)+"\r\n\r\n",
			http.StatusRequestHeaderFieldsTooLarge)
	})
	t.Run("200 kB header", func(t *testing.T) {
		// The listener's limit is 64 KiB of request head.
		refused(t, "GET "+target("/200k")+" HTTP/1.1\r\nHost: "+host+"\r\nX-Big: "+strings.Repeat("b", 200<<10)+"\r\n\r\n",
			http.StatusRequestHeaderFieldsTooLarge)
	})
	t.Run("userinfo", func(t *testing.T) {
		seen := env.seenCount()
		resp, body, _ := raw(t, "GET http://u:USERINFO-SECRET-6@"+host+"/ HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(proxy.ErrorHeader) != proxy.CodeBadRequest {
			t.Errorf("userinfo: %d %q; want 400 bad-request", resp.StatusCode, body)
		}
		if env.seenCount() != seen {
			t.Error("upstream reached")
		}
	})
	t.Run("CL+TE", func(t *testing.T) {
		// Both framings on one request is the smuggling probe: it is read
		// by its chunked framing (RFC 9112 section 6.3), and the
		// connection closes after its answer, so what a Content-Length
		// reader would take for the next request never is one.
		seen := env.seenCount()
		hidden := "GET /smuggled HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
		resp, _, closed := raw(t, "POST "+target("/clte")+" HTTP/1.1\r\nHost: "+host+"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"+
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden)+"GET "+target("/after")+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if resp.StatusCode != http.StatusOK || !resp.Close {
			t.Fatalf("status %d close=%v; want 200 with Connection: close", resp.StatusCode, resp.Close)
		}
		if !closed {
			t.Errorf("connection left open after the CL+TE request")
		}
		got := env.seenSince(seen)
		if len(got) != 1 || !strings.Contains(got[0].uri, "/clte") {
			t.Errorf("upstream got %+v; want the POST alone", got)
		}
	})
	t.Run("obs-fold", func(t *testing.T) {
		seen := env.seenCount()
		resp, body, _ := raw(t, "GET "+target("/fold")+" HTTP/1.1\r\nHost: "+host+"\r\nX-Fold: a\r\n b\r\nConnection: close\r\n\r\n")
		got := env.seenSince(seen)
		if resp.StatusCode != http.StatusOK || len(got) != 1 || got[0].header.Get("X-Fold") != "a b" {
			t.Errorf("obs-fold: %d %q, upstream %+v; want 200 and the value unfolded to %q", resp.StatusCode, body, got, "a b")
		}
	})
	t.Run("loop", func(t *testing.T) {
		start := time.Now()
		resp, body, _ := raw(t, "GET http://"+addr+"/ HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
		if resp.StatusCode != http.StatusLoopDetected || time.Since(start) > 2*time.Second {
			t.Errorf("loop: %d %q after %s; want 508 at once", resp.StatusCode, body, time.Since(start))
		}
	})
	t.Run("slowloris", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stop := make(chan struct{})
		defer close(stop)
		start := time.Now()
		go func() {
			head := "GET " + target("/slow") + " HTTP/1.1\r\nHost: " + host + "\r\nX-Slow: " + strings.Repeat("s", 500)
			for i := range len(head) {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := c.Write([]byte{head[i]}); err != nil {
					return
				}
			}
		}()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		d := time.Since(start)
		if errors.Is(err, os.ErrDeadlineExceeded) || d > 4*time.Second {
			t.Fatalf("partial headers kept the connection open for %s; want it closed after --read-header-timeout 500ms", d)
		}
		if len(b) > 0 && !strings.HasPrefix(string(b), "HTTP/1.1 4") {
			t.Errorf("got %q; want nothing or a 4xx", b)
		}
	})
	t.Run("identity headers and secrets", func(t *testing.T) {
		seen := env.seenCount()
		c, tr := hardProxyClient(addr)
		defer tr.CloseIdleConnections()
		status, h, _ := hardGet(t, c, target("/ids?token=QUERY-SECRET-4"),
			"X-Forwarded-Client-Cert", "Subject=\"CN=admin\"", "X-Internal-User", "admin",
			"Authorization", "Bearer AUTHZ-SECRET-1", "Cookie", "c=COOKIE-SECRET-2",
			"Proxy-Authorization", hardBasicAuth("u", "PROXY-SECRET-3"))
		if status != http.StatusOK || !strings.Contains(h.Get("Set-Cookie"), "SETCOOKIE-SECRET-5") {
			t.Fatalf("status %d, Set-Cookie %q", status, h.Get("Set-Cookie"))
		}
		got := env.seenSince(seen)
		if len(got) != 1 {
			t.Fatalf("upstream got %d requests", len(got))
		}
		for _, name := range []string{"X-Forwarded-Client-Cert", "X-Internal-User", "Proxy-Authorization"} {
			if v := got[0].header.Get(name); v != "" {
				t.Errorf("upstream saw %s: %q", name, v)
			}
		}
		if got[0].header.Get("Authorization") == "" || got[0].header.Get("Cookie") == "" {
			t.Error("end-to-end Authorization or Cookie not forwarded")
		}
	})

	// Access lines are flushed every 100ms.
	time.Sleep(300 * time.Millisecond)
	logText := run.stderr.String()
	if !strings.Contains(logText, `"level":"debug"`) {
		t.Fatalf("no debug lines in the log; the secrets check would see nothing:\n%s", logText)
	}
	for _, s := range []string{"AUTHZ-SECRET-1", "COOKIE-SECRET-2", "PROXY-SECRET-3", base64.StdEncoding.EncodeToString([]byte("u:PROXY-SECRET-3")),
		"SETCOOKIE-SECRET-5", "USERINFO-SECRET-6"} {
		if strings.Contains(logText, s) {
			t.Errorf("secret %q in the debug-level log", s)
		}
	}
	for _, l := range strings.Split(logText, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["logger"] == "access" && strings.Contains(l, "QUERY-SECRET-4") {
			t.Errorf("query string in the access log: %s", l)
		}
	}

	if n := hardGoroutinesSettle(baseline, 2*time.Second); n > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the suite; baseline %d\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
	serves(t, "/after")
}

// TestHardCurl runs curl against a real run: --proxy-user for a proxy
// with clients, where ci and backup get different identities for the
// same host and backup is refused a route only ci may use; and
// --unix-socket for a gateway on a socket.
func TestHardCurl(t *testing.T) {
	curl := requireBinary(t, "curl")
	env := hardNewEnv(t)
	backup := pkitest.Issue(t, env.set.CA, pki.LeafOptions{CommonName: "backup-client", Client: true})
	backupCert, backupKey, err := backup.WriteFiles(env.dir, "backup")
	if err != nil {
		t.Fatal(err)
	}
	ciPW := env.file(t, "ci.pw", "curl-pass-7\n")
	backupPW := env.file(t, "backup.pw", "curl-pass-8\n")
	cfg := env.config(t, `  backupid: {cert: "`+backupCert+`", key: "`+backupKey+`"}
listen: 127.0.0.1:0
clients:
  ci: {password_file: "`+ciPW+`"}
  backup: {password_file: "`+backupPW+`"}
routes:
  - name: ci-only
    host: ci-only.internal
    server_name: api.internal
    identity: app
    trust: corp
    address: 127.0.0.1:{{port}}
    clients: [ci]
  - name: api-ci
    host: api.internal
    identity: app
    trust: corp
    address: 127.0.0.1:{{port}}
    clients: [ci]
  - name: api-backup
    host: api.internal
    identity: backupid
    trust: corp
    address: 127.0.0.1:{{port}}
    clients: [backup]
gateways:
  - name: sock
    listen: unix:{{dir}}/curl.sock
    upstream: https://api.internal:{{port}}
    address: 127.0.0.1:{{port}}
    identity: app
    trust: corp
`)
	run := hardStart(t, 2, "--config", cfg)
	proxyURL := "http://" + run.addrs["listen"]
	target := "http://api.internal:" + env.port + "/curl"
	wantCI := "subject=" + env.set.ClientSubject + " uri=/curl"
	wantBackup := "subject=" + backup.Cert.Subject.String() + " uri=/curl"

	r := runCurl(t, curl, "--proxy", proxyURL, "--proxy-user", "ci:curl-pass-7", target)
	if r.Err != nil || r.Status != http.StatusOK || r.Body != wantCI {
		t.Errorf("curl --proxy-user ci:...: %v %d %q; want 200 %q", r.Err, r.Status, r.Body, wantCI)
	}
	r = runCurl(t, curl, "--proxy", proxyURL, "--proxy-user", "backup:curl-pass-8", target)
	if r.Err != nil || r.Status != http.StatusOK || r.Body != wantBackup {
		t.Errorf("curl --proxy-user backup:...: %v %d %q; want 200 %q", r.Err, r.Status, r.Body, wantBackup)
	}
	r = runCurl(t, curl, "--proxy", proxyURL, "--proxy-user", "backup:curl-pass-8", "http://ci-only.internal:"+env.port+"/curl")
	if r.Status != http.StatusForbidden || r.Header.Get(proxy.ErrorHeader) != proxy.CodeHostNotAllowed || !strings.Contains(r.Body, `caller "backup"`) {
		t.Errorf("backup on ci's route: %d %q; want 403 host-not-allowed naming the caller", r.Status, r.Body)
	}
	r = runCurl(t, curl, "--proxy", proxyURL, "--proxy-user", "ci:curl-pass-8", target)
	if r.Status != http.StatusProxyAuthRequired || r.Header.Get("Proxy-Authenticate") != `Basic realm="mtlsproxy"` {
		t.Errorf("curl with another client's password: %d %v; want 407 with Proxy-Authenticate", r.Status, r.Header)
	}
	r = runCurl(t, curl, "--proxy", proxyURL, target)
	if r.Status != http.StatusProxyAuthRequired {
		t.Errorf("curl without --proxy-user: %d; want 407", r.Status)
	}
	// curl --proxy-anyauth learns the scheme from the 407 and retries.
	r = runCurl(t, curl, "--proxy", proxyURL, "--proxy-anyauth", "--proxy-user", "ci:curl-pass-7", target)
	if r.Status != http.StatusOK || r.Body != wantCI {
		t.Errorf("curl --proxy-anyauth: %d %q; want 200", r.Status, r.Body)
	}
	// The gateway lists no clients: a tool that cannot send proxy
	// credentials uses it as is.
	r = runCurl(t, curl, "--unix-socket", filepath.Join(env.dir, "curl.sock"), "http://gateway/curl")
	if r.Err != nil || r.Status != http.StatusOK || r.Body != wantCI {
		t.Errorf("curl --unix-socket: %v %d %q; want 200 %q", r.Err, r.Status, r.Body, wantCI)
	}

	want := "ci/api-ci/200 backup/api-backup/200 backup//403 //407 //407 //407 ci/api-ci/200 /sock/200"
	var got string
	eventually(func() bool {
		var lines []string
		for _, l := range strings.Split(run.stderr.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["logger"] == "access" {
				lines = append(lines, fmt.Sprintf("%v/%v/%v", m["caller"], m["route"], m["status"]))
			}
		}
		got = strings.Join(lines, " ")
		return got == want
	})
	if got != want {
		t.Errorf("access log caller/route/status:\n got  %s\n want %s", got, want)
	}
	for _, pw := range []string{"curl-pass-7", "curl-pass-8"} {
		if strings.Contains(run.stderr.String(), pw) {
			t.Errorf("password %s is in the log", pw)
		}
	}
}

func hardGoroutinesStable() int {
	n := runtime.NumGoroutine()
	for stable := 0; stable < 5; {
		time.Sleep(20 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

func hardGoroutinesSettle(limit int, wait time.Duration) int {
	deadline := time.Now().Add(wait)
	for {
		n := runtime.NumGoroutine()
		if n <= limit || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}
