package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// HostPattern matches upstream hosts. It is one of:
//
//	api.internal        exactly that host
//	*.corp.example      any name ending in ".corp.example", at any depth
//	                    (a.corp.example, a.b.corp.example), but not
//	                    corp.example itself and never evilcorp.example
//	*                   any host
//	10.0.0.5, [::1]     an IP literal
//
// each optionally followed by ":port". Without a port, any port matches.
// Matching is case-insensitive and ignores a trailing dot.
type HostPattern struct {
	raw    string
	any    bool
	exact  string // normalized host for an exact match
	suffix string // ".corp.example" for a wildcard
	port   string // "" for any port
}

// ParseHostPattern parses a host pattern (see HostPattern).
func ParseHostPattern(s string) (HostPattern, error) {
	p := HostPattern{raw: s}
	host, port, err := splitPatternPort(s)
	if err != nil {
		return p, fmt.Errorf("host pattern %q: %w", s, err)
	}
	p.port = port
	wildcard := strings.HasPrefix(host, "*.")
	if wildcard {
		host = host[2:]
	}
	host = NormalizeHost(host)
	switch {
	case host == "":
		return p, fmt.Errorf("host pattern %q: empty host", s)
	case host == "*" && !wildcard:
		p.any = true
	case wildcard:
		rest := host
		if err := checkHostname(rest); err != nil {
			return p, fmt.Errorf("host pattern %q: %w", s, err)
		}
		p.suffix = "." + rest
	default:
		if strings.Contains(host, "*") {
			return p, fmt.Errorf("host pattern %q: a wildcard is only allowed as the whole first label (*.example.com)", s)
		}
		if _, err := netip.ParseAddr(host); err != nil {
			if err := checkHostname(host); err != nil {
				return p, fmt.Errorf("host pattern %q: %w", s, err)
			}
		}
		p.exact = host
	}
	return p, nil
}

// String returns the pattern as written.
func (p HostPattern) String() string { return p.raw }

// Match reports whether the normalized host and port match the pattern.
func (p HostPattern) Match(host, port string) bool {
	if p.port != "" && p.port != port {
		return false
	}
	switch {
	case p.any:
		return true
	case p.suffix != "":
		return len(host) > len(p.suffix) && strings.HasSuffix(host, p.suffix)
	default:
		return host == p.exact
	}
}

// NormalizeHost lowercases a host name, removes a trailing dot and the
// brackets of an IPv6 literal, and canonicalizes IP literals.
func NormalizeHost(h string) string {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	h = strings.TrimSuffix(h, ".")
	// Only what can be an IP literal is parsed as one: a failed parse
	// allocates its error, and most hosts are names.
	if looksLikeIP(h) {
		if a, err := netip.ParseAddr(h); err == nil {
			return a.Unmap().String()
		}
	}
	return strings.ToLower(h) // no allocation when already lower case
}

func looksLikeIP(h string) bool {
	if strings.IndexByte(h, ':') >= 0 {
		return true
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return h != ""
}

func splitPatternPort(s string) (host, port string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("missing ']' in IPv6 literal")
		}
		host, rest := s[1:end], s[end+1:]
		if _, err := netip.ParseAddr(host); err != nil {
			return "", "", fmt.Errorf("bad IPv6 literal %q", host)
		}
		if rest == "" {
			return host, "", nil
		}
		if !strings.HasPrefix(rest, ":") {
			return "", "", fmt.Errorf("unexpected %q after IPv6 literal", rest)
		}
		port, err := checkPort(rest[1:])
		return host, port, err
	}
	switch strings.Count(s, ":") {
	case 0:
		return s, "", nil
	case 1:
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return "", "", err
		}
		port, err := checkPort(p)
		return h, port, err
	default:
		if _, err := netip.ParseAddr(s); err != nil {
			return "", "", errors.New("write IPv6 literals in brackets, as [::1]:8443")
		}
		return s, "", nil
	}
}

func checkPort(p string) (string, error) {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
		return "", fmt.Errorf("bad port %q", p)
	}
	return p, nil
}

// checkHostname accepts DNS names made of letters, digits, '-' and '_'.
func checkHostname(h string) error {
	if len(h) > 253 {
		return errors.New("host name longer than 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" {
			return errors.New("empty label in host name")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q longer than 63 characters", label)
		}
		for _, c := range label {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return fmt.Errorf("invalid character %q in host name", c)
			}
		}
	}
	return nil
}

// Exact returns the host and port of a pattern that names one host (not a
// wildcard); port is "" when the pattern allows any port.
func (p HostPattern) Exact() (host, port string, ok bool) {
	if p.any || p.suffix != "" {
		return "", "", false
	}
	return p.exact, p.port, true
}

// Domain is the DNS domain a pattern names: the host of an exact pattern,
// the suffix of a wildcard; "" for "*" and IP literals.
func (p HostPattern) Domain() string {
	switch {
	case p.any:
		return ""
	case p.suffix != "":
		return p.suffix[1:]
	}
	if _, err := netip.ParseAddr(p.exact); err == nil {
		return ""
	}
	return p.exact
}
