package main

// Interop tests for HTTP fidelity (issue 6), with a real nginx as the
// upstream: a slow chunked stream, WebSocket through nginx, HTTP/2 to
// nginx, hop-by-hop headers, and bodiless responses on one client
// connection. Like TestInterop, a missing nginx skips the test locally and
// fails it with MTLSPROXY_REQUIRE_INTEROP=1.
//
// TestFidMemory, run by hand with MTLSPROXY_MEMTEST=1, measures the built
// binary's peak RSS over 1 GiB down and 1 GiB up (docs/fidelity-memory.md).

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"golang.org/x/net/websocket"
)

// fidEnv is what the subtests of TestInteropFidelity share.
type fidEnv struct {
	pki    *pkitest.Set
	port   string // nginx: TLS with HTTP/2, client certificate required
	nginx  *nginxProcess
	static string // content of nginx's /static/file.txt
	fwd    *runningProxy
	fwdH1  *runningProxy // --http2=false
	gw     *runningProxy // gateway to nginx
	// wsEnded receives the path of every WebSocket session the backend
	// sees end.
	wsEnded chan string
	// barrier, when set, holds /slow/ requests in the backend.
	barrier chan *fidHold
}

// fidHold is a request held by the backend until release is closed.
type fidHold struct{ release chan struct{} }

func TestInteropFidelity(t *testing.T) {
	nginxBin := requireBinary(t, "nginx")
	t.Parallel()

	env := &fidEnv{pki: pkitest.New(t), wsEnded: make(chan string, 16), barrier: make(chan *fidHold, 64)}
	backend := httptest.NewServer(env.backend())
	t.Cleanup(backend.Close)
	env.port = freePort(t)
	env.static = strings.Repeat("static file served by nginx\n", 100)
	env.nginx = fidStartNginx(t, nginxBin, env, backend.Listener.Addr().String())

	p := env.pki
	common := []string{"--listen", "127.0.0.1:0", "--cert", p.ClientCert, "--key", p.ClientKey, "--cacert", p.CAFile,
		"--resolve", "api.internal:" + env.port + ":127.0.0.1"}
	env.fwd = startRun(t, slices.Concat(common, []string{"--allow", "api.internal"})...)
	env.fwdH1 = startRun(t, slices.Concat(common, []string{"--allow", "api.internal", "--http2=false"})...)
	env.gw = startRun(t, slices.Concat(common, []string{"--upstream", "https://api.internal:" + env.port})...)

	for _, tc := range []struct {
		name string
		run  func(*testing.T, *fidEnv)
	}{
		{"SlowStreamFirstEvent", fidSlowStream},
		{"WebSocketEcho", fidWebSocket},
		{"HTTP2Upstream", fidHTTP2},
		{"HopByHopHeaders", fidHopHeaders},
		{"BodilessThenNext", fidBodiless},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, env) })
	}
	if t.Failed() {
		t.Logf("forward proxy log:\n%s\nforward (http2=false) log:\n%s\ngateway log:\n%s\nnginx:\n%s",
			env.fwd.Stderr, env.fwdH1.Stderr, env.gw.Stderr, env.nginx.log())
	}
}

// backend is the plain-HTTP server behind nginx.
func (env *fidEnv) backend() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/stream/", func(w http.ResponseWriter, r *http.Request) {
		// /stream/sse is a server-sent-event stream; anything else is
		// chunked progress output, which no Content-Type marks as a stream.
		ct := "text/plain"
		if r.URL.Path == "/stream/sse" {
			ct = "text/event-stream"
		}
		w.Header().Set("Content-Type", ct)
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(1500 * time.Millisecond)
		_, _ = io.WriteString(w, "data: second\n\n")
	})
	mux.HandleFunc("/headers/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Header)
	})
	mux.HandleFunc("/slow/", func(w http.ResponseWriter, r *http.Request) {
		h := &fidHold{release: make(chan struct{})}
		env.barrier <- h
		select {
		case <-h.release:
		case <-time.After(peerTimeout):
		}
		fmt.Fprintf(w, "slow %s\n", r.URL.Path)
	})
	mux.Handle("/ws/", websocket.Server{Handler: func(ws *websocket.Conn) {
		defer func() { env.wsEnded <- ws.Request().URL.Path }()
		for {
			var msg string
			if err := websocket.Message.Receive(ws, &msg); err != nil {
				return
			}
			if msg == "close-please" {
				_ = ws.Close()
				return
			}
			if err := websocket.Message.Send(ws, "echo: "+msg); err != nil {
				return
			}
		}
	}})
	return mux
}

// fidStartNginx runs nginx with one TLS server offering HTTP/2, in the
// nginx 1.22 syntax ("listen ... ssl http2"), until the test ends.
func fidStartNginx(t *testing.T, bin string, env *fidEnv, backend string) *nginxProcess {
	t.Helper()
	n := &nginxProcess{dir: t.TempDir(), stderr: &syncBuffer{}}
	www := filepath.Join(n.dir, "www")
	if err := os.MkdirAll(filepath.Join(www, "static"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "static", "file.txt"), []byte(env.static), 0o644); err != nil {
		t.Fatal(err)
	}
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
    log_format fid '$request_uri $status $server_protocol $connection';
    client_body_temp_path %s;
    proxy_temp_path %s;
`, q(filepath.Join(n.dir, "nginx.pid")), q(filepath.Join(n.dir, "client_body")), q(filepath.Join(n.dir, "proxy")))
	v, _ := exec.Command(bin, "-V").CombinedOutput()
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !bytes.Contains(v, []byte("--without-http_"+m+"_module")) {
			fmt.Fprintf(&b, "    %s_temp_path %s;\n", m, q(filepath.Join(n.dir, m)))
		}
	}
	fmt.Fprintf(&b, `    server {
        listen 127.0.0.1:%s ssl http2;
        server_name api.internal;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 10000;
        access_log %s fid;
        default_type text/plain;
        root %s;
        add_header X-Conn $connection always;
        location = /proto {
            add_header X-Conn $connection always;
            add_header X-Server-Protocol $server_protocol always;
            return 200 "$server_protocol h2=[$http2]\n";
        }
        location = /seen {
            return 200 "x-hop=[$http_x_hop] keep-alive=[$http_keep_alive] connection=[$http_connection] upgrade=[$http_upgrade] accept-encoding=[$http_accept_encoding] x-forwarded-for=[$http_x_forwarded_for]\n";
        }
        location = /nocontent { return 204; }
        location /static/ { }
        location /stream/ {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_buffering off;
        }
        location /slow/ {
            proxy_pass http://%s;
            proxy_http_version 1.1;
        }
        location /headers/ {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            # nginx itself drops Keep-Alive towards a backend: pass on
            # whatever reached it, so that the backend sees it too.
            proxy_set_header Keep-Alive $http_keep_alive;
        }
        location /ws/ {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 60s;
        }
    }
}
`, env.port, q(env.pki.ServerCert), q(env.pki.ServerKey), q(env.pki.CAFile), q(filepath.Join(n.dir, "access.log")),
		q(www), backend, backend, backend, backend)
	n.run(t, bin, b.String(), nginxSite{Port: env.port, ServerCAs: env.pki.CA.Pool()})
	return n
}

// url is the absolute-form URL of path on nginx.
func (env *fidEnv) url(path string) string { return "http://api.internal:" + env.port + path }

// client sends requests through the forward proxy rp.
func fidClient(rp *runningProxy) *http.Client {
	u, _ := url.Parse("http://" + rp.Addr)
	return &http.Client{Timeout: peerTimeout, Transport: &http.Transport{Proxy: http.ProxyURL(u), DisableCompression: true}}
}

// fidSlowStream: nginx (proxy_buffering off) relays a backend that sends
// one event, waits 1.5s and sends another; the first event must reach the
// client through mtlsproxy in under a second. The four cases run in
// parallel, to take 1.5s rather than 6.
func fidSlowStream(t *testing.T, env *fidEnv) {
	for _, tc := range []struct {
		name, path, ct string
		rp             *runningProxy
	}{
		{"sse/http2", "/stream/sse", "text/event-stream", env.fwd},
		{"sse/http1", "/stream/sse", "text/event-stream", env.fwdH1},
		{"chunked/http2", "/stream/progress", "text/plain", env.fwd},
		{"chunked/http1", "/stream/progress", "text/plain", env.fwdH1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := fidClient(tc.rp)
			defer c.CloseIdleConnections()
			start := time.Now()
			resp, err := c.Get(env.url(tc.path))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first, err := br.ReadString('\n')
			firstAt := time.Since(start)
			if err != nil || first != "data: first\n" {
				t.Fatalf("first line %q, %v", first, err)
			}
			if firstAt >= time.Second {
				t.Errorf("first event arrived after %v; want under 1s (the backend sends the next one 1.5s later)", firstAt)
			}
			rest, err := io.ReadAll(br)
			total := time.Since(start)
			if err != nil || string(rest) != "\ndata: second\n\n" {
				t.Errorf("rest of the stream %q, %v", rest, err)
			}
			if total < 1400*time.Millisecond {
				t.Errorf("whole stream took %v; the backend waits 1.5s, so the test measured nothing", total)
			}
			if resp.Header.Get("Content-Type") != tc.ct {
				t.Errorf("Content-Type %q; want %s", resp.Header.Get("Content-Type"), tc.ct)
			}
			t.Logf("first event after %v, end after %v", firstAt, total)
		})
	}
}

// fidWS is a minimal RFC 6455 client.
type fidWS struct {
	c  net.Conn
	br *bufio.Reader
}

func fidWSDial(t *testing.T, proxyAddr, target, host string) *fidWS {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, peerTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(peerTimeout))
	k := make([]byte, 16)
	_, _ = rand.Read(k)
	key := base64.StdEncoding.EncodeToString(k)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://%s\r\n\r\n", target, host, key, host)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("WebSocket handshake for %s: %v", target, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("WebSocket handshake for %s: status %d %q; want 101", target, resp.StatusCode, b)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		t.Fatalf("Sec-WebSocket-Accept %q; want %q", got, want)
	}
	_ = c.SetDeadline(time.Time{})
	return &fidWS{c: c, br: br}
}

func (w *fidWS) write(op byte, payload []byte) error {
	hdr := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	out := append(hdr, mask...)
	for i, c := range payload {
		out = append(out, c^mask[i%4])
	}
	_ = w.c.SetWriteDeadline(time.Now().Add(peerTimeout))
	_, err := w.c.Write(out)
	return err
}

func (w *fidWS) read() (op byte, payload []byte, err error) {
	_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(w.br, payload)
	return h[0] & 0x0f, payload, err
}

// fidWebSocket: a WebSocket echo through mtlsproxy (forward and gateway)
// and nginx to a Go backend, with a close from either side.
func fidWebSocket(t *testing.T, env *fidEnv) {
	host := "api.internal:" + env.port
	for _, tc := range []struct {
		name   string
		rp     *runningProxy
		target func(string) string
	}{
		{"forward", env.fwd, env.url},
		{"gateway", env.gw, func(p string) string { return p }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			big := strings.Repeat("websocket through nginx ", 4000) // ~94 KiB
			for _, closer := range []string{"client", "server"} {
				path := "/ws/" + tc.name + "-" + closer
				ws := fidWSDial(t, tc.rp.Addr, tc.target(path), host)
				for _, msg := range []string{"hello nginx", big} {
					if err := ws.write(1, []byte(msg)); err != nil {
						t.Fatalf("send: %v", err)
					}
					op, p, err := ws.read()
					if err != nil || op != 1 || string(p) != "echo: "+msg {
						t.Fatalf("echo: op=%d %d bytes, %v; want text \"echo: \" + the %d bytes sent", op, len(p), err, len(msg))
					}
				}
				if closer == "client" {
					_ = ws.write(8, []byte{0x03, 0xe8})
					ws.c.Close()
				} else {
					if err := ws.write(1, []byte("close-please")); err != nil {
						t.Fatal(err)
					}
					if op, _, err := ws.read(); err != nil || op != 8 {
						t.Fatalf("after the backend closed: op=%d, %v; want a close frame", op, err)
					}
					if _, _, err := ws.read(); !errors.Is(err, io.EOF) {
						t.Errorf("after the close frame: %v; want EOF", err)
					}
					ws.c.Close()
				}
				select {
				case got := <-env.wsEnded:
					if got != path {
						t.Errorf("backend session %s ended; want %s", got, path)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("%s: the backend's session did not end after the %s closed", path, closer)
				}
			}
		})
	}
}

// fidHTTP2: nginx offers HTTP/2 by ALPN; the default proxy and the gateway
// speak it, --http2=false speaks HTTP/1.1, and concurrent requests through
// the HTTP/2 proxy share one nginx connection.
func fidHTTP2(t *testing.T, env *fidEnv) {
	for _, tc := range []struct {
		name string
		get  func() (*http.Response, error)
		want string
	}{
		{"forward", func() (*http.Response, error) { return fidClient(env.fwd).Get(env.url("/proto")) }, "HTTP/2.0 h2=[h2]\n"},
		{"gateway", func() (*http.Response, error) { return http.Get("http://" + env.gw.Addr + "/proto") }, "HTTP/2.0 h2=[h2]\n"},
		{"forward-http2=false", func() (*http.Response, error) { return fidClient(env.fwdH1).Get(env.url("/proto")) }, "HTTP/1.1 h2=[]\n"},
	} {
		resp, err := tc.get()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != tc.want {
			t.Errorf("%s: nginx answered %d %q; want %q", tc.name, resp.StatusCode, b, tc.want)
		}
	}

	const n = 10
	c := fidClient(env.fwd)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = n
	defer c.CloseIdleConnections()
	conns := make(chan string, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(env.url(fmt.Sprintf("/slow/%d", i)))
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("slow /slow/%d\n", i); resp.StatusCode != 200 || string(b) != want {
				errs <- fmt.Errorf("request %d: %d %q", i, resp.StatusCode, b)
			}
			conns <- resp.Header.Get("X-Conn")
		}()
	}
	// Release the backend only when all n are in flight at once.
	var held []*fidHold
	for len(held) < n {
		select {
		case h := <-env.barrier:
			held = append(held, h)
		case err := <-errs:
			t.Fatal(err)
		case <-time.After(peerTimeout):
			t.Fatalf("%d of %d requests reached the backend", len(held), n)
		}
	}
	for _, h := range held {
		close(h.release)
	}
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Error(err)
	}
	seen := map[string]int{}
	for c := range conns {
		seen[c]++
	}
	if len(seen) != 1 {
		t.Errorf("%d concurrent requests reached nginx on connections %v; want one multiplexed HTTP/2 connection", n, seen)
	}
}

// fidHopHeaders: Connection, the names it lists and Keep-Alive do not
// reach nginx (nor its backend); Accept-Encoding: br does; no
// X-Forwarded-For is added. curl is the client, as a user would run it.
func fidHopHeaders(t *testing.T, env *fidEnv) {
	curl := requireBinary(t, "curl")
	for name, rp := range map[string]*runningProxy{"http2": env.fwd, "http1": env.fwdH1} {
		t.Run(name, func(t *testing.T) {
			args := []string{"-x", "http://" + rp.Addr, "-H", "Connection: X-Hop", "-H", "X-Hop: secret",
				"-H", "Keep-Alive: timeout=5", "-H", "Accept-Encoding: br", "-H", "X-End-To-End: kept"}
			r := runCurl(t, curl, append(args, env.url("/seen"))...)
			want := "x-hop=[] keep-alive=[] connection=[] upgrade=[] accept-encoding=[br] x-forwarded-for=[]\n"
			if r.Status != 200 || r.Body != want {
				t.Errorf("nginx saw %q (status %d); want %q", r.Body, r.Status, want)
			}

			r = runCurl(t, curl, append(args, env.url("/headers/echo"))...)
			if r.Status != 200 {
				t.Fatalf("status %d %q", r.Status, r.Body)
			}
			var seen http.Header
			if err := json.Unmarshal([]byte(r.Body), &seen); err != nil {
				t.Fatalf("backend answer %q: %v", r.Body, err)
			}
			for _, h := range []string{"X-Hop", "Keep-Alive", "X-Forwarded-For"} {
				if v := seen.Values(h); len(v) > 0 {
					t.Errorf("backend saw %s %q", h, v)
				}
			}
			if got := seen.Get("Accept-Encoding"); got != "br" {
				t.Errorf("backend saw Accept-Encoding %q; want br", got)
			}
			if got := seen.Get("X-End-To-End"); got != "kept" {
				t.Errorf("backend saw X-End-To-End %q; want kept (end-to-end headers pass)", got)
			}
		})
	}
}

// fidBodiless: HEAD of a static file, a 304, a 204 and then a GET, all on
// one client connection, through each proxy.
func fidBodiless(t *testing.T, env *fidEnv) {
	for _, tc := range []struct {
		name   string
		rp     *runningProxy
		target func(string) string
	}{
		{"forward-http2", env.fwd, env.url},
		{"forward-http1", env.fwdH1, env.url},
		{"gateway", env.gw, func(p string) string { return p }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", tc.rp.Addr, peerTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			host := "Host: api.internal:" + env.port + "\r\n"
			do := func(method, path, extra string) (*http.Response, string) {
				t.Helper()
				_ = c.SetDeadline(time.Now().Add(peerTimeout))
				fmt.Fprintf(c, "%s %s HTTP/1.1\r\n%s%s\r\n", method, tc.target(path), host, extra)
				resp, err := http.ReadResponse(br, &http.Request{Method: method})
				if err != nil {
					t.Fatalf("%s %s: %v (the connection is out of step)", method, path, err)
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("%s %s: body: %v", method, path, err)
				}
				return resp, string(b)
			}
			size := strconv.Itoa(len(env.static))
			resp, body := do("HEAD", "/static/file.txt", "")
			etag := resp.Header.Get("ETag")
			if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Length") != size || etag == "" {
				t.Fatalf("HEAD: %d, Content-Length %q, ETag %q, body %q; want 200, %s, an ETag, no body",
					resp.StatusCode, resp.Header.Get("Content-Length"), etag, body, size)
			}
			resp, body = do("GET", "/static/file.txt", "If-None-Match: "+etag+"\r\n")
			if resp.StatusCode != 304 || body != "" {
				t.Errorf("conditional GET: %d %q; want 304 without body", resp.StatusCode, body)
			}
			resp, body = do("GET", "/nocontent", "")
			if resp.StatusCode != 204 || body != "" {
				t.Errorf("GET /nocontent: %d %q; want 204", resp.StatusCode, body)
			}
			resp, body = do("GET", "/static/file.txt", "")
			if resp.StatusCode != 200 || body != env.static {
				t.Errorf("final GET on the same connection: %d, %d bytes; want 200 with the %s-byte file", resp.StatusCode, len(body), size)
			}
			if n := br.Buffered(); n > 0 {
				t.Errorf("%d stray bytes after the last response", n)
			}
		})
	}
}

// fidMemSize is what TestFidMemory moves each way.
const fidMemSize = 1 << 30

// fidGen is the deterministic byte stream both ends of TestFidMemory
// generate and hash.
func fidGen(n int64) io.Reader {
	return io.LimitReader(mrand.NewChaCha8([32]byte{'m', 't', 'l', 's'}), n)
}

// TestFidMemory measures the built binary's peak RSS (VmHWM) while 1 GiB
// goes down and 1 GiB goes up through it in forward mode, against Go mTLS
// upstreams speaking HTTP/1.1 and HTTP/2. It is a measurement, not a timed
// CI test: run it by hand (docs/fidelity-memory.md).
//
//	MTLSPROXY_MEMTEST=1 go test -count=1 -v -run TestFidMemory ./cmd/mtlsproxy/
func TestFidMemory(t *testing.T) {
	if os.Getenv("MTLSPROXY_MEMTEST") != "1" {
		t.Skip("set MTLSPROXY_MEMTEST=1 to measure 1 GiB through the built binary")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	bin := os.Getenv("MTLSPROXY_MEMTEST_BINARY")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "mtlsproxy")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	set := pkitest.New(t)
	upstream := func(h2 bool) string {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.Method {
			case http.MethodGet:
				w.Header().Set("Content-Length", strconv.Itoa(fidMemSize))
				_, _ = io.Copy(w, fidGen(fidMemSize))
			case http.MethodPost:
				h := sha256.New()
				n, err := io.Copy(h, r.Body)
				if err != nil {
					http.Error(w, err.Error(), 500)
					return
				}
				fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
			}
		}))
		srv.TLS = set.ServerTLS()
		srv.EnableHTTP2 = h2
		srv.StartTLS()
		t.Cleanup(srv.Close)
		_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
		return port
	}
	h1Port, h2Port := upstream(false), upstream(true)

	listen := "127.0.0.1:" + freePort(t)
	logFile := filepath.Join(t.TempDir(), "proxy.log")
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "run", "--listen", listen, "--cert", set.ClientCert, "--key", set.ClientKey,
		"--cacert", set.CAFile, "--allow", "api.internal",
		"--resolve", "api.internal:"+h1Port+":127.0.0.1", "--resolve", "api.internal:"+h2Port+":127.0.0.1")
	cmd.Env = envWithoutProxy()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if !eventually(func() bool {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		b, _ := os.ReadFile(logFile)
		t.Fatalf("proxy not listening on %s:\n%s", listen, b)
	}
	status := func(field string) int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				return kb << 10
			}
		}
		t.Fatalf("no %s in /proc/PID/status", field)
		return 0
	}
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	t.Logf("proxy pid %d started: VmRSS %s, VmHWM %s", cmd.Process.Pid, mib(status("VmRSS")), mib(status("VmHWM")))

	// Writing 5 to clear_refs resets VmHWM (Linux 4.0+), so each transfer
	// gets its own peak; without it the peaks are cumulative.
	resetPeak := func() bool {
		return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", cmd.Process.Pid), []byte("5"), 0) == nil
	}

	wantSum := sha256.New()
	if _, err := io.Copy(wantSum, fidGen(fidMemSize)); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %x", fidMemSize, wantSum.Sum(nil))
	proxyURL, _ := url.Parse("http://" + listen)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}}
	defer client.CloseIdleConnections()

	var overall int64
	report := func(what string, start time.Time, got string) {
		t.Helper()
		peak := status("VmHWM")
		overall = max(overall, peak)
		if got != want {
			t.Errorf("%s: got %q; want %q", what, got, want)
		}
		t.Logf("%-50s %6.2fs  intact (length+SHA-256): %-5v  peak RSS %s", what, time.Since(start).Seconds(), got == want, mib(peak))
		if peak > 64<<20 {
			t.Errorf("%s: peak RSS %s; want at most 64 MiB", what, mib(peak))
		}
	}
	for _, up := range []struct{ name, port string }{{"HTTP/1.1 upstream", h1Port}, {"HTTP/2 upstream", h2Port}} {
		target := "http://api.internal:" + up.port + "/"
		// With pause, the client stops reading for 2s at 64 MiB and at
		// 512 MiB: an upstream faster than the client would pile data up
		// in the proxy if it buffered.
		for _, pause := range []bool{false, true} {
			what := up.name + ": 1 GiB download"
			if pause {
				what += ", client pauses"
			}
			resetPeak()
			start := time.Now()
			resp, err := client.Get(target)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			var n int64
			buf := make([]byte, 64<<10)
			for {
				k, err := resp.Body.Read(buf)
				h.Write(buf[:k])
				before := n
				n += int64(k)
				if pause && ((before < 64<<20 && n >= 64<<20) || (before < 512<<20 && n >= 512<<20)) {
					time.Sleep(2 * time.Second)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v after %d bytes", what, err, n)
				}
			}
			resp.Body.Close()
			report(what, start, fmt.Sprintf("%d %x", n, h.Sum(nil)))
		}

		for _, chunked := range []bool{false, true} {
			req, _ := http.NewRequest(http.MethodPost, target, fidGen(fidMemSize))
			req.ContentLength = fidMemSize
			what := up.name + ": 1 GiB upload, Content-Length"
			if chunked {
				req.ContentLength = -1
				what = up.name + ": 1 GiB upload, chunked"
			}
			resetPeak()
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			report(what, start, string(b))
		}
	}
	if !resetPeak() {
		t.Logf("clear_refs not writable: the peaks above are cumulative")
	}
	t.Logf("highest peak RSS of the proxy process (VmHWM): %s (%d bytes); VmRSS at the end %s",
		mib(overall), overall, mib(status("VmRSS")))
}
