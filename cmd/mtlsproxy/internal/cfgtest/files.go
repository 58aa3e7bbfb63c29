// Package cfgtest is a test PKI on disk for config-file tests of the
// mtlsproxy command and its runtime: the files, and placeholders ($CERT,
// $CA, ...) that config texts use for them. It is imported by tests only.
package cfgtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"software.sslmate.com/src/go-pkcs12"
)

// Files is a test PKI on disk for config files: the placeholders a config
// text may use, and the files they stand for.
type Files struct {
	*pkitest.Set
	// Other is a second client identity with another subject.
	Other               *pki.Leaf
	OtherCert, OtherKey string
	OtherSubject        string
	// P12 holds Other's key and chain, encrypted with the password in
	// P12Pass.
	P12, P12Pass            string
	NoCert, Missing, Config string
	vars                    []string // placeholder, value pairs for strings.NewReplacer
}

// New makes the PKI in a fresh directory.
func New(t testing.TB) *Files {
	t.Helper()
	f := &Files{Set: pkitest.New(t)}
	f.Other = pkitest.Issue(t, f.CA, pki.LeafOptions{CommonName: "other-client", Client: true})
	var err error
	if f.OtherCert, f.OtherKey, err = f.Other.WriteFiles(f.Dir, "other"); err != nil {
		t.Fatal(err)
	}
	f.OtherSubject = f.Other.Cert.Subject.String()
	p12, err := pkcs12.Modern.Encode(f.Other.Key, f.Other.Cert, nil, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	f.P12, f.P12Pass = filepath.Join(f.Dir, "other.p12"), filepath.Join(f.Dir, "other.pass")
	if err := os.WriteFile(f.P12, p12, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.P12Pass, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file with no CERTIFICATE block, for a trust bundle that trusts
	// nothing.
	f.NoCert = filepath.Join(f.Dir, "nocert.pem")
	if err := os.WriteFile(f.NoCert, []byte("# no certificates here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.Missing = filepath.Join(f.Dir, "missing.pem")
	f.Config = filepath.Join(f.Dir, "config.yaml")
	// strings.Replacer tries the pairs in order: longer names first, so
	// that $P12 does not eat the start of $P12PASS.
	f.vars = []string{
		"$OTHERCERT", f.OtherCert, "$OTHERKEY", f.OtherKey,
		"$SERVERCERT", f.ServerCert, "$SERVERKEY", f.ServerKey,
		"$P12PASS", f.P12Pass, "$P12", f.P12,
		"$MISSING", f.Missing, "$NOCERT", f.NoCert,
		"$CERT", f.ClientCert, "$KEY", f.ClientKey, "$CA", f.CAFile, "$DIR", f.Dir,
	}
	return f
}

// Expand replaces the placeholders in text.
func (f *Files) Expand(text string) string {
	return strings.NewReplacer(f.vars...).Replace(text)
}

// Write expands text into the config file and returns its path.
func (f *Files) Write(t testing.TB, text string) string {
	t.Helper()
	if err := os.WriteFile(f.Config, []byte(f.Expand(text)), 0o644); err != nil {
		t.Fatal(err)
	}
	return f.Config
}

// Unexpand turns the paths in s back into placeholders ($FILE for the
// config file, $DIR for the directory), so that expected messages can be
// written down.
func (f *Files) Unexpand(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, f.Config, "$FILE"), f.Dir, "$DIR")
}

// Base declares two identities and one trust bundle on lines 1 to 5, so
// that cases can add routes from line 6 on.
const Base = `identities:
  app: {cert: $CERT, key: $KEY}
  other: {cert: $OTHERCERT, key: $OTHERKEY}
trust:
  internal: {ca_files: [$CA]}
`

// Valid is a complete, valid config file.
const Valid = `# every feature of the config file
listen: 127.0.0.1:0
log: {level: debug, format: console}
resolve: [b.internal:443:127.0.0.1:8443]
identities:
  app: {cert: $CERT, key: $KEY}
  other:
    cert: $OTHERCERT
    key: $OTHERKEY
  bank: {pkcs12: $P12, password_file: $P12PASS}
trust:
  internal: {ca_files: [$CA]}
  both: {ca_files: [$CA], system: true}
routes:
  - host: api.internal
    identity: app
    trust: internal
  - name: bees
    hosts: [b.internal, "*.b.internal:8443"]
    identity: other
    trust: both
    server_name: api.internal
    address: 127.0.0.1:9443
    verify:
      san: [spiffe://corp/api, api.internal]
      pins: [sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=]
    min_tls: "1.3"
    connect: tunnel
  - host: open.internal:8443
    identity: none
    connect: reject
  - host: bank.internal
    identity: bank
gateways:
  - listen: 127.0.0.1:0
    upstream: https://api.internal
    identity: other
    trust: internal
  - name: gw2
    listen: 127.0.0.1:0
    upstream: https://gw.internal:8443/base
    identity: app
    trust: internal
    min_tls: "1.2"
`

// AllProblems is a config file with one problem of each kind on its own
// line.
const AllProblems = `admin: 0.0.0.0:9901
log: {level: loud}
routes:
  - host: api.*.internal
    identity: bank
    trust: public
    connect: mitm
  - name: x
    hosts: [a.internal]
    host: b.internal
    identity: app
    min_tls: "1.0"
    verify: {sans: [x]}
identities:
  app: {cert: $MISSING, key: $KEY}
  none: {cert: $CERT, key: $KEY}
trust:
  empty: {ca_files: [$NOCERT]}
gateways:
  - listen: 127.0.0.1:8081
    upstream: http://api.internal
    identity: app
    verify: {pins: [nope]}
`
