package main

// The "mitm" case: HTTPS clients that send CONNECT through the proxy, do
// their own TLS to it (trusting a local CA), and send keep-alive GETs
// inside the tunnel. wrk cannot do this, so the harness drives it with a
// small load generator of its own.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

// mitmTarget is how a client reaches the upstream through an intercepting
// proxy.
type mitmTarget struct {
	Proxy      string         // proxy listener, host:port
	Connect    string         // CONNECT target, host:port
	ServerName string         // SNI and the name the client verifies
	Host       string         // Host header of the requests inside
	Roots      *x509.CertPool // the local CA the client trusts
}

// ioTimeout bounds every step of a client: CONNECT, handshake, request.
const ioTimeout = 10 * time.Second

// mitmConn is one client connection inside an established tunnel.
type mitmConn struct {
	c  *tls.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

// dial connects to the proxy, sends CONNECT, reads the 200 and does TLS
// with the proxy as the client of an HTTPS URL would.
func (t mitmTarget) dial(ctx context.Context) (*mitmConn, error) {
	d := net.Dialer{Timeout: ioTimeout}
	raw, err := d.DialContext(ctx, "tcp", t.Proxy)
	if err != nil {
		return nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(raw, connectRequest(t.Connect)); err != nil {
		raw.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	br := bufio.NewReader(raw)
	if err := readConnectResponse(br); err != nil {
		raw.Close()
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: t.Roots, ServerName: t.ServerName, NextProtos: []string{"http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS with the proxy: %w", err)
	}
	_ = raw.SetDeadline(time.Time{})
	return &mitmConn{c: tc, br: bufio.NewReader(tc), bw: bufio.NewWriter(tc)}, nil
}

func connectRequest(target string) string {
	return "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n"
}

// readConnectResponse reads the proxy's answer to CONNECT: a 2xx, with
// nothing after the header (the client speaks first in TLS).
func readConnectResponse(br *bufio.Reader) error {
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fmt.Errorf("read CONNECT response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		resp.Body.Close()
		return fmt.Errorf("CONNECT: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if br.Buffered() > 0 {
		return fmt.Errorf("CONNECT: %d unexpected bytes after the %s response", br.Buffered(), resp.Status)
	}
	return nil
}

// get sends one keep-alive GET and reads the whole response.
func (m *mitmConn) get(req []byte) (status int, body []byte, closeConn bool, err error) {
	_ = m.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := m.bw.Write(req); err != nil {
		return 0, nil, true, &opError{"write", err}
	}
	if err := m.bw.Flush(); err != nil {
		return 0, nil, true, &opError{"write", err}
	}
	resp, err := http.ReadResponse(m.br, nil)
	if err != nil {
		return 0, nil, true, &opError{"read", err}
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return resp.StatusCode, nil, true, &opError{"read", err}
	}
	return resp.StatusCode, body, resp.Close, nil
}

type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

func getRequest(path, host string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: mtlsbench\r\n\r\n")
}

// checkMITM makes one request through the proxy on a new tunnel and checks
// for a 200 with the body want. The upstream requires a client
// certificate, so a 200 with its body proves the proxy presented one.
func checkMITM(ctx context.Context, t mitmTarget, path string, want []byte) error {
	m, err := t.dial(ctx)
	if err != nil {
		return err
	}
	defer m.c.Close()
	status, body, _, err := m.get(getRequest(path, t.Host))
	if err != nil {
		return fmt.Errorf("GET https://%s%s: %v", t.Host, path, err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("GET https://%s%s: status %d: %s", t.Host, path, status, truncate(string(body), 300))
	}
	if string(body) != string(want) {
		return fmt.Errorf("GET https://%s%s: body of %d bytes differs from the expected %d bytes", t.Host, path, len(body), len(want))
	}
	return nil
}

// runMITMLoad runs conns clients against t for d: each opens a tunnel and
// sends GET path with keep-alive, one request at a time, until d has
// passed, and opens a new tunnel after an error or a Connection: close.
// The result has the shape of a wrk result: connection set-up failures
// (TCP, CONNECT, TLS) count as connect errors.
func runMITMLoad(ctx context.Context, t mitmTarget, conns int, d time.Duration, path string) (wrkResult, error) {
	req := getRequest(path, t.Host)
	type worker struct {
		lat                                 []time.Duration
		n, non2xx, conn, read, write, tmout uint64
		lastErr                             error
	}
	ws := make([]worker, conns)
	start := time.Now()
	end := start.Add(d)
	ctx, cancel := context.WithDeadline(ctx, end.Add(ioTimeout))
	defer cancel()
	var wg sync.WaitGroup
	for i := range ws {
		w := &ws[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m *mitmConn
			defer func() {
				if m != nil {
					m.c.Close()
				}
			}()
			for time.Now().Before(end) && ctx.Err() == nil {
				if m == nil {
					var err error
					if m, err = t.dial(ctx); err != nil {
						w.conn++
						w.lastErr = err
						m = nil
						time.Sleep(10 * time.Millisecond)
						continue
					}
				}
				t0 := time.Now()
				status, _, closeConn, err := m.get(req)
				if err != nil {
					var ne net.Error
					var oe *opError
					switch {
					case errors.As(err, &ne) && ne.Timeout():
						w.tmout++
					case errors.As(err, &oe) && oe.op == "write":
						w.write++
					default:
						w.read++
					}
					w.lastErr = err
					m.c.Close()
					m = nil
					continue
				}
				w.lat = append(w.lat, time.Since(t0))
				w.n++
				if status >= 400 {
					w.non2xx++
				}
				if closeConn {
					m.c.Close()
					m = nil
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return wrkResult{}, err
	}
	r := wrkResult{Seconds: elapsed.Seconds(), Latency: map[string]float64{}}
	var all []time.Duration
	var lastErr error
	for _, w := range ws {
		r.Requests += w.n
		r.Non2xx += w.non2xx
		r.ConnectErrors += w.conn
		r.ReadErrors += w.read
		r.WriteErrors += w.write
		r.Timeouts += w.tmout
		all = append(all, w.lat...)
		if w.lastErr != nil {
			lastErr = w.lastErr
		}
	}
	if r.Requests == 0 {
		if lastErr != nil {
			return r, fmt.Errorf("no request completed: %v", lastErr)
		}
		return r, errors.New("no request completed")
	}
	r.RPS = float64(r.Requests) / elapsed.Seconds()
	for k, v := range latencyPercentiles(all, 50, 75, 90, 99) {
		r.Latency[k] = v
	}
	return r, nil
}

// latencyPercentiles returns the nearest-rank percentiles of lat in
// microseconds, keyed like wrk's ("50", "99"). It sorts lat.
func latencyPercentiles(lat []time.Duration, ps ...int) map[string]float64 {
	out := map[string]float64{}
	if len(lat) == 0 {
		return out
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	for _, p := range ps {
		// nearest rank: the smallest value with at least p% at or below it
		rank := (p*len(lat) + 99) / 100
		rank = max(rank, 1)
		out[strconv.Itoa(p)] = float64(lat[rank-1].Nanoseconds()) / 1e3
	}
	return out
}

// mtlsproxyMITMConfig is mtlsproxy's config file for the mitm row: one
// route for the upstream with connect: mitm, the identity and trust of the
// other rows, and the local CA made by `mtlsproxy ca init`.
func mtlsproxyMITMConfig(f files, caDir string, port, adminPort, upstreamPort int) string {
	q := strconv.Quote
	return fmt.Sprintf(`# written by mtlsbench
listen: 127.0.0.1:%d
admin: 127.0.0.1:%d
resolve:
  - %s:%d:127.0.0.1
mitm_ca: {cert: %s, key: %s}
identities:
  bench: {cert: %s, key: %s}
trust:
  bench: {ca_files: [%s]}
routes:
  - host: %s
    identity: bench
    trust: bench
    connect: mitm
`, port, adminPort, upstreamHost, upstreamPort, q(filepath.Join(caDir, "ca.crt")), q(filepath.Join(caDir, "ca.key")),
		q(f.ClientCert), q(f.ClientKey), q(f.CA), upstreamHost)
}

// mitmproxyArgs run mitmdump as a regular (forward) proxy that presents
// the client certificate upstream and verifies the upstream against the
// harness's CA, with its local CA in confdir, logging only errors.
func mitmproxyArgs(f files, confDir string, port int) []string {
	return []string{
		"--listen-host", "127.0.0.1", "--listen-port", strconv.Itoa(port),
		"--set", "confdir=" + confDir,
		"--set", "client_certs=" + f.ClientPEM,
		"--set", "ssl_verify_upstream_trusted_ca=" + f.CA,
		"--set", "termlog_verbosity=error",
		"--set", "flow_detail=0",
	}
}

// writeMitmproxyCA makes an unconstrained CA for mitmproxy and writes it
// as confDir/mitmproxy-ca.pem (certificate and key in one file, as
// mitmproxy wants). It is unconstrained because mitmproxy copies the
// upstream certificate's names, including IP 127.0.0.1, into its leaves,
// which the name constraints of `mtlsproxy ca init` forbid.
func writeMitmproxyCA(confDir string) (*x509.CertPool, error) {
	ca, err := pki.NewCA("mtlsbench mitmproxy CA")
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	data := append(append([]byte{}, ca.CertPEM...), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
	if err := os.WriteFile(filepath.Join(confDir, "mitmproxy-ca.pem"), data, 0o600); err != nil {
		return nil, err
	}
	return ca.Pool(), nil
}

// mitmCommand prepares a mitm row and returns its command line, and sets
// rp.mitm to how clients reach the upstream through it.
func (b *bench) mitmCommand(rp *runningProxy, bin, dir string, adminPort int) (cmdArgs []string, err error) {
	switch baseName(rp.Name) {
	case "mtlsproxy-mitm":
		caDir := filepath.Join(dir, "ca")
		cmd := exec.Command(bin, "ca", "init", "--out", caDir, "--permit", upstreamHost)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mtlsproxy ca init: %v: %s", err, strings.TrimSpace(string(out)))
		}
		caPEM, err := os.ReadFile(filepath.Join(caDir, "ca.crt"))
		if err != nil {
			return nil, err
		}
		rp.AdminPort = adminPort
		if rp.Config, err = writeFile(dir, "config.yaml", mtlsproxyMITMConfig(b.files, caDir, rp.Port, adminPort, b.upstreamPort)); err != nil {
			return nil, err
		}
		// The route is for api.internal, so the client asks for it by name;
		// mtlsproxy resolves it with resolve:.
		target := fmt.Sprintf("%s:%d", upstreamHost, b.upstreamPort)
		rp.mitm = &mitmTarget{Proxy: "127.0.0.1:" + strconv.Itoa(rp.Port), Connect: target, ServerName: upstreamHost,
			Host: target, Roots: poolFromPEM(caPEM)}
		return []string{bin, "run", "--config", rp.Config}, nil
	case "mitmproxy":
		confDir := filepath.Join(dir, "conf")
		if err := os.Mkdir(confDir, 0o700); err != nil {
			return nil, err
		}
		roots, err := writeMitmproxyCA(confDir)
		if err != nil {
			return nil, err
		}
		// mitmproxy resolves the CONNECT host itself and cannot be told
		// that api.internal is 127.0.0.1, so the client connects to the
		// address and sends api.internal in SNI; mitmproxy sends that SNI
		// upstream and verifies the upstream certificate for it.
		rp.mitm = &mitmTarget{Proxy: "127.0.0.1:" + strconv.Itoa(rp.Port),
			Connect: "127.0.0.1:" + strconv.Itoa(b.upstreamPort), ServerName: upstreamHost,
			Host: fmt.Sprintf("%s:%d", upstreamHost, b.upstreamPort), Roots: roots}
		return append([]string{bin}, mitmproxyArgs(b.files, confDir, rp.Port)...), nil
	}
	return nil, fmt.Errorf("no way to start %s", rp.Name)
}
