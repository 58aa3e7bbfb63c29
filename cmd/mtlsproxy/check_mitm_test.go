package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// TestCheckWarnsMitmOutsideConstraints checks that check prints the
// warning about a mitm route the CA may not sign for, and succeeds.
func TestCheckWarnsMitmOutsideConstraints(t *testing.T) {
	set := pkitest.New(t)
	certFile, keyFile, err := tlsconf.InitMitmCA(filepath.Join(set.Dir, "mitm"), []string{"corp.example"}, "test MITM CA")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(set.Dir, "config.yaml")
	text := "mitm_ca: {cert: " + certFile + ", key: " + keyFile + "}\n" +
		"identities:\n  app: {cert: " + set.ClientCert + ", key: " + set.ClientKey + "}\n" +
		"routes:\n  - {host: api.corp.example, identity: app, connect: mitm}\n  - {host: other.example, identity: app, connect: mitm}\n"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := runOnce(nil, "check", "--config", file)
	if err != nil || !strings.Contains(stdout, "warning: routes[1].host") {
		t.Errorf("check: %v, stdout %q; want success with the warning", err, stdout)
	}
}
