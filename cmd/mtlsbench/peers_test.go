package main

import (
	"reflect"
	"strings"
	"testing"
)

var testFiles = files{Dir: "/t", CA: "/t/ca.crt", ServerCert: "/t/server.crt", ServerKey: "/t/server.key",
	ClientCert: "/t/client.crt", ClientKey: "/t/client.key", ClientPEM: "/t/client.pem", WWW: "/t/www"}

func containsAll(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, text)
		}
	}
}

func TestUpstreamNginxConfig(t *testing.T) {
	c := upstreamNginxConfig("/t/upstream", "configure arguments: --without-http_uwsgi_module", "auto", testFiles, 8443)
	containsAll(t, "upstream config", c,
		"worker_processes auto;", "master_process on;", "daemon off;",
		"listen 127.0.0.1:8443 ssl;", `ssl_client_certificate "/t/ca.crt";`, "ssl_verify_client on;",
		"keepalive_requests 1000000;", `root "/t/www";`, `return 200 "ok\n";`,
		`fastcgi_temp_path "/t/upstream/fastcgi";`)
	if strings.Contains(c, "uwsgi_temp_path") {
		t.Error("temp path of a module nginx lacks")
	}
}

func TestNginxForwardConfig(t *testing.T) {
	c := nginxForwardConfig("/t/nginx", "", "2", testFiles, 8080, 8443)
	containsAll(t, "nginx proxy config", c,
		"worker_processes 2;", "server 127.0.0.1:8443;", "keepalive 64;", "listen 127.0.0.1:8080;",
		"proxy_pass https://mtls_upstream;", "proxy_http_version 1.1;", `proxy_set_header Connection "";`,
		`proxy_ssl_certificate "/t/client.crt";`, `proxy_ssl_certificate_key "/t/client.key";`,
		`proxy_ssl_trusted_certificate "/t/ca.crt";`, "proxy_ssl_verify on;", "proxy_ssl_server_name on;",
		"proxy_ssl_name api.internal;", "proxy_ssl_session_reuse on;")
}

func TestHAProxyAndStunnelConfig(t *testing.T) {
	containsAll(t, "haproxy config", haproxyConfig(testFiles, 8080, 8443),
		"mode http", "bind 127.0.0.1:8080", "http-reuse always",
		"server up 127.0.0.1:8443 ssl crt /t/client.pem ca-file /t/ca.crt verify required sni str(api.internal) verifyhost api.internal")
	containsAll(t, "stunnel config", stunnelConfig(testFiles, 8080, 8443),
		"foreground = yes", "client = yes", "accept = 127.0.0.1:8080", "connect = 127.0.0.1:8443",
		"cert = /t/client.crt", "key = /t/client.key", "CAfile = /t/ca.crt", "verifyChain = yes", "checkHost = api.internal")
}

func TestMtlsproxyArgs(t *testing.T) {
	fwd := mtlsproxyArgs([]string{"forward", "--log-level", "warn"}, testFiles, 8080, 9901, 8443)
	want := []string{"run", "--listen", "127.0.0.1:8080", "--admin", "127.0.0.1:9901",
		"--cert", "/t/client.crt", "--key", "/t/client.key", "--cacert", "/t/ca.crt",
		"--resolve", "api.internal:8443:127.0.0.1", "--allow", "api.internal", "--log-level", "warn"}
	if !reflect.DeepEqual(fwd, want) {
		t.Errorf("forward:\n got %v\nwant %v", fwd, want)
	}
	gw := strings.Join(mtlsproxyArgs([]string{"gateway"}, testFiles, 8080, 9901, 8443), " ")
	if !strings.HasSuffix(gw, "--upstream https://api.internal:8443") || strings.Contains(gw, "--allow") {
		t.Errorf("gateway: %s", gw)
	}
}

func TestWrkRequestFor(t *testing.T) {
	b := &bench{upstreamPort: 8443}
	fwd := &runningProxy{Forward: true, Port: 8080}
	r := b.wrkRequestFor(fwd, benchCase{Path: "/1m.bin"})
	if r.Path != "http://api.internal:8443/1m.bin" || r.Headers["Host"] != "api.internal:8443" || r.Headers["Connection"] != "" {
		t.Errorf("forward keep-alive: %+v", r)
	}
	gw := &runningProxy{Port: 8081}
	r = b.wrkRequestFor(gw, benchCase{Path: "/", Close: true})
	if r.Path != "/" || r.Headers["Host"] != "" || r.Headers["Connection"] != "close" {
		t.Errorf("gateway close: %+v", r)
	}
}

func TestDirectNginxConfig(t *testing.T) {
	c := directNginxConfig("/t/no-proxy", "", "auto", testFiles, 8090)
	containsAll(t, "no-proxy config", c, "worker_processes auto;", "listen 127.0.0.1:8090;", `root "/t/www";`, `return 200 "ok\n";`)
	if strings.Contains(c, "ssl") {
		t.Errorf("the no-proxy nginx speaks TLS:\n%s", c)
	}
}
