package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

func TestMitmRouteOutsideConstraintsWarns(t *testing.T) {
	set := pkitest.New(t)
	caDir := filepath.Join(set.Dir, "mitm")
	certFile, keyFile, err := tlsconf.InitMitmCA(caDir, []string{"corp.example"}, "test MITM CA")
	if err != nil {
		t.Fatal(err)
	}
	cfgText := "mitm_ca: {cert: " + certFile + ", key: " + keyFile + "}\n" +
		"identities:\n  app: {cert: " + set.ClientCert + ", key: " + set.ClientKey + "}\n" +
		"routes:\n" +
		"  - {host: api.corp.example, identity: app, connect: mitm}\n" +
		"  - {host: \"*.corp.example\", identity: app, connect: mitm}\n" +
		"  - {host: other.example, identity: app, connect: mitm}\n"
	file := filepath.Join(set.Dir, "config.yaml")
	if err := os.WriteFile(file, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	fc, probs, err := readConfigFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pl := planFromFile(fc, probs)
	if err := probs.err(); err != nil {
		t.Fatalf("problems: %v", err)
	}
	if len(pl.warnings) != 1 || !strings.Contains(pl.warnings[0], "routes[2].host: other.example is outside the MITM CA's permitted domains (corp.example)") {
		t.Errorf("warnings = %q; want one for routes[2] naming other.example", pl.warnings)
	}
	stdout, _, err := runOnce(nil, "check", "--config", file)
	if err != nil || !strings.Contains(stdout, "warning: routes[2].host") {
		t.Errorf("check: %v, stdout %q; want success with the warning", err, stdout)
	}
}

func TestPermitted(t *testing.T) {
	for _, tt := range []struct {
		constraints []string
		domain      string
		want        bool
	}{
		{nil, "anything.example", true},
		{[]string{"corp.example"}, "corp.example", true},
		{[]string{"corp.example"}, "a.b.corp.example", true},
		{[]string{"corp.example"}, "evilcorp.example", false},
		{[]string{".corp.example"}, "corp.example", false},
		{[]string{".corp.example"}, "a.corp.example", true},
		{[]string{"a.example", "b.example"}, "x.b.example", true},
	} {
		if got := permitted(tt.constraints, tt.domain); got != tt.want {
			t.Errorf("permitted(%q, %q) = %v; want %v", tt.constraints, tt.domain, got, tt.want)
		}
	}
}
