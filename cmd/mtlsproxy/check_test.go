package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/cfgtest"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"text/tabwriter"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// cfgtUpstream starts an HTTPS server with cfg that answers every request
// with 200 and the client certificate's subject ("none" without one).
func cfgtUpstream(t testing.TB, cfg *tls.Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(cfgtEcho))
	srv.TLS = cfg
	// Refused handshakes are the point of some tests; keep them out of
	// the test output.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// cfgtEcho answers with what the upstream saw: the client certificate's
// subject, the Host header and the path.
func cfgtEcho(w http.ResponseWriter, r *http.Request) {
	subject := "none"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		subject = r.TLS.PeerCertificates[0].Subject.String()
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "subject=%s host=%s path=%s", subject, r.Host, r.URL.Path)
}

// cfgtPort is the port of a test server's address.
func cfgtPort(t testing.TB, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// cfgtClosedPort returns a local port that nothing listens on.
func cfgtClosedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := cfgtPort(t, ln.Addr().String())
	ln.Close()
	return port
}

var (
	cfgtExpires = regexp.MustCompile(`\b\d{4}-\d{2}-\d{2} \(\d+[dh]\)`)
	cfgtColumns = regexp.MustCompile(`\s{2,}`)
	// Go picks AES-GCM or ChaCha20 depending on the CPU's AES support.
	cfgtCipher = regexp.MustCompile(`TLS_(AES_128_GCM_SHA256|CHACHA20_POLY1305_SHA256|AES_256_GCM_SHA384|ECDHE_[A-Z]+_WITH_[A-Z0-9_]+)`)
)

// cfgtCheckTranscript runs "mtlsproxy check args..." and renders what a
// user sees, stdout and stderr, and the exit status, with the parts that
// vary from run to run replaced: the temporary directory by $DIR, the
// ports named in ports by $PORT_<name>, and expiry dates by $DATE (with the days or hours left). The
// --dial table is laid out again after the replacement, so that its
// columns do not depend on the lengths of what was replaced.
func cfgtCheckTranscript(t *testing.T, f *cfgtest.Files, ports map[string]string, env map[string]string, args ...string) (string, error) {
	t.Helper()
	stdout, stderr, err := runOnce(env, append([]string{"check"}, args...)...)
	var eb bytes.Buffer
	code := 0
	if err != nil && !errors.Is(err, errUsage) {
		code = exitCode(err, &eb)
	}
	portRE := map[string]*regexp.Regexp{}
	for name, port := range ports {
		portRE[name] = regexp.MustCompile(`:` + port + `\b`)
	}
	norm := func(s string) string {
		s = strings.ReplaceAll(s, f.Dir, "$DIR")
		for name, re := range portRE {
			s = re.ReplaceAllLiteralString(s, ":$PORT_"+name)
		}
		s = cfgtCipher.ReplaceAllString(s, "$$CIPHER")
		return cfgtExpires.ReplaceAllString(s, "$$DATE")
	}
	var out strings.Builder
	fmt.Fprintf(&out, "$ mtlsproxy check %s\n", norm(strings.Join(args, " ")))
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "ROUTE ") {
			fmt.Fprintln(&out, norm(lines[i]))
			continue
		}
		tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', 0)
		width := 0
		for ; i < len(lines) && !strings.HasPrefix(lines[i], "skipped ") && !strings.HasPrefix(lines[i], "all "); i++ {
			cells := cfgtColumns.Split(strings.TrimRight(lines[i], " "), -1)
			if width == 0 {
				width = len(cells)
			} else if len(cells) != width {
				t.Errorf("table row has %d columns; the header has %d:\n%s", len(cells), width, lines[i])
			}
			for j := range cells {
				cells[j] = norm(cells[j])
			}
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
		tw.Flush()
		i--
	}
	fmt.Fprintf(&out, "stderr:\n%s", norm(stderr+eb.String()))
	fmt.Fprintf(&out, "exit status %d\n", code)
	return out.String(), err
}

// cfgtWantExit checks that err ends the process with code.
func cfgtWantExit(t *testing.T, err error, code int) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Errorf("error %v; want success", err)
		}
		return
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		t.Fatalf("error %v (%T); want an *exitError", err, err)
	}
	if ee.code != code {
		t.Errorf("exit code %d; want %d", ee.code, code)
	}
	var discard bytes.Buffer
	if got := exitCode(err, &discard); got != code {
		t.Errorf("exitCode = %d; want %d", got, code)
	}
}

func TestCheckGolden(t *testing.T) {
	f := cfgtest.New(t)
	tests := []struct {
		golden string
		text   string
		code   int
	}{
		{"check-ok.golden", cfgtest.Valid, 0},
		{"check-bad.golden", cfgtest.AllProblems, 1},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.golden, ".golden"), func(t *testing.T) {
			file := f.Write(t, tt.text)
			got, err := cfgtCheckTranscript(t, f, nil, nil, "--config", file)
			cfgtWantExit(t, err, tt.code)
			golden(t, tt.golden, got)
		})
	}
}

// cfgtDialConfig has a route or gateway for each kind of row check --dial
// prints. $PORT_<name> stands for the port of the server of that name.
const cfgtDialConfig = `identities:
  app: {cert: $CERT, key: $KEY}
  other: {cert: $OTHERCERT, key: $OTHERKEY}
trust:
  internal: {ca_files: [$CA]}
resolve:
  - b.internal:443:127.0.0.1:$PORT_B
  - api.internal:$PORT_B:127.0.0.1
routes:
  - name: api
    host: api.internal
    identity: app
    trust: internal
    address: 127.0.0.1:$PORT_A
  - name: b
    host: b.internal
    identity: other
    trust: internal
    server_name: api.internal
  - name: wild
    host: "*.wild.internal"
    identity: app
    trust: internal
  - name: anonymous
    host: open.internal
    identity: none
    trust: internal
    server_name: api.internal
    address: 127.0.0.1:$PORT_OPEN
  - name: not-asked
    host: open2.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: 127.0.0.1:$PORT_OPEN
gateways:
  - name: gw
    listen: 127.0.0.1:0
    upstream: https://api.internal:$PORT_B
    identity: app
    trust: internal
`

// cfgtDialFailConfig has one upstream of each kind of failure, one that
// works, and a wildcard that cannot be dialed.
const cfgtDialFailConfig = `identities:
  app: {cert: $CERT, key: $KEY}
trust:
  internal: {ca_files: [$CA]}
routes:
  - name: api
    host: api.internal
    identity: app
    trust: internal
    address: 127.0.0.1:$PORT_A
  - name: other-ca
    host: other-ca.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: 127.0.0.1:$PORT_OTHERCA
  - name: refused
    host: refused.internal
    identity: app
    trust: internal
    server_name: api.internal
    address: 127.0.0.1:$PORT_REFUSE
  - name: closed
    host: closed.internal
    identity: app
    trust: internal
    address: 127.0.0.1:$PORT_CLOSED
  - name: wild
    hosts: ["*.wild.internal", "*.other.internal"]
    identity: app
    trust: internal
`

func TestCheckDial(t *testing.T) {
	f := cfgtest.New(t)
	otherCA, err := pki.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherServer := pkitest.Issue(t, otherCA, pki.LeafOptions{CommonName: "api.internal", DNSNames: pkitest.ServerNames, Server: true})

	srvA := cfgtUpstream(t, f.ServerTLS())
	srvB := cfgtUpstream(t, f.ServerTLS())
	open := f.ServerTLS()
	open.ClientAuth = tls.NoClientCert
	srvOpen := cfgtUpstream(t, open)
	otherCfg := f.ServerTLS()
	otherCfg.Certificates = []tls.Certificate{otherServer.TLSCertificate()}
	srvOtherCA := cfgtUpstream(t, otherCfg)
	// With TLS 1.3 the client learns that its certificate was refused only
	// after its side of the handshake is done.
	refuse := f.ServerTLS()
	refuse.ClientCAs = otherCA.Pool()
	refuse.MinVersion = tls.VersionTLS13
	srvRefuse := cfgtUpstream(t, refuse)

	ports := map[string]string{
		"A": cfgtPort(t, srvA.Listener.Addr().String()), "B": cfgtPort(t, srvB.Listener.Addr().String()),
		"OPEN": cfgtPort(t, srvOpen.Listener.Addr().String()), "OTHERCA": cfgtPort(t, srvOtherCA.Listener.Addr().String()),
		"REFUSE": cfgtPort(t, srvRefuse.Listener.Addr().String()), "CLOSED": cfgtClosedPort(t),
	}
	expand := func(text string) string {
		for name, port := range ports {
			text = strings.ReplaceAll(text, "$PORT_"+name, port)
		}
		return text
	}

	tests := []struct {
		golden string
		text   string
		code   int
		want   []string // substrings of the transcript, as well as the golden file
	}{
		{"check-dial.golden", cfgtDialConfig, 0, []string{
			"all 5 upstreams accepted the handshake", "skipped wild (*.wild.internal: a wildcard names no host to dial)",
			"CN=other-client,O=mtlsproxy test", "(none)"}},
		{"check-dial-fail.golden", cfgtDialFailConfig, 1, []string{
			"check --dial: 3 of 4 upstreams failed",
			`FAIL: upstream-tls: TLS handshake failed: certificate signed by unknown authority (issuer "CN=other CA,O=mtlsproxy test")`,
			"FAIL: upstream-tls: client certificate refused by upstream",
			"FAIL: upstream-connect: connection refused",
			"skipped wild (*.wild.internal: a wildcard names no host to dial)",
			"skipped wild (*.other.internal: a wildcard names no host to dial)"}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.golden, ".golden"), func(t *testing.T) {
			file := f.Write(t, expand(tt.text))
			got, err := cfgtCheckTranscript(t, f, ports, nil, "--config", file, "--dial", "--timeout", "5s")
			cfgtWantExit(t, err, tt.code)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
			golden(t, tt.golden, got)
		})
	}
}

// TestCheckCommand covers how check is invoked and how it fails when the
// file cannot be checked at all.
func TestCheckCommand(t *testing.T) {
	f := cfgtest.New(t)
	good := f.Write(t, cfgtest.Valid)
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		code       int    // 0 success, 1 exitError, 2 usage
		wantStdout string // exact, after unexpand
		wantErr    string // exact, after unexpand
		wantStderr string // substring
	}{
		{name: "ok", args: []string{"--config", good},
			wantStdout: "$FILE: ok: 3 identities, 2 trust bundles, 4 routes, 2 gateways\n"},
		{name: "MTLSPROXY_CONFIG", env: map[string]string{"MTLSPROXY_CONFIG": good},
			wantStdout: "$FILE: ok: 3 identities, 2 trust bundles, 4 routes, 2 gateways\n"},
		{name: "flag wins over MTLSPROXY_CONFIG", env: map[string]string{"MTLSPROXY_CONFIG": f.Missing}, args: []string{"--config", good},
			wantStdout: "$FILE: ok: 3 identities, 2 trust bundles, 4 routes, 2 gateways\n"},
		{name: "missing file", args: []string{"--config", f.Missing}, code: 1,
			wantErr: "--config: open $DIR/missing.pem: no such file or directory"},
		{name: "empty file", args: []string{"--config", f.NoCert}, code: 1,
			wantErr: "$DIR/nocert.pem: the file is empty"},
		{name: "no config", code: 2, wantStderr: "mtlsproxy check: --config FILE is required"},
		{name: "unknown flag", args: []string{"--dail"}, code: 2, wantStderr: "flag provided but not defined: -dail"},
		{name: "bad timeout", args: []string{"--config", good, "--timeout", "soon"}, code: 2, wantStderr: "invalid value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(tt.env, append([]string{"check"}, tt.args...)...)
			if tt.code == 2 {
				if !errors.Is(err, errUsage) {
					t.Errorf("error %v; want errUsage", err)
				}
				if !strings.Contains(stderr, tt.wantStderr) || !strings.Contains(stderr, "Usage: mtlsproxy check") {
					t.Errorf("stderr %q; want %q and the usage", stderr, tt.wantStderr)
				}
				return
			}
			cfgtWantExit(t, err, tt.code)
			if got := f.Unexpand(stdout); got != tt.wantStdout {
				t.Errorf("stdout %q; want %q", got, tt.wantStdout)
			}
			if tt.code != 0 {
				if got := f.Unexpand(err.Error()); got != tt.wantErr {
					t.Errorf("error %q; want %q", got, tt.wantErr)
				}
			}
			if stderr != "" {
				t.Errorf("stderr %q; want nothing (the caller prints the error)", stderr)
			}
		})
	}
}

// TestCheckDialHTTP2 checks check --dial against an upstream that speaks
// HTTP/2 and requires a client certificate: the probe must speak what
// ALPN chose (it used to write HTTP/1.1 after choosing h2, and failed).
func TestCheckDialHTTP2(t *testing.T) {
	f := cfgtest.New(t)
	var seen atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Proto + " " + r.Method + " " + r.TLS.PeerCertificates[0].Subject.CommonName)
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.EnableHTTP2 = true
	srv.TLS = f.ServerTLS()
	srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	text := cfgtest.Base + "routes:\n  - {host: api.internal, identity: app, trust: internal, address: " + srv.Listener.Addr().String() + "}\n"
	stdout, _, err := runOnce(nil, "check", "--config", f.Write(t, text), "--dial", "--timeout", "5s")
	if err != nil {
		t.Fatalf("check --dial: %v\n%s", err, stdout)
	}
	if !strings.Contains(stdout, "ok (HEAD / answered 204)") {
		t.Errorf("output lacks the HEAD answer:\n%s", stdout)
	}
	if got, want := seen.Load(), "HTTP/2.0 HEAD test-client"; got != want {
		t.Errorf("upstream saw %v; want %q", got, want)
	}
}
