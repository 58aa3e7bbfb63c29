package proxy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// hardBasic is a Proxy-Authorization value for user and password.
func hardBasic(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func TestAuthenticate(t *testing.T) {
	c := NewClients(map[string]string{"ci": "ci-secret", "backup": "b:with:colons", "blank": ""})
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		header []string // Proxy-Authorization values; nil sends none
		user   string   // "" means rejected
	}{
		{"right credentials", []string{hardBasic("ci", "ci-secret")}, "ci"},
		{"second client", []string{hardBasic("backup", "b:with:colons")}, "backup"},
		{"scheme is case-insensitive", []string{"bAsIc " + b64("ci:ci-secret")}, "ci"},
		{"space around the credentials", []string{"Basic  " + b64("ci:ci-secret") + " "}, "ci"},
		{"wrong password", []string{hardBasic("ci", "ci-secreT")}, ""},
		{"password of another client", []string{hardBasic("ci", "b:with:colons")}, ""},
		{"unknown user", []string{hardBasic("ghost", "ci-secret")}, ""},
		// authenticate compares an unknown name against a dummy digest;
		// the dummy's own password must not let anyone in.
		{"unknown user with the dummy password", []string{hardBasic("ghost", "mtlsproxy: no such client")}, ""},
		{"user name is case-sensitive", []string{hardBasic("CI", "ci-secret")}, ""},
		{"no header", nil, ""},
		{"empty header", []string{""}, ""},
		{"scheme only", []string{"Basic"}, ""},
		{"wrong scheme", []string{"Bearer " + b64("ci:ci-secret")}, ""},
		{"digest scheme", []string{`Digest username="ci"`}, ""},
		{"bad base64", []string{"Basic ci:ci-secret"}, ""},
		{"truncated base64", []string{"Basic " + b64("ci:ci-secret")[:5]}, ""},
		{"no colon", []string{"Basic " + b64("ci-secret")}, ""},
		{"empty password", []string{hardBasic("ci", "")}, ""},
		{"empty user and password", []string{hardBasic("", "")}, ""},
		{"password with trailing newline", []string{hardBasic("ci", "ci-secret\n")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tt.header {
				h.Add("Proxy-Authorization", v)
			}
			user, ok := c.authenticate(h)
			if ok != (tt.user != "") || user != tt.user {
				t.Errorf("authenticate(%q) = %q, %v; want %q, %v", tt.header, user, ok, tt.user, tt.user != "")
			}
		})
	}
	// An empty password configured for a client is a password like any
	// other: "blank:" matches it, and nothing else does.
	if user, ok := c.authenticate(http.Header{"Proxy-Authorization": {hardBasic("blank", "")}}); !ok || user != "blank" {
		t.Errorf("blank client with its empty password = %q, %v; want blank, true", user, ok)
	}
	if _, ok := c.authenticate(http.Header{"Proxy-Authorization": {hardBasic("blank", "x")}}); ok {
		t.Error("blank client with password x was accepted")
	}
	// No clients at all: nobody authenticates (the Proxy does not call
	// authenticate then, but the method must not accept anything).
	if user, ok := Clients(nil).authenticate(http.Header{"Proxy-Authorization": {hardBasic("ghost", "mtlsproxy: no such client")}}); ok {
		t.Errorf("empty Clients accepted %q", user)
	}
}

// hardAuthEnv is a Proxy that requires clients ci, backup and other, in
// front of one upstream that answers with the client certificate subject.
type hardAuthEnv struct {
	set      *pkitest.Set
	up       *upstream
	tp       *testProxy
	ids      map[string]*tlsconf.Identity // "app" (set.Client), "backup-id", "other-id"
	seenMu   sync.Mutex
	seenAuth []string // Proxy-Authorization values the upstream saw
}

var hardPasswords = map[string]string{"ci": "ci-pass-1", "backup": "backup-pass-2", "other": "other-pass-3"}

func hardIdentity(t testing.TB, set *pkitest.Set, name, cn string) *tlsconf.Identity {
	t.Helper()
	leaf := pkitest.Issue(t, set.CA, pki.LeafOptions{CommonName: cn, Client: true})
	cert, key, err := leaf.WriteFiles(set.Dir, name)
	if err != nil {
		t.Fatal(err)
	}
	id, err := tlsconf.LoadPEMIdentity(name, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// hardNewAuthEnv builds the proxy with the routes mk returns, which get
// the upstream's port and the identities.
func hardNewAuthEnv(t *testing.T, mk func(env *hardAuthEnv, resolve Resolve) []RouteOptions) *hardAuthEnv {
	t.Helper()
	env := &hardAuthEnv{set: pkitest.New(t), ids: map[string]*tlsconf.Identity{}}
	env.up = newUpstream(t, env.set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		env.seenMu.Lock()
		env.seenAuth = append(env.seenAuth, r.Header.Values("Proxy-Authorization")...)
		env.seenMu.Unlock()
		whoami(w, r)
	})
	app, err := tlsconf.LoadPEMIdentity("app", env.set.ClientCert, env.set.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	env.ids["app"] = app
	env.ids["backup-id"] = hardIdentity(t, env.set, "backup-id", "backup-client")
	env.ids["other-id"] = hardIdentity(t, env.set, "other-id", "other-client")
	resolve := Resolve{}
	for _, h := range []string{"api.internal", "ci-only.internal", "tunnel.internal"} {
		resolve[h+":"+env.up.port] = "127.0.0.1:" + env.up.port
	}
	var routes []*Route
	for _, ro := range mk(env, resolve) {
		if ro.RootCAs == nil {
			ro.RootCAs = env.set.CA.Pool()
		}
		if ro.Resolve == nil {
			ro.Resolve = resolve
		}
		routes = append(routes, NewRoute(ro))
	}
	core, logs := observer.New(zap.DebugLevel)
	p, err := New(Options{Routes: routes, Logger: zap.New(core), Clients: NewClients(hardPasswords)})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(serveProxy(t, p))
	env.tp = &testProxy{url: u, logs: logs, set: env.set}
	return env
}

func hardHosts(hosts ...string) []HostPattern {
	var out []HostPattern
	for _, h := range hosts {
		out = append(out, mustParseHostPattern(h))
	}
	return out
}

// get sends GET target through the proxy with the given Proxy-Authorization
// ("" for none).
func (env *hardAuthEnv) get(t *testing.T, target, auth string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Proxy-Authorization", auth)
	}
	tr := &http.Transport{Proxy: http.ProxyURL(env.tp.url), DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestAuthRequired(t *testing.T) {
	env := hardNewAuthEnv(t, func(env *hardAuthEnv, _ Resolve) []RouteOptions {
		return []RouteOptions{{Name: "api", Hosts: hardHosts("api.internal"), Identity: env.ids["app"]}}
	})
	target := "http://api.internal:" + env.up.port + "/secret/path"

	refused := map[string]string{
		"no credentials":          "",
		"wrong password":          hardBasic("ci", "backup-pass-2"),
		"unknown user":            hardBasic("nobody", "ci-pass-1"),
		"wrong scheme":            "Bearer " + base64.StdEncoding.EncodeToString([]byte("ci:ci-pass-1")),
		"empty password":          hardBasic("ci", ""),
		"password without a user": "Basic " + base64.StdEncoding.EncodeToString([]byte("ci-pass-1")),
	}
	bodies := map[string]string{}
	for name, auth := range refused {
		t.Run(name, func(t *testing.T) {
			resp, body := env.get(t, target, auth)
			wantError(t, resp, body, http.StatusProxyAuthRequired, CodeProxyAuthRequired, "--proxy-user")
			if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="mtlsproxy"` {
				t.Errorf("Proxy-Authenticate = %q; want %q", got, `Basic realm="mtlsproxy"`)
			}
			bodies[name] = body
		})
	}
	// No hint which part was wrong: an unknown user and a wrong password
	// get the same answer as no credentials at all.
	if bodies["unknown user"] != bodies["wrong password"] || bodies["wrong password"] != bodies["no credentials"] {
		t.Errorf("407 bodies differ:\n unknown user:   %q\n wrong password: %q\n no credentials: %q",
			bodies["unknown user"], bodies["wrong password"], bodies["no credentials"])
	}
	if n := env.up.requests.Load(); n != 0 {
		t.Errorf("upstream got %d requests from unauthenticated callers; want 0", n)
	}

	t.Run("right credentials", func(t *testing.T) {
		resp, body := env.get(t, target, hardBasic("ci", "ci-pass-1"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d; want 200 (body %q)", resp.StatusCode, body)
		}
		if want := "subject=" + env.set.ClientSubject + " uri=/secret/path"; body != want {
			t.Errorf("body = %q; want %q", body, want)
		}
	})
	t.Run("credentials in the proxy URL", func(t *testing.T) {
		// HTTP_PROXY=http://backup:PASSWORD@host:port: Go's transport sends
		// Proxy-Authorization itself.
		pu := *env.tp.url
		pu.User = url.UserPassword("backup", "backup-pass-2")
		tr := &http.Transport{Proxy: http.ProxyURL(&pu)}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(target)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d; want 200 (body %q)", resp.StatusCode, b)
		}
	})
	env.seenMu.Lock()
	if len(env.seenAuth) != 0 {
		t.Errorf("upstream saw Proxy-Authorization %q; it must never be forwarded", env.seenAuth)
	}
	env.seenMu.Unlock()
	if n := env.up.requests.Load(); n != 2 {
		t.Errorf("upstream got %d requests; want 2 (the authenticated ones)", n)
	}

	// The access log names the caller, and only of an authenticated
	// request; no password or credential appears in any log line.
	entries := env.tp.accessLines(t, len(refused)+2)
	callers := map[string]int{}
	for _, e := range entries {
		f := e.ContextMap()
		c, _ := f["caller"].(string)
		callers[fmt.Sprintf("%s/%v", c, f["status"])]++
	}
	want := map[string]int{"/407": len(refused), "ci/200": 1, "backup/200": 1}
	if fmt.Sprint(callers) != fmt.Sprint(want) {
		t.Errorf("access log caller/status = %v; want %v", callers, want)
	}
	secrets := []string{"ci-pass-1", "backup-pass-2"}
	for _, auth := range refused {
		if auth != "" {
			secrets = append(secrets, strings.TrimPrefix(strings.TrimPrefix(auth, "Basic "), "Bearer "))
		}
	}
	secrets = append(secrets, base64.StdEncoding.EncodeToString([]byte("ci:ci-pass-1")))
	hardNoSecretsInLogs(t, env.tp.logs, secrets...)
}

func TestAuthPerCallerRoutes(t *testing.T) {
	env := hardNewAuthEnv(t, func(env *hardAuthEnv, _ Resolve) []RouteOptions {
		return []RouteOptions{
			{Name: "ci-only", Hosts: hardHosts("ci-only.internal"), Identity: env.ids["app"], Clients: []string{"ci"}, ServerName: "api.internal"},
			{Name: "api-ci", Hosts: hardHosts("api.internal"), Identity: env.ids["app"], Clients: []string{"ci"}},
			{Name: "api-backup", Hosts: hardHosts("api.internal"), Identity: env.ids["backup-id"], Clients: []string{"backup"}},
			// Open to every caller, but after the two above: ci and backup
			// never reach it for api.internal (first match wins).
			{Name: "api-any", Hosts: hardHosts("api.internal"), Identity: env.ids["other-id"]},
		}
	})
	subject := func(name string) string { return env.ids[name].Leaf().Subject.String() }
	api := "http://api.internal:" + env.up.port + "/who"
	for _, tt := range []struct {
		caller, route, identity string
	}{
		{"ci", "api-ci", "app"},
		{"backup", "api-backup", "backup-id"},
		{"other", "api-any", "other-id"},
		{"ci", "api-ci", "app"}, // again, over the pooled connection
		{"backup", "api-backup", "backup-id"},
	} {
		resp, body := env.get(t, api, hardBasic(tt.caller, hardPasswords[tt.caller]))
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status = %d; want 200 (body %q)", tt.caller, resp.StatusCode, body)
			continue
		}
		if want := "subject=" + subject(tt.identity) + " uri=/who"; body != want {
			t.Errorf("caller %s: upstream saw %q; want %q (identity %s)", tt.caller, body, want, tt.identity)
		}
	}
	if subject("app") == subject("backup-id") {
		t.Fatal("test identities have the same subject")
	}

	before := env.up.requests.Load()
	ciOnly := "http://ci-only.internal:" + env.up.port + "/x"
	for _, caller := range []string{"backup", "other"} {
		resp, body := env.get(t, ciOnly, hardBasic(caller, hardPasswords[caller]))
		wantError(t, resp, body, http.StatusForbidden, CodeHostNotAllowed, fmt.Sprintf("not allowed for caller %q", caller))
	}
	// A host no route has for anyone is still plain host-not-allowed.
	resp, body := env.get(t, "http://elsewhere.internal:"+env.up.port+"/", hardBasic("backup", hardPasswords["backup"]))
	wantError(t, resp, body, http.StatusForbidden, CodeHostNotAllowed, "no route matches it")
	if strings.Contains(body, "caller") {
		t.Errorf("403 for an unknown host mentions callers: %q", body)
	}
	if n := env.up.requests.Load() - before; n != 0 {
		t.Errorf("upstream got %d requests for refused callers; want 0", n)
	}
	resp, body = env.get(t, ciOnly, hardBasic("ci", hardPasswords["ci"]))
	if resp.StatusCode != http.StatusOK || body != "subject="+subject("app")+" uri=/x" {
		t.Errorf("ci on its own route: %d %q; want 200 with identity app", resp.StatusCode, body)
	}

	// The access log records caller, route and identity together.
	entries := env.tp.accessLines(t, 9)
	type row struct{ caller, route, identity string }
	var got []row
	for _, e := range entries {
		f := e.ContextMap()
		got = append(got, row{fmt.Sprint(f["caller"]), fmt.Sprint(f["route"]), fmt.Sprint(f["identity"])})
	}
	want := []row{
		{"ci", "api-ci", "app"}, {"backup", "api-backup", "backup-id"}, {"other", "api-any", "other-id"},
		{"ci", "api-ci", "app"}, {"backup", "api-backup", "backup-id"},
		{"backup", "", ""}, {"other", "", ""}, {"backup", "", ""}, {"ci", "ci-only", "app"},
	}
	// The line follows the response, so a client can have sent its next
	// request before it is written: compare without order.
	sortRows := func(rs []row) []string {
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = fmt.Sprint(r)
		}
		sort.Strings(out)
		return out
	}
	if fmt.Sprint(sortRows(got)) != fmt.Sprint(sortRows(want)) {
		t.Errorf("access log (caller route identity):\n got  %v\n want %v", got, want)
	}
}

func TestAuthConnect(t *testing.T) {
	port := tcpUpstream(t, echo)
	env := hardNewAuthEnv(t, func(env *hardAuthEnv, resolve Resolve) []RouteOptions {
		resolve["tunnel.internal:"+port] = "127.0.0.1:" + port
		return []RouteOptions{{Name: "tunnel", Hosts: hardHosts("tunnel.internal"), Connect: ConnectTunnel, Clients: []string{"ci"}}}
	})
	target := "tunnel.internal:" + port
	connect := func(t *testing.T, auth string) (*http.Response, *bufferedConn) {
		t.Helper()
		c, err := net.Dial("tcp", env.tp.url.Host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
		if auth != "" {
			req += "Proxy-Authorization: " + auth + "\r\n"
		}
		if _, err := io.WriteString(c, req+"\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatalf("CONNECT: %v", err)
		}
		return resp, &bufferedConn{Conn: c, r: br}
	}
	for name, auth := range map[string]string{"none": "", "wrong": hardBasic("ci", "nope")} {
		t.Run("credentials "+name, func(t *testing.T) {
			resp, _ := connect(t, auth)
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			wantError(t, resp, string(b), http.StatusProxyAuthRequired, CodeProxyAuthRequired, "proxy authentication required")
			if got := resp.Header.Get("Proxy-Authenticate"); got != `Basic realm="mtlsproxy"` {
				t.Errorf("Proxy-Authenticate = %q", got)
			}
		})
	}
	t.Run("caller not on the route", func(t *testing.T) {
		resp, _ := connect(t, hardBasic("backup", hardPasswords["backup"]))
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		wantError(t, resp, string(b), http.StatusForbidden, CodeHostNotAllowed, "CONNECT "+target+" refused")
	})
	t.Run("right credentials", func(t *testing.T) {
		resp, conn := connect(t, hardBasic("ci", hardPasswords["ci"]))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT status = %d; want 200", resp.StatusCode)
		}
		if _, err := io.WriteString(conn, "ping\n"); err != nil {
			t.Fatal(err)
		}
		line, err := conn.r.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Errorf("through the tunnel: %q, %v; want the echo", line, err)
		}
	})
	// Only the authenticated tunnel reached the echo server; refused
	// CONNECTs never dialed. The access log has the caller of each.
	entries := env.tp.accessLines(t, 4)
	var callers []string
	for _, e := range entries {
		f := e.ContextMap()
		callers = append(callers, fmt.Sprintf("%v/%v", f["caller"], f["status"]))
	}
	want := map[string]bool{"/407": true, "backup/403": true, "ci/200": true}
	for _, c := range callers {
		if !want[c] {
			t.Errorf("access log caller/status %q unexpected (all: %v)", c, callers)
		}
	}
	if len(callers) != 4 {
		t.Errorf("access log has %d lines; want 4: %v", len(callers), callers)
	}
}

// hardNoSecretsInLogs fails if any secret appears in any log entry: its
// message, logger name, stack or any field, whatever its type.
func hardNoSecretsInLogs(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, e := range logs.All() {
		text := e.Message + "\x00" + e.LoggerName + "\x00" + e.Stack + "\x00" + fmt.Sprint(e.ContextMap())
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("secret %q appears in log entry %q: %s", s, e.Message, text)
			}
		}
	}
}
