package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// unitFile is a systemd unit: section -> key -> values, in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		case section == "":
			t.Fatalf("mtlsproxy.service:%d: %q outside a section", i+1, line)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("mtlsproxy.service:%d: %q is not KEY=VALUE", i+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// one is the single value of a key ("" if absent; fails if repeated).
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) > 1 {
		t.Errorf("[%s] %s= is set %d times", section, key, len(v))
	}
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

const credentialsDir = "/run/credentials/mtlsproxy.service/"

// TestSystemdUnit checks the unit's commands and hardening, that its
// credentials are the files config.yaml reads, and has systemd-analyze
// verify it (with ExecStart pointed at a freshly built binary) and rate its
// exposure.
func TestSystemdUnit(t *testing.T) {
	text := readFile(t, "deploy/systemd/mtlsproxy.service")
	u := parseUnit(t, text)

	want := map[string]string{
		"ExecStart":               "/usr/local/bin/mtlsproxy run --config /etc/mtlsproxy/config.yaml",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"Restart":                 "on-failure",
		"DynamicUser":             "yes",
		"NoNewPrivileges":         "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectControlGroups":    "yes",
		"RestrictNamespaces":      "yes",
		"RestrictSUIDSGID":        "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"MemoryDenyWriteExecute":  "yes",
		"LockPersonality":         "yes",
		"SystemCallArchitectures": "native",
		"UMask":                   "0077",
	}
	for k, v := range want {
		if _, ok := u["Service"][k]; !ok {
			t.Errorf("[Service] has no %s=", k)
		} else if got := u.one(t, "Service", k); got != v {
			t.Errorf("[Service] %s=%s; want %s=%s", k, got, k, v)
		}
	}
	if typ := u.one(t, "Service", "Type"); typ != "exec" && typ != "notify" {
		t.Errorf("[Service] Type=%s; want exec (or notify with sd_notify support)", typ)
	}
	if !slices.Contains(u["Service"]["SystemCallFilter"], "@system-service") {
		t.Errorf("[Service] SystemCallFilter=%q; want @system-service", u["Service"]["SystemCallFilter"])
	}
	if d, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec")); err != nil || d <= 30*time.Second {
		t.Errorf("[Service] TimeoutStopSec=%s; want more than mtlsproxy's 30 s drain", u.one(t, "Service", "TimeoutStopSec"))
	}
	if u.one(t, "Install", "WantedBy") != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%s; want multi-user.target", u.one(t, "Install", "WantedBy"))
	}

	// Every file the example config reads is a credential.
	creds := map[string]string{}
	for _, lc := range u["Service"]["LoadCredential"] {
		name, src, ok := strings.Cut(lc, ":")
		if !ok || !filepath.IsAbs(src) {
			t.Errorf("LoadCredential=%s: want NAME:/absolute/path", lc)
		}
		creds[name] = src
	}
	cfg := parseProxyConfig(t, readFile(t, "deploy/systemd/config.yaml"))
	for _, f := range cfg.files() {
		name, ok := strings.CutPrefix(f, credentialsDir)
		if !ok || creds[name] == "" {
			t.Errorf("config.yaml reads %s; want a file of %s that LoadCredential= provides (credentials: %v)", f, credentialsDir, creds)
		}
	}
	if len(creds) != len(cfg.files()) {
		t.Errorf("LoadCredential= loads %d files; config.yaml reads %d", len(creds), len(cfg.files()))
	}

	analyze := requireTool(t, "systemd-analyze", "apt-get install systemd")
	dir := t.TempDir()
	unit := filepath.Join(dir, "mtlsproxy.service")
	local := strings.ReplaceAll(text, "/usr/local/bin/mtlsproxy", binary(t))
	if err := os.WriteFile(unit, []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	// verify prints warnings (an unknown key, a bad value) but still exits
	// 0: any output is a failure.
	if out, err := run(t, dir, analyze, "verify", "--man=no", unit); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The exposure score: 0 is fully locked down, 10 is not at all.
	out, err := run(t, dir, analyze, "security", "--offline=yes", "--no-pager", unit)
	m := regexp.MustCompile(`Overall exposure level for mtlsproxy.service: ([0-9.]+)`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security --offline=yes: %v\n%s", err, out)
	}
	if score, err := strconv.ParseFloat(m[1], 64); err != nil || score > 2.0 {
		t.Errorf("systemd-analyze security: exposure %s; want 2.0 or less\n%s", m[1], out)
	} else {
		t.Logf("systemd-analyze security: exposure %s", m[1])
	}
}

// TestSystemdConfigPassesCheck runs "mtlsproxy check" on the systemd
// example config with the credentials directory pointed at a fresh PKI.
func TestSystemdConfigPassesCheck(t *testing.T) {
	p := pkitest.New(t)
	dir := t.TempDir()
	copyFile(t, p.ClientCert, filepath.Join(dir, "client.crt"), 0o400)
	copyFile(t, p.ClientKey, filepath.Join(dir, "client.key"), 0o400)
	copyFile(t, p.CAFile, filepath.Join(dir, "ca.crt"), 0o400)
	out := checkConfig(t, readFile(t, "deploy/systemd/config.yaml"), map[string]string{credentialsDir: dir + "/"})
	if !strings.Contains(out, ": ok: ") {
		t.Errorf("mtlsproxy check: %q; want ok", out)
	}
}
