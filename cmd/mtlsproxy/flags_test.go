package main

import (
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
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
			key, addr, err := parseResolve(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseResolve(%q) = %q, %q, %v; want error containing %q", tt.in, key, addr, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "--resolve") {
					t.Errorf("error %q does not name --resolve", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseResolve(%q): %v", tt.in, err)
			}
			if key != tt.key || addr != tt.addr {
				t.Errorf("parseResolve(%q) = %q, %q; want %q, %q", tt.in, key, addr, tt.key, tt.addr)
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
		key, addr, err := parseResolve(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--resolve ") {
				t.Errorf("parseResolve(%q) error %q does not start with --resolve", s, err)
			}
			return
		}
		host, port, err := net.SplitHostPort(key)
		if err != nil {
			t.Fatalf("parseResolve(%q) key %q: %v", s, key, err)
		}
		if host == "" {
			t.Errorf("parseResolve(%q) key %q has an empty host", s, key)
		}
		if proxy.NormalizeHost(host) != host {
			t.Errorf("parseResolve(%q) key host %q is not normalized (%q): the dialer would never match it", s, host, proxy.NormalizeHost(host))
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			t.Errorf("parseResolve(%q) key port %q is not a port", s, port)
		}
		ip, dport, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("parseResolve(%q) addr %q: %v", s, addr, err)
		}
		if net.ParseIP(ip) == nil {
			t.Errorf("parseResolve(%q) addr %q: %q is not an IP", s, addr, ip)
		}
		if n, err := strconv.Atoi(dport); err != nil || n < 1 || n > 65535 {
			t.Errorf("parseResolve(%q) addr port %q is not a port", s, dport)
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
			err := checkListen("--listen", tt.addr, tt.unsafe)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("checkListen(%q, unsafe=%v) = %v; want nil", tt.addr, tt.unsafe, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("checkListen(%q, unsafe=%v) = %v; want error containing %q", tt.addr, tt.unsafe, err, tt.wantErr)
			case err != nil && !strings.HasPrefix(err.Error(), "--listen "):
				t.Errorf("error %q does not start with the flag name", err)
			}
		})
	}
}

// parseWithEnv parses run's flags with env standing in for the environment.
func parseWithEnv(env map[string]string, args ...string) (*runConfig, error) {
	c := &cli{stdout: &syncBuffer{}, stderr: &syncBuffer{}, getenv: func(k string) string { return env[k] }}
	return c.parseRunFlags(args)
}

func TestRunFlagsEnvironment(t *testing.T) {
	defaults := runConfig{Listen: "127.0.0.1:8080", LogLevel: "info", LogFormat: "json", Workers: 1,
		ShutdownTimeout: 30 * time.Second, ReadHeaderTimeout: 30 * time.Second, ClientIdleTimeout: 2 * time.Minute,
		DialTimeout: 10 * time.Second, TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 60 * time.Second,
		IdleConnTimeout: 90 * time.Second, ReloadInterval: time.Minute, ExpiryWarning: 7 * 24 * time.Hour, HTTP2: true, SocketMode: "0660"}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want func(*runConfig) // applied to a copy of defaults
	}{
		{"defaults", nil, nil, func(*runConfig) {}},
		{"allow list from env",
			map[string]string{"MTLSPROXY_ALLOW": "a.internal,*.b.internal"}, nil,
			func(c *runConfig) { c.Allow = []string{"a.internal", "*.b.internal"} }},
		{"list items are trimmed",
			map[string]string{"MTLSPROXY_CACERT": "/a.pem, /b.pem", "MTLSPROXY_RESOLVE": "h:443:127.0.0.1 , g:443:127.0.0.2"}, nil,
			func(c *runConfig) {
				c.CACerts = []string{"/a.pem", "/b.pem"}
				c.Resolve = []string{"h:443:127.0.0.1", "g:443:127.0.0.2"}
			}},
		{"flag wins over env",
			map[string]string{"MTLSPROXY_ALLOW": "a.internal,*.b.internal", "MTLSPROXY_LISTEN": "127.0.0.1:9"},
			[]string{"--allow", "c.internal", "--listen", "127.0.0.1:7"},
			func(c *runConfig) { c.Allow, c.Listen = []string{"c.internal"}, "127.0.0.1:7" }},
		{"flag wins even when it is the default value",
			map[string]string{"MTLSPROXY_LOG_LEVEL": "debug"}, []string{"--log-level", "info"},
			func(*runConfig) {}},
		{"dashes become underscores",
			map[string]string{"MTLSPROXY_SERVER_NAME": "api.internal", "MTLSPROXY_LOG_FORMAT": "console", "MTLSPROXY_UNSAFE_LISTEN": "true", "MTLSPROXY_LOG_LEVEL": "warn"}, nil,
			func(c *runConfig) {
				c.ServerName, c.LogFormat, c.UnsafeListen, c.LogLevel = "api.internal", "console", true, "warn"
			}},
		{"every string flag",
			map[string]string{"MTLSPROXY_CERT": "/c.crt", "MTLSPROXY_KEY": "/c.key", "MTLSPROXY_UPSTREAM": "https://api.internal"}, []string{"--cert", "/flag.crt"},
			func(c *runConfig) { c.Cert, c.Key, c.Upstream = "/flag.crt", "/c.key", "https://api.internal" }},
		{"unrelated and lowercase names ignored",
			map[string]string{"mtlsproxy_allow": "x", "MTLSPROXY_ALLOWS": "y", "ALLOW": "z"}, nil,
			func(*runConfig) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseWithEnv(tt.env, tt.args...)
			if err != nil {
				t.Fatalf("parseRunFlags: %v", err)
			}
			want := defaults
			tt.want(&want)
			got.set, want.set = nil, nil
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("parseRunFlags = %+v\nwant %+v", *got, want)
			}
		})
	}
}

func TestRunFlagsEnvironmentErrors(t *testing.T) {
	s := pkitest.New(t)
	base := map[string]string{"MTLSPROXY_CERT": s.ClientCert, "MTLSPROXY_KEY": s.ClientKey, "MTLSPROXY_ALLOW": "api.internal"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			if _, ok := m[bk]; !ok {
				m[bk] = bv
			}
		}
		return m
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantAny []string // the error must name one of these
	}{
		{"bad log level", with("MTLSPROXY_LOG_LEVEL", "bogus"), []string{"MTLSPROXY_LOG_LEVEL", "--log-level"}},
		{"bad bool", with("MTLSPROXY_UNSAFE_LISTEN", "maybe"), []string{"MTLSPROXY_UNSAFE_LISTEN"}},
		{"bad allow", with("MTLSPROXY_ALLOW", "a.internal,b.*.internal"), []string{"MTLSPROXY_ALLOW", "--allow"}},
		{"public listen", with("MTLSPROXY_LISTEN", "0.0.0.0:8080"), []string{"MTLSPROXY_LISTEN", "--listen"}},
		{"bad resolve", with("MTLSPROXY_RESOLVE", "api.internal:443"), []string{"MTLSPROXY_RESOLVE", "--resolve"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runOnce(tt.env, "run")
			if err == nil {
				t.Fatal("run succeeded; want an error")
			}
			for _, w := range tt.wantAny {
				if strings.Contains(err.Error(), w) {
					return
				}
			}
			t.Errorf("error %q; want it to name one of %q", err, tt.wantAny)
		})
	}
}

// TestValidateUnsafeListen checks --unsafe-listen without opening a port on
// every interface.
func TestValidateUnsafeListen(t *testing.T) {
	s := pkitest.New(t)
	for _, unsafe := range []bool{false, true} {
		t.Run("unsafe="+strconv.FormatBool(unsafe), func(t *testing.T) {
			args := []string{"--listen", "0.0.0.0:8080", "--cert", s.ClientCert, "--key", s.ClientKey, "--allow", "api.internal"}
			if unsafe {
				args = append(args, "--unsafe-listen")
			}
			cfg, err := parseWithEnv(nil, args...)
			if err != nil {
				t.Fatal(err)
			}
			st, err := cfg.validate()
			if unsafe {
				if err != nil {
					t.Errorf("validate with --unsafe-listen: %v", err)
				} else if len(st.routes) != 1 || st.routes[0].opts.Identity == nil || len(st.routes[0].opts.Hosts) != 1 {
					t.Errorf("validate returned routes %+v; want one route with an identity and one host", st.routes)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "--unsafe-listen") {
				t.Errorf("validate = %v; want an error naming --unsafe-listen", err)
			}
		})
	}
}

func TestStringList(t *testing.T) {
	var l stringList
	for _, v := range []string{"a", "b,c", ""} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"a", "b,c", ""}; !reflect.DeepEqual([]string(l), want) {
		t.Errorf("after Set: %q; want %q", []string(l), want)
	}
	if got, want := l.String(), "a,b,c,"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
}

func TestValidateWorkers(t *testing.T) {
	s := pkitest.New(t)
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string // "" for no error
	}{
		{nil, nil, ""},
		{[]string{"--workers", "2"}, nil, ""},
		{nil, map[string]string{"MTLSPROXY_WORKERS": "4"}, ""},
		{[]string{"--workers", "0"}, nil, "--workers 0: want 1 to 64"},
		{[]string{"--workers", "65"}, nil, "--workers 65: want 1 to 64"},
		{[]string{"--workers", "2", "--pprof"}, nil, "--workers 2: the profiler sees one process; profile with one worker"},
	} {
		args := append([]string{"--cert", s.ClientCert, "--key", s.ClientKey, "--allow", "api.internal"}, c.args...)
		cfg, err := parseWithEnv(c.env, args...)
		if err != nil {
			t.Fatal(err)
		}
		pl, err := cfg.validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v %v: %v", c.args, c.env, err)
		case c.want == "" && pl.workers != cfg.Workers:
			t.Errorf("%v %v: plan has %d workers; want %d", c.args, c.env, pl.workers, cfg.Workers)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: error %v; want %q", c.args, err, c.want)
		}
	}
}
