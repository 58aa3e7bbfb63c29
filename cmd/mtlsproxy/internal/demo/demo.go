// Package demo is the throwaway setup of "mtlsproxy demo": a CA, a server
// and a client certificate on disk, an HTTPS upstream that requires the
// client certificate, and the request sent through the proxy.
package demo

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

// Host is the upstream's name, which the proxy resolves to 127.0.0.1.
const Host = "demo.internal"

// Files are the demo's PKI on disk.
type Files struct {
	CACert, serverCert, serverKey, ClientCert, ClientKey string
}

// WritePKI makes a throwaway CA, a server certificate for Host and a
// client certificate, in dir.
func WritePKI(dir string) (*Files, error) {
	ca, err := pki.NewCA("mtlsproxy demo CA")
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue(pki.LeafOptions{CommonName: Host, DNSNames: []string{Host}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		return nil, err
	}
	client, err := ca.Issue(pki.LeafOptions{CommonName: "demo-client", Client: true})
	if err != nil {
		return nil, err
	}
	f := &Files{}
	if f.CACert, err = ca.WriteCert(dir, "ca"); err != nil {
		return nil, err
	}
	if f.serverCert, f.serverKey, err = server.WriteFiles(dir, "server"); err != nil {
		return nil, err
	}
	if f.ClientCert, f.ClientKey, err = client.WriteFiles(dir, "client"); err != nil {
		return nil, err
	}
	return f, nil
}

// StartUpstream serves HTTPS on 127.0.0.1, requiring a client certificate
// from the demo CA, and answers with the subject it saw.
func StartUpstream(f *Files) (*http.Server, net.Addr, error) {
	cert, err := tls.LoadX509KeyPair(f.serverCert, f.serverKey)
	if err != nil {
		return nil, nil, err
	}
	pool, err := tlsconf.LoadCAFiles([]string{f.CACert})
	if err != nil {
		return nil, nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			subject := r.TLS.PeerCertificates[0].Subject.String()
			fmt.Fprintf(w, "hello from %s: you presented client certificate %q over %s, and asked for %s\n",
				Host, subject, tls.VersionName(r.TLS.Version), r.URL.Path)
		}),
	}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr(), nil
}

// Request sends GET target through the proxy at proxyURL and returns the
// answer's body and status.
func Request(ctx context.Context, proxyURL, target string) (body, status string, err error) {
	pu, err := url.Parse(proxyURL)
	if err != nil {
		return "", "", err
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return "", "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", errors.New(resp.Status + ": " + string(b))
	}
	return string(trimNewline(b)), resp.Status, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
