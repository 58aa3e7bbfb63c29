package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"go.uber.org/zap"
)

// ParseResolve parses HOST:PORT:ADDR (--resolve, resolve:), where ADDR is
// an IP address (IPv6 in brackets) optionally followed by :PORT to dial
// another port. It returns the normalized "host:port" key and the address
// to dial.
func ParseResolve(s string) (key, addr string, err error) {
	host, rest, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("%q: want HOST:PORT:ADDR", s)
	}
	port, target, ok := strings.Cut(rest, ":")
	if !ok {
		return "", "", fmt.Errorf("%q: want HOST:PORT:ADDR", s)
	}
	// Check the host as a server name is checked: "." or "a..b" would
	// otherwise give a key (":443", "a..b:443") that no request host matches.
	if strings.ContainsAny(host, "[]/ *") {
		return "", "", fmt.Errorf("%q: bad host %q", s, host)
	}
	if _, err := proxy.ParseHostPattern(host); err != nil {
		return "", "", fmt.Errorf("%q: bad host %q", s, host)
	}
	if !validPort(port) {
		return "", "", fmt.Errorf("%q: bad port %q", s, port)
	}
	ip, dialPort := target, port
	if strings.HasPrefix(target, "[") {
		end := strings.IndexByte(target, ']')
		if end < 0 {
			return "", "", fmt.Errorf("%q: missing ']' in IPv6 address", s)
		}
		ip = target[1:end]
		if tail := target[end+1:]; tail != "" {
			if !strings.HasPrefix(tail, ":") || !validPort(tail[1:]) {
				return "", "", fmt.Errorf("%q: bad port after address", s)
			}
			dialPort = tail[1:]
		}
	} else if strings.Count(target, ":") == 1 {
		ip, dialPort, _ = strings.Cut(target, ":")
		if !validPort(dialPort) {
			return "", "", fmt.Errorf("%q: bad port %q", s, dialPort)
		}
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" {
		return "", "", fmt.Errorf("%q: %q is not an IP address (IPv6 goes in brackets)", s, ip)
	}
	return net.JoinHostPort(proxy.NormalizeHost(host), port), net.JoinHostPort(a.Unmap().String(), dialPort), nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == p
}

// CheckListen rejects addresses other than loopback and unix sockets
// unless unsafe is set: whoever reaches the listener borrows the client
// identity. The message suggests --unsafe-listen.
func CheckListen(addr string, unsafe bool) error {
	return checkListen(addr, unsafe, "add --unsafe-listen")
}

func checkListen(addr string, unsafe bool, fix string) error {
	if strings.HasPrefix(addr, "unix:") {
		if len(addr) == len("unix:") {
			return fmt.Errorf("%q: empty socket path", addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT or unix:PATH", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port %q", addr, port)
	}
	if unsafe || host == "localhost" {
		return nil
	}
	if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
		return nil
	}
	what := fmt.Sprintf("%q is not a loopback address", host)
	if host == "" {
		what = "an empty host listens on every interface"
	}
	return fmt.Errorf("%s: %s, and anyone who can reach it can use the client identity; listen on 127.0.0.1 or %s", addr, what, fix)
}

// ParseUpstream checks a gateway's upstream URL.
func ParseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("%q: must start with https://", s)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%q: no host", s)
	case u.User != nil:
		return nil, fmt.Errorf("%q: user info is not allowed in the URL", s)
	case u.Fragment != "":
		return nil, fmt.Errorf("%q: fragment is not allowed", s)
	}
	if p := u.Port(); p != "" && !validPort(p) {
		return nil, fmt.Errorf("%q: bad port %q", s, p)
	}
	return u, nil
}

// UpstreamPattern is the host pattern that allows exactly a gateway's
// upstream.
func UpstreamPattern(u *url.URL) (proxy.HostPattern, error) {
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return proxy.ParseHostPattern(net.JoinHostPort(u.Hostname(), port))
}

// ParseSocketMode parses an octal file mode for unix:PATH listeners.
func ParseSocketMode(s string) (os.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("%q: want an octal file mode such as 0660", s)
	}
	if n&0o002 != 0 {
		return 0, fmt.Errorf("%q: a world-writable socket lets any local user borrow the identity", s)
	}
	return os.FileMode(n), nil
}

// ParseLevel parses a log level.
func ParseLevel(s string) (zap.AtomicLevel, error) {
	level, err := zap.ParseAtomicLevel(s)
	if err != nil || s == "" {
		return level, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return level, nil
}

func checkFormat(s string) error {
	if s != "json" && s != "console" {
		return fmt.Errorf("%q: want json or console", s)
	}
	return nil
}

func validServerName(s string) bool {
	_, err := proxy.ParseHostPattern(s)
	return err == nil && !strings.ContainsAny(s, "*:[")
}

func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for _, c := range h {
		if c > 127 || !(c == '-' || c == '_' || c == '.' || c == '!' || c == '#' || c == '$' || c == '%' || c == '&' || c == '\'' ||
			c == '*' || c == '+' || c == '^' || c == '`' || c == '|' || c == '~' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
