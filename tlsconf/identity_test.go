package tlsconf_test

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// pkcs1 and sec1 re-encode a generated key in the legacy formats that
// openssl genrsa and openssl ecparam -genkey write.
func pkcs1(t *testing.T, l *pki.Leaf) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(l.Key.(*rsa.PrivateKey))})
}

func sec1(t *testing.T, l *pki.Leaf) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(l.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func TestLoadPEMIdentityKeys(t *testing.T) {
	s := pkitest.New(t)
	// openssl ecparam -genkey writes an EC PARAMETERS block before the key.
	ecParams := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	tests := []struct {
		name     string
		keyType  pki.KeyType
		encode   func(*testing.T, *pki.Leaf) []byte // nil: PKCS#8 as issued
		wantKind string
	}{
		{"ecdsa pkcs8", pki.ECDSA, nil, "ECDSA P-256"},
		{"ecdsa sec1", pki.ECDSA, sec1, "ECDSA P-256"},
		{"ecdsa sec1 after EC PARAMETERS", pki.ECDSA, func(t *testing.T, l *pki.Leaf) []byte { return append(ecParams, sec1(t, l)...) }, "ECDSA P-256"},
		{"rsa pkcs8", pki.RSA, nil, "RSA 2048"},
		{"rsa pkcs1", pki.RSA, pkcs1, "RSA 2048"},
		{"ed25519 pkcs8", pki.Ed25519, nil, "Ed25519"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			leaf := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "client-" + string(tt.keyType), Client: true, KeyType: tt.keyType})
			certFile, keyFile, err := leaf.WriteFiles(dir, "client")
			if err != nil {
				t.Fatal(err)
			}
			if tt.encode != nil {
				writeFile(t, keyFile, tt.encode(t, leaf))
			}
			id, err := tlsconf.LoadPEMIdentity("app", certFile, keyFile)
			if err != nil {
				t.Fatalf("LoadPEMIdentity: %v", err)
			}
			if id.Name() != "app" {
				t.Errorf("Name() = %q; want %q", id.Name(), "app")
			}
			if !id.Leaf().Equal(leaf.Cert) {
				t.Errorf("Leaf() subject %q; want %q", id.Leaf().Subject, leaf.Cert.Subject)
			}
			if got := len(id.Certificate().Certificate); got != 1 {
				t.Errorf("len(Certificate().Certificate) = %d; want 1", got)
			}
			if d := id.Describe(); !strings.Contains(d, tt.wantKind+" key") || !strings.Contains(d, leaf.Cert.Subject.CommonName) {
				t.Errorf("Describe() = %q; want it to name %q and the subject", d, tt.wantKind+" key")
			}

			cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: s.CA.Pool(), ServerName: "api.internal"})
			_, server, clientErr, serverErr := exchange(t, s.ServerTLS(), cfg)
			if clientErr != nil || serverErr != nil {
				t.Fatalf("handshake: client %v, server %v", clientErr, serverErr)
			}
			if got := server.PeerCertificates[0].Subject.CommonName; got != leaf.Cert.Subject.CommonName {
				t.Errorf("server saw %q; want %q", got, leaf.Cert.Subject.CommonName)
			}
		})
	}
}

func TestLoadPEMIdentityChain(t *testing.T) {
	s := pkitest.New(t)
	inter, err := s.CA.NewIntermediate("issuing CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf := pkitest.Issue(t, inter, pki.LeafOptions{CommonName: "chained-client", Client: true})
	certFile, keyFile, err := leaf.WriteFiles(t.TempDir(), "client")
	if err != nil {
		t.Fatal(err)
	}
	id, err := tlsconf.LoadPEMIdentity("app", certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadPEMIdentity: %v", err)
	}
	chain := id.Certificate().Certificate
	if len(chain) != 2 {
		t.Fatalf("len(Certificate().Certificate) = %d; want 2 (leaf, intermediate)", len(chain))
	}
	if string(chain[1]) != string(inter.Cert.Raw) {
		t.Error("second certificate is not the intermediate")
	}
	if !id.Leaf().Equal(leaf.Cert) {
		t.Error("Leaf() is not the leaf")
	}

	// The server trusts only the root: the handshake works only if the
	// intermediate is sent along.
	cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: s.CA.Pool(), ServerName: "api.internal"})
	_, server, clientErr, serverErr := exchange(t, s.ServerTLS(), cfg)
	if clientErr != nil || serverErr != nil {
		t.Fatalf("handshake: client %v, server %v", clientErr, serverErr)
	}
	if got := server.PeerCertificates[0].Subject.CommonName; got != "chained-client" {
		t.Errorf("server saw %q; want %q", got, "chained-client")
	}
	if n := len(server.VerifiedChains); n == 0 || len(server.VerifiedChains[0]) != 3 {
		t.Errorf("server verified chains %v; want one of length 3", server.VerifiedChains)
	}
}

func TestLoadPEMIdentityErrors(t *testing.T) {
	s := pkitest.New(t)
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		writeFile(t, p, data)
		return p
	}
	other := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "other", Client: true})
	otherRSA := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "other-rsa", Client: true, KeyType: pki.RSA})
	encPKCS8 := file("enc8.key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0x00}}))
	encPKCS1 := file("enc1.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"},
		Bytes:   []byte{1, 2, 3, 4}}))
	encSEC1 := file("encec.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"},
		Bytes:   []byte{1, 2, 3, 4}}))

	tests := []struct {
		name      string
		cert, key string
		want      []string
		notExist  bool
	}{
		{name: "key of another cert", cert: s.ClientCert, key: file("other.key", other.KeyPEM),
			want: []string{"does not match certificate", "other.key", s.ClientCert}},
		{name: "key of another type", cert: s.ClientCert, key: file("other-rsa.key", otherRSA.KeyPEM),
			want: []string{"does not match certificate", "RSA 2048", "ECDSA P-256"}},
		{name: "cert file holds only a key", cert: file("key-as-cert.crt", s.Client.KeyPEM), key: s.ClientKey,
			want: []string{"no PEM CERTIFICATE block", "key-as-cert.crt"}},
		{name: "cert file is not PEM", cert: file("garbage.crt", []byte("hello\n")), key: s.ClientKey,
			want: []string{"no PEM CERTIFICATE block"}},
		{name: "certificate DER corrupt", cert: file("corrupt.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}})), key: s.ClientKey,
			want: []string{"parse certificate 1", "corrupt.crt"}},
		{name: "key file holds only a cert", cert: s.ClientCert, key: file("cert-as-key.key", s.Client.CertPEM),
			want: []string{"no PEM private key block", "cert-as-key.key"}},
		{name: "missing cert file", cert: filepath.Join(dir, "nope.crt"), key: s.ClientKey,
			want: []string{"read certificate", "nope.crt"}, notExist: true},
		{name: "missing key file", cert: s.ClientCert, key: filepath.Join(dir, "nope.key"),
			want: []string{"read key", "nope.key"}, notExist: true},
		{name: "encrypted PKCS#8", cert: s.ClientCert, key: encPKCS8,
			want: []string{"the key is encrypted: give its passphrase file", "enc8.key"}},
		{name: "encrypted PKCS#1", cert: s.ClientCert, key: encPKCS1,
			want: []string{"encrypted PEM keys are not supported", "enc1.key"}},
		{name: "encrypted SEC 1", cert: s.ClientCert, key: encSEC1,
			want: []string{"encrypted PEM keys are not supported", "encec.key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tlsconf.LoadPEMIdentity("app", tt.cert, tt.key)
			if err == nil {
				t.Fatalf("LoadPEMIdentity = %v, nil; want an error", id)
			}
			if id != nil {
				t.Errorf("LoadPEMIdentity returned an identity with error %v", err)
			}
			msg := err.Error()
			for _, w := range append([]string{`identity "app"`}, tt.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q; want it to contain %q", msg, w)
				}
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tt.notExist {
				t.Errorf("errors.Is(%v, fs.ErrNotExist) = %v; want %v", err, got, tt.notExist)
			}
		})
	}
}

func TestIdentityReload(t *testing.T) {
	s := pkitest.New(t)
	dir := t.TempDir()
	first := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "first", Client: true})
	certFile, keyFile, err := first.WriteFiles(dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	id, err := tlsconf.LoadPEMIdentity("app", certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	getCN := func() string {
		t.Helper()
		c, err := id.GetClientCertificate(nil)
		if err != nil {
			t.Fatalf("GetClientCertificate: %v", err)
		}
		if c != id.Certificate() {
			t.Error("GetClientCertificate and Certificate disagree")
		}
		return id.Leaf().Subject.CommonName
	}
	if got := getCN(); got != "first" {
		t.Fatalf("loaded %q; want %q", got, "first")
	}

	second := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "second", Client: true, KeyType: pki.RSA})
	if _, _, err := second.WriteFiles(dir, "client"); err != nil {
		t.Fatal(err)
	}
	if err := id.Reload(); err != nil {
		t.Fatalf("Reload after replacing files: %v", err)
	}
	if got := getCN(); got != "second" {
		t.Fatalf("after Reload, certificate %q; want %q", got, "second")
	}
	before := id.Certificate()

	tests := []struct {
		name      string
		cert, key []byte
		want      string
	}{
		{"garbage in both files", []byte("garbage"), []byte("garbage"), "no PEM CERTIFICATE block"},
		{"new cert, old key", first.CertPEM, second.KeyPEM, "does not match certificate"},
		{"empty key file", second.CertPEM, nil, "no PEM private key block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writeFile(t, certFile, tt.cert)
			writeFile(t, keyFile, tt.key)
			err := id.Reload()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `"app"`) {
				t.Errorf("Reload = %v; want an error naming \"app\" and containing %q", err, tt.want)
			}
			if id.Certificate() != before {
				t.Errorf("after a failed Reload, certificate %p; want the previous one (%p) kept", id.Certificate(), before)
			}
		})
	}

	t.Run("missing files", func(t *testing.T) {
		os.Remove(certFile)
		if err := id.Reload(); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Reload = %v; want fs.ErrNotExist", err)
		}
		if id.Certificate() != before {
			t.Error("after a failed Reload, the certificate changed")
		}
	})
}

func TestIdentityExpired(t *testing.T) {
	s := pkitest.New(t)
	now := time.Now()
	tests := []struct {
		name                string
		notBefore, notAfter time.Time
		want                bool
	}{
		{"valid", now.Add(-time.Hour), now.Add(time.Hour), false},
		{"expired", now.Add(-48 * time.Hour), now.Add(-time.Hour), true},
		{"not yet valid", now.Add(time.Hour), now.Add(48 * time.Hour), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: tt.name, Client: true, NotBefore: tt.notBefore, NotAfter: tt.notAfter})
			certFile, keyFile, err := leaf.WriteFiles(t.TempDir(), "client")
			if err != nil {
				t.Fatal(err)
			}
			// Loading does not refuse an expired certificate: the proxy
			// starts and reports it, and a renewal can be reloaded later.
			id, err := tlsconf.LoadPEMIdentity("app", certFile, keyFile)
			if err != nil {
				t.Fatalf("LoadPEMIdentity: %v", err)
			}
			if got := id.Expired(now); got != tt.want {
				t.Errorf("Expired(now) = %v; want %v (valid %s to %s)", got, tt.want, id.Leaf().NotBefore, id.Leaf().NotAfter)
			}
		})
	}

	t.Run("edges", func(t *testing.T) {
		id, err := tlsconf.LoadPEMIdentity("app", s.ClientCert, s.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		nb, na := id.Leaf().NotBefore, id.Leaf().NotAfter
		for _, c := range []struct {
			at   time.Time
			want bool
		}{
			{nb.Add(-time.Second), true},
			{nb, false},
			{na, false},
			{na.Add(time.Second), true},
		} {
			if got := id.Expired(c.at); got != c.want {
				t.Errorf("Expired(%s) = %v; want %v (valid %s to %s)", c.at, got, c.want, nb, na)
			}
		}
	})
}
