package proxy

import (
	"strings"
	"testing"
)

func TestHostPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		host    string
		port    string
		want    bool
	}{
		{"api.internal", "api.internal", "443", true},
		{"api.internal", "api.internal", "8443", true},
		{"API.Internal.", "api.internal", "443", true},
		{"api.internal", "x.api.internal", "443", false},
		{"api.internal", "api.internal.evil", "443", false},
		{"api.internal:8443", "api.internal", "8443", true},
		{"api.internal:8443", "api.internal", "443", false},
		{"*.example.com", "a.example.com", "443", true},
		{"*.example.com", "a.b.example.com", "443", true},
		{"*.example.com", "example.com", "443", false},
		{"*.example.com", "evilexample.com", "443", false},
		{"*.example.com", "example.com.evil", "443", false},
		{"*.example.com:8443", "a.example.com", "443", false},
		{"*", "anything.at.all", "1", true},
		{"*:8443", "anything", "8443", true},
		{"*:8443", "anything", "443", false},
		{"10.0.0.5", "10.0.0.5", "443", true},
		{"10.0.0.5", "10.0.0.50", "443", false},
		{"[::1]:8443", "::1", "8443", true},
		{"[::1]", "::1", "443", true},
		{"::1", "::1", "443", true},
		{"[0:0::1]", "::1", "443", true},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"/"+tt.host+":"+tt.port, func(t *testing.T) {
			p, err := ParseHostPattern(tt.pattern)
			if err != nil {
				t.Fatalf("ParseHostPattern(%q): %v", tt.pattern, err)
			}
			if got := p.Match(NormalizeHost(tt.host), tt.port); got != tt.want {
				t.Errorf("%q.Match(%q, %q) = %v; want %v", tt.pattern, tt.host, tt.port, got, tt.want)
			}
		})
	}
}

func TestHostPatternErrors(t *testing.T) {
	for _, s := range []string{"", "*foo.com", "foo.*.com", "*.", "a..b", "api.internal:0", "api.internal:99999",
		"api.internal:http", "[::1", "[nope]:80", "::1:8443:x:y:z:q", "a b", "api.internal:08", "*.*.com", "exa$mple.com"} {
		t.Run(s, func(t *testing.T) {
			if p, err := ParseHostPattern(s); err == nil {
				t.Errorf("ParseHostPattern(%q) = %+v; want an error", s, p)
			} else if !strings.Contains(err.Error(), "host pattern") {
				t.Errorf("error %q does not say which pattern", err)
			}
		})
	}
}

func FuzzHostPattern(f *testing.F) {
	for _, s := range []string{"api.internal", "*.example.com:8443", "*", "[::1]:443", "10.0.0.1", "*.", "a..b"} {
		f.Add(s, "a.example.com", "443")
	}
	f.Fuzz(func(t *testing.T, pattern, host, port string) {
		p, err := ParseHostPattern(pattern)
		if err != nil {
			return
		}
		h := NormalizeHost(host)
		if p.suffix != "" && p.Match(strings.TrimPrefix(p.suffix, "."), port) {
			t.Errorf("%q matches its bare suffix", pattern)
		}
		if p.Match(h, port) && !p.any && p.suffix == "" && h != p.exact {
			t.Errorf("exact pattern %q matched different host %q", pattern, h)
		}
		if p.suffix != "" && p.Match(h, port) && !strings.HasSuffix(h, p.suffix) {
			t.Errorf("wildcard %q matched %q", pattern, h)
		}
	})
}

func TestRemoveHopHeaders(t *testing.T) {
	h := map[string][]string{
		"Connection":          {"close, X-Private"},
		"X-Private":           {"secret"},
		"Keep-Alive":          {"timeout=5"},
		"Proxy-Authorization": {"Basic Zm9vOmJhcg=="},
		"Proxy-Connection":    {"keep-alive"},
		"Te":                  {"trailers, deflate"},
		"Upgrade":             {"h2c"},
		"Accept-Encoding":     {"gzip"},
		"X-Keep":              {"1"},
	}
	removeHopHeaders(h, false)
	for _, gone := range []string{"Connection", "X-Private", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Upgrade"} {
		if v, ok := h[gone]; ok {
			t.Errorf("%s survived: %q", gone, v)
		}
	}
	if got := h["Te"]; len(got) != 1 || got[0] != "trailers" {
		t.Errorf("Te = %q; want [trailers]", got)
	}
	for _, kept := range []string{"Accept-Encoding", "X-Keep"} {
		if _, ok := h[kept]; !ok {
			t.Errorf("%s was removed", kept)
		}
	}

	ws := map[string][]string{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Keep-Alive": {"1"}}
	if !isUpgrade(ws) {
		t.Fatal("isUpgrade(websocket handshake) = false")
	}
	removeHopHeaders(ws, true)
	if ws["Upgrade"] == nil || ws["Connection"] == nil || ws["Keep-Alive"] != nil {
		t.Errorf("upgrade headers after removal: %v", ws)
	}
}

// mustParseHostPattern parses a pattern known to be valid.
func mustParseHostPattern(s string) HostPattern {
	p, err := ParseHostPattern(s)
	if err != nil {
		panic(err)
	}
	return p
}
