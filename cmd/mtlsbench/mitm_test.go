package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

func TestReadConnectResponse(t *testing.T) {
	for _, tc := range []struct {
		in, errPart string
	}{
		{"HTTP/1.1 200 Connection established\r\n\r\n", ""},
		{"HTTP/1.1 200 OK\r\nProxy-Agent: x\r\n\r\n", ""},
		{"HTTP/1.1 403 Forbidden\r\nContent-Length: 18\r\n\r\nhost-not-allowed\r\n", "403 Forbidden: host-not-allowed"},
		{"HTTP/1.1 200 OK\r\n\r\nsurprise", "unexpected bytes"},
		{"SSH-2.0-OpenSSH\r\n", "read CONNECT response"},
		{"", "read CONNECT response"},
	} {
		err := readConnectResponse(bufio.NewReader(strings.NewReader(tc.in)))
		switch {
		case tc.errPart == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.errPart != "" && (err == nil || !strings.Contains(err.Error(), tc.errPart)):
			t.Errorf("%q: error %v, want one with %q", tc.in, err, tc.errPart)
		}
	}
	if got := connectRequest("api.internal:8443"); got != "CONNECT api.internal:8443 HTTP/1.1\r\nHost: api.internal:8443\r\n\r\n" {
		t.Errorf("connectRequest: %q", got)
	}
}

func TestLatencyPercentiles(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	got := latencyPercentiles(lat, 50, 99)
	want := map[string]float64{"50": 50e3, "99": 99e3}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := latencyPercentiles([]time.Duration{7 * time.Microsecond}, 50, 99); got["50"] != 7 || got["99"] != 7 {
		t.Errorf("one sample: %v", got)
	}
	if got := latencyPercentiles(nil, 50); len(got) != 0 {
		t.Errorf("no samples: %v", got)
	}
}

func TestProxiesForCases(t *testing.T) {
	all, _ := selectProxies("all")
	got, err := proxiesForCases(all, []string{"mitm"})
	if err != nil || !reflect.DeepEqual(got, []string{"mtlsproxy-mitm", "mitmproxy"}) {
		t.Errorf("mitm only: %v, %v", got, err)
	}
	got, _ = proxiesForCases(all, []string{"keepalive"})
	for _, n := range got {
		if n == "mtlsproxy-mitm" || n == "mitmproxy" {
			t.Errorf("keepalive runs %s", n)
		}
	}
	if _, err := proxiesForCases([]string{"nginx"}, []string{"mitm"}); err == nil {
		t.Error("nginx in the mitm case accepted")
	}
}

func TestMITMConfigs(t *testing.T) {
	c := mtlsproxyMITMConfig(testFiles, "/t/mtlsproxy-mitm/ca", 8080, 9901, 8443)
	containsAll(t, "mtlsproxy mitm config", c,
		"listen: 127.0.0.1:8080\n", "admin: 127.0.0.1:9901\n", "  - api.internal:8443:127.0.0.1\n",
		`mitm_ca: {cert: "/t/mtlsproxy-mitm/ca/ca.crt", key: "/t/mtlsproxy-mitm/ca/ca.key"}`,
		`bench: {cert: "/t/client.crt", key: "/t/client.key"}`, `bench: {ca_files: ["/t/ca.crt"]}`,
		"  - host: api.internal\n", "connect: mitm\n")
	a := strings.Join(mitmproxyArgs(testFiles, "/t/mitmproxy/conf", 8081), " ")
	containsAll(t, "mitmdump args", a, "--listen-host 127.0.0.1 --listen-port 8081", "confdir=/t/mitmproxy/conf",
		"client_certs=/t/client.pem", "ssl_verify_upstream_trusted_ca=/t/ca.crt", "termlog_verbosity=error", "flow_detail=0")
}

// fakeMITM is an in-process intercepting proxy on loopback: it answers
// CONNECT with 200, ends TLS with a leaf for api.internal and answers
// every request with "ok\n"; every third response closes the connection.
func fakeMITM(t *testing.T) mitmTarget {
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafOptions{CommonName: upstreamHost, DNSNames: []string{upstreamHost}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil || req.Method != http.MethodConnect || req.Host != "api.internal:443" {
					io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
					return
				}
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				tc := tls.Server(c, cfg)
				br := bufio.NewReader(tc)
				for n := 1; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if n%3 == 0 {
						io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
						return
					}
					io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
				}
			}()
		}
	}()
	return mitmTarget{Proxy: l.Addr().String(), Connect: "api.internal:443", ServerName: upstreamHost,
		Host: "api.internal", Roots: ca.Pool()}
}

func TestMITMLoad(t *testing.T) {
	tg := fakeMITM(t)
	ctx := context.Background()
	if err := checkMITM(ctx, tg, "/", []byte("ok\n")); err != nil {
		t.Fatal(err)
	}
	if err := checkMITM(ctx, tg, "/", []byte("no\n")); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Errorf("wrong body: %v", err)
	}
	r, err := runMITMLoad(ctx, tg, 4, 300*time.Millisecond, "/")
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 || r.RPS <= 0 || r.Errors() != 0 || r.Latency["50"] <= 0 || r.Latency["99"] < r.Latency["50"] {
		t.Errorf("got %+v", r)
	}

	// A proxy that refuses the CONNECT: every attempt is a connect error.
	bad := tg
	bad.Connect = "elsewhere:443"
	if r, err := runMITMLoad(ctx, bad, 2, 100*time.Millisecond, "/"); err == nil || !strings.Contains(err.Error(), "403") || r.ConnectErrors == 0 {
		t.Errorf("refused CONNECT: %+v, %v", r, err)
	}
	// A client that does not trust the proxy's CA fails the handshake.
	untrusted := tg
	untrusted.Roots = nil
	if err := checkMITM(ctx, untrusted, "/", []byte("ok\n")); err == nil || !strings.Contains(err.Error(), "TLS with the proxy") {
		t.Errorf("untrusted CA: %v", err)
	}
}
