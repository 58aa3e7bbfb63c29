package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/cfgtest"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// TestMitmConfig checks mitm_ca and connect: mitm in the config file.
func TestMitmConfig(t *testing.T) {
	f := cfgtest.New(t)
	caDir := filepath.Join(f.Dir, "mitm")
	if _, _, err := tlsconf.InitMitmCA(caDir, []string{"api.internal"}, "test MITM CA"); err != nil {
		t.Fatal(err)
	}
	mitmRoute := "routes:\n  - {host: api.internal, identity: app, trust: internal, connect: mitm}\n"

	pl, problems, err := cfgtLoad(t, f, cfgtest.Base+"mitm_ca: {cert: $DIR/mitm/ca.crt, key: $DIR/mitm/ca.key}\n"+mitmRoute)
	if err != nil || len(problems) > 0 {
		t.Fatalf("valid mitm config: %v %q", err, problems)
	}
	if pl.mitmCA == nil || !pl.mitmCA.Constrained() {
		t.Fatalf("plan has no (constrained) MITM CA: %+v", pl.mitmCA)
	}
	if len(pl.routes) != 1 || pl.routes[0].opts.Connect != proxy.ConnectMitm {
		t.Errorf("route connect policy %v; want mitm", pl.routes[0].opts.Connect)
	}

	for _, tt := range []struct {
		name, text string
		want       []string // substrings, one problem each
	}{
		{"mitm route without mitm_ca", cfgtest.Base + mitmRoute,
			[]string{"routes[0].connect: mitm needs a local CA: add mitm_ca: {cert, key} (make one with: mtlsproxy ca init --out DIR)"}},
		{"mitm_ca is not a CA", cfgtest.Base + "mitm_ca: {cert: $SERVERCERT, key: $SERVERKEY}\n" + mitmRoute,
			[]string{"mitm_ca: MITM CA certificate $DIR/server.crt is not a CA certificate (make one with: mtlsproxy ca init)"}},
		{"mitm_ca key of another certificate", cfgtest.Base + "mitm_ca: {cert: $DIR/mitm/ca.crt, key: $SERVERKEY}\n" + mitmRoute,
			[]string{"mitm_ca: MITM CA key $DIR/server.key: private key (ECDSA P-256) does not match certificate"}},
		{"mitm_ca files missing", cfgtest.Base + "mitm_ca: {cert: $MISSING, key: $DIR/mitm/ca.key}\n" + mitmRoute,
			[]string{"mitm_ca: read MITM CA certificate: open $DIR/missing.pem: no such file or directory"}},
		{"mitm_ca without key", cfgtest.Base + "mitm_ca: {cert: $DIR/mitm/ca.crt}\n" + mitmRoute,
			[]string{"mitm_ca: give cert and key (make them with: mtlsproxy ca init --out DIR)"}},
		{"unknown key in mitm_ca", cfgtest.Base + "mitm_ca: {cert: $DIR/mitm/ca.crt, key: $DIR/mitm/ca.key, pass: x}\n" + mitmRoute,
			[]string{`mitm_ca.pass: unknown key "pass" in mitm_ca`}},
		{"unknown connect policy", cfgtest.Base + "routes:\n  - {host: api.internal, identity: app, connect: intercept}\n",
			[]string{`routes[0].connect: "intercept": want reject, tunnel or mitm`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, problems, err := cfgtLoad(t, f, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) != len(tt.want) {
				t.Fatalf("problems %q; want %d matching %q", problems, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(problems[i], w) {
					t.Errorf("problem %q; want it to contain %q", problems[i], w)
				}
			}
			for _, p := range problems {
				if strings.Contains(p, "PRIVATE KEY") {
					t.Errorf("a problem shows key material: %q", p)
				}
			}
		})
	}
}

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
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := Load(cfg)
	if err != nil {
		t.Fatalf("problems: %v", err)
	}
	if len(pl.warnings) != 1 || !strings.Contains(pl.warnings[0], "routes[2].host: other.example is outside the MITM CA's permitted domains (corp.example)") {
		t.Errorf("warnings = %q; want one for routes[2] naming other.example", pl.warnings)
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
		if got := Permitted(tt.constraints, tt.domain); got != tt.want {
			t.Errorf("Permitted(%q, %q) = %v; want %v", tt.constraints, tt.domain, got, tt.want)
		}
	}
}
