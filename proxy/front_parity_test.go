package proxy

// Requests and answers the front once carried differently from the
// reference pipeline (Go's server + goproxy): the upstream and the client
// must see the same either way.

import (
	"bufio"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// reviewUpstreamHead sends a GET for path on env.host (with extra header
// lines) through addr and returns the header lines of the request head
// as it reached the upstream on the wire (the upstream's own reader
// would add Cache-Control for a Pragma itself).
func reviewUpstreamHead(t *testing.T, env *advEnv, addr, path string, extra ...string) []string {
	t.Helper()
	c := advDial(t, addr)
	c.send(advGet("GET", env.host, path, extra...))
	if resp, body, _ := c.final("GET"); resp.StatusCode != 200 {
		t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
	}
	h := env.up.rawHead("GET " + path + " ")
	if h == "" {
		t.Fatalf("%s never reached the upstream", path)
	}
	lines := strings.Split(strings.TrimSuffix(h, "\r\n\r\n"), "\r\n")
	return lines[1:]
}

// TestFrontForwardedHeadersMatchReference: h1.Parse takes these heads,
// and the upstream sees other headers than on the reference path.
func TestFrontForwardedHeadersMatchReference(t *testing.T) {
	if !testFastPath {
		t.Skip("no front")
	}
	for _, tc := range []struct {
		name  string
		strip []string
		extra []string
	}{
		// net/http's reader adds "Cache-Control: no-cache" (RFC 7234 5.4,
		// fixPragmaCacheControl); h1.Parse does not.
		{"pragma", nil, []string{"Pragma: no-cache"}},
		// Go's writer sends the first User-Agent value, here empty, so
		// none; the front drops the empty one and sends the second.
		{"ua-empty-first", nil, []string{"User-Agent:", "User-Agent: curl/8"}},
		// strip_headers naming User-Agent: the reference deletes it and
		// Go's writer sends its default; so must the front.
		{"ua-stripped", []string{"User-Agent"}, []string{"User-Agent: secret-agent"}},
		// "Connection: close" nominates a header named Close: the
		// reference removes it (removeHopHeaders); so must the front.
		{"close-nominated", nil, []string{"Connection: close", "Close: secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := advNewEnvMod(t, nil, func(_ string, _ *RouteOptions, o *Options) {
				o.StripHeaders = append(o.StripHeaders, tc.strip...)
			})
			ref := reviewUpstreamHead(t, env, env.sAddr, "/"+tc.name+"-ref", tc.extra...)
			fr := reviewUpstreamHead(t, env, env.fAddr, "/"+tc.name+"-front", tc.extra...)
			// The front may take such a request or hand it to Go's path;
			// either way the upstream must get the same head.
			if !reflect.DeepEqual(ref, fr) {
				t.Errorf("upstream request heads differ:\nreference: %q\nfront:     %q", ref, fr)
			}
		})
	}
}

// TestFrontNoContentTypeInvented: an upstream answer without Content-Type.
// Go's server sniffs one (text/html; charset=utf-8 here) on the
// reference path; the front sends the answer without one.
func TestFrontNoContentTypeInvented(t *testing.T) {
	set := pkitest.New(t)
	up := advNewRawUpstream(t, set, func(req *http.Request, w *bufio.Writer) bool {
		w.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>")
		return true
	})
	p := advNewProxy(t, set, nil, up.port)
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	sAddr := advSlow(t, p, time.Second, 10*time.Second)
	host := "api.internal:" + up.port
	ct := map[string]string{}
	for name, addr := range map[string]string{"reference": sAddr, "front": fAddr} {
		c := advDial(t, addr)
		c.send(advGet("GET", host, "/nosniff"))
		resp, body, _ := c.final("GET")
		if resp.StatusCode != 200 || body != "<html>hi</html>" {
			t.Fatalf("%s: %d %q", name, resp.StatusCode, body)
		}
		ct[name] = strings.Join(resp.Header.Values("Content-Type"), "|")
	}
	if ct["reference"] != ct["front"] {
		t.Errorf("Content-Type: reference %q, front %q", ct["reference"], ct["front"])
	}
}

// TestFrontGatewayPort80: a gateway upstream https://api.internal:80.
// The reference keeps port 80 (only http:// maps 80 to 443, in prepare);
// the front's gatewayTarget maps it to 443 and goes to another server.
func TestFrontGatewayPort80(t *testing.T) {
	set := pkitest.New(t)
	named := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "%s host=%s", name, r.Host)
		}
	}
	up80 := advNewUpstream(t, set, named("upstream on :80"))
	up443 := advNewUpstream(t, set, named("upstream on :443"))
	p := advNewProxy(t, set, func(ro *RouteOptions, o *Options) {
		ro.Resolve["api.internal:80"] = "127.0.0.1:" + up80.port
		ro.Resolve["api.internal:443"] = "127.0.0.1:" + up443.port
		o.Upstream, _ = url.Parse("https://api.internal:80")
	})
	_, fAddr := advFront(t, p, time.Second, 10*time.Second)
	sAddr := advSlow(t, p, time.Second, 10*time.Second)
	got := map[string]string{}
	for name, addr := range map[string]string{"reference": sAddr, "front": fAddr} {
		c := advDial(t, addr)
		c.send("GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
		resp, body, _ := c.final("GET")
		got[name] = fmt.Sprint(resp.StatusCode, " ", body)
	}
	if got["reference"] != got["front"] {
		t.Errorf("gateway to https://api.internal:80: reference %q, front %q", got["reference"], got["front"])
	}
}
