package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// dropped are the names Parse reads but does not forward.
var dropped = []string{"Host", "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization"}

// checkAgainstNetHTTP fails t if Parse accepts b's head and net/http
// (http.ReadRequest plus the checks Go's server adds) refuses it or reads
// it otherwise.
func checkAgainstNetHTTP(t *testing.T, b []byte, strip []string) {
	n := HeadLen(b)
	if n <= 0 {
		return
	}
	var r Request
	if !r.Parse(b[:n], Options{Gateway: true, Strip: strip}) {
		return
	}
	rd := bytes.NewReader(b)
	br := bufio.NewReader(rd)
	req, err := http.ReadRequest(br)
	if err != nil {
		t.Fatalf("Parse took %q; http.ReadRequest refused it: %v", b[:n], err)
	}
	if consumed := len(b) - rd.Len() - br.Buffered(); consumed != n {
		t.Fatalf("head %q: HeadLen %d, net/http read %d bytes", b[:n], n, consumed)
	}
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			t.Fatalf("Parse took %q; Go's server refuses header name %q", b[:n], k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				t.Fatalf("Parse took %q; Go's server refuses value %q", b[:n], v)
			}
		}
	}
	if hosts := req.Header["Host"]; len(hosts) != 0 {
		t.Fatalf("net/http left Host in the header map: %q", hosts)
	}
	if !httpguts.ValidHostHeader(req.Host) {
		t.Fatalf("Parse took %q; Go's server refuses Host %q", b[:n], req.Host)
	}
	if req.Method != r.Method {
		t.Fatalf("method: Parse %q, net/http %q", r.Method, req.Method)
	}
	target := string(r.URI)
	if !r.Gateway {
		target = "http://" + string(r.Authority) + target
	}
	if req.RequestURI != target {
		t.Fatalf("target: Parse %q, net/http %q", target, req.RequestURI)
	}
	if req.ContentLength != 0 || len(req.TransferEncoding) != 0 || req.Body != http.NoBody || req.Close != r.Close {
		t.Fatalf("framing of %q: net/http CL %d TE %q body %T close %v; Parse close %v", b[:n], req.ContentLength,
			req.TransferEncoding, req.Body, req.Close, r.Close)
	}
	// The forwarded headers are net/http's, name for name and value for
	// value, less the ones Parse drops.
	got := map[string][]string{}
	for k, vs := range r.Header() {
		if k == "User-Agent" && len(vs) == 1 && vs[0] == "" {
			continue
		}
		got[k] = vs
	}
	for _, h := range r.Headers {
		if k := textproto.CanonicalMIMEHeaderKey(string(h.Name)); k != "User-Agent" && len(got[k]) == 0 {
			t.Fatalf("Header lost %s", k)
		}
	}
	for k, vs := range req.Header {
		if slices.Contains(dropped, k) || slices.ContainsFunc(strip, func(s string) bool { return strings.EqualFold(s, k) }) {
			continue
		}
		if k == "User-Agent" && len(vs) == 1 && vs[0] == "" {
			continue
		}
		if !slices.Equal(got[k], vs) {
			t.Fatalf("header %s of %q: Parse %q, net/http %q", k, b[:n], got[k], vs)
		}
		delete(got, k)
	}
	if len(got) != 0 {
		t.Fatalf("Parse forwards %q that net/http does not have", got)
	}
	if r.HasUA != (req.Header["User-Agent"] != nil) {
		t.Fatalf("User-Agent present: Parse %v, net/http %q", r.HasUA, req.Header["User-Agent"])
	}
}

// FuzzParse: whatever Parse accepts, net/http accepts and reads the same
// way. The seeds are the raw request cases in testdata/http.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"GET http://api.internal/x?y=1 HTTP/1.1\r\nHost: api.internal\r\nUser-Agent: t\r\n\r\n",
		"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
		"GET http://a:8443 HTTP/1.1\r\nHost: a\r\nUser-Agent:\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
		"GET /%41%2f?q HTTP/1.1\r\nHost: a\r\nX: \t v \t\r\n\r\n",
		"GET /p HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
		"GET /u HTTP/1.1\r\nHost: a\r\nUser-Agent:\r\nUser-Agent: curl/8\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	files, _ := filepath.Glob(filepath.Join("..", "..", "..", "testdata", "http", "request", "*"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkAgainstNetHTTP(t, b, []string{"X-Internal-User"}) })
}

func TestParseTakesSimpleAndRefusesTheRest(t *testing.T) {
	for _, tc := range []struct {
		head string
		take bool
	}{
		{"GET http://api.internal/x HTTP/1.1\r\nHost: api.internal\r\n\r\n", true},
		{"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", true},
		{"POST http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET http://a/x HTTP/1.0\r\nHost: a\r\n\r\n", false},
		{"GET http://a/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", false},
		{"GET http://a/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"GET http://a/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", false},
		{"GET http://a/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"GET http://a/x HTTP/1.1\r\nX: a\r\n b\r\nHost: a\r\n\r\n", false},
		{"GET http://a/x HTTP/1.1\r\nConnection: x-secret\r\nHost: a\r\n\r\n", false},
		{"GET //a/x HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET http://[::1]:8/x HTTP/1.1\r\nHost: a\r\n\r\n", false},
	} {
		var r Request
		n := HeadLen([]byte(tc.head))
		if got := n > 0 && r.Parse([]byte(tc.head)[:n], Options{Gateway: true}); got != tc.take {
			t.Errorf("%q: taken %v; want %v", tc.head, got, tc.take)
		}
		checkAgainstNetHTTP(t, []byte(tc.head), nil)
	}
	if _, _, ok := Authority([]byte("u@a")); ok {
		t.Errorf("Authority took user info")
	}
}
