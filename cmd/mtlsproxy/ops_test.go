package main

// Operations tests: the admin listener (/healthz, /readyz, /metrics,
// /loglevel), the health subcommand, upstream failures as a client and a
// scrape see them, and SIGHUP reloads, all against "mtlsproxy run" started
// in-process.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// opstProxy is "mtlsproxy run" started in-process, with the address of
// every listener it reported.
type opstProxy = inProcessRun

// opstStart runs "mtlsproxy run args..." until the test ends and waits
// until each listener in names has reported its address.
func opstStart(t *testing.T, names []string, args ...string) *opstProxy {
	t.Helper()
	return startRunUntil(t, allOf(names), args...)
}

// opstResumedHeader is set by opstUpstream's default handler when the
// connection resumed a TLS session: the client certificate it reports is
// then the one of the original handshake.
const opstResumedHeader = "X-Opst-Resumed"

// opstUpstream is an httptest mTLS server that answers with the common
// name of the client certificate it verified, and counts connections.
type opstUpstream struct {
	port  string
	conns atomic.Int64
}

func opstNewUpstream(t testing.TB, set *pkitest.Set, h http.HandlerFunc) *opstUpstream {
	t.Helper()
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
				http.Error(w, "no client certificate", http.StatusForbidden)
				return
			}
			if r.TLS.DidResume {
				w.Header().Set(opstResumedHeader, "true")
			}
			fmt.Fprint(w, r.TLS.PeerCertificates[0].Subject.CommonName)
		}
	}
	u := &opstUpstream{}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = set.ServerTLS()
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, u.port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return u
}

// opstClient sends requests through the proxy at addr.
func opstClient(addr string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: addr})},
		Timeout:   15 * time.Second,
	}
}

type opstResponse struct {
	status int
	header http.Header
	body   string
}

func opstGet(t testing.TB, c *http.Client, target string) opstResponse {
	t.Helper()
	resp, err := c.Get(target)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", target, err)
	}
	return opstResponse{resp.StatusCode, resp.Header, string(b)}
}

// opstAdminGet asks the admin listener directly, never through a proxy.
func opstAdminGet(t testing.TB, addr, path string) opstResponse {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	return opstGet(t, c, "http://"+addr+path)
}

func opstAdminPut(t testing.TB, addr, path, body string) opstResponse {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return opstResponse{resp.StatusCode, resp.Header, string(b)}
}

// opstScrape fetches /metrics and parses it as a Prometheus scraper would.
func opstScrape(t testing.TB, adminAddr string) map[string]*dto.MetricFamily {
	t.Helper()
	r := opstAdminGet(t, adminAddr, "/metrics")
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics = %d; want 200\n%s", r.status, r.body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(r.body))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v\n%s", err, r.body)
	}
	return mfs
}

// opstValue is the value of the series of family name whose labels include
// labels: a counter's or gauge's value, a histogram's sample count. ok is
// false if there is no such series.
func opstValue(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) (v float64, ok bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, want := range labels {
			if got, ok := have[k]; !ok || got != want {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// opstWaitMetric waits up to 5s for a series to reach want: metrics are
// recorded after the response has gone out, so a client can be faster.
func opstWaitMetric(t testing.TB, adminAddr, name string, labels map[string]string, want float64) map[string]*dto.MetricFamily {
	t.Helper()
	var mfs map[string]*dto.MetricFamily
	deadline := time.Now().Add(5 * time.Second)
	for {
		mfs = opstScrape(t, adminAddr)
		if v, ok := opstValue(mfs, name, labels); ok && v == want {
			return mfs
		}
		if time.Now().After(deadline) {
			v, ok := opstValue(mfs, name, labels)
			t.Fatalf("%s%v = %v (present %v); want %v", name, labels, v, ok, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// opstCheckMetric fails the test unless the series exists with value want.
func opstCheckMetric(t testing.TB, mfs map[string]*dto.MetricFamily, name string, labels map[string]string, want float64) {
	t.Helper()
	v, ok := opstValue(mfs, name, labels)
	if !ok {
		t.Errorf("no series %s%v", name, labels)
		return
	}
	if v != want {
		t.Errorf("%s%v = %v; want %v", name, labels, v, want)
	}
}

// opstForwardArgs are the run flags for one forward route to api.internal
// at 127.0.0.1:port, with an admin listener.
func opstForwardArgs(cert, key, caFile string, ports ...string) []string {
	args := []string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--cert", cert, "--key", key, "--cacert", caFile, "--allow", "api.internal"}
	for _, p := range ports {
		args = append(args, "--resolve", "api.internal:"+p+":127.0.0.1")
	}
	return args
}

func TestOpsAdminAndMetrics(t *testing.T) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	p := opstStart(t, []string{"listen", "admin"}, opstForwardArgs(set.ClientCert, set.ClientKey, set.CAFile, up.port)...)
	admin := p.addrs["admin"]
	if admin == p.addrs["listen"] {
		t.Fatalf("admin and proxy listeners share %s", admin)
	}

	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ready\n"} {
		if r := opstAdminGet(t, admin, path); r.status != http.StatusOK || r.body != want {
			t.Errorf("GET %s = %d %q; want 200 %q", path, r.status, r.body, want)
		}
	}
	// The admin listener is not a proxy: it must not forward anything.
	if r := opstGet(t, opstClient(admin), "http://api.internal:"+up.port+"/"); r.status != http.StatusNotFound {
		t.Errorf("proxy request sent to the admin listener = %d %q; want 404", r.status, r.body)
	}

	c := opstClient(p.addrs["listen"])
	for i := range 3 {
		r := opstGet(t, c, fmt.Sprintf("http://api.internal:%s/ok/%d", up.port, i))
		if r.status != http.StatusOK || r.body != "test-client" {
			t.Fatalf("request %d = %d %q; want 200 %q", i, r.status, r.body, "test-client")
		}
	}
	if r := opstGet(t, c, "http://elsewhere.internal:"+up.port+"/"); r.status != http.StatusForbidden {
		t.Fatalf("unlisted host = %d %q; want 403", r.status, r.body)
	}

	mfs := opstWaitMetric(t, admin, "mtlsproxy_requests_total", map[string]string{"route": "forward", "code": "200"}, 3)
	mfs = opstWaitMetric(t, admin, "mtlsproxy_requests_total", map[string]string{"route": "", "code": "403"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_requests_total", map[string]string{"route": "forward", "code": "200"}, 3)
	opstCheckMetric(t, mfs, "mtlsproxy_errors_total", map[string]string{"route": "", "error": "host-not-allowed"}, 1)
	if v, ok := opstValue(mfs, "mtlsproxy_errors_total", map[string]string{"route": "forward"}); ok {
		t.Errorf("mtlsproxy_errors_total has a forward series (%v) after successes only", v)
	}
	opstCheckMetric(t, mfs, "mtlsproxy_request_duration_seconds", map[string]string{"route": "forward"}, 3)
	if mf := mfs["mtlsproxy_request_duration_seconds"]; mf == nil || mf.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("mtlsproxy_request_duration_seconds is not a histogram: %v", mf)
	}
	ok, _ := opstValue(mfs, "mtlsproxy_upstream_handshakes_total", map[string]string{"route": "forward", "result": "ok"})
	// Three sequential requests share a pooled upstream connection; one
	// handshake per request would mean the pool is not working.
	if ok < 1 || ok > 2 {
		t.Errorf("upstream handshakes ok = %v for 3 sequential requests; want 1 (at most 2)", ok)
	}
	if n := up.conns.Load(); n < 1 || n > 2 {
		t.Errorf("upstream saw %d connections for 3 sequential requests; want 1 (at most 2)", n)
	}
	opstCheckMetric(t, mfs, "mtlsproxy_upstream_handshakes_total", map[string]string{"route": "forward", "result": "error"}, 0)
	opstCheckMetric(t, mfs, "mtlsproxy_certificate_expiry_timestamp_seconds", map[string]string{"identity": "default"},
		float64(set.Client.Cert.NotAfter.Unix()))
	opstCheckMetric(t, mfs, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "ok"}, 0)
	opstCheckMetric(t, mfs, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "error"}, 0)
	opstCheckMetric(t, mfs, "mtlsproxy_open_tunnels", nil, 0)
	// The test's client keeps its connection to the proxy open; the admin
	// listener's own connections are not counted.
	opstCheckMetric(t, mfs, "mtlsproxy_open_connections", nil, 1)
	if _, ok := mfs["go_goroutines"]; !ok {
		t.Error("/metrics lacks go_goroutines (Go collector)")
	}
	process := false
	for name := range mfs {
		process = process || strings.HasPrefix(name, "process_")
	}
	if !process {
		t.Error("/metrics lacks process_* (process collector)")
	}

	if r := opstAdminGet(t, admin, "/loglevel"); r.status != http.StatusOK || strings.TrimSpace(r.body) != `{"level":"info"}` {
		t.Errorf("GET /loglevel = %d %q; want 200 {\"level\":\"info\"}", r.status, r.body)
	}
	if r := opstAdminPut(t, admin, "/loglevel", `{"level":"debug"}`); r.status != http.StatusOK {
		t.Errorf("PUT /loglevel debug = %d %q; want 200", r.status, r.body)
	}
	if r := opstAdminGet(t, admin, "/loglevel"); strings.TrimSpace(r.body) != `{"level":"debug"}` {
		t.Errorf("GET /loglevel after PUT = %d %q; want {\"level\":\"debug\"}", r.status, r.body)
	}
}

// TestOpsLogLevelAtRunTime checks that PUT /loglevel debug changes what
// the running proxy logs, not only what GET /loglevel reports: a request
// made after it must produce debug lines, as one made with --log-level
// debug from the start does.
func TestOpsLogLevelAtRunTime(t *testing.T) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	countDebug := func(p *opstProxy) int { return strings.Count(p.stderr.String(), `"level":"debug"`) }
	request := func(p *opstProxy) {
		t.Helper()
		if r := opstGet(t, opstClient(p.addrs["listen"]), "http://api.internal:"+up.port+"/"); r.status != http.StatusOK {
			t.Fatalf("request = %d %q; want 200", r.status, r.body)
		}
	}

	// Reference: started at debug, a request logs debug lines.
	ref := opstStart(t, []string{"listen", "admin"}, append(opstForwardArgs(set.ClientCert, set.ClientKey, set.CAFile, up.port),
		"--log-level", "debug")...)
	before := countDebug(ref)
	request(ref)
	if !opstWaitFor(func() bool { return countDebug(ref) > before }) {
		t.Fatalf("started with --log-level debug, a request logs no debug line; this test cannot tell anything\n%s", ref.stderr)
	}

	p := opstStart(t, []string{"listen", "admin"}, opstForwardArgs(set.ClientCert, set.ClientKey, set.CAFile, up.port)...)
	if r := opstAdminPut(t, p.addrs["admin"], "/loglevel", `{"level":"debug"}`); r.status != http.StatusOK {
		t.Fatalf("PUT /loglevel debug = %d %q; want 200", r.status, r.body)
	}
	before = countDebug(p)
	request(p)
	if !opstWaitFor(func() bool { return countDebug(p) > before }) {
		t.Errorf("after PUT /loglevel debug, a request logs no debug line (with --log-level debug at start it does)\n%s", p.stderr)
	}
}

// opstWaitFor reports whether cond becomes true within 2s.
func opstWaitFor(cond func() bool) bool {
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func TestOpsHealthCommand(t *testing.T) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	p := opstStart(t, []string{"listen", "admin"}, opstForwardArgs(set.ClientCert, set.ClientKey, set.CAFile, up.port)...)

	stdout, stderr, err := runOnce(nil, "health", "--admin", p.addrs["admin"])
	if err != nil {
		t.Errorf("health --admin %s = %v; want nil\nstderr: %s", p.addrs["admin"], err, stderr)
	}
	if strings.TrimSpace(stdout) != "ready" {
		t.Errorf("health stdout = %q; want %q", stdout, "ready")
	}
	// MTLSPROXY_ADMIN is the default address.
	if _, _, err := runOnce(map[string]string{"MTLSPROXY_ADMIN": p.addrs["admin"]}, "health"); err != nil {
		t.Errorf("health with MTLSPROXY_ADMIN=%s = %v; want nil", p.addrs["admin"], err)
	}

	closed := opstClosedPort(t)
	start := time.Now()
	_, _, err = runOnce(nil, "health", "--admin", "127.0.0.1:"+closed, "--timeout", "1s")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("health against a closed port = %v (%T); want *exitError with code 1", err, err)
	}
	if !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), "127.0.0.1:"+closed) {
		t.Errorf("health error %q; want it to say that 127.0.0.1:%s does not answer", err, closed)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("health against a closed port took %v; want it bounded by --timeout 1s", d)
	}
}

// opstClosedPort returns a local TCP port nothing listens on.
func opstClosedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

func TestOpsExpiredIdentity(t *testing.T) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	expired := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "expired-client", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	cert, key, err := expired.WriteFiles(t.TempDir(), "expired")
	if err != nil {
		t.Fatal(err)
	}
	p := opstStart(t, []string{"listen", "admin"}, opstForwardArgs(cert, key, set.CAFile, up.port)...)
	admin := p.addrs["admin"]

	r := opstAdminGet(t, admin, "/readyz")
	if r.status != http.StatusServiceUnavailable || !strings.HasPrefix(r.body, "not ready: ") || !strings.Contains(r.body, `identity "default"`) {
		t.Errorf("GET /readyz with an expired identity = %d %q; want 503 naming identity \"default\"", r.status, r.body)
	}
	if r := opstAdminGet(t, admin, "/healthz"); r.status != http.StatusOK {
		t.Errorf("GET /healthz with an expired identity = %d; want 200 (alive, not ready)", r.status)
	}
	_, _, err = runOnce(nil, "health", "--admin", admin)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "default") {
		t.Errorf("health with an expired identity = %v; want *exitError code 1 saying 503 and naming the identity", err)
	}

	resp := opstGet(t, opstClient(p.addrs["listen"]), "http://api.internal:"+up.port+"/")
	if resp.status != http.StatusServiceUnavailable || resp.header.Get("X-Mtlsproxy-Error") != "identity-unavailable" {
		t.Errorf("request with an expired identity = %d %s %q; want 503 identity-unavailable",
			resp.status, resp.header.Get("X-Mtlsproxy-Error"), resp.body)
	}
	if n := up.conns.Load(); n != 0 {
		t.Errorf("upstream saw %d connections; an expired identity must not be presented", n)
	}
	mfs := opstWaitMetric(t, admin, "mtlsproxy_errors_total", map[string]string{"route": "forward", "error": "identity-unavailable"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_requests_total", map[string]string{"route": "forward", "code": "503"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_certificate_expiry_timestamp_seconds", map[string]string{"identity": "default"},
		float64(expired.Cert.NotAfter.Unix()))
}

func TestOpsUpstreamFailures(t *testing.T) {
	set := pkitest.New(t)
	refused := opstClosedPort(t)
	// silent accepts TCP connections and never says a word.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	t.Cleanup(func() {
		silent.Close()
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	})
	_, silentPort, _ := net.SplitHostPort(silent.Addr().String())

	args := append(opstForwardArgs(set.ClientCert, set.ClientKey, set.CAFile, refused, silentPort),
		"--tls-handshake-timeout", "300ms")
	p := opstStart(t, []string{"listen", "admin"}, args...)
	c := opstClient(p.addrs["listen"])

	for _, tt := range []struct {
		name   string
		port   string
		status int
		code   string
		// bound is not a speed assertion: with the default 10s dial timeout
		// and 300ms handshake timeout, a longer wait means the failure was
		// not detected for what it is.
		bound time.Duration
	}{
		{"refused", refused, http.StatusBadGateway, "upstream-connect", 2 * time.Second},
		{"handshake never completes", silentPort, http.StatusGatewayTimeout, "upstream-timeout", 5 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			r := opstGet(t, c, "http://api.internal:"+tt.port+"/")
			elapsed := time.Since(start)
			if r.status != tt.status || r.header.Get("X-Mtlsproxy-Error") != tt.code {
				t.Errorf("GET = %d %s %q; want %d %s", r.status, r.header.Get("X-Mtlsproxy-Error"), r.body, tt.status, tt.code)
			}
			if !strings.HasPrefix(r.body, "mtlsproxy: ") {
				t.Errorf("error body %q; want it to start with %q", r.body, "mtlsproxy: ")
			}
			if elapsed > tt.bound {
				t.Errorf("answered after %v; want within %v", elapsed, tt.bound)
			}
		})
	}
	mfs := opstWaitMetric(t, p.addrs["admin"], "mtlsproxy_errors_total", map[string]string{"route": "forward", "error": "upstream-timeout"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_errors_total", map[string]string{"route": "forward", "error": "upstream-connect"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_requests_total", map[string]string{"route": "forward", "code": "502"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_requests_total", map[string]string{"route": "forward", "code": "504"}, 1)
	// A refused dial never reaches the handshake; the silent one times out in it.
	opstCheckMetric(t, mfs, "mtlsproxy_upstream_handshakes_total", map[string]string{"route": "forward", "result": "error"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_upstream_handshakes_total", map[string]string{"route": "forward", "result": "ok"}, 0)
	// Upstream failures are not readiness failures.
	if r := opstAdminGet(t, p.addrs["admin"], "/readyz"); r.status != http.StatusOK {
		t.Errorf("GET /readyz after upstream failures = %d %q; want 200", r.status, r.body)
	}
}

func TestOpsAdminListenNotLoopback(t *testing.T) {
	set := pkitest.New(t)
	base := []string{"run", "--listen", "127.0.0.1:0", "--cert", set.ClientCert, "--key", set.ClientKey,
		"--cacert", set.CAFile, "--allow", "api.internal"}
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0"} {
		_, stderr, err := runOnce(nil, append(base, "--admin", addr)...)
		if err == nil {
			t.Errorf("run --admin %s without --unsafe-listen started; want it refused", addr)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "--admin") || !strings.Contains(msg, "--unsafe-listen") {
			t.Errorf("run --admin %s: error %q; want it to name --admin and --unsafe-listen\nstderr: %s", addr, msg, stderr)
		}
	}
	// MTLSPROXY_ADMIN is checked the same way, and named.
	if _, _, err := runOnce(map[string]string{"MTLSPROXY_ADMIN": "0.0.0.0:0"}, base...); err == nil || !strings.Contains(err.Error(), "MTLSPROXY_ADMIN") {
		t.Errorf("MTLSPROXY_ADMIN=0.0.0.0:0 = %v; want it refused naming MTLSPROXY_ADMIN", err)
	}
}

// opstLinkedIdentity is set's client identity as symlinks (cert, key)
// into another directory (real). The proxy watches the directory of the
// paths it is given, so rewriting the files in real (renew) changes the
// identity without a change event: only SIGHUP or the timer reloads it.
type opstLinkedIdentity struct{ real, cert, key string }

func opstLinkIdentity(t testing.TB, set *pkitest.Set) opstLinkedIdentity {
	t.Helper()
	id := opstLinkedIdentity{real: t.TempDir()}
	linked := t.TempDir()
	realCert, realKey, err := set.Client.WriteFiles(id.real, "client")
	if err != nil {
		t.Fatal(err)
	}
	id.cert, id.key = filepath.Join(linked, "client.crt"), filepath.Join(linked, "client.key")
	for from, to := range map[string]string{realCert: id.cert, realKey: id.key} {
		if err := os.Symlink(from, to); err != nil {
			t.Skipf("cannot make symlinks here: %v", err)
		}
	}
	return id
}

// renew rewrites the real files with a new certificate named cn, and
// returns it.
func (id opstLinkedIdentity) renew(t testing.TB, set *pkitest.Set, cn string) *pki.Leaf {
	t.Helper()
	renewed := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: cn, Client: true})
	if _, _, err := renewed.WriteFiles(id.real, "client"); err != nil {
		t.Fatal(err)
	}
	return renewed
}

// TestOpsSIGHUPReload sends SIGHUP to the test process itself: the running
// proxy has signal.Notify for it. The test is not parallel, so no other
// proxy of this package is running (parallel tests start after it).
//
// The identity files are symlinks into another directory, and the files
// are rewritten there: the proxy watches the directory of the paths it was
// given, so it sees no change event, and with --reload-interval 0 SIGHUP is
// the only thing that can make it re-read them.
func TestOpsSIGHUPReload(t *testing.T) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	id := opstLinkIdentity(t, set)
	cert, key := id.cert, id.key
	args := append(opstForwardArgs(cert, key, set.CAFile, up.port), "--reload-interval", "0")
	p := opstStart(t, []string{"listen", "admin"}, args...)
	admin := p.addrs["admin"]
	c := opstClient(p.addrs["listen"])
	target := "http://api.internal:" + up.port + "/"
	if r := opstGet(t, c, target); r.body != "test-client" {
		t.Fatalf("before reload: upstream saw %q; want test-client", r.body)
	}

	renewed := id.renew(t, set, "renewed-client")
	// Without a signal nothing happens: the proxy cannot know. (Were it to
	// reload here, the test would not show that SIGHUP reloads.)
	time.Sleep(500 * time.Millisecond)
	mfs := opstScrape(t, admin)
	opstCheckMetric(t, mfs, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "ok"}, 0)
	opstCheckMetric(t, mfs, "mtlsproxy_certificate_expiry_timestamp_seconds", map[string]string{"identity": "default"},
		float64(set.Client.Cert.NotAfter.Unix()))
	opstHUP(t)
	mfs = opstWaitMetric(t, admin, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "ok"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "error"}, 0)
	opstCheckMetric(t, mfs, "mtlsproxy_certificate_expiry_timestamp_seconds", map[string]string{"identity": "default"},
		float64(renewed.Cert.NotAfter.Unix()))
	if !strings.Contains(p.stderr.String(), `"reason":"SIGHUP"`) {
		t.Errorf("log does not show a reload for SIGHUP:\n%s", p.stderr)
	}
	opstWaitSubject(t, c, target, "renewed-client")

	// A broken file is counted and the certificate in use stays: requests
	// succeed and the upstream sees what it saw before.
	prev := opstGet(t, c, target).body
	if err := os.WriteFile(filepath.Join(id.real, "client.crt"), []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opstHUP(t)
	mfs = opstWaitMetric(t, admin, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "error"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "ok"}, 1)
	opstCheckMetric(t, mfs, "mtlsproxy_certificate_expiry_timestamp_seconds", map[string]string{"identity": "default"},
		float64(renewed.Cert.NotAfter.Unix()))
	for i := range 3 {
		if r := opstGet(t, c, target); r.status != http.StatusOK || r.body != prev {
			t.Errorf("request %d after a failed reload = %d %q; want 200 %q", i, r.status, r.body, prev)
		}
	}
	if r := opstAdminGet(t, admin, "/readyz"); r.status != http.StatusOK {
		t.Errorf("GET /readyz after a failed reload = %d %q; want 200 (the old certificate is still valid)", r.status, r.body)
	}
	if !strings.Contains(p.stderr.String(), "identity reload failed") {
		t.Errorf("log lacks the failed reload:\n%s", p.stderr)
	}
}

// TestOpsFileChangeReload rewrites the identity files in place with no
// signal and the periodic re-read off: the directory watch alone must
// bring the new certificate into use.
func TestOpsFileChangeReload(t *testing.T) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	dir := t.TempDir()
	cert, key, err := set.Client.WriteFiles(dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	args := append(opstForwardArgs(cert, key, set.CAFile, up.port), "--reload-interval", "0")
	p := opstStart(t, []string{"listen", "admin"}, args...)
	c := opstClient(p.addrs["listen"])
	target := "http://api.internal:" + up.port + "/"
	if r := opstGet(t, c, target); r.body != "test-client" {
		t.Fatalf("before the change: upstream saw %q; want test-client", r.body)
	}
	renewed := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: "watched-client", Client: true})
	if _, _, err := renewed.WriteFiles(dir, "client"); err != nil {
		t.Fatal(err)
	}
	opstWaitMetric(t, p.addrs["admin"], "mtlsproxy_reloads_total", map[string]string{"identity": "default", "result": "ok"}, 1)
	opstWaitSubject(t, c, target, "watched-client")
	if !strings.Contains(p.stderr.String(), `"reason":"file change: `) {
		t.Errorf("log does not show a reload for a file change:\n%s", p.stderr)
	}
}

func opstHUP(t testing.TB) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
}

// opstWaitSubject sends requests until the upstream sees the client
// certificate cn, for up to 2s.
func opstWaitSubject(t testing.TB, c *http.Client, target, cn string) {
	t.Helper()
	var last opstResponse
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if last = opstGet(t, c, target); last.body == cn {
			return
		}
	}
	why := ""
	if last.header.Get(opstResumedHeader) != "" {
		why = " (the connection resumed a TLS session made with the old certificate: the session cache outlived the identity)"
	}
	t.Errorf("after reload: upstream sees %d %q%s; want the new certificate %q", last.status, last.body, why, cn)
}
