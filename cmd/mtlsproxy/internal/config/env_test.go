package config

import (
	"io"
	"reflect"
	"testing"
)

// TestRunEnvironment checks how MTLSPROXY_* variables and flags combine:
// a flag on the command line wins, even at its default value; lists are
// comma-separated and trimmed; other names are ignored.
func TestRunEnvironment(t *testing.T) {
	parse := func(env map[string]string, args ...string) *Config {
		t.Helper()
		r := NewRun()
		r.FlagSet().SetOutput(io.Discard)
		if err := r.FlagSet().Parse(args); err != nil {
			t.Fatal(err)
		}
		c, err := r.Config(func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := []string{"--cert", "/c.crt", "--key", "/c.key"}
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(c *Config) bool
	}{
		{"allow list from env", map[string]string{"MTLSPROXY_ALLOW": "a.internal,*.b.internal"}, nil,
			func(c *Config) bool {
				return reflect.DeepEqual(c.Routes[0].Hosts, []string{"a.internal", "*.b.internal"})
			}},
		{"list items are trimmed", map[string]string{"MTLSPROXY_ALLOW": "a", "MTLSPROXY_CACERT": "/a.pem, /b.pem", "MTLSPROXY_RESOLVE": "h:443:127.0.0.1 , g:443:127.0.0.2"}, nil,
			func(c *Config) bool {
				return reflect.DeepEqual(c.Trust[FlagTrust].CAFiles, []string{"/a.pem", "/b.pem"}) &&
					reflect.DeepEqual(c.Resolve, []string{"h:443:127.0.0.1", "g:443:127.0.0.2"})
			}},
		{"flag wins over env", map[string]string{"MTLSPROXY_ALLOW": "a.internal,*.b.internal", "MTLSPROXY_LISTEN": "127.0.0.1:9"},
			[]string{"--allow", "c.internal", "--listen", "127.0.0.1:7"},
			func(c *Config) bool {
				return reflect.DeepEqual(c.Routes[0].Hosts, []string{"c.internal"}) && c.Listen == "127.0.0.1:7"
			}},
		{"flag wins even when it is the default value", map[string]string{"MTLSPROXY_LOG_LEVEL": "debug"}, []string{"--log-level", "info"},
			func(c *Config) bool { return c.Log.Level == "info" }},
		{"dashes become underscores", map[string]string{"MTLSPROXY_SERVER_NAME": "api.internal", "MTLSPROXY_LOG_FORMAT": "console", "MTLSPROXY_UNSAFE_LISTEN": "true", "MTLSPROXY_ALLOW": "a"}, nil,
			func(c *Config) bool {
				return c.Routes[0].ServerName == "api.internal" && c.Log.Format == "console" && c.UnsafeListen
			}},
		{"unrelated and lowercase names ignored", map[string]string{"mtlsproxy_allow": "x", "MTLSPROXY_ALLOWS": "y", "ALLOW": "z"}, nil,
			func(c *Config) bool { return len(c.Routes) == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := parse(tt.env, append(append([]string{}, base...), tt.args...)...)
			if !tt.check(c) {
				t.Errorf("config %+v", c)
			}
		})
	}
}

// TestKnownKeys checks that the keys listed in unknown-key messages are
// sorted and include every key the design documents.
func TestKnownKeys(t *testing.T) {
	c, err := Decode("k.yaml", []byte("listn: x\nroutes:\n  - {hots: x}\ngateways:\n  - {host: x}\nidentities: {a: {pass: x}}\ntrust: {a: {file: x}}\nlog: {lvl: x}\nmitm_ca: {crt: x}\ntimeouts: {connect: 1s}\nclients: {a: {password: x}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`k.yaml:1: listn: unknown key "listn" in the top level (known keys: admin, clients, expiry_warning, fast_path, gateways, identities, listen, log, max_connections, mitm_ca, pprof, reload_interval, resolve, routes, socket_mode, strip_headers, timeouts, trust, unsafe_listen, via, workers)`,
		`k.yaml:3: routes[0].hots: unknown key "hots" in a route (known keys: address, clients, connect, host, hosts, http2, identity, min_tls, name, server_name, trust, verify)`,
		`k.yaml:5: gateways[0].host: unknown key "host" in a gateway (known keys: address, clients, http2, identity, listen, min_tls, name, server_name, trust, upstream, verify)`,
		`k.yaml:6: identities.a.pass: unknown key "pass" in an identity (known keys: cert, key, password_file, pkcs12)`,
		`k.yaml:7: trust.a.file: unknown key "file" in a trust bundle (known keys: ca_files, system)`,
		`k.yaml:8: log.lvl: unknown key "lvl" in log (known keys: format, level)`,
		`k.yaml:9: mitm_ca.crt: unknown key "crt" in mitm_ca (known keys: cert, key)`,
		`k.yaml:10: timeouts.connect: unknown key "connect" in timeouts (known keys: client_idle, client_read_header, dial, idle_conn, response_header, shutdown, tls_handshake, tunnel_idle)`,
		`k.yaml:11: clients.a.password: unknown key "password" in a client (known keys: password_file)`,
	}
	var got []string
	for _, p := range c.src.decode {
		got = append(got, p.String())
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", got, want)
	}
}
