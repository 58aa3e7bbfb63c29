package config_test

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/app"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/cfgtest"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
)

// settingCase drives one setting: values given by flag and by variable,
// and the file that says the same.
type settingCase struct {
	// flags are the run flags besides the one under test (which gets
	// each value in turn); nil means --cert, --key and --allow.
	flags map[string]string
	// good are values that must give the same Config three ways.
	good []string
	// file is the config file saying what the flags and value say; nil
	// when the file has no such setting (--upstream).
	file func(v string) string
	// bad is a value that Validate or Load refuses, the same way from
	// each source; "" if there is none.
	bad string
}

// stBase are the flags and the file that describe one identity and one
// route, to which each case adds its setting.
const stBaseFile = "identities:\n  default: {cert: $CERT, key: $KEY}\nroutes:\n  - {name: forward, hosts: [a.internal], identity: default%s}\n"

func stFile(top, route string) func(string) string {
	return func(v string) string {
		return strings.ReplaceAll(top, "V", v) + strings.Replace(stBaseFile, "%s", strings.ReplaceAll(route, "V", v), 1)
	}
}

func stCases(f *cfgtest.Files) map[string]settingCase {
	top := func(yaml string, bad string, good ...string) settingCase {
		return settingCase{good: good, file: stFile(yaml+"\n", ""), bad: bad}
	}
	timeout := func(key string) settingCase { return top("timeouts: {"+key+": V}", "-1s", "3s", "0") }
	return map[string]settingCase{
		"config":          {}, // the file leg of every other case
		"listen":          top("listen: V", "0.0.0.0:1", "127.0.0.1:7", "unix:/tmp/st.sock"),
		"unsafe-listen":   top("unsafe_listen: V", "", "true", "false"),
		"reload-interval": top("reload_interval: V", "-1s", "2m", "0"),
		"expiry-warning":  top("expiry_warning: V", "", "24h"),
		"resolve":         top("resolve: [V]", "api.internal:443", "b.internal:443:127.0.0.1"),
		"admin":           top("admin: V", "0.0.0.0:9901", "127.0.0.1:9901"),
		"pprof":           top("pprof: V", "", "true"),
		"max-connections": top("max_connections: V", "-1", "5", "0"),
		"workers":         top("workers: V", "65", "2", "0", "1"),
		"via":             top("via: V", "", "true"),
		"fast-path":       top("fast_path: V", "", "false", "true"),
		"strip-header":    top("strip_headers: [V]", "bad header", "X-Internal"),
		"socket-mode":     top(`socket_mode: "V"`, "0666", "0600"),
		"log-level":       top("log: {level: V}", "loud", "debug"),
		"log-format":      top("log: {format: V}", "xml", "console"),

		"dial-timeout": timeout("dial"), "tls-handshake-timeout": timeout("tls_handshake"),
		"response-header-timeout": timeout("response_header"), "idle-conn-timeout": timeout("idle_conn"),
		"tunnel-idle-timeout": timeout("tunnel_idle"), "read-header-timeout": timeout("client_read_header"),
		"client-idle-timeout": timeout("client_idle"), "shutdown-timeout": timeout("shutdown"),

		"cert": {flags: map[string]string{"key": f.ClientKey, "allow": "a.internal"}, good: []string{f.ClientCert}, bad: f.Missing,
			file: func(v string) string {
				return "identities:\n  default: {cert: " + v + ", key: $KEY}\nroutes:\n  - {name: forward, hosts: [a.internal], identity: default}\n"
			}},
		"key": {flags: map[string]string{"cert": f.ClientCert, "allow": "a.internal"}, good: []string{f.ClientKey}, bad: f.Missing,
			file: func(v string) string {
				return "identities:\n  default: {cert: $CERT, key: " + v + "}\nroutes:\n  - {name: forward, hosts: [a.internal], identity: default}\n"
			}},
		"key-pass-file": {flags: map[string]string{"cert": f.ClientCert, "key": f.ClientKey, "allow": "a.internal"}, good: []string{f.P12Pass}, bad: f.Missing,
			file: func(v string) string {
				return "identities:\n  default: {cert: $CERT, key: $KEY, password_file: " + v + "}\nroutes:\n  - {name: forward, hosts: [a.internal], identity: default}\n"
			}},
		"pkcs12": {flags: map[string]string{"pkcs12-pass-file": f.P12Pass, "allow": "a.internal"}, good: []string{f.P12}, bad: f.Missing,
			file: func(v string) string {
				return "identities:\n  default: {pkcs12: " + v + ", password_file: $P12PASS}\nroutes:\n  - {name: forward, hosts: [a.internal], identity: default}\n"
			}},
		"pkcs12-pass-file": {flags: map[string]string{"pkcs12": f.P12, "allow": "a.internal"}, good: []string{f.P12Pass}, bad: f.Missing,
			file: func(v string) string {
				return "identities:\n  default: {pkcs12: $P12, password_file: " + v + "}\nroutes:\n  - {name: forward, hosts: [a.internal], identity: default}\n"
			}},
		"cacert": {good: []string{f.CAFile}, bad: f.NoCert,
			file: stFile("trust:\n  default: {ca_files: [V]}\n", ", trust: default")},
		"allow": {flags: map[string]string{"cert": f.ClientCert, "key": f.ClientKey}, good: []string{"b.internal", "*.corp.example:8443"}, bad: "a.*.internal",
			file: func(v string) string {
				return "identities:\n  default: {cert: $CERT, key: $KEY}\nroutes:\n  - {name: forward, hosts: [\"" + v + "\"], identity: default}\n"
			}},
		"server-name": {good: []string{"api.internal"}, bad: "*.internal", file: stFile("", ", server_name: \"V\"")},
		"http2":       {good: []string{"false", "true"}, file: stFile("", ", http2: V")},
		"upstream":    {good: []string{"https://api.internal:8443"}, bad: "http://api.internal"},
	}
}

// stRun builds the Config run would from args and env, defaults filled.
func stRun(t *testing.T, args []string, env map[string]string) (*config.Config, error) {
	t.Helper()
	r := config.NewRun()
	r.FlagSet().SetOutput(io.Discard)
	if err := r.FlagSet().Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return r.Config(func(k string) string { return env[k] })
}

func stJSON(t *testing.T, c *config.Config) string {
	t.Helper()
	c.SetDefaults()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stProblems loads c as run does and returns the messages of its
// problems, without where they are.
func stProblems(t *testing.T, c *config.Config, err error) []string {
	t.Helper()
	if err == nil {
		_, err = app.Load(c)
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v; want problems", err)
	}
	var out []string
	for _, p := range ce.Problems {
		msg := p.Msg
		// Where to allow a non-loopback address is said where the
		// address was set: in the file, or with a flag.
		msg, _, _ = strings.Cut(msg, "; listen on 127.0.0.1 or")
		out = append(out, msg)
	}
	sort.Strings(out)
	return out
}

// TestSettingsEverySource drives every run setting through its flag, its
// MTLSPROXY_* variable and the config file, and checks that the three give
// the same Config, and that a bad value gets the same problem from each.
func TestSettingsEverySource(t *testing.T) {
	f := cfgtest.New(t)
	cases := stCases(f)
	for _, s := range config.Settings() {
		c, ok := cases[s.Flag]
		if !ok {
			t.Errorf("setting --%s has no case here: add one", s.Flag)
			continue
		}
		if s.Flag == "config" {
			continue
		}
		t.Run(s.Flag, func(t *testing.T) {
			flags := c.flags
			if flags == nil {
				flags = map[string]string{"cert": f.ClientCert, "key": f.ClientKey, "allow": "a.internal"}
			}
			args := func(extra ...string) []string {
				var a []string
				for _, k := range sortedKeys(flags) {
					if k != s.Flag {
						a = append(a, "--"+k, flags[k])
					}
				}
				return append(a, extra...)
			}
			fileArgs := func(v string) []string {
				path := filepath.Join(t.TempDir(), "config.yaml")
				if err := os.WriteFile(path, []byte(f.Expand(c.file(v))), 0o644); err != nil {
					t.Fatal(err)
				}
				return []string{"--config", path}
			}
			for _, v := range c.good {
				fromFlag, err := stRun(t, args("--"+s.Flag+"="+v), nil)
				if err != nil {
					t.Fatalf("--%s %s: %v", s.Flag, v, err)
				}
				fromEnv, err := stRun(t, args(), map[string]string{s.Env(): v})
				if err != nil {
					t.Fatalf("%s=%s: %v", s.Env(), v, err)
				}
				if err := fromFlag.Validate(); err != nil {
					t.Errorf("--%s %s: %v", s.Flag, v, err)
				}
				want := stJSON(t, fromFlag)
				if got := stJSON(t, fromEnv); got != want {
					t.Errorf("%s=%s gives\n%s\n--%s %s gives\n%s", s.Env(), v, got, s.Flag, v, want)
				}
				if c.file == nil {
					continue
				}
				fromFile, err := stRun(t, fileArgs(v), nil)
				if err != nil {
					t.Fatalf("file for %s: %v", v, err)
				}
				if got := stJSON(t, fromFile); got != want {
					t.Errorf("the file with %s gives\n%s\n--%s %s gives\n%s", v, got, s.Flag, v, want)
				}
				if !s.Single {
					// A flag over a file that does not set it.
					over, err := stRun(t, append(fileArgs(v), "--"+s.Flag+"="+v), nil)
					if err != nil {
						t.Fatal(err)
					}
					if got := stJSON(t, over); got != want && !s.Repeatable {
						t.Errorf("--%s %s over the file gives\n%s\nwant\n%s", s.Flag, v, got, want)
					}
				}
			}
			if c.bad == "" {
				return
			}
			cfg, err := stRun(t, args("--"+s.Flag+"="+c.bad), nil)
			want := stProblems(t, cfg, err)
			cfg, err = stRun(t, args(), map[string]string{s.Env(): c.bad})
			if got := stProblems(t, cfg, err); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("%s=%q: problems %q; --%s gives %q", s.Env(), c.bad, got, s.Flag, want)
			}
			if c.file != nil {
				cfg, err = stRun(t, fileArgs(c.bad), nil)
				if got := stProblems(t, cfg, err); strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("the file with %q: problems %q; --%s gives %q", c.bad, got, s.Flag, want)
				}
			}
		})
	}
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
