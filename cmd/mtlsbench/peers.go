package main

// The upstream and the proxies under test: their configurations and how
// each is started.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// upstreamHost is the name the upstream's certificate carries; every proxy
// sends it in SNI and verifies it.
const upstreamHost = "api.internal"

// Paths the upstream serves.
const (
	smallPath = "/"
	largePath = "/1m.bin"
	largeSize = 1 << 20
	smallBody = "ok\n"
)

// files are the PKI and content files in the run's directory.
type files struct {
	Dir        string
	CA         string // ca.crt: signs the server and client certificates
	ServerCert string
	ServerKey  string
	ClientCert string
	ClientKey  string
	ClientPEM  string // certificate and key in one file (HAProxy crt, ghostunnel --keystore)
	WWW        string // document root of the upstream, holds 1m.bin
}

// nginxTempPaths are the temp_path directives, so that nginx writes only
// into dir. Paths of modules this nginx was built without would be unknown
// directives, so they are left out.
func nginxTempPaths(dir, nginxV string) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "    client_body_temp_path %s;\n    proxy_temp_path %s;\n",
		q(filepath.Join(dir, "client_body")), q(filepath.Join(dir, "proxy_temp")))
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !strings.Contains(nginxV, "--without-http_"+m+"_module") {
			fmt.Fprintf(&b, "    %s_temp_path %s;\n", m, q(filepath.Join(dir, m)))
		}
	}
	return b.String()
}

// nginxMain is the part of an nginx configuration outside http{}: in the
// foreground, with a master and `workers` worker processes, logging errors
// to stderr.
func nginxMain(dir, workers string) string {
	return fmt.Sprintf(`daemon off;
master_process on;
worker_processes %s;
pid %s;
error_log stderr warn;
events { worker_connections 4096; }
`, workers, strconv.Quote(filepath.Join(dir, "nginx.pid")))
}

// upstreamNginxConfig is the mTLS upstream: it requires a client
// certificate from the CA, answers "/" with "ok\n" and serves the 1 MiB
// file, and keeps connections open for a long time.
func upstreamNginxConfig(dir, nginxV, workers string, f files, port int) string {
	q := strconv.Quote
	return originNginxConfig(dir, nginxV, workers, f, fmt.Sprintf(`        listen 127.0.0.1:%d ssl;
        server_name %s;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:upstream:10m;
`, port, upstreamHost, q(f.ServerCert), q(f.ServerKey), q(f.CA)))
}

// directNginxConfig is the no-proxy row: the upstream's content on a
// plain-HTTP listener, which wrk reaches with no proxy and no TLS.
func directNginxConfig(dir, nginxV, workers string, f files, port int) string {
	return originNginxConfig(dir, nginxV, workers, f, fmt.Sprintf("        listen 127.0.0.1:%d;\n", port))
}

// originNginxConfig is an nginx that answers "/" with "ok\n" and serves
// the 1 MiB file itself, and keeps connections open for a long time;
// listen holds the server block's listen and TLS directives.
func originNginxConfig(dir, nginxV, workers string, f files, listen string) string {
	q := strconv.Quote
	return nginxMain(dir, workers) + fmt.Sprintf(`http {
    access_log off;
%s    server {
%s        keepalive_requests 1000000;
        keepalive_timeout 300s;
        default_type application/octet-stream;
        root %s;
        location = / {
            default_type text/plain;
            return 200 %s;
        }
    }
}
`, nginxTempPaths(dir, nginxV), listen, q(f.WWW), q(smallBody))
}

// nginxForwardConfig is nginx as the mTLS originator: a plain listener,
// proxy_pass to the upstream over verified mTLS with a keep-alive pool and
// TLS session reuse.
func nginxForwardConfig(dir, nginxV, workers string, f files, port, upstreamPort int) string {
	q := strconv.Quote
	return nginxMain(dir, workers) + fmt.Sprintf(`http {
    access_log off;
%s    upstream mtls_upstream {
        server 127.0.0.1:%d;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:%d;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
        location / {
            proxy_pass https://mtls_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate %s;
            proxy_ssl_certificate_key %s;
            proxy_ssl_trusted_certificate %s;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_server_name on;
            proxy_ssl_name %s;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_session_reuse on;
        }
    }
}
`, nginxTempPaths(dir, nginxV), upstreamPort, port, q(f.ClientCert), q(f.ClientKey), q(f.CA), upstreamHost)
}

// haproxyConfig is HAProxy in HTTP mode with a verified mTLS server and
// http-reuse always. Threads are HAProxy's default (one per CPU).
func haproxyConfig(f files, port, upstreamPort int) string {
	// No maxconn: HAProxy derives it from the file descriptor limit, and
	// asking for more than the limit allows is fatal.
	return fmt.Sprintf(`global
    ssl-server-verify required

defaults
    mode http
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:%d
    default_backend mtls_upstream

backend mtls_upstream
    http-reuse always
    server up 127.0.0.1:%d ssl crt %s ca-file %s verify required sni str(%s) verifyhost %s
`, port, upstreamPort, f.ClientPEM, f.CA, upstreamHost, upstreamHost)
}

// stunnelConfig is stunnel in client mode: one TLS connection upstream per
// client connection, verified chain and host name.
func stunnelConfig(f files, port, upstreamPort int) string {
	return fmt.Sprintf(`foreground = yes
pid =
debug = warning

[bench]
client = yes
accept = 127.0.0.1:%d
connect = 127.0.0.1:%d
cert = %s
key = %s
CAfile = %s
verifyChain = yes
checkHost = %s
sni = %s
`, port, upstreamPort, f.ClientCert, f.ClientKey, f.CA, upstreamHost, upstreamHost)
}

// proxyDef is one proxy under test.
type proxyDef struct {
	Name string
	// Level is "http" for a proxy that pools upstream connections across
	// client connections, "tcp" for a tunnel (one upstream connection per
	// client connection), "none" for the no-proxy row.
	Level string
	// Forward: the proxy takes absolute-form requests (HTTP_PROXY clients);
	// otherwise it is a plain listener for origin-form requests.
	Forward bool
	// Peer is false for mtlsproxy itself.
	Peer bool
	// Binary names the program, looked up in $PATH (empty for mtlsproxy,
	// which the harness builds).
	Binary  []string
	Install string // how to get it
	Note    string // what is special about this row
	// Optional proxies run only when asked for with -proxies.
	Optional bool
	// MITM rows intercept CONNECT and run only in MITM cases; the other
	// rows never run in them.
	MITM bool
	// Baseline rows run an mtlsproxy row with the -baseline binary.
	Baseline bool
	// ABOf names the row that differs from this one only by one switch
	// (an accelerator): the report gives their ratio per case.
	ABOf string
	// args for mtlsproxy rows
	mtlsArgs []string
}

// baselineSuffix ends the name of a row run with the -baseline binary.
const baselineSuffix = "@baseline"

// baseName is a row's name without baselineSuffix: the row whose
// configuration it has.
func baseName(name string) string { return strings.TrimSuffix(name, baselineSuffix) }

// baselineDef is mtlsproxy row p run with the -baseline binary.
func baselineDef(p proxyDef) proxyDef {
	p.Name += baselineSuffix
	p.Baseline = true
	p.Note += "; with the -baseline binary"
	if p.ABOf != "" {
		p.ABOf += baselineSuffix
	}
	return p
}

// withBaselines puts after every mtlsproxy row the same row with the
// -baseline binary.
func withBaselines(names []string) ([]string, error) {
	var out []string
	n := 0
	for _, name := range names {
		out = append(out, name)
		if p, _ := proxyByName(name); p.mtlsArgs != nil && !p.Baseline {
			out = append(out, name+baselineSuffix)
			n++
		}
	}
	if n == 0 {
		return nil, errors.New("-baseline: no mtlsproxy row selected")
	}
	return out, nil
}

// allProxies lists every proxy the harness knows, in table order.
var allProxies = []proxyDef{
	{Name: "mtlsproxy-forward", Level: "http", Forward: true, mtlsArgs: []string{"forward"},
		Note: "forward mode, absolute-form requests, default info-level JSON access log to /dev/null"},
	{Name: "mtlsproxy-gateway", Level: "http", mtlsArgs: []string{"gateway"},
		Note: "gateway mode (--upstream), default info-level JSON access log to /dev/null"},
	{Name: "mtlsproxy-forward-warn", Level: "http", Forward: true, mtlsArgs: []string{"forward", "--log-level", "warn"},
		Note: "forward mode with --log-level warn: no access log (shows what logging costs)"},
	{Name: "mtlsproxy-gateway-warn", Level: "http", mtlsArgs: []string{"gateway", "--log-level", "warn"}, Optional: true,
		Note: "gateway mode with --log-level warn"},
	{Name: "mtlsproxy-forward-workers", Level: "http", Forward: true,
		mtlsArgs: []string{"forward", "--workers", strconv.Itoa(runtime.NumCPU()), "--log-level", "warn"}, ABOf: "mtlsproxy-forward-warn",
		Note: "forward mode with --workers set to the number of CPUs (one scheduler thread each) and --log-level warn"},
	{Name: "nginx", Level: "http", Peer: true, Binary: []string{"nginx", "/usr/sbin/nginx"}, Install: "apt-get install nginx-light",
		Note: "proxy_pass https:// with proxy_ssl_certificate, upstream keepalive 64, proxy_ssl_session_reuse; auto workers; no access log"},
	{Name: "haproxy", Level: "http", Peer: true, Binary: []string{"haproxy", "/usr/sbin/haproxy"}, Install: "apt-get install haproxy",
		Note: "mode http, server ... ssl crt ... verify required, http-reuse always; default threads; no log"},
	{Name: "stunnel", Level: "tcp", Peer: true, Binary: []string{"stunnel4", "stunnel", "/usr/bin/stunnel4"}, Install: "apt-get install stunnel4",
		Note: "client = yes, verifyChain, checkHost; TCP level: one upstream TLS connection per client connection"},
	{Name: "ghostunnel", Level: "tcp", Peer: true, Binary: []string{"ghostunnel"},
		Install: "not a Debian package: put a release binary from https://github.com/ghostunnel/ghostunnel/releases in $PATH",
		Note:    "ghostunnel client, TCP level"},
	{Name: "no-proxy", Level: "none", Binary: []string{"nginx", "/usr/sbin/nginx"}, Install: "apt-get install nginx-light",
		Note: "not a proxy: wrk straight to an nginx that answers itself over plain HTTP (same body, same 1 MiB file; auto workers; no access log). The ceiling this machine and wrk reach with no proxy and no TLS"},
	{Name: "mtlsproxy-mitm", Level: "http", MITM: true, mtlsArgs: []string{"mitm"},
		Note: "config file with mitm_ca from `mtlsproxy ca init --permit api.internal` and a route with connect: mitm; default info-level JSON access log to /dev/null"},
	{Name: "mitmproxy", Level: "http", Peer: true, MITM: true, Binary: []string{"mitmdump"}, Install: "apt-get install mitmproxy",
		Note: "mitmdump, regular proxy mode, client_certs, ssl_verify_upstream_trusted_ca, termlog_verbosity=error, flow_detail=0; clients CONNECT 127.0.0.1:PORT with SNI api.internal"},
}

// lookBinary finds the first candidate that exists.
func lookBinary(candidates []string) (string, bool) {
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			return p, true
		}
	}
	return "", false
}

// mtlsproxyArgs are the arguments of `mtlsproxy run` for a row:
// "forward" or "gateway", then any extra flags.
func mtlsproxyArgs(spec []string, f files, port, adminPort, upstreamPort int) []string {
	args := []string{"run",
		"--listen", "127.0.0.1:" + strconv.Itoa(port),
		"--admin", "127.0.0.1:" + strconv.Itoa(adminPort),
		"--cert", f.ClientCert, "--key", f.ClientKey, "--cacert", f.CA,
		"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", upstreamHost, upstreamPort),
	}
	switch spec[0] {
	case "forward":
		args = append(args, "--allow", upstreamHost)
	case "gateway":
		args = append(args, "--upstream", fmt.Sprintf("https://%s:%d", upstreamHost, upstreamPort))
	}
	return append(args, spec[1:]...)
}

// ghostunnelArgs runs ghostunnel as a client in front of the upstream.
func ghostunnelArgs(f files, port, upstreamPort int) []string {
	return []string{"client",
		"--listen", "127.0.0.1:" + strconv.Itoa(port),
		"--target", "127.0.0.1:" + strconv.Itoa(upstreamPort),
		"--keystore", f.ClientPEM,
		"--cacert", f.CA,
		"--override-server-name", upstreamHost,
	}
}

// writeFile writes a config file into dir and returns its path.
func writeFile(dir, name, content string) (string, error) {
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, []byte(content), 0o644)
}
