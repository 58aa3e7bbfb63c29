package config

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/proxy"
)

func TestParseResolve(t *testing.T) {
	tests := []struct {
		in        string
		key, addr string
		wantErr   string // substring; "" means success
	}{
		{in: "host:443:127.0.0.1", key: "host:443", addr: "127.0.0.1:443"},
		{in: "api.internal:8443:10.0.0.5", key: "api.internal:8443", addr: "10.0.0.5:8443"},
		{in: "api.internal:443:127.0.0.1:8443", key: "api.internal:443", addr: "127.0.0.1:8443"},
		{in: "API.Internal.:443:127.0.0.1", key: "api.internal:443", addr: "127.0.0.1:443"},
		{in: "api.internal:443:[::1]", key: "api.internal:443", addr: "[::1]:443"},
		{in: "api.internal:443:[::1]:8443", key: "api.internal:443", addr: "[::1]:8443"},
		{in: "api.internal:443:[::ffff:10.0.0.1]", key: "api.internal:443", addr: "10.0.0.1:443"},
		{in: "10.1.2.3:443:127.0.0.1", key: "10.1.2.3:443", addr: "127.0.0.1:443"},
		// Like curl, a bare IPv6 address is taken whole: the last group is
		// never read as a port.
		{in: "api.internal:443:::1", key: "api.internal:443", addr: "[::1]:443"},

		{in: "", wantErr: "HOST:PORT:ADDR"},
		{in: "api.internal", wantErr: "HOST:PORT:ADDR"},
		{in: "api.internal:443", wantErr: "HOST:PORT:ADDR"},
		{in: "api.internal:443:", wantErr: "not an IP address"},
		{in: ":443:127.0.0.1", wantErr: "bad host"},
		{in: "[::1]:443:127.0.0.1", wantErr: "bad host"},
		{in: ".:443:127.0.0.1", wantErr: "bad host"},
		{in: "..:443:127.0.0.1", wantErr: "bad host"},
		{in: "a..b:443:127.0.0.1", wantErr: "bad host"},
		{in: "*.internal:443:127.0.0.1", wantErr: "bad host"},
		{in: "*:443:127.0.0.1", wantErr: "bad host"},
		{in: "api.internal::127.0.0.1", wantErr: "bad port"},
		{in: "api.internal:0:127.0.0.1", wantErr: "bad port"},
		{in: "api.internal:70000:127.0.0.1", wantErr: "bad port"},
		{in: "api.internal:08:127.0.0.1", wantErr: "bad port"},
		{in: "api.internal:+443:127.0.0.1", wantErr: "bad port"},
		{in: "api.internal:https:127.0.0.1", wantErr: "bad port"},
		{in: "api.internal:443:127.0.0.1:0", wantErr: "bad port"},
		{in: "api.internal:443:127.0.0.1:", wantErr: "bad port"},
		{in: "api.internal:443:localhost", wantErr: "not an IP address"},
		{in: "api.internal:443:10.0.0.256", wantErr: "not an IP address"},
		{in: "api.internal:443:[::1", wantErr: "missing ']'"},
		{in: "api.internal:443:[::1]8443", wantErr: "bad port"},
		{in: "api.internal:443:[::1]:70000", wantErr: "bad port"},
		{in: "api.internal:443:[fe80::1%eth0]", wantErr: "not an IP address"},
		{in: "api.internal:443:[127.0.0.1]", wantErr: ""}, // see below
	}
	for _, tt := range tests {
		if tt.in == "api.internal:443:[127.0.0.1]" {
			// Brackets around an IPv4 address are tolerated; the result
			// must still be a plain dialable address.
			tt.key, tt.addr = "api.internal:443", "127.0.0.1:443"
		}
		t.Run(tt.in, func(t *testing.T) {
			key, addr, err := ParseResolve(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseResolve(%q) = %q, %q, %v; want error containing %q", tt.in, key, addr, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseResolve(%q): %v", tt.in, err)
			}
			if key != tt.key || addr != tt.addr {
				t.Errorf("ParseResolve(%q) = %q, %q; want %q, %q", tt.in, key, addr, tt.key, tt.addr)
			}
		})
	}
}

func FuzzParseResolve(f *testing.F) {
	for _, s := range []string{
		"host:443:127.0.0.1", "api.internal:443:127.0.0.1:8443", "a:1:[::1]", "a:1:[::1]:2",
		"A.B.:443:10.0.0.1", "a:443:[fe80::1%eth0]", "a:08:1.2.3.4", ":::", "a:1:::1", "a:1:[::ffff:1.2.3.4]:3",
		".:443:127.0.0.1", "..:443:127.0.0.1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, addr, err := ParseResolve(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), strconv.Quote(s)+": ") {
				t.Errorf("ParseResolve(%q) error %q does not start with the value", s, err)
			}
			return
		}
		host, port, err := net.SplitHostPort(key)
		if err != nil {
			t.Fatalf("ParseResolve(%q) key %q: %v", s, key, err)
		}
		if host == "" {
			t.Errorf("ParseResolve(%q) key %q has an empty host", s, key)
		}
		if proxy.NormalizeHost(host) != host {
			t.Errorf("ParseResolve(%q) key host %q is not normalized (%q): the dialer would never match it", s, host, proxy.NormalizeHost(host))
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			t.Errorf("ParseResolve(%q) key port %q is not a port", s, port)
		}
		ip, dport, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("ParseResolve(%q) addr %q: %v", s, addr, err)
		}
		if net.ParseIP(ip) == nil {
			t.Errorf("ParseResolve(%q) addr %q: %q is not an IP", s, addr, ip)
		}
		if n, err := strconv.Atoi(dport); err != nil || n < 1 || n > 65535 {
			t.Errorf("ParseResolve(%q) addr port %q is not a port", s, dport)
		}
	})
}

func TestCheckListen(t *testing.T) {
	tests := []struct {
		addr    string
		unsafe  bool
		wantErr string // substring; "" means accepted
	}{
		{addr: "127.0.0.1:8080"},
		{addr: "127.0.0.2:8080"},
		{addr: "127.0.0.1:0"},
		{addr: "[::1]:8080"},
		{addr: "localhost:8080"},
		{addr: "unix:/tmp/x"},
		{addr: "unix:relative.sock"},
		{addr: ":8080", wantErr: "every interface"},
		{addr: "0.0.0.0:8080", wantErr: "--unsafe-listen"},
		{addr: "[::]:8080", wantErr: "--unsafe-listen"},
		{addr: "10.0.0.1:80", wantErr: "not a loopback address"},
		{addr: "example.com:80", wantErr: "--unsafe-listen"},
		{addr: "10.0.0.1:80", unsafe: true},
		{addr: "0.0.0.0:8080", unsafe: true},
		{addr: ":8080", unsafe: true},
		{addr: "unix:", wantErr: "empty socket path"},
		{addr: "unix:", unsafe: true, wantErr: "empty socket path"},
		{addr: "nonsense", wantErr: "HOST:PORT or unix:PATH"},
		{addr: "nonsense", unsafe: true, wantErr: "HOST:PORT or unix:PATH"},
		{addr: "", wantErr: "HOST:PORT"},
		{addr: "127.0.0.1:http", wantErr: "bad port"},
		{addr: "127.0.0.1:", wantErr: "bad port"},
	}
	for _, tt := range tests {
		name := tt.addr
		if tt.unsafe {
			name += " unsafe"
		}
		t.Run(name, func(t *testing.T) {
			err := CheckListen(tt.addr, tt.unsafe)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkListen(%q, unsafe=%v) = %v; want nil", tt.addr, tt.unsafe, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkListen(%q, unsafe=%v) = %v; want error containing %q", tt.addr, tt.unsafe, err, tt.wantErr)
			case err != nil && !strings.HasPrefix(err.Error(), strconv.Quote(tt.addr)+": ") && !strings.HasPrefix(err.Error(), tt.addr+": "):
				t.Errorf("error %q does not start with the address", err)
			}
		})
	}
}
