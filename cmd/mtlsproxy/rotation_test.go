package main

// Rotation tests: "mtlsproxy run" in-process, its client identity swapped
// under load through a Kubernetes-style secret directory, broken swaps that
// must leave the previous identity in use, SIGHUP when no file event is
// seen, a trust bundle swap, and start-up errors for bad identity files.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"software.sslmate.com/src/go-pkcs12"
)

// rottProxy is "mtlsproxy run" started in-process, with the address of
// every listener it reported.
type rottProxy = inProcessRun

// rottStart runs "mtlsproxy run args..." until the test ends and waits
// until each listener in names is up.
func rottStart(t *testing.T, names []string, args ...string) *rottProxy {
	t.Helper()
	return startRunUntil(t, allOf(names), args...)
}

// rottUpstream is an httptest mTLS server that answers with the common name
// of the client certificate it verified. Its own certificate can be
// swapped.
type rottUpstream struct {
	srv  *httptest.Server
	port string
	cert atomic.Pointer[tls.Certificate]
	// h2 counts requests that arrived over HTTP/2.
	h2 atomic.Int64
}

// rottNewUpstream starts an upstream presenting set's server certificate
// and requiring a client certificate from set's CA. With fresh, every
// request is a new connection with a full handshake (no keep-alive, no
// session tickets), so a changed server certificate is verified at once.
// With h2 it offers HTTP/2 as well as HTTP/1.1.
func rottNewUpstream(t *testing.T, set *pkitest.Set, fresh, h2 bool) *rottUpstream {
	t.Helper()
	u := &rottUpstream{}
	c := set.Server.TLSCertificate()
	u.cert.Store(&c)
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate", http.StatusForbidden)
			return
		}
		if r.ProtoMajor == 2 {
			u.h2.Add(1)
		}
		fmt.Fprint(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	u.srv.TLS = &tls.Config{
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return u.cert.Load(), nil },
		ClientCAs:              set.CA.Pool(),
		ClientAuth:             tls.RequireAndVerifyClientCert,
		MinVersion:             tls.VersionTLS12,
		SessionTicketsDisabled: fresh,
	}
	u.srv.Config.SetKeepAlivesEnabled(!fresh)
	// Refused handshakes are part of the tests, not news.
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.srv.EnableHTTP2 = h2
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	_, u.port, _ = net.SplitHostPort(u.srv.Listener.Addr().String())
	return u
}

// rottArgs are the run flags for a forward route to api.internal at the
// upstream, with an admin listener and no periodic re-read: only the
// watcher and SIGHUP reload.
func rottArgs(u *rottUpstream, cert, key, caFile string) []string {
	return []string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--cert", cert, "--key", key,
		"--cacert", caFile, "--allow", "api.internal", "--resolve", "api.internal:" + u.port + ":127.0.0.1",
		"--reload-interval", "0"}
}

// rottClient sends requests through the proxy at addr.
func rottClient(addr string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr}), MaxIdleConnsPerHost: 8},
		Timeout:   10 * time.Second,
	}
}

// rottGet sends one request and returns the status and body, or an error
// for a transport failure.
func rottGet(c *http.Client, target string) (int, string, error) {
	resp, err := c.Get(target)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// rottWaitCN sends requests until the upstream sees cn, for up to 2s.
func rottWaitCN(t *testing.T, c *http.Client, target, cn, what string) {
	t.Helper()
	var status int
	var body string
	var err error
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if status, body, err = rottGet(c, target); err == nil && status == http.StatusOK && body == cn {
			return
		}
	}
	t.Fatalf("%s: after 2s the upstream sees %d %q (%v); want client certificate %q", what, status, body, err, cn)
}

// rottSecret is a directory laid out as the kubelet lays out a mounted
// secret: tls.crt and tls.key are symlinks through "..data", itself a
// symlink to a timestamped directory that each update replaces.
type rottSecret struct {
	dir string
	gen int
}

func rottNewSecret(t *testing.T, certPEM, keyPEM []byte) *rottSecret {
	t.Helper()
	s := &rottSecret{dir: t.TempDir()}
	s.swap(t, certPEM, keyPEM)
	for _, name := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(s.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *rottSecret) cert() string { return filepath.Join(s.dir, "tls.crt") }
func (s *rottSecret) key() string  { return filepath.Join(s.dir, "tls.key") }

// swap publishes a new version as the kubelet's atomic writer does: a new
// data directory, a "..data_tmp" symlink to it renamed over "..data", then
// the old directory removed.
func (s *rottSecret) swap(t *testing.T, certPEM, keyPEM []byte) {
	t.Helper()
	s.gen++
	data := fmt.Sprintf("..2026_01_02_15_04_05.%06d", s.gen)
	if err := os.Mkdir(filepath.Join(s.dir, data), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(s.dir, data, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := os.Readlink(filepath.Join(s.dir, "..data"))
	tmp := filepath.Join(s.dir, "..data_tmp")
	if err := os.Symlink(data, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(s.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// rottMetric reads one sample from the admin listener's /metrics: the
// series of family name whose labels include every label in want.
func rottMetric(t *testing.T, admin, name string, want ...string) float64 {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	status, body, err := rottGet(c, "http://"+admin+"/metrics")
	if err != nil || status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", status, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		for _, l := range want {
			if !strings.Contains(series, l) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		return v
	}
	t.Fatalf("/metrics has no series %s%v", name, want)
	return 0
}

// rottWaitMetric waits up to 3s for a sample to reach want.
func rottWaitMetric(t *testing.T, admin string, want float64, name string, labels ...string) {
	t.Helper()
	var v float64
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if v = rottMetric(t, admin, name, labels...); v == want {
			return
		}
	}
	t.Fatalf("%s%v = %v after 3s; want %v", name, labels, v, want)
}

// rottLoad keeps requests flowing through the proxy from several
// goroutines and records every outcome.
type rottLoad struct {
	mu       sync.Mutex
	total    int
	failures []string
	seen     []rottSeen
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// rottSeen is the client certificate the upstream reported for a request
// sent at at.
type rottSeen struct {
	at time.Time
	cn string
}

func rottStartLoad(c *http.Client, target string, workers int) *rottLoad {
	l := &rottLoad{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				sent := time.Now()
				status, body, err := rottGet(c, target)
				l.mu.Lock()
				l.total++
				switch {
				case err != nil:
					l.failures = append(l.failures, err.Error())
				case status != http.StatusOK:
					l.failures = append(l.failures, fmt.Sprintf("%d %q", status, body))
				default:
					l.seen = append(l.seen, rottSeen{sent, body})
				}
				l.mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		}()
	}
	return l
}

// finish stops the load and waits for requests in flight; it may be
// called again.
func (l *rottLoad) finish() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// rottPEM is a certificate and key in PEM.
type rottPEM struct{ cert, key []byte }

// TestRotationUnderLoad swaps the client identity through a
// Kubernetes-style secret while four clients keep sending requests, with
// broken updates in between that must be refused without a failed request.
// Over HTTP/2 the one multiplexed upstream connection is never idle under
// load, so closing idle connections alone would never rotate it.
func TestRotationUnderLoad(t *testing.T) {
	t.Run("http2 upstream", func(t *testing.T) { rottRotate(t, true, 20) })
	t.Run("http1.1 upstream", func(t *testing.T) { rottRotate(t, false, 8) })
}

// rottRotate makes swaps good updates, with a broken one before every
// fourth, and checks every request of the load and every reload counted.
func rottRotate(t *testing.T, h2 bool, swaps int) {
	set := pkitest.New(t)
	up := rottNewUpstream(t, set, false, h2)
	issue := func(cn string) *pki.Leaf {
		return pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: cn, Client: true})
	}
	first := issue("rott-00")
	sec := rottNewSecret(t, first.CertPEM, first.KeyPEM)
	p := rottStart(t, []string{"listen", "admin"}, rottArgs(up, sec.cert(), sec.key(), set.CAFile)...)
	admin := p.addr("admin")
	target := "http://api.internal:" + up.port + "/"
	probe := rottClient(p.addr("listen"))
	rottWaitCN(t, probe, target, "rott-00", "at start")

	load := rottStartLoad(rottClient(p.addr("listen")), target, 4)
	defer load.finish()

	// broken are updates that must fail to load: each keeps the identity
	// before it in use.
	other := issue("rott-other")
	broken := []struct {
		name string
		pem  func(next *pki.Leaf) rottPEM
	}{
		{"key of another certificate", func(next *pki.Leaf) rottPEM { return rottPEM{next.CertPEM, other.KeyPEM} }},
		{"garbage certificate", func(next *pki.Leaf) rottPEM { return rottPEM{[]byte("not a certificate\n"), next.KeyPEM} }},
		{"truncated key", func(next *pki.Leaf) rottPEM { return rottPEM{next.CertPEM, next.KeyPEM[:len(next.KeyPEM)/2]} }},
		{"empty files", func(*pki.Leaf) rottPEM { return rottPEM{nil, nil} }},
		{"certificate without key", func(next *pki.Leaf) rottPEM { return rottPEM{next.CertPEM, next.CertPEM} }},
	}
	var nBroken int
	confirmed := make([]time.Time, swaps+1) // when the upstream first saw rott-i
	confirmed[0] = time.Now()
	var last *pki.Leaf
	for i := 1; i <= swaps; i++ {
		cn := fmt.Sprintf("rott-%02d", i)
		next := issue(cn)
		if i%4 == 3 {
			b := broken[nBroken%len(broken)]
			nBroken++
			pems := b.pem(next)
			sec.swap(t, pems.cert, pems.key)
			rottWaitMetric(t, admin, float64(nBroken), "mtlsproxy_reloads_total", `identity="default"`, `result="error"`)
			prev := fmt.Sprintf("rott-%02d", i-1)
			for range 5 {
				if status, body, err := rottGet(probe, target); err != nil || status != http.StatusOK || body != prev {
					t.Errorf("after a broken update (%s): upstream sees %d %q (%v); want the previous identity %q", b.name, status, body, err, prev)
					break
				}
			}
		}
		sec.swap(t, next.CertPEM, next.KeyPEM)
		rottWaitCN(t, probe, target, cn, "swap "+strconv.Itoa(i))
		confirmed[i] = time.Now()
		last = next
	}
	load.finish()

	load.mu.Lock()
	defer load.mu.Unlock()
	if len(load.failures) > 0 {
		t.Errorf("%d of %d requests failed during rotation; first: %s", len(load.failures), load.total, strings.Join(load.failures[:min(5, len(load.failures))], "; "))
	}
	if load.total < 100 {
		t.Errorf("only %d requests during rotation; want a continuous load", load.total)
	}
	// A request sent after a swap was confirmed must not present an older
	// identity. (The grace covers the moment between the identity's swap,
	// which a new connection can already show, and the route's refresh.)
	var stale int
	var example string
	for _, s := range load.seen {
		n, err := strconv.Atoi(strings.TrimPrefix(s.cn, "rott-"))
		if err != nil {
			t.Errorf("upstream saw client certificate %q; want one of rott-NN", s.cn)
			continue
		}
		for k := swaps; k > n; k-- {
			if s.at.After(confirmed[k].Add(200 * time.Millisecond)) {
				stale++
				if example == "" {
					example = fmt.Sprintf("%s sent %v after %s was in use", s.cn, s.at.Sub(confirmed[k]).Round(time.Millisecond), fmt.Sprintf("rott-%02d", k))
				}
				break
			}
		}
	}
	if h2 && up.h2.Load() == 0 {
		t.Error("no request reached the upstream over HTTP/2; want the proxy to negotiate it")
	}
	t.Logf("%d requests from 4 clients during %d swaps (%d broken updates refused); %d presented a replaced identity", load.total, swaps, nBroken, stale)
	if stale > 0 {
		t.Errorf("%d of %d requests presented a replaced client certificate, e.g. %s", stale, len(load.seen), example)
	}

	if v := rottMetric(t, admin, "mtlsproxy_reloads_total", `identity="default"`, `result="ok"`); v != float64(swaps) {
		t.Errorf(`mtlsproxy_reloads_total{result="ok"} = %v; want %d (one per good swap)`, v, swaps)
	}
	if v := rottMetric(t, admin, "mtlsproxy_reloads_total", `identity="default"`, `result="error"`); v != float64(nBroken) {
		t.Errorf(`mtlsproxy_reloads_total{result="error"} = %v; want %d (one per broken update)`, v, nBroken)
	}
	if v := rottMetric(t, admin, "mtlsproxy_certificate_expiry_timestamp_seconds", `identity="default"`); v != float64(last.Cert.NotAfter.Unix()) {
		t.Errorf("expiry timestamp = %v; want the last certificate's %d", v, last.Cert.NotAfter.Unix())
	}
	if n := strings.Count(p.stderr.String(), "identity reload failed"); n != nBroken {
		t.Errorf("log has %d failed reloads; want %d", n, nBroken)
	}
}

// TestRotationSIGHUP changes the key and certificate through hard links in
// another directory, which the directory watch does not see, so only SIGHUP
// can load them.
func TestRotationSIGHUP(t *testing.T) {
	set := pkitest.New(t)
	up := rottNewUpstream(t, set, false, false)
	dir, links := t.TempDir(), t.TempDir()
	cert, key, err := set.Client.WriteFiles(dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{cert, key} {
		if err := os.Link(f, filepath.Join(links, filepath.Base(f))); err != nil {
			t.Skipf("hard links unsupported here: %v", err)
		}
	}
	p := rottStart(t, []string{"listen", "admin"}, rottArgs(up, cert, key, set.CAFile)...)
	if log := p.stderr.String(); !strings.Contains(log, "readable by group or others") || !strings.Contains(log, key+" (mode 0640)") {
		t.Errorf("start-up log lacks the warning about %s (mode 0640):\n%s", key, log)
	}
	admin := p.addr("admin")
	c := rottClient(p.addr("listen"))
	target := "http://api.internal:" + up.port + "/"
	rottWaitCN(t, c, target, "test-client", "at start")

	renewed := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "renewed-by-sighup", Client: true})
	for f, b := range map[string][]byte{"client.crt": renewed.CertPEM, "client.key": renewed.KeyPEM} {
		if err := os.WriteFile(filepath.Join(links, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(700 * time.Millisecond) // well past the watcher's 250ms debounce
	if v := rottMetric(t, admin, "mtlsproxy_reloads_total", `identity="default"`, `result="ok"`); v != 0 {
		t.Fatalf("reloads_total ok = %v before SIGHUP; want 0 (the watcher should not see writes through another directory)", v)
	}
	if status, body, err := rottGet(c, target); err != nil || status != http.StatusOK || body != "test-client" {
		t.Fatalf("before SIGHUP: upstream sees %d %q (%v); want test-client still", status, body, err)
	}
	// The proxy has signal.Notify for SIGHUP, so the test process survives.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	rottWaitMetric(t, admin, 1, "mtlsproxy_reloads_total", `identity="default"`, `result="ok"`)
	rottWaitCN(t, c, target, "renewed-by-sighup", "after SIGHUP")
	if !strings.Contains(p.stderr.String(), `"reason":"SIGHUP"`) {
		t.Errorf("log does not give SIGHUP as the reload's reason:\n%s", p.stderr)
	}
}

// TestRotationTrustBundle moves the upstream to a certificate from a new CA
// and the proxy's CA file to that CA.
func TestRotationTrustBundle(t *testing.T) {
	set := pkitest.New(t)
	up := rottNewUpstream(t, set, true, false)
	caDir := t.TempDir()
	caFile := filepath.Join(caDir, "ca.crt")
	replace := func(b []byte) {
		t.Helper()
		tmp := filepath.Join(caDir, "ca.crt.tmp")
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, caFile); err != nil {
			t.Fatal(err)
		}
	}
	replace(set.CA.CertPEM)
	p := rottStart(t, []string{"listen", "admin"}, rottArgs(up, set.ClientCert, set.ClientKey, caFile)...)
	c := rottClient(p.addr("listen"))
	target := "http://api.internal:" + up.port + "/"
	rottWaitCN(t, c, target, "test-client", "at start")

	newCA, err := pki.NewCA("rotated CA")
	if err != nil {
		t.Fatal(err)
	}
	srv := pkitest.Issue(t, newCA, pki.LeafOptions{CommonName: "api.internal", DNSNames: pkitest.ServerNames, Server: true})
	sc := srv.TLSCertificate()
	up.cert.Store(&sc)
	if status, body, err := rottGet(c, target); err == nil && status == http.StatusOK {
		t.Fatalf("upstream with a certificate from an unknown CA: %d %q; want the proxy to refuse it", status, body)
	}

	// A broken bundle is refused and the old CAs stay.
	replace([]byte("not a certificate\n"))
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(p.stderr.String(), "trust bundle reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no failed trust reload logged after a broken CA file:\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	up.cert.Store(func() *tls.Certificate { c := set.Server.TLSCertificate(); return &c }())
	if status, body, err := rottGet(c, target); err != nil || status != http.StatusOK {
		t.Fatalf("after a broken CA file: %d %q (%v); want the previous CA still trusted", status, body, err)
	}

	up.cert.Store(&sc)
	replace(newCA.CertPEM)
	rottWaitCN(t, c, target, "test-client", "after the CA file names the new CA")
	if !strings.Contains(p.stderr.String(), "trust bundle reloaded") {
		t.Errorf("log lacks the trust bundle reload:\n%s", p.stderr)
	}
	// The old CA is no longer trusted.
	up.cert.Store(func() *tls.Certificate { c := set.Server.TLSCertificate(); return &c }())
	if status, body, err := rottGet(c, target); err == nil && status == http.StatusOK {
		t.Errorf("upstream with a certificate from the replaced CA: %d %q; want the proxy to refuse it", status, body)
	}
}

// TestRotationStartupErrors checks that run refuses bad identity files at
// start-up and says why.
func TestRotationStartupErrors(t *testing.T) {
	set := pkitest.New(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		t.Helper()
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	p12, err := pkcs12.Modern.Encode(set.Client.Key, set.Client.Cert, []*x509.Certificate{set.CA.Cert}, "right password")
	if err != nil {
		t.Fatal(err)
	}
	p12File := write("client.p12", p12)
	right, wrong := write("right.pass", []byte("right password\n")), write("wrong.pass", []byte("wrong password\n"))
	other := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "other", Client: true})
	otherKey := write("other.key", other.KeyPEM)
	common := []string{"--listen", "127.0.0.1:0", "--allow", "api.internal"}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"pkcs12 wrong password", []string{"--pkcs12", p12File, "--pkcs12-pass-file", wrong}, []string{"--pkcs12", "wrong password", wrong}},
		{"pkcs12 without password file", []string{"--pkcs12", p12File}, []string{"--pkcs12", "needs a password"}},
		{"key of another certificate", []string{"--cert", set.ClientCert, "--key", otherKey}, []string{"--cert/--key", "does not match certificate", otherKey}},
		{"missing key file", []string{"--cert", set.ClientCert, "--key", filepath.Join(dir, "nope.key")}, []string{"--key: open ", "nope.key", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := runOnce(nil, append(append([]string{"run"}, common...), tt.args...)...)
			if err == nil {
				t.Fatalf("run %v started; want an error", tt.args)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("run %v: error %q lacks %q", tt.args, err, w)
				}
			}
			if strings.Contains(stderr, "mtlsproxy started") {
				t.Errorf("run %v logged a start:\n%s", tt.args, stderr)
			}
		})
	}
	// The right password starts it (so the failures above are about the
	// password, not the bundle).
	rp := rottStart(t, []string{"listen"}, append(common, "--pkcs12", p12File, "--pkcs12-pass-file", right)...)
	if !strings.Contains(rp.stderr.String(), `"subject":"CN=test-client`) {
		t.Errorf("start-up log lacks the PKCS#12 identity's subject:\n%s", rp.stderr)
	}
}
