package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

const demoUsage = `Usage: mtlsproxy demo [--listen ADDR]

Show mtlsproxy at work without any setup. The demo
  1. makes a throwaway CA, a server certificate for demo.internal and a
     client certificate, in a temporary directory;
  2. starts an HTTPS server on 127.0.0.1 that requires a client certificate
     and answers with the subject it saw;
  3. starts the proxy (127.0.0.1:8080, or a free port if that is taken) and
     sends one request through it;
  4. prints a curl command that works while the demo runs.
Press Ctrl-C to stop; the temporary directory is removed.

Flags:
  --listen ADDR   proxy listener (default 127.0.0.1:8080)
  -h, --help      show this help
`

const demoHost = "demo.internal"

func (c *cli) demoCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listenAddr := fs.String("listen", "127.0.0.1:8080", "")
	if err := c.parseFlags(fs, args, demoUsage); err != nil {
		return ignoreHelp(err)
	}
	if err := config.CheckListen(*listenAddr, false); err != nil {
		return fmt.Errorf("demo --listen: %w", err)
	}
	if strings.HasPrefix(*listenAddr, "unix:") {
		return fmt.Errorf("demo --listen %s: the demo listens on TCP only (the curl line needs a host:port)", *listenAddr)
	}
	dir, err := os.MkdirTemp("", "mtlsproxy-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)
	files, err := writeDemoPKI(dir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	upstream, upAddr, err := startDemoUpstream(files)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer upstream.Close()
	upPort := upAddr.(*net.TCPAddr).Port

	proxyAddr := *listenAddr
	if ln, err := net.Listen("tcp", proxyAddr); err != nil {
		proxyAddr = "127.0.0.1:0"
	} else {
		ln.Close()
	}
	resolve := demoHost + ":443:127.0.0.1:" + strconv.Itoa(upPort)
	runArgs := []string{
		"--listen", proxyAddr,
		"--cert", files.clientCert, "--key", files.clientKey,
		"--cacert", files.caCert,
		"--allow", demoHost,
		"--resolve", resolve,
		"--log-format", "console",
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan net.Addr, 1)
	inner := &cli{stdout: c.stdout, stderr: c.stderr, getenv: func(string) string { return "" },
		onListen: func(_ string, a net.Addr) { ready <- a }}
	done := make(chan error, 1)
	go func() { done <- inner.runCmd(ctx, runArgs) }()

	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		return fmt.Errorf("demo: proxy did not start: %w", err)
	}
	proxyURL := "http://" + addr.String()
	target := "http://" + demoHost + "/hello"

	fmt.Fprintf(c.stdout, "\nmtlsproxy demo\n  upstream: https://%s (really 127.0.0.1:%d), requires a client certificate\n  proxy:    %s\n\n", demoHost, upPort, proxyURL)
	fmt.Fprintf(c.stdout, "Sending GET %s through the proxy...\n", target)
	body, status, err := demoRequest(ctx, proxyURL, target)
	if err != nil {
		cancel()
		<-done
		return fmt.Errorf("demo: request through the proxy failed: %w", err)
	}
	fmt.Fprintf(c.stdout, "  %s\n  %s\n", status, body)
	fmt.Fprintf(c.stdout, "Try it yourself while the demo runs (Ctrl-C to stop):\n\n  curl -x %s %s\n\n", proxyURL, target)
	fmt.Fprintf(c.stdout, "The same proxy, started by hand:\n\n  mtlsproxy run --listen %s --cert %s --key %s --cacert %s --allow %s --resolve %s\n\n",
		addr, files.clientCert, files.clientKey, files.caCert, demoHost, resolve)
	return <-done
}

type demoFiles struct {
	caCert, serverCert, serverKey, clientCert, clientKey string
}

func writeDemoPKI(dir string) (*demoFiles, error) {
	ca, err := pki.NewCA("mtlsproxy demo CA")
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue(pki.LeafOptions{CommonName: demoHost, DNSNames: []string{demoHost}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		return nil, err
	}
	client, err := ca.Issue(pki.LeafOptions{CommonName: "demo-client", Client: true})
	if err != nil {
		return nil, err
	}
	f := &demoFiles{}
	if f.caCert, err = ca.WriteCert(dir, "ca"); err != nil {
		return nil, err
	}
	if f.serverCert, f.serverKey, err = server.WriteFiles(dir, "server"); err != nil {
		return nil, err
	}
	if f.clientCert, f.clientKey, err = client.WriteFiles(dir, "client"); err != nil {
		return nil, err
	}
	return f, nil
}

// startDemoUpstream serves HTTPS on 127.0.0.1, requiring a client
// certificate from the demo CA, and answers with the subject it saw.
func startDemoUpstream(f *demoFiles) (*http.Server, net.Addr, error) {
	cert, err := tls.LoadX509KeyPair(f.serverCert, f.serverKey)
	if err != nil {
		return nil, nil, err
	}
	pool, err := tlsconf.LoadCAFiles([]string{f.caCert})
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
				demoHost, subject, tls.VersionName(r.TLS.Version), r.URL.Path)
		}),
	}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr(), nil
}

func demoRequest(ctx context.Context, proxyURL, target string) (body, status string, err error) {
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
