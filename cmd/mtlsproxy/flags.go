package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

func osGetenv(k string) string { return os.Getenv(k) }

// parseResolve parses a --resolve value HOST:PORT:ADDR, where ADDR is an IP
// address (IPv6 in brackets) optionally followed by :PORT to dial another
// port. It returns the normalized "host:port" key and the address to dial.
func parseResolve(s string) (key, addr string, err error) {
	host, rest, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("--resolve %q: want HOST:PORT:ADDR", s)
	}
	port, target, ok := strings.Cut(rest, ":")
	if !ok {
		return "", "", fmt.Errorf("--resolve %q: want HOST:PORT:ADDR", s)
	}
	// Check the host as --server-name is checked: "." or "a..b" would
	// otherwise give a key (":443", "a..b:443") that no request host matches.
	if strings.ContainsAny(host, "[]/ *") {
		return "", "", fmt.Errorf("--resolve %q: bad host %q", s, host)
	}
	if _, err := proxy.ParseHostPattern(host); err != nil {
		return "", "", fmt.Errorf("--resolve %q: bad host %q", s, host)
	}
	if !validPort(port) {
		return "", "", fmt.Errorf("--resolve %q: bad port %q", s, port)
	}
	ip, dialPort := target, port
	if strings.HasPrefix(target, "[") {
		end := strings.IndexByte(target, ']')
		if end < 0 {
			return "", "", fmt.Errorf("--resolve %q: missing ']' in IPv6 address", s)
		}
		ip = target[1:end]
		if tail := target[end+1:]; tail != "" {
			if !strings.HasPrefix(tail, ":") || !validPort(tail[1:]) {
				return "", "", fmt.Errorf("--resolve %q: bad port after address", s)
			}
			dialPort = tail[1:]
		}
	} else if strings.Count(target, ":") == 1 {
		ip, dialPort, _ = strings.Cut(target, ":")
		if !validPort(dialPort) {
			return "", "", fmt.Errorf("--resolve %q: bad port %q", s, dialPort)
		}
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return "", "", fmt.Errorf("--resolve %q: %q is not an IP address (IPv6 goes in brackets)", s, ip)
	}
	return net.JoinHostPort(proxy.NormalizeHost(host), port), net.JoinHostPort(a.Unmap().String(), dialPort), nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == p
}

// checkListen rejects addresses other than loopback and unix sockets unless
// unsafe is set: whoever reaches the listener borrows the client identity.
func checkListen(flagName, addr string, unsafe bool) error {
	if strings.HasPrefix(addr, "unix:") {
		if len(addr) == len("unix:") {
			return fmt.Errorf("%s %q: empty socket path", flagName, addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want HOST:PORT or unix:PATH", flagName, addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s %q: bad port %q", flagName, addr, port)
	}
	if unsafe {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		return nil
	}
	what := fmt.Sprintf("%q is not a loopback address", host)
	if host == "" {
		what = "an empty host listens on every interface"
	}
	fix := "add --unsafe-listen"
	if !strings.HasPrefix(flagName, "--") {
		fix = "set unsafe_listen: true in the config file"
	}
	return fmt.Errorf("%s %s: %s, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or %s", flagName, addr, what, fix)
}

// listen opens a TCP listener, or a unix socket for "unix:PATH" with the
// given file mode. A socket file left behind by a crashed process is
// replaced; one that a live process still serves is not.
func listen(addr string, mode os.FileMode) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		// No TCP keep-alive probes on client connections: the client
		// idle timeout already closes idle ones, and setting the probes
		// up costs four system calls per accepted connection.
		lc := net.ListenConfig{KeepAlive: -1, Control: deferAccept}
		return lc.Listen(context.Background(), "tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// The socket is created with the umask's mode; set the intended one
	// before anyone can use it (net.UnixListener removes the file on
	// Close).
	if err := os.Chmod(path, mode); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

// parseUpstream checks a gateway upstream URL.
func parseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("--upstream %q: %w", s, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("--upstream %q: must start with https://", s)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("--upstream %q: no host", s)
	case u.User != nil:
		return nil, fmt.Errorf("--upstream %q: user info is not allowed in the URL", s)
	case u.Fragment != "":
		return nil, fmt.Errorf("--upstream %q: fragment is not allowed", s)
	}
	if p := u.Port(); p != "" && !validPort(p) {
		return nil, fmt.Errorf("--upstream %q: bad port %q", s, p)
	}
	return u, nil
}

// upstreamPattern is the host pattern that allows exactly the gateway
// upstream.
func upstreamPattern(u *url.URL) (proxy.HostPattern, error) {
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return proxy.ParseHostPattern(net.JoinHostPort(u.Hostname(), port))
}

var errNothingAllowed = errors.New("nothing is allowed: add --allow HOST (repeatable; '*.corp.example' for a domain, '*' for any host) for forward mode, or --upstream https://HOST[:PORT] for gateway mode")

func loadPool(file string) (*x509.CertPool, error) {
	return tlsconf.LoadCAFiles([]string{file})
}
