package proxy_test

// The adversarial corpus: raw request and response cases, run through the
// proxy in forward and gateway mode against a recording mTLS upstream
// that speaks raw bytes (internal/testutil), with raw clients. The
// invariants: the requests the upstream saw and the responses the clients
// got agree one to one; no response reaches a client it was not for; the
// proxy never forwards a request it answered itself, nor body bytes as a
// request. The cases are generated here and kept as files under
// testdata/http (go test -run TestCorpusFiles -corpus.update rewrites
// them), where fuzzers take them as seeds.

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/internal/testutil"
	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

var (
	corpusUpdate  = flag.Bool("corpus.update", false, "rewrite testdata/http from the case generators")
	corpusVerbose = flag.Bool("corpus.v", false, "log what each request case sent, saw and got, passing or not")
)

// corpusHost is the upstream's name in every case; the route resolves
// it, on port 443, to the recording upstream.
const corpusHost = "api.internal"

type corpusMode string

const (
	modeForward corpusMode = "forward" // absolute-form requests, HTTP_PROXY style
	modeGateway corpusMode = "gateway" // origin-form requests, Options.Upstream
)

var corpusModes = []corpusMode{modeForward, modeGateway}

// target is the request-target for path in mode.
func (m corpusMode) target(path string) string {
	if m == modeForward {
		return "http://" + corpusHost + path
	}
	return path
}

// corpusProxy serves a proxy in mode whose one route carries api.internal
// to the upstream on 127.0.0.1:port, the way the command serves it
// (proxy.Server in front of Go's server). It returns the listener
// address.
// corpusFastPath is whether the corpus runs with the HTTP/1.1
// accelerator: on unless MTLSPROXY_TEST_FAST_PATH=0 (CI runs both).
var corpusFastPath = os.Getenv("MTLSPROXY_TEST_FAST_PATH") != "0"

func corpusProxy(t testing.TB, set *pkitest.Set, mode corpusMode, port string, headerTimeout time.Duration) string {
	t.Helper()
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	hp, err := proxy.ParseHostPattern(corpusHost)
	if err != nil {
		t.Fatal(err)
	}
	if headerTimeout == 0 {
		headerTimeout = testutil.Wait
	}
	rt := proxy.NewRoute(proxy.RouteOptions{Name: "corpus", Hosts: []proxy.HostPattern{hp}, Identity: id,
		RootCAs: set.CA.Pool(), Resolve: proxy.Resolve{corpusHost + ":443": "127.0.0.1:" + port},
		Timeouts: proxy.Timeouts{Dial: testutil.Wait, TLSHandshake: testutil.Wait, ResponseHeader: headerTimeout},
		FastPath: corpusFastPath})
	var o proxy.Options
	if mode == modeGateway {
		o.Upstream, _ = url.Parse("https://" + corpusHost)
		o.UpstreamRoute = rt
	} else {
		o.Routes = []*proxy.Route{rt}
	}
	p, err := proxy.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &proxy.Server{Proxy: p, HTTP: &http.Server{Handler: p, ReadHeaderTimeout: testutil.Wait,
		IdleTimeout: 10 * time.Second, MaxHeaderBytes: 64 << 10, ErrorLog: log.New(io.Discard, "", 0)},
		Front: corpusFastPath}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		select {
		case <-done:
		case <-time.After(testutil.Wait):
			t.Errorf("Serve did not return after Close")
		}
		rt.CloseIdleConnections()
	})
	return ln.Addr().String()
}

// corpusClean is the upstream's answer to a request tagged tag: the tag
// in a header and in the body.
func corpusClean(tag string) []byte {
	body := "tag=" + tag
	return []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Tag: %s\r\nContent-Length: %d\r\n\r\n%s",
		tag, len(body), body))
}

// corpusParallel runs f(i) for i in [0, n) on up to width goroutines;
// f may call t.Run.
func corpusParallel(n, width int, f func(i int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for w := 0; w < width; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// --- files ---------------------------------------------------------------

// corpusDir is testdata/http at the repository root.
func corpusDir(sub string) string { return filepath.Join("..", "testdata", "http", sub) }

// corpusSync checks that dir holds exactly files (name to bytes), or
// rewrites it with -corpus.update. Cases with a NUL byte stay out of the
// files (git would take them for binary files); they run all the same.
func corpusSync(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		if bytes.IndexByte(b, 0) >= 0 {
			delete(files, name)
		}
	}
	if *corpusUpdate {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%v (run go test ./proxy -run TestCorpusFiles -corpus.update)", err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		seen[e.Name()] = true
		want, ok := files[e.Name()]
		if !ok {
			t.Errorf("%s/%s: no such case (stale file; run with -corpus.update)", dir, e.Name())
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s/%s differs from its generator (run with -corpus.update)", dir, e.Name())
		}
	}
	for name := range files {
		if !seen[name] {
			t.Errorf("%s/%s missing (run with -corpus.update)", dir, name)
		}
	}
}

// TestCorpusFiles keeps testdata/http in step with the generators.
func TestCorpusFiles(t *testing.T) {
	resp := map[string][]byte{}
	for _, c := range corpusResponseCases() {
		resp[c.name+".http"] = []byte(c.raw + c.overrun)
		if c.later != "" {
			resp[c.name+".later.http"] = []byte(c.later)
		}
	}
	corpusSync(t, corpusDir("response"), resp)
	req := map[string][]byte{}
	for _, c := range corpusRequestCases() {
		if _, dup := req[c.name+".http"]; dup {
			t.Errorf("two request cases named %s", c.name)
		}
		req[c.name+".http"] = []byte(c.build(modeForward.target))
	}
	corpusSync(t, corpusDir("request"), req)
}

// --- response framing ----------------------------------------------------

// corpusTagHole stands for the tag of the request a raw response
// answers; tags have its length, so lengths in the raw bytes hold.
const corpusTagHole = "XTAG0000"

var corpusTags atomic.Int64

// corpusTag is a new tag: "t" and seven digits.
func corpusTag() string { return fmt.Sprintf("t%07d", corpusTags.Add(1)) }

// corpusStale is a whole response that no request asked for. A client
// that receives the word "stale" got bytes that were not its answer.
func corpusStale() string {
	body := "stale-" + corpusTagHole + "-stale"
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Tag: stale-%s\r\nContent-Length: %d\r\n\r\n%s",
		corpusTagHole, len(body), body)
}

func corpusChunked(s string) string { return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(s), s) }

// respCase is an upstream answer to the first request of a case (A1);
// every other request gets corpusClean.
type respCase struct {
	name   string
	method string // A1's method; GET if empty
	// raw is written at once (after wait), then overrun, the bytes
	// beyond raw's framing: in the same write, or (the case's /own-record
	// variant) as a TLS record of its own. later comes 100 ms after.
	raw, overrun, later string
	wait                time.Duration
	close               bool // the upstream closes the connection after its answer
	// headerTimeout is the route's response-header timeout (default
	// testutil.Wait).
	headerTimeout time.Duration
	// concurrent sends B1 while A1 waits for its answer.
	concurrent bool
	// mustOwn: A1 must get its own 200 answer (not an error).
	mustOwn bool
	// keeps: the proxy may rightly keep the upstream connection, so the
	// case does not wait for it to end before B1.
	keeps bool
}

func corpusResponseCases() []respCase {
	tag := corpusTagHole
	body := "tag=" + tag
	stale := corpusStale()
	head := func(status string, fields ...string) string {
		return "HTTP/1.1 " + status + "\r\nContent-Type: text/plain\r\nX-Tag: " + tag + "\r\n" + strings.Join(append(fields, ""), "\r\n") + "\r\n"
	}
	clean := head("200 OK", "Content-Length: "+strconv.Itoa(len(body))) + body
	// padded is clean grown to exactly n bytes by a header.
	padded := func(n int) string {
		pad := n - len(clean) - len("X-Pad: \r\n")
		return head("200 OK", "X-Pad: "+strings.Repeat("p", pad), "Content-Length: "+strconv.Itoa(len(body))) + body
	}
	big := strings.Repeat("b", 20000)
	switching := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
	chunkedBody := corpusChunked(body)
	withCL := func(s string) string { return "Content-Length: " + strconv.Itoa(len(s)) }
	// pad171 is 171 bytes: the body by the invalid field's count (by which
	// it also runs up to the close), for which "stale" would be body.
	pad171 := body + strings.Repeat("z", 171-len(body))
	// bad171 is the same count of bytes with a response beyond the
	// valid Content-Length's 12.
	bad171 := body + stale
	bad171 += strings.Repeat("z", 171-len(bad171))
	return []respCase{
		{name: "head-with-body", method: "HEAD", raw: head("200 OK", withCL(stale)), overrun: stale},
		{name: "head-chunked-with-body", method: "HEAD", raw: head("200 OK", "Transfer-Encoding: chunked"), overrun: stale},
		{name: "204-with-body", raw: head("204 No Content"), overrun: stale},
		{name: "204-cl-with-body", raw: head("204 No Content", withCL(stale)), overrun: stale},
		{name: "304-with-body", raw: head("304 Not Modified", `ETag: "v1"`), overrun: stale},
		{name: "304-cl-with-body", raw: head("304 Not Modified", `ETag: "v1"`, withCL(stale)), overrun: stale},
		{name: "cl-shorter-than-sent", raw: clean, overrun: stale},
		{name: "cl-and-te-cl-short", raw: head("200 OK", "Content-Length: 5", "Transfer-Encoding: chunked") + chunkedBody, overrun: stale},
		{name: "te-and-cl-cl-long", raw: head("200 OK", "Transfer-Encoding: chunked", withCL(chunkedBody+stale)) + chunkedBody, overrun: stale},
		{name: "chunked-then-more", raw: head("200 OK", "Transfer-Encoding: chunked") + chunkedBody, overrun: stale},
		{name: "unsolicited-100ms-later", raw: clean, later: stale},
		{name: "beyond-4k-buffer", raw: padded(4096), overrun: stale},
		{name: "beyond-4k-body", raw: head("200 OK", withCL(body+big)) + body + big, overrun: stale},
		{name: "unsolicited-101-after", raw: clean, overrun: switching + stale},
		{name: "101-to-plain-get", raw: head("101 Switching Protocols", "Connection: Upgrade", "Upgrade: websocket"), overrun: stale},
		{name: "1xx-mix", raw: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + clean,
			mustOwn: true, keeps: true},
		{name: "1xx-with-cl", raw: "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n" + clean, keeps: true},
		{name: "1xx-after-final", raw: clean, overrun: "HTTP/1.1 100 Continue\r\n\r\n" + stale},
		{name: "cl-longer-then-close", raw: head("200 OK", "Content-Length: 100") + body, close: true},
		{name: "late", raw: clean, wait: 300 * time.Millisecond, concurrent: true, mustOwn: true, keeps: true},
		{name: "late-after-header-timeout", raw: clean, overrun: stale, wait: 700 * time.Millisecond, headerTimeout: 300 * time.Millisecond},
		{name: "name-with-space-cl", raw: head("200 OK", "Content-Length : 171") + pad171, close: true},
		{name: "name-with-space-and-cl", raw: head("200 OK", withCL(body), "Content-Length : 171") + bad171},
		{name: "two-cl-differ", raw: head("200 OK", withCL(body), withCL(body+stale)) + body, overrun: stale},
		{name: "bad-chunk-size", raw: head("200 OK", "Transfer-Encoding: chunked") + "zz\r\n" + body + "\r\n0\r\n\r\n", overrun: stale},
		{name: "bare-lf-head", raw: strings.ReplaceAll(clean, "\r\n", "\n"), keeps: true},
		{name: "obs-fold-then-more", raw: head("200 OK", "X-Fold: a", " b", withCL(body)) + body, overrun: stale},
	}
}

// corpusReq is a bodiless request for /tag.
func corpusReq(mode corpusMode, method, tag string) []byte {
	return []byte(method + " " + mode.target("/"+tag) + " HTTP/1.1\r\nHost: " + corpusHost + "\r\n\r\n")
}

// TestCorpusResponseFraming has the upstream answer A1, the first
// request on a connection, with each response case, then sends B1 from
// a second client connection (which the proxy may well send on the same
// pooled upstream connection), A2 on the first and B2 on the second:
// each client must only ever get answers the upstream produced for its
// own requests, and "Content-Length :" must never reach a client.
func TestCorpusResponseFraming(t *testing.T) {
	set := pkitest.New(t)
	cases := corpusResponseCases()
	type run struct {
		c       respCase
		mode    corpusMode
		variant string
	}
	var runs []run
	for _, m := range corpusModes {
		for _, c := range cases {
			if c.overrun == "" {
				runs = append(runs, run{c, m, ""})
				continue
			}
			runs = append(runs, run{c, m, "same-write"}, run{c, m, "own-record"})
		}
	}
	corpusParallel(len(runs), 8, func(i int) {
		r := runs[i]
		name := string(r.mode) + "/" + r.c.name
		if r.variant != "" {
			name += "/" + r.variant
		}
		t.Run(name, func(t *testing.T) { corpusRespRun(t, set, r.mode, r.c, r.variant == "own-record", true) })
	})
}

// corpusRespRun runs c. With strict, A1 must get an answer, even when the
// upstream's is unusable (a 502 then); otherwise the proxy may hang up
// on A1 instead.
func corpusRespRun(t *testing.T, set *pkitest.Set, mode corpusMode, c respCase, ownRecord, strict bool) {
	method := c.method
	if method == "" {
		method = "GET"
	}
	a1, b1, a2, b2 := corpusTag(), corpusTag(), corpusTag(), corpusTag()
	var answered atomic.Bool
	up := testutil.NewUpstream(t, set.ServerTLS(), func(r *testutil.UpRequest) testutil.Reply {
		tag := strings.TrimPrefix(r.Tag(), "/")
		if tag == a1 && answered.CompareAndSwap(false, true) {
			fill := func(s string) []byte { return []byte(strings.ReplaceAll(s, corpusTagHole, tag)) }
			rep := testutil.Reply{Raw: fill(c.raw + c.overrun), Wait: c.wait, Close: c.close}
			if ownRecord {
				rep.Raw, rep.Then = fill(c.raw), fill(c.overrun)
			}
			if c.later != "" {
				rep.Later, rep.LaterBy = fill(c.later), 100*time.Millisecond
			}
			return rep
		}
		return testutil.Reply{Raw: corpusClean(tag)}
	})
	addr := corpusProxy(t, set, mode, up.Port, c.headerTimeout)
	ca, cb := testutil.Dial(t, addr), testutil.Dial(t, addr)
	deadline := time.Now().Add(2 * testutil.Wait)

	// own checks that resp is tag's own answer, or (unless mustOwn) an
	// answer the proxy made itself; it reports what is wrong.
	own := func(who, tag, method string, resp *testutil.Response, err error, mustOwn bool) (ok bool) {
		t.Helper()
		if err != nil {
			if who == "A1" && !mustOwn && !strict && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Logf("A1 (%s): the proxy hung up without an answer: %v", tag, err)
				return true
			}
			t.Errorf("%s (%s): no response: %v", who, tag, err)
			return false
		}
		got := resp.Header.Get("X-Tag")
		switch {
		case got == tag:
			if want := "tag=" + tag; method != "HEAD" && resp.StatusCode == 200 &&
				!strings.HasPrefix(string(resp.Body), want) && (resp.BodyErr == nil || !strings.HasPrefix(want, string(resp.Body))) {
				t.Errorf("%s (%s): body %q; want its own", who, tag, resp.Body)
				return false
			}
			if mustOwn && (resp.StatusCode != 200 || resp.BodyErr != nil) {
				t.Errorf("%s (%s): %d, body error %v; want 200 and a whole body", who, tag, resp.StatusCode, resp.BodyErr)
				return false
			}
			return true
		case got != "":
			t.Errorf("%s (%s): got the answer to %s (%d %q): a response for another request", who, tag, got, resp.StatusCode, resp.Body)
			return false
		case mustOwn:
			t.Errorf("%s (%s): got %d %q (%s); want its own 200 answer", who, tag, resp.StatusCode, resp.Body,
				resp.Header.Get(proxy.ErrorHeader))
			return false
		case resp.StatusCode < 400:
			t.Errorf("%s (%s): got %d %q without the upstream's tag: not the upstream's answer, not an error", who, tag,
				resp.StatusCode, resp.Body)
			return false
		}
		return true
	}

	if err := ca.Send(corpusReq(mode, method, a1)); err != nil {
		t.Fatal(err)
	}
	if c.concurrent {
		if err := cb.Send(corpusReq(mode, "GET", b1)); err != nil {
			t.Fatal(err)
		}
	}
	ra1, err := ca.ReadResponse(method, deadline)
	own("A1", a1, method, ra1, err, c.mustOwn)
	if c.concurrent {
		rb1, err := cb.ReadResponse("GET", deadline)
		own("B1", b1, "GET", rb1, err, true)
	} else {
		// Give the proxy its chance to see that A1's connection is
		// spoilt: wait (bounded) for it to end. Unsolicited bytes come
		// 100 ms late, so wait at least that.
		settle := 300 * time.Millisecond
		var since <-chan time.Time
		if c.later != "" {
			since = time.After(100 * time.Millisecond)
			settle = 600 * time.Millisecond
		}
		if !c.keeps {
			conn := 0
			for _, r := range up.Requests() {
				if strings.TrimPrefix(r.Tag(), "/") == a1 {
					conn = r.Conn
				}
			}
			select {
			case <-up.Gone(conn):
			case <-time.After(settle):
			}
		}
		if since != nil {
			<-since
		}
		if err := cb.Send(corpusReq(mode, "GET", b1)); err != nil {
			t.Fatal(err)
		}
		rb1, err := cb.ReadResponse("GET", deadline)
		own("B1", b1, "GET", rb1, err, true)
	}
	if ra1 != nil && !ra1.Close && ra1.BodyErr == nil {
		proxyAnswer := ra1.Header.Get("X-Tag") == ""
		if err := ca.Send(corpusReq(mode, "GET", a2)); err != nil && !proxyAnswer {
			t.Errorf("A2: %v after a kept connection", err)
		} else if err == nil {
			ra2, err := ca.ReadResponse("GET", deadline)
			if !(proxyAnswer && err != nil) { // the proxy may close after its own error
				own("A2", a2, "GET", ra2, err, true)
			}
		}
	}
	if err := cb.Send(corpusReq(mode, "GET", b2)); err != nil {
		t.Errorf("B2: %v", err)
	} else {
		rb2, err := cb.ReadResponse("GET", deadline)
		own("B2", b2, "GET", rb2, err, true)
	}
	for who, cl := range map[string]*testutil.Client{"A": ca, "B": cb} {
		got := cl.Received()
		for _, bad := range []string{"stale", "Content-Length :"} {
			if i := bytes.Index(got, []byte(bad)); i >= 0 {
				t.Errorf("client %s received %q: %q", who, bad, got[max(0, i-80):min(len(got), i+40)])
			}
		}
	}
	counts := map[string]int{}
	var seen []string
	for _, r := range up.Requests() {
		tag := strings.TrimPrefix(r.Tag(), "/")
		counts[tag]++
		seen = append(seen, fmt.Sprintf("%s %s (conn %d #%d)", r.Method, r.Target, r.Conn, r.Seq))
		if r.Anomaly != "" {
			t.Errorf("upstream got %s %s with %s", r.Method, r.Target, r.Anomaly)
		}
	}
	for _, tag := range []string{b1, b2} {
		if counts[tag] != 1 {
			t.Errorf("upstream saw %s %d times; want once (saw %q)", tag, counts[tag], seen)
		}
	}
	for tag, n := range counts {
		if tag != a1 && tag != a2 && tag != b1 && tag != b2 {
			t.Errorf("upstream saw %s (%d times): no client sent it (saw %q)", tag, n, seen)
		}
	}
	if t.Failed() {
		t.Logf("upstream saw %q; A received %q; B received %q", seen, ca.Received(), cb.Received())
	}
}

// --- request corpus ------------------------------------------------------

// reqCase is a sequence of raw requests sent on one client connection.
// build renders it with tg giving the request-target for a path; the
// runner puts the case's own prefix in front of every path and sends a
// sentinel GET with Connection: close after it.
type reqCase struct {
	name  string
	build func(tg func(string) string) string
	// own: the case has requests without a path of its own (OPTIONS *),
	// so it runs against an upstream of its own.
	own bool
	// clte is the path of a request that carries both Content-Length and
	// Transfer-Encoding: if net/http reads it as chunked, the proxy must
	// answer it 400 and close, forwarding nothing from it on.
	clte string
	// lastPath, if set, is the path of the last request that may be
	// forwarded: nothing after it on the connection (HTTP/1.0 with
	// Transfer-Encoding: RFC 9112 section 6.1 says close).
	lastPath string
	// split, if > 0, sends the bytes in two writes split there; -1 sends
	// them a byte at a time.
	split int
	// hangs: the proxy rightly waits for bytes that never come (a body
	// longer than what is sent), so the case reads answers for a short
	// while only.
	hangs bool
}

// rq renders a request: method, path, protocol, header lines and body.
func rq(tg func(string) string, method, path, proto string, fields []string, body string) string {
	var b strings.Builder
	b.WriteString(method + " " + tg(path) + " " + proto + "\r\nHost: " + corpusHost + "\r\n")
	for _, f := range fields {
		b.WriteString(f + "\r\n")
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

func rget(tg func(string) string, path string, fields ...string) string {
	return rq(tg, "GET", path, "HTTP/1.1", fields, "")
}

// corpusName makes s usable in a file name.
func corpusName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		case r == ' ':
			b.WriteString("sp")
		case r == '\t':
			b.WriteString("tab")
		case r == ',':
			b.WriteString("comma")
		case r == ';':
			b.WriteString("semi")
		case r == '"':
			b.WriteString("quote")
		case r == '=':
			b.WriteString("eq")
		case r == '+':
			b.WriteString("plus")
		case r == '_':
			b.WriteString("us")
		default:
			fmt.Fprintf(&b, "x%02x", r)
		}
	}
	if b.Len() == 0 {
		return "empty"
	}
	return b.String()
}

func corpusRequestCases() []reqCase {
	var cs []reqCase
	add := func(c reqCase) { cs = append(cs, c) }

	// Transfer-Encoding obfuscations: every spelling of the field name
	// and value, alone and with a Content-Length before (CL.TE) or after
	// (TE.CL) it, each body built so that a reader going by the other
	// framing finds a smuggled request in it.
	teNames := []struct{ key, line string }{
		{"canon", "Transfer-Encoding"}, {"lower", "transfer-encoding"}, {"upper", "TRANSFER-ENCODING"},
		{"sp-colon", "Transfer-Encoding "}, {"tab-colon", "Transfer-Encoding\t"}, {"folded", "X-A: a\r\n Transfer-Encoding"},
		{"underscore", "Transfer_Encoding"},
	}
	teValues := []string{"chunked", "Chunked", "CHUNKED", " chunked", "chunked ", "\tchunked", "chunked\t",
		"xchunked", "chunkedx", "chunked, identity", "identity, chunked", "chunked, chunked", "gzip, chunked",
		"chunked,", ",chunked", "\vchunked", "chunked\v", "\fchunked", "chunk", `"chunked"`, "chunked;q=1", "", "identity",
		"chunked\x00", "ch\x00unked"}
	for _, n := range teNames {
		for _, v := range teValues {
			te := n.line + ":" + v
			if !strings.HasPrefix(v, " ") && v != "" {
				te = n.line + ": " + v
			}
			base := "te-" + n.key + "-" + corpusName(v)
			add(reqCase{name: base + "-alone", build: func(tg func(string) string) string {
				return rq(tg, "POST", "/a", "HTTP/1.1", []string{te}, "5\r\nhello\r\n0\r\n\r\n") + rget(tg, "/b")
			}})
			add(reqCase{name: base + "-clte", clte: "/a", build: func(tg func(string) string) string {
				body := "0\r\n\r\n" + rget(tg, "/smuggled")
				return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Content-Length: " + strconv.Itoa(len(body)), te}, body) + rget(tg, "/b")
			}})
			add(reqCase{name: base + "-tecl", clte: "/a", build: func(tg func(string) string) string {
				smug := rget(tg, "/smuggled")
				body := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smug), smug)
				return rq(tg, "POST", "/a", "HTTP/1.1", []string{te, "Content-Length: 4"}, body) + rget(tg, "/b")
			}})
			if n.key == "canon" {
				add(reqCase{name: base + "-http10", lastPath: "/a", build: func(tg func(string) string) string {
					return rq(tg, "POST", "/a", "HTTP/1.0", []string{te}, "5\r\nhello\r\n0\r\n\r\n") + rget(tg, "/b")
				}})
			}
		}
	}
	// Transfer-Encoding twice.
	for _, pair := range [][2]string{{"chunked", "identity"}, {"identity", "chunked"}, {"chunked", "chunked"},
		{"chunked", ""}, {"gzip", "chunked"}, {"chunked", "xchunked"}} {
		fields := []string{"Transfer-Encoding: " + pair[0], "Transfer-Encoding: " + pair[1]}
		base := "te-twice-" + corpusName(pair[0]) + "-" + corpusName(pair[1])
		add(reqCase{name: base, build: func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.1", fields, "5\r\nhello\r\n0\r\n\r\n") + rget(tg, "/b")
		}})
		add(reqCase{name: base + "-clte", clte: "/a", build: func(tg func(string) string) string {
			body := "0\r\n\r\n" + rget(tg, "/smuggled")
			return rq(tg, "POST", "/a", "HTTP/1.1", append([]string{"Content-Length: " + strconv.Itoa(len(body))}, fields...), body) + rget(tg, "/b")
		}})
	}

	// Content-Length: malformed and duplicated. The body is "hello",
	// then a GET: a reader taking a different length finds another
	// request there, or eats part of the next.
	clNames := []struct{ key, line string }{{"canon", "Content-Length"}, {"lower", "content-length"},
		{"sp-colon", "Content-Length "}, {"folded", "X-A: a\r\n Content-Length"}}
	clValues := []string{"5", "+5", "-5", "05", "005", "5, 5", "5,5", "5 5", "5,", " 5 ", "0x5", "5.0", "5e0", "",
		"abc", "4", "6", "99999999999999999999", "18446744073709551621", "\t5", "5\v", "５"}
	for _, n := range clNames {
		for _, v := range clValues {
			f := n.line + ": " + v
			add(reqCase{name: "cl-" + n.key + "-" + corpusName(v), build: func(tg func(string) string) string {
				return rq(tg, "POST", "/a", "HTTP/1.1", []string{f}, "hello") + rget(tg, "/b")
			}})
		}
	}
	for _, pair := range [][2]string{{"5", "5"}, {"5", "6"}, {"5", "0"}, {"0", "5"}, {"5", "+5"}, {"5", ""}} {
		fields := []string{"Content-Length: " + pair[0], "Content-Length: " + pair[1]}
		add(reqCase{name: "cl-twice-" + corpusName(pair[0]) + "-" + corpusName(pair[1]), build: func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.1", fields, "hello") + rget(tg, "/b")
		}})
	}
	// Content-Length on requests that do not usually carry a body.
	for _, m := range []string{"GET", "HEAD", "DELETE", "OPTIONS"} {
		add(reqCase{name: "cl-on-" + strings.ToLower(m), build: func(tg func(string) string) string {
			smug := rget(tg, "/smuggled")
			return rq(tg, m, "/a", "HTTP/1.1", []string{"Content-Length: " + strconv.Itoa(len(smug))}, smug) + rget(tg, "/b")
		}})
	}

	// Chunked bodies: sizes, extensions, line ends, trailers.
	chunkBodies := []struct{ key, body string }{
		{"valid", "5\r\nhello\r\n0\r\n\r\n"},
		{"valid-multi", "2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"},
		{"valid-upper-hex", "A\r\nhellohello\r\n0\r\n\r\n"},
		{"valid-leading-zeros", "0005\r\nhello\r\n0\r\n\r\n"},
		{"valid-empty", "0\r\n\r\n"},
		{"ext", "5;ext=1\r\nhello\r\n0\r\n\r\n"},
		{"ext-quoted", "5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n"},
		{"ext-bare", "5;\r\nhello\r\n0\r\n\r\n"},
		{"ext-space", "5 ;x\r\nhello\r\n0\r\n\r\n"},
		{"ext-tab", "5\t;x\r\nhello\r\n0\r\n\r\n"},
		{"ext-last", "5\r\nhello\r\n0;x=y\r\n\r\n"},
		{"ext-lf", "5;x\nhello\r\n0\r\n\r\n"},
		{"huge", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"},
		{"overflow-to-5", "10000000000000005\r\nhello\r\n0\r\n\r\n"},
		{"big-but-short", "100\r\nhello\r\n0\r\n\r\n"},
		{"negative", "-5\r\nhello\r\n0\r\n\r\n"},
		{"hex-prefix", "0x5\r\nhello\r\n0\r\n\r\n"},
		{"plus", "+5\r\nhello\r\n0\r\n\r\n"},
		{"space-before", " 5\r\nhello\r\n0\r\n\r\n"},
		{"space-after", "5 \r\nhello\r\n0\r\n\r\n"},
		{"no-size", "\r\nhello\r\n0\r\n\r\n"},
		{"bare-lf", "5\nhello\n0\n\n"},
		{"bare-lf-after-data", "5\r\nhello\n0\r\n\r\n"},
		{"bare-cr", "5\rhello\r0\r\r"},
		{"cr-cr-lf", "5\r\r\nhello\r\n0\r\n\r\n"},
		{"missing-crlf-after-data", "5\r\nhello0\r\n\r\n"},
		{"data-longer", "5\r\nhelloXX\r\n0\r\n\r\n"},
		{"data-shorter", "5\r\nhel\r\n0\r\n\r\n"},
		{"no-final-crlf", "5\r\nhello\r\n0\r\n"},
		{"trailer", "5\r\nhello\r\n0\r\nX-Trailer: a\r\n\r\n"},
		{"trailer-cl", "5\r\nhello\r\n0\r\nContent-Length: 10\r\n\r\n"},
		{"trailer-no-colon", "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"},
		{"trailer-bare-lf", "5\r\nhello\r\n0\r\nX-T: a\n\n"},
		{"nul-in-size", "5\x00\r\nhello\r\n0\r\n\r\n"},
	}
	for _, cb := range chunkBodies {
		add(reqCase{name: "chunk-" + cb.key, hangs: cb.key == "big-but-short", build: func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Transfer-Encoding: chunked"}, cb.body) + rget(tg, "/b")
		}})
	}
	// A request hidden in the trailer section of a chunked body.
	add(reqCase{name: "chunk-request-in-trailer", build: func(tg func(string) string) string {
		return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Transfer-Encoding: chunked"}, "5\r\nhello\r\n0\r\n") +
			rget(tg, "/smuggled") + rget(tg, "/b")
	}})
	add(reqCase{name: "chunk-request-as-chunk", build: func(tg func(string) string) string {
		smug := rget(tg, "/smuggled")
		return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Transfer-Encoding: chunked"},
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smug), smug)) + rget(tg, "/b")
	}})

	// Line ends, folding, control bytes in the head: each as a GET and as
	// a POST with a body, then a plain GET.
	heads := []struct{ key, field string }{
		{"plain", "X-A: a"},
		{"value-bare-cr", "X-A: a\rb"},
		{"line-bare-cr", "X-A: a\rX-B: b"},
		{"value-nul", "X-A: a\x00b"},
		{"name-nul", "X-\x00A: a"},
		{"value-ctl-01", "X-A: a\x01b"},
		{"name-ctl-01", "X-\x01A: a"},
		{"value-del", "X-A: a\x7fb"},
		{"name-del", "X-\x7fA: a"},
		{"value-esc", "X-A: a\x1bb"},
		{"value-vt", "X-A: a\vb"},
		{"value-ff", "X-A: a\fb"},
		{"value-obs-text", "X-A: a\x80\xffb"},
		{"name-utf8", "X-Ä: a"},
		{"name-space", "X A: a"},
		{"name-empty", ": a"},
		{"no-colon", "X-A a"},
		{"space-before-colon", "X-A : a"},
		{"tab-before-colon", "X-A\t: a"},
		{"value-tab", "X-A: a\tb"},
		{"obs-fold", "X-A: a\r\n b"},
		{"obs-fold-tab", "X-A: a\r\n\tb"},
		{"obs-fold-empty", "X-A: a\r\n \r\nX-B: b"},
		{"long-value", "X-A: " + strings.Repeat("v", 8000)},
		{"host-twice", "Host: " + corpusHost},
		{"host-other", "Host: other.internal"},
		{"connection-x-a", "Connection: X-A\r\nX-A: hop"},
		{"expect-100", "Expect: 100-continue"},
		{"expect-odd", "Expect: 101-weird"},
		{"upgrade", "Connection: Upgrade\r\nUpgrade: websocket"},
		{"upgrade-h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"},
		{"keep-alive-header", "Keep-Alive: timeout=5\r\nConnection: keep-alive"},
	}
	for _, h := range heads {
		add(reqCase{name: "head-" + h.key + "-get", build: func(tg func(string) string) string {
			return rget(tg, "/a", h.field) + rget(tg, "/b")
		}})
		add(reqCase{name: "head-" + h.key + "-post", build: func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.1", []string{h.field, "Content-Length: 5"}, "hello") + rget(tg, "/b")
		}})
	}
	// Line ends of the whole head.
	lineEnds := []struct{ key, from, to string }{
		{"bare-lf", "\r\n", "\n"}, {"bare-cr", "\r\n", "\r"}, {"cr-cr-lf", "\r\n", "\r\r\n"}, {"lf-cr", "\r\n", "\n\r"},
	}
	for _, le := range lineEnds {
		add(reqCase{name: "lines-" + le.key + "-get", build: func(tg func(string) string) string {
			return strings.ReplaceAll(rget(tg, "/a", "X-A: a"), le.from, le.to) + rget(tg, "/b")
		}})
		add(reqCase{name: "lines-" + le.key + "-post", build: func(tg func(string) string) string {
			return strings.ReplaceAll(rq(tg, "POST", "/a", "HTTP/1.1", []string{"Content-Length: 5"}, ""), le.from, le.to) +
				"hello" + rget(tg, "/b")
		}})
	}
	add(reqCase{name: "lines-bare-lf-blank-line", build: func(tg func(string) string) string {
		return strings.TrimSuffix(rget(tg, "/a"), "\r\n") + "\n" + rget(tg, "/b")
	}})
	add(reqCase{name: "lines-leading-crlf", build: func(tg func(string) string) string {
		return "\r\n" + rget(tg, "/a") + "\r\n\r\n" + rget(tg, "/b")
	}})

	// The request line.
	lines := []struct{ key, method, sep, proto string }{
		{"double-space", "GET", "  ", "HTTP/1.1"}, {"tab", "GET", "\t", "HTTP/1.1"}, {"lower-method", "get", " ", "HTTP/1.1"},
		{"http12", "GET", " ", "HTTP/1.2"}, {"http20", "GET", " ", "HTTP/2.0"}, {"http101", "GET", " ", "HTTP/1.01"},
		{"lower-proto", "GET", " ", "http/1.1"}, {"trailing-space", "GET", " ", "HTTP/1.1 "}, {"no-proto", "GET", " ", ""},
		{"http09", "GET", " ", "HTTP/0.9"}, {"method-ctl", "G\x01T", " ", "HTTP/1.1"}, {"method-odd", "GE(T", " ", "HTTP/1.1"},
		{"extension-method", "PURGE", " ", "HTTP/1.1"},
	}
	for _, l := range lines {
		add(reqCase{name: "line-" + l.key, build: func(tg func(string) string) string {
			line := l.method + l.sep + tg("/a")
			if l.proto != "" {
				line += l.sep + l.proto
			}
			return line + "\r\nHost: " + corpusHost + "\r\n\r\n" + rget(tg, "/b")
		}})
	}
	for _, tgt := range []struct{ key, suffix string }{{"space", " x"}, {"fragment", "#frag"}, {"nul", "\x00x"},
		{"query", "?q=1&r=%20"}, {"encoded-slash", "%2F..%2Fx"}, {"dot-dot", "/../x"}} {
		add(reqCase{name: "target-" + tgt.key, build: func(tg func(string) string) string {
			return "GET " + tg("/a") + tgt.suffix + " HTTP/1.1\r\nHost: " + corpusHost + "\r\n\r\n" + rget(tg, "/b")
		}})
	}

	// HTTP/1.0 with Transfer-Encoding (RFC 9112 section 6.1: faulty
	// framing, close the connection after it).
	h10 := func(name string, fields []string, body string) {
		add(reqCase{name: "http10-" + name, lastPath: "/a", build: func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.0", fields, body) + rget(tg, "/b")
		}})
	}
	h10("te-chunked", []string{"Transfer-Encoding: chunked"}, "5\r\nhello\r\n0\r\n\r\n")
	h10("te-keep-alive", []string{"Connection: keep-alive", "Transfer-Encoding: chunked"}, "5\r\nhello\r\n0\r\n\r\n")
	h10("te-and-cl", []string{"Transfer-Encoding: chunked", "Content-Length: 5"}, "hello")
	h10("te-keep-alive-and-cl", []string{"Connection: keep-alive", "Transfer-Encoding: chunked", "Content-Length: 5"}, "hello")
	add(reqCase{name: "http10-te-body-is-request", lastPath: "/a", build: func(tg func(string) string) string {
		return rq(tg, "POST", "/a", "HTTP/1.0", []string{"Connection: keep-alive", "Transfer-Encoding: chunked"}, "") +
			rget(tg, "/smuggled") + rget(tg, "/b")
	}})
	add(reqCase{name: "http10-te-then-clte", lastPath: "/a", build: func(tg func(string) string) string {
		body := "0\r\n\r\n" + rget(tg, "/smuggled")
		return rq(tg, "POST", "/a", "HTTP/1.0", []string{"Connection: keep-alive", "Transfer-Encoding: chunked"}, "5\r\nhello\r\n0\r\n\r\n") +
			rq(tg, "POST", "/c", "HTTP/1.1", []string{"Content-Length: " + strconv.Itoa(len(body)), "Transfer-Encoding: chunked"}, body) +
			rget(tg, "/b")
	}})
	add(reqCase{name: "http10-te-no-body-then-clte", lastPath: "/a", build: func(tg func(string) string) string {
		body := "0\r\n\r\n" + rget(tg, "/smuggled")
		return rq(tg, "POST", "/a", "HTTP/1.0", []string{"Connection: keep-alive", "Transfer-Encoding: chunked"}, "") +
			rq(tg, "POST", "/c", "HTTP/1.1", []string{"Content-Length: " + strconv.Itoa(len(body)), "Transfer-Encoding: chunked"}, body) +
			rget(tg, "/b")
	}})
	add(reqCase{name: "http10-keep-alive-plain", build: func(tg func(string) string) string {
		return rq(tg, "GET", "/a", "HTTP/1.0", []string{"Connection: keep-alive"}, "") + rget(tg, "/b")
	}})

	// Sequences on one connection that used to make a framing check
	// lose step.
	clteReq := func(tg func(string) string, path string) string {
		body := "0\r\n\r\n" + rget(tg, "/smuggled")
		return rq(tg, "POST", path, "HTTP/1.1", []string{"Content-Length: " + strconv.Itoa(len(body)), "Transfer-Encoding: chunked"}, body)
	}
	add(reqCase{name: "seq-options-star-then-clte-then-get", own: true, clte: "/c", build: func(tg func(string) string) string {
		return "OPTIONS * HTTP/1.1\r\nHost: " + corpusHost + "\r\n\r\n" + clteReq(tg, "/c") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-options-star-twice-then-clte", own: true, clte: "/c", build: func(tg func(string) string) string {
		o := "OPTIONS * HTTP/1.1\r\nHost: " + corpusHost + "\r\n\r\n"
		return o + o + clteReq(tg, "/c") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-get-then-clte-then-get", clte: "/c", build: func(tg func(string) string) string {
		return rget(tg, "/a") + clteReq(tg, "/c") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-upgrade-then-clte", clte: "/c", build: func(tg func(string) string) string {
		return rget(tg, "/a", "Connection: Upgrade", "Upgrade: websocket") + clteReq(tg, "/c") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-upgrade-h2c-then-clte", clte: "/c", build: func(tg func(string) string) string {
		return rget(tg, "/a", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA") +
			clteReq(tg, "/c") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-expect-then-clte", clte: "/c", build: func(tg func(string) string) string {
		return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Expect: 100-continue", "Content-Length: 5"}, "hello") +
			clteReq(tg, "/c") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-bad-then-get", build: func(tg func(string) string) string {
		return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Content-Length: 5, 6"}, "hello") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-many-gets", build: func(tg func(string) string) string {
		var b strings.Builder
		for i := range 8 {
			b.WriteString(rget(tg, "/g"+strconv.Itoa(i)))
		}
		return b.String()
	}})
	add(reqCase{name: "seq-post-chunked-then-post-cl", build: func(tg func(string) string) string {
		return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Transfer-Encoding: chunked"}, "5\r\nhello\r\n0\r\n\r\n") +
			rq(tg, "POST", "/c", "HTTP/1.1", []string{"Content-Length: 5"}, "world") + rget(tg, "/b")
	}})
	add(reqCase{name: "seq-connect-then-get", build: func(tg func(string) string) string {
		return "CONNECT " + corpusHost + ":443 HTTP/1.1\r\nHost: " + corpusHost + ":443\r\n\r\n" + rget(tg, "/b")
	}})

	// Pipelines split at every byte, and a byte at a time.
	pipes := []struct {
		key   string
		build func(tg func(string) string) string
	}{
		{"two-gets", func(tg func(string) string) string { return rget(tg, "/a") + rget(tg, "/b") }},
		{"post-cl-get", func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Content-Length: 11"}, "hello world") + rget(tg, "/b")
		}},
		{"post-chunked-get", func(tg func(string) string) string {
			return rq(tg, "POST", "/a", "HTTP/1.1", []string{"Transfer-Encoding: chunked"}, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n") + rget(tg, "/b")
		}},
	}
	for _, p := range pipes {
		add(reqCase{name: "pipe-" + p.key, build: p.build})
		add(reqCase{name: "pipe-" + p.key + "-bytewise", build: p.build, split: -1})
	}
	return cs
}

// corpusPrefix is the path prefix of the i-th case run; all prefixes
// have one length, so that split points hold across cases.
func corpusPrefix(i int) string { return fmt.Sprintf("/c%05d", i) }

// corpusSplits are the pipelines split at every byte boundary in mode;
// they are not kept as files (the unsplit ones are).
func corpusSplits(cs []reqCase, mode corpusMode) []reqCase {
	var out []reqCase
	for _, c := range cs {
		if !strings.HasPrefix(c.name, "pipe-") || c.split != 0 {
			continue
		}
		n := len(c.build(func(p string) string { return mode.target(corpusPrefix(0) + p) }))
		for i := 1; i < n; i++ {
			s := c
			s.name, s.split = fmt.Sprintf("%s-split-%03d", c.name, i), i
			out = append(out, s)
		}
	}
	return out
}

// refReq is a request as net/http reads it from the client's bytes.
type refReq struct {
	method, tag string
	body        []byte
	chunked     bool
}

// corpusReference reads raw as net/http's server would: requests up to
// the first that fails to read (head or body) or that ends the
// connection (Connection: close, HTTP/1.0). badBody is the error, if
// any, that reading the body after the last one gave for a reason other
// than the bytes running out.
func corpusReference(raw []byte) (out []refReq, badBody error) {
	br := bufio.NewReader(bytes.NewReader(raw))
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return out, nil
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				err = nil
			}
			return out, err
		}
		tag := r.RequestURI
		if tag != "*" {
			tag = r.URL.EscapedPath()
		}
		out = append(out, refReq{method: r.Method, tag: tag, body: b, chunked: slices.Contains(r.TransferEncoding, "chunked")})
		if r.Close {
			return out, nil
		}
	}
}

type corpusReqEnv struct {
	up   *testutil.Upstream
	addr string
}

// corpusReqScript answers every request with its own tag (its path),
// and hangs up after one whose framing it objects to.
func corpusReqScript(r *testutil.UpRequest) testutil.Reply {
	if r.Anomaly != "" {
		// The upstream closes the connection after such an answer, and
		// says so, as a server must (RFC 9112 section 9.6): a server that
		// closed without saying so would race the next request on the
		// connection, and a POST lost that way is not resent by anyone.
		body := "tag=" + r.Tag()
		raw := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Tag: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
			r.Tag(), len(body), body)
		return testutil.Reply{Raw: []byte(raw), Close: true}
	}
	return testutil.Reply{Raw: corpusClean(r.Tag())}
}

// TestCorpusRequests sends each request case, then a sentinel GET with
// Connection: close, on a client connection of its own, and holds what
// the upstream saw and what the client got against each other and
// against net/http's reading of the same bytes.
func TestCorpusRequests(t *testing.T) {
	set := pkitest.New(t)
	base := corpusRequestCases()
	type run struct {
		c    reqCase
		mode corpusMode
		env  *corpusReqEnv
		pfx  string
	}
	var runs []run
	shared := map[corpusMode]*corpusReqEnv{}
	for _, m := range corpusModes {
		up := testutil.NewUpstream(t, set.ServerTLS(), corpusReqScript)
		shared[m] = &corpusReqEnv{up: up, addr: corpusProxy(t, set, m, up.Port, 0)}
		for _, c := range append(slices.Clone(base), corpusSplits(base, m)...) {
			env := shared[m]
			if c.own {
				up := testutil.NewUpstream(t, set.ServerTLS(), corpusReqScript)
				env = &corpusReqEnv{up: up, addr: corpusProxy(t, set, m, up.Port, 0)}
			}
			runs = append(runs, run{c: c, mode: m, env: env, pfx: corpusPrefix(len(runs))})
		}
	}
	corpusParallel(len(runs), 8, func(i int) {
		r := runs[i]
		t.Run(string(r.mode)+"/"+r.c.name, func(t *testing.T) { corpusReqRun(t, r.c, r.mode, r.env, r.pfx, false) })
	})
	// Every request the shared upstreams saw belongs to a case.
	prefixes := map[string]bool{}
	for _, r := range runs {
		prefixes[r.pfx] = true
	}
	for m, env := range shared {
		for _, u := range env.up.Requests() {
			if p, _, _ := strings.Cut(strings.TrimPrefix(u.Tag(), "/"), "/"); !prefixes["/"+p] {
				t.Errorf("%s: the upstream got %s %q, which no case sent (%s)", m, u.Method, u.Target, u.Anomaly)
			}
		}
	}
}

// corpusReqRun runs c. With strictCLTE, a request with both
// Content-Length and Transfer-Encoding must be refused with 400 (as the
// docs say); otherwise the proxy may also forward it as net/http reads it
// (chunked) and close the connection after it.
func corpusReqRun(t *testing.T, c reqCase, mode corpusMode, env *corpusReqEnv, pfx string, strictCLTE bool) {
	tg := func(p string) string { return mode.target(pfx + p) }
	body := c.build(tg)
	raw := []byte(body + rget(tg, "/end", "Connection: close"))
	ref, badBody := corpusReference(raw)
	cl := testutil.Dial(t, env.addr)
	var err error
	switch {
	case c.split > 0:
		err = cl.SendSplit(raw, min(c.split, len(body)))
	case c.split < 0:
		for i := 0; i < len(raw) && err == nil; i++ {
			err = cl.Send(raw[i : i+1])
		}
	default:
		err = cl.Send(raw)
	}
	if err != nil {
		t.Logf("send: %v", err) // the proxy may hang up early; what it answered is checked
	}
	deadline := time.Now().Add(2 * testutil.Wait)
	if c.hangs {
		deadline = time.Now().Add(500 * time.Millisecond)
	}
	var got []*testutil.Response
	var stop error
	for {
		method := "GET"
		if len(got) < len(ref) {
			method = ref[len(got)].method
		}
		resp, err := cl.ReadResponse(method, deadline)
		if err != nil {
			stop = err
			break
		}
		got = append(got, resp)
		if resp.Close || resp.StatusCode == http.StatusSwitchingProtocols || resp.BodyErr != nil {
			break
		}
	}
	_ = cl.Close()
	var ups []testutil.UpRequest
	for _, u := range env.up.Requests() {
		if c.own || strings.HasPrefix(u.Tag(), pfx+"/") {
			ups = append(ups, u)
		}
	}
	trim := func(tag string) string { return strings.TrimPrefix(tag, pfx) }
	describe := func() string {
		var b strings.Builder
		fmt.Fprintf(&b, "\nclient sent: %q\nnet/http reads:", raw)
		for _, r := range ref {
			fmt.Fprintf(&b, " [%s %s %q]", r.method, trim(r.tag), r.body)
		}
		b.WriteString("\nupstream saw:")
		for _, u := range ups {
			fmt.Fprintf(&b, " [%s %s %q conn %d anomaly %q]", u.Method, trim(u.Target), u.Body, u.Conn, u.Anomaly)
		}
		b.WriteString("\nclient got:")
		for _, r := range got {
			fmt.Fprintf(&b, " [%d tag=%s err=%s close=%v]", r.StatusCode, trim(r.Header.Get("X-Tag")), r.Header.Get(proxy.ErrorHeader), r.Close)
		}
		fmt.Fprintf(&b, " then %v", stop)
		return b.String()
	}
	fail := func(f string, a ...any) {
		t.Helper()
		t.Errorf(f, a...)
	}
	// The proxy never sends a request a strict reader objects to.
	for _, u := range ups {
		if u.Anomaly != "" {
			fail("upstream got %s %s with %s", u.Method, trim(u.Target), u.Anomaly)
		}
	}
	// One to one: the answers the client got from the upstream are the
	// answers to the requests the upstream saw, in order.
	var upTags, clientTags []string
	for _, u := range ups {
		upTags = append(upTags, trim(u.Tag()))
	}
	for _, r := range got {
		if tag := r.Header.Get("X-Tag"); tag != "" {
			clientTags = append(clientTags, trim(tag))
			if string(r.Body) != "tag="+tag && ref != nil && len(clientTags) <= len(ref) {
				if m := ref[len(clientTags)-1].method; m != "HEAD" {
					fail("answer tagged %s has body %q", trim(tag), r.Body)
				}
			}
		}
	}
	if !slices.Equal(upTags, clientTags) {
		fail("upstream saw %q, client got answers for %q", upTags, clientTags)
	}
	// Against net/http: the i-th response answers the i-th request
	// net/http reads; an answer from the upstream must be to that
	// request, forwarded as net/http read it.
	k := 0
	for i, r := range got {
		tag := r.Header.Get("X-Tag")
		if i >= len(ref) {
			if tag != "" {
				fail("response %d is the upstream's answer to %s, a request net/http does not read in these bytes", i+1, trim(tag))
			}
			continue
		}
		if tag == "" {
			continue
		}
		if tag != ref[i].tag {
			fail("response %d is the upstream's answer to %s; net/http reads request %d as %s %s", i+1, trim(tag), i+1,
				ref[i].method, trim(ref[i].tag))
		}
		for k < len(ups) && ups[k].Tag() != tag {
			k++
		}
		if k < len(ups) {
			if u := ups[k]; u.Method != ref[i].method || !bytes.Equal(u.Body, ref[i].body) {
				fail("request %d reached the upstream as %s %s with body %q; net/http reads %s with body %q", i+1,
					u.Method, trim(u.Tag()), u.Body, ref[i].method, ref[i].body)
			}
			k++
		}
	}
	// Both Content-Length and Transfer-Encoding: refused with 400 (or,
	// unless strictCLTE, forwarded as net/http reads it, which the checks
	// above hold), then the connection closed: nothing after it is
	// forwarded or answered.
	if c.clte != "" {
		for i, r := range ref {
			if r.tag != pfx+c.clte || !r.chunked {
				continue
			}
			if i < len(got) {
				refused := got[i].StatusCode == http.StatusBadRequest && got[i].Header.Get("X-Tag") == ""
				if !refused && (strictCLTE || got[i].Header.Get("X-Tag") == "") {
					fail("request %d (%s, Content-Length and Transfer-Encoding) got %d tag=%q; want 400 from the proxy", i+1, c.clte,
						got[i].StatusCode, trim(got[i].Header.Get("X-Tag")))
				}
				if len(got) > i+1 {
					fail("after the answer to %s (Content-Length and Transfer-Encoding) the connection went on: %d more responses",
						c.clte, len(got)-i-1)
				}
			}
			for j, later := range ref[i:] {
				if (j > 0 || strictCLTE) && slices.Contains(upTags, trim(later.tag)) {
					fail("%s reached the upstream, after the request with Content-Length and Transfer-Encoding", trim(later.tag))
				}
			}
			break
		}
	}
	// A body net/http cannot read is the client's fault: 400, not an
	// upstream error.
	if i := len(ref); badBody != nil && i < len(got) {
		if r := got[i]; r.StatusCode != http.StatusBadRequest || r.Header.Get("X-Tag") != "" {
			fail("request %d has a body net/http refuses (%v); got %d %s %q, want 400", i+1, badBody, r.StatusCode,
				r.Header.Get(proxy.ErrorHeader), r.Body)
		}
	}
	// Go-internal error text never reaches a client.
	if b := cl.Received(); bytes.Contains(b, []byte("use of closed network connection")) {
		fail("the client got Go-internal error text: %q", b)
	}
	if c.lastPath != "" {
		for _, tag := range upTags {
			if tag != c.lastPath {
				fail("%s reached the upstream after %s on the same connection (HTTP/1.0 with Transfer-Encoding must close)", tag, c.lastPath)
			}
		}
	}
	if t.Failed() || *corpusVerbose {
		t.Log(describe())
	}
}

// --- faults --------------------------------------------------------------

// corpusGets sends n GETs, one after the other, on each of clients client
// connections, and returns what went wrong with each failed one.
func corpusGets(t *testing.T, mode corpusMode, addr string, clients, n int) (failures []string) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range clients {
		cl := testutil.Dial(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				tag := corpusTag()
				if msg := corpusGetOn(cl, mode, tag); msg != "" {
					mu.Lock()
					failures = append(failures, tag+": "+msg)
					mu.Unlock()
					// Go on with a fresh connection.
					_ = cl.Close()
					cl = testutil.Dial(t, addr)
				}
			}
		}()
	}
	wg.Wait()
	return failures
}

// corpusGetOn sends a GET for tag on cl and says what is wrong with the
// answer, if anything.
func corpusGetOn(cl *testutil.Client, mode corpusMode, tag string) string {
	if err := cl.Send(corpusReq(mode, "GET", tag)); err != nil {
		return err.Error()
	}
	resp, err := cl.ReadResponse("GET", time.Now().Add(2*testutil.Wait))
	switch {
	case err != nil:
		return "no response: " + err.Error()
	case resp.StatusCode != 200 || resp.Header.Get("X-Tag") != tag || string(resp.Body) != "tag="+tag:
		return fmt.Sprintf("%d %s tag=%s %q", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader), resp.Header.Get("X-Tag"), resp.Body)
	}
	return ""
}

func corpusFailures(t *testing.T, what string, n int, failures []string) {
	t.Helper()
	if len(failures) > 0 {
		t.Errorf("%s: %d of %d GETs failed; want none. First: %q", what, len(failures), n, failures[:min(5, len(failures))])
	}
}

// TestCorpusFaultUpstreamRestart pools about 25 upstream connections,
// restarts the upstream (listener and every connection closed, a new
// listener on the same port), then sends 200 GETs from 8 clients: none
// may fail.
func TestCorpusFaultUpstreamRestart(t *testing.T) {
	set := pkitest.New(t)
	for _, mode := range corpusModes {
		t.Run(string(mode), func(t *testing.T) {
			const pooled = 25
			var arrived atomic.Int64
			release := make(chan struct{})
			var once sync.Once
			up := testutil.NewUpstream(t, set.ServerTLS(), func(r *testutil.UpRequest) testutil.Reply {
				if strings.HasPrefix(r.Tag(), "/warm") {
					// Hold the warm-up requests until all are in, so that
					// each has a connection of its own.
					if arrived.Add(1) == pooled {
						once.Do(func() { close(release) })
					}
					select {
					case <-release:
					case <-time.After(testutil.Wait):
					}
				}
				return testutil.Reply{Raw: corpusClean(strings.TrimPrefix(r.Tag(), "/"))}
			})
			addr := corpusProxy(t, set, mode, up.Port, 0)
			var wg sync.WaitGroup
			var warmFail atomic.Int64
			for i := range pooled {
				cl := testutil.Dial(t, addr)
				wg.Add(1)
				go func() {
					defer wg.Done()
					if msg := corpusGetOn(cl, mode, fmt.Sprintf("warm%04d", i)); msg != "" {
						warmFail.Add(1)
						t.Errorf("warm-up GET %d: %s", i, msg)
					}
				}()
			}
			wg.Wait()
			if warmFail.Load() > 0 {
				t.FailNow()
			}
			if got := up.OpenConns(); got != pooled {
				t.Logf("%d upstream connections open before the restart; want %d", got, pooled)
			}
			before := up.Conns()
			up.Restart(t)
			failures := corpusGets(t, mode, addr, 8, 25)
			corpusFailures(t, "after a restart", 200, failures)
			t.Logf("after the restart: %d new upstream connections for 200 GETs", up.Conns()-before)
		})
	}
}

// TestCorpusFaultSilentCloseAfterThree has the upstream close every
// connection, without notice, right after its third response: 1,040
// GETs from 8 clients, none may fail.
func TestCorpusFaultSilentCloseAfterThree(t *testing.T) {
	set := pkitest.New(t)
	for _, mode := range corpusModes {
		t.Run(string(mode), func(t *testing.T) {
			up := testutil.NewUpstream(t, set.ServerTLS(), func(r *testutil.UpRequest) testutil.Reply {
				return testutil.Reply{Raw: corpusClean(strings.TrimPrefix(r.Tag(), "/")), Close: r.Seq == 3}
			})
			addr := corpusProxy(t, set, mode, up.Port, 0)
			failures := corpusGets(t, mode, addr, 8, 130)
			corpusFailures(t, "upstream closing after 3 responses", 1040, failures)
			t.Logf("%d upstream connections for 1040 GETs", up.Conns())
		})
	}
}

// corpusPost sends a POST for tag with body on cl and returns the
// answer.
func corpusPost(cl *testutil.Client, mode corpusMode, tag, body string) (*testutil.Response, error) {
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s", mode.target("/"+tag), corpusHost, len(body), body)
	if err := cl.Send([]byte(req)); err != nil {
		return nil, err
	}
	return cl.ReadResponse("POST", time.Now().Add(2*testutil.Wait))
}

// TestCorpusFaultPostNotRetried: a POST the upstream read and then hung
// up on without an answer is not sent again (it may have taken effect);
// the client gets 502 upstream-connect. With an upstream that closes
// silently after 3 responses, POSTs are never sent twice, and each gets
// its own answer or a 502 (logged: how many).
func TestCorpusFaultPostNotRetried(t *testing.T) {
	set := pkitest.New(t)
	for _, mode := range corpusModes {
		t.Run(string(mode)+"/hang-up-after-reading", func(t *testing.T) {
			up := testutil.NewUpstream(t, set.ServerTLS(), func(r *testutil.UpRequest) testutil.Reply {
				tag := strings.TrimPrefix(r.Tag(), "/")
				if r.Method == "POST" {
					return testutil.Reply{Close: true}
				}
				return testutil.Reply{Raw: corpusClean(tag)}
			})
			addr := corpusProxy(t, set, mode, up.Port, 0)
			cl := testutil.Dial(t, addr)
			// A GET first, so that the POST goes on a pooled connection.
			if msg := corpusGetOn(cl, mode, corpusTag()); msg != "" {
				t.Fatalf("GET: %s", msg)
			}
			tag := corpusTag()
			resp, err := corpusPost(cl, mode, tag, "hello")
			if err != nil {
				t.Fatalf("POST: no response: %v", err)
			}
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(proxy.ErrorHeader) != "upstream-connect" {
				t.Errorf("POST: got %d %s %q; want 502 upstream-connect", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader), resp.Body)
			}
			n := 0
			for _, r := range up.Requests() {
				if r.Method == "POST" {
					n++
					if string(r.Body) != "hello" {
						t.Errorf("POST reached the upstream with body %q", r.Body)
					}
				}
			}
			if n != 1 {
				t.Errorf("the upstream read the POST %d times; want once (no retry once bytes were sent)", n)
			}
			t.Logf("POST the upstream read and hung up on: %d %s %q", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader), resp.Body)
		})
		t.Run(string(mode)+"/close-after-three", func(t *testing.T) {
			up := testutil.NewUpstream(t, set.ServerTLS(), func(r *testutil.UpRequest) testutil.Reply {
				return testutil.Reply{Raw: corpusClean(strings.TrimPrefix(r.Tag(), "/")), Close: r.Seq == 3}
			})
			addr := corpusProxy(t, set, mode, up.Port, 0)
			const clients, each = 4, 75
			var mu sync.Mutex
			failed := map[string]string{}
			var wg sync.WaitGroup
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cl := testutil.Dial(t, addr)
					for range each {
						tag := corpusTag()
						resp, err := corpusPost(cl, mode, tag, "body-"+tag)
						switch {
						case err != nil:
							t.Errorf("POST %s: no response: %v", tag, err)
						case resp.StatusCode == 200 && resp.Header.Get("X-Tag") == tag:
							continue
						case resp.StatusCode == http.StatusBadGateway && resp.Header.Get(proxy.ErrorHeader) != "":
						default:
							t.Errorf("POST %s: got %d tag=%s %q; want its own 200 or a 502 from the proxy", tag, resp.StatusCode,
								resp.Header.Get("X-Tag"), resp.Body)
						}
						mu.Lock()
						failed[tag] = fmt.Sprint(resp.StatusCode)
						mu.Unlock()
						_ = cl.Close()
						cl = testutil.Dial(t, addr)
					}
				}()
			}
			wg.Wait()
			counts := map[string]int{}
			for _, r := range up.Requests() {
				tag := strings.TrimPrefix(r.Tag(), "/")
				counts[tag]++
				if string(r.Body) != "body-"+tag {
					t.Errorf("POST %s reached the upstream with body %q", tag, r.Body)
				}
			}
			for tag, n := range counts {
				if n > 1 {
					t.Errorf("POST %s reached the upstream %d times; want at most once", tag, n)
				}
			}
			lostUnseen := 0
			for tag := range failed {
				if counts[tag] == 0 {
					lostUnseen++
				}
			}
			t.Logf("%d of %d POSTs got 502 (%d of them never reached the upstream)", len(failed), clients*each, lostUnseen)
		})
	}
}

// TestCorpusEarlyAnswer: an upstream that answers a POST from its head,
// with Connection: close, before reading the 1 MiB body (then drains it
// and hangs up): the client gets that answer, as nginx relays it, not a
// 502.
func TestCorpusEarlyAnswer(t *testing.T) { corpusEarly(t, -1) }

// corpusEarly runs TestCorpusEarlyAnswer with an upstream that reads
// drain bytes of the body (all if < 0) after its answer, then hangs up.
func corpusEarly(t *testing.T, drain int64) {
	set := pkitest.New(t)
	for _, mode := range corpusModes {
		t.Run(string(mode), func(t *testing.T) {
			up := testutil.NewUpstream(t, set.ServerTLS(), corpusReqScript)
			addr := corpusProxy(t, set, mode, up.Port, 0)
			up.SetEarly(func(r *testutil.UpRequest) []byte {
				if r.Method != "POST" {
					return nil
				}
				tag := strings.TrimPrefix(r.Tag(), "/")
				return []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nX-Tag: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\ntag=%s",
					tag, len(tag)+4, tag))
			}, drain)
			cl := testutil.Dial(t, addr)
			tag := corpusTag()
			resp, err := corpusPost(cl, mode, tag, strings.Repeat("x", 1<<20))
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != 200 || resp.Header.Get("X-Tag") != tag || string(resp.Body) != "tag="+tag {
				t.Errorf("got %d %s %q; want the upstream's early 200", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader), resp.Body)
			}
			if b := cl.Received(); bytes.Contains(b, []byte("use of closed network connection")) {
				t.Errorf("the client got Go-internal error text: %q", b)
			}
		})
	}
}
