package pki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

func newCA(t *testing.T, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *pki.CA, o pki.LeafOptions) *pki.Leaf {
	t.Helper()
	l, err := ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// pemCerts parses every CERTIFICATE block in data.
func pemCerts(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return certs
		}
		if b.Type != "CERTIFICATE" {
			t.Fatalf("unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
}

func TestNewCA(t *testing.T) {
	before := time.Now()
	ca := newCA(t, "test root")
	if !ca.Cert.IsCA || !ca.Cert.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want both true", ca.Cert.IsCA, ca.Cert.BasicConstraintsValid)
	}
	if ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("KeyUsage lacks CertSign")
	}
	if got := ca.Cert.Subject.CommonName; got != "test root" {
		t.Errorf("CommonName = %q; want %q", got, "test root")
	}
	if err := ca.Cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if !ca.Cert.NotBefore.Before(before) || !ca.Cert.NotAfter.After(before.Add(24*time.Hour)) {
		t.Errorf("validity %s to %s; want it to cover now and the next day", ca.Cert.NotBefore, ca.Cert.NotAfter)
	}
	if certs := pemCerts(t, ca.CertPEM); len(certs) != 1 || !certs[0].Equal(ca.Cert) {
		t.Errorf("CertPEM holds %d certificates; want just the CA", len(certs))
	}
	if ca.Pool().Equal(x509.NewCertPool()) {
		t.Error("Pool() is empty")
	}
	if ca2 := newCA(t, "test root"); ca2.Cert.SerialNumber.Cmp(ca.Cert.SerialNumber) == 0 {
		t.Error("two CAs share a serial number")
	}
}

func TestIssue(t *testing.T) {
	ca := newCA(t, "root")
	other := newCA(t, "other")
	tests := []struct {
		name    string
		opts    pki.LeafOptions
		usage   x509.ExtKeyUsage
		dnsName string
		keyOK   func(any) bool
	}{
		{"default key is ecdsa", pki.LeafOptions{CommonName: "c1", Client: true}, x509.ExtKeyUsageClientAuth, "",
			func(k any) bool { _, ok := k.(*ecdsa.PublicKey); return ok }},
		{"rsa server", pki.LeafOptions{CommonName: "s1", DNSNames: []string{"api.internal"}, Server: true, KeyType: pki.RSA}, x509.ExtKeyUsageServerAuth, "api.internal",
			func(k any) bool { p, ok := k.(*rsa.PublicKey); return ok && p.N.BitLen() == 2048 }},
		{"ed25519 client", pki.LeafOptions{CommonName: "c2", Client: true, KeyType: pki.Ed25519}, x509.ExtKeyUsageClientAuth, "",
			func(k any) bool { _, ok := k.(ed25519.PublicKey); return ok }},
		{"ip server", pki.LeafOptions{CommonName: "s2", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, KeyType: pki.ECDSA}, x509.ExtKeyUsageServerAuth, "127.0.0.1",
			func(k any) bool { _, ok := k.(*ecdsa.PublicKey); return ok }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := issue(t, ca, tt.opts)
			if got := l.Cert.Subject.CommonName; got != tt.opts.CommonName {
				t.Errorf("CommonName = %q; want %q", got, tt.opts.CommonName)
			}
			if !tt.keyOK(l.Cert.PublicKey) {
				t.Errorf("public key %T does not fit key type %q", l.Cert.PublicKey, tt.opts.KeyType)
			}
			opts := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{tt.usage}, DNSName: tt.dnsName}
			if _, err := l.Cert.Verify(opts); err != nil {
				t.Errorf("Verify against the issuing CA: %v", err)
			}
			opts.Roots = other.Pool()
			if _, err := l.Cert.Verify(opts); err == nil {
				t.Error("Verify against another CA succeeded")
			}
			// A client certificate must not be usable as a server one, and
			// the other way round.
			wrong := x509.ExtKeyUsageServerAuth
			if tt.usage == wrong {
				wrong = x509.ExtKeyUsageClientAuth
			}
			opts.Roots, opts.KeyUsages = ca.Pool(), []x509.ExtKeyUsage{wrong}
			if _, err := l.Cert.Verify(opts); err == nil {
				t.Errorf("Verify for %v succeeded; want only %v", wrong, tt.usage)
			}

			tc := l.TLSCertificate()
			if len(tc.Certificate) != 1 || !bytes.Equal(tc.Certificate[0], l.Cert.Raw) {
				t.Errorf("TLSCertificate has %d certificates; want just the leaf", len(tc.Certificate))
			}
			b, _ := pem.Decode(l.KeyPEM)
			if b == nil || b.Type != "PRIVATE KEY" {
				t.Fatalf("KeyPEM is not a PKCS#8 PEM block")
			}
			if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
				t.Errorf("KeyPEM: %v", err)
			}
		})
	}
}

func TestIssueValidity(t *testing.T) {
	ca := newCA(t, "root")
	now := time.Now()
	t.Run("default relative to now", func(t *testing.T) {
		l := issue(t, ca, pki.LeafOptions{CommonName: "c"})
		nb, na := l.Cert.NotBefore, l.Cert.NotAfter
		if nb.After(now) || nb.Before(now.Add(-2*time.Hour)) {
			t.Errorf("NotBefore = %s; want about an hour before %s", nb, now)
		}
		if na.Before(now.Add(23*time.Hour)) || na.After(now.Add(25*time.Hour)) {
			t.Errorf("NotAfter = %s; want about a day after %s", na, now)
		}
		if _, err := l.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("Verify now: %v", err)
		}
	})
	t.Run("explicit", func(t *testing.T) {
		nb, na := now.Add(-72*time.Hour).Truncate(time.Second), now.Add(-48*time.Hour).Truncate(time.Second)
		l := issue(t, ca, pki.LeafOptions{CommonName: "c", NotBefore: nb, NotAfter: na})
		if !l.Cert.NotBefore.Equal(nb) || !l.Cert.NotAfter.Equal(na) {
			t.Errorf("validity %s to %s; want %s to %s", l.Cert.NotBefore, l.Cert.NotAfter, nb, na)
		}
		if _, err := l.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			t.Error("Verify of an expired leaf succeeded")
		}
	})
}

func TestIntermediateChain(t *testing.T) {
	root := newCA(t, "root")
	inter := must(root.NewIntermediate("inter 1"))(t)
	inter2 := must(inter.NewIntermediate("inter 2"))(t)
	tests := []struct {
		name  string
		ca    *pki.CA
		chain []*x509.Certificate // expected CertPEM contents after the leaf
	}{
		{"from root", root, nil},
		{"one intermediate", inter, []*x509.Certificate{inter.Cert}},
		{"two intermediates", inter2, []*x509.Certificate{inter2.Cert, inter.Cert}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := issue(t, tt.ca, pki.LeafOptions{CommonName: "leaf", DNSNames: []string{"leaf.internal"}, Server: true})
			certs := pemCerts(t, l.CertPEM)
			if len(certs) != 1+len(tt.chain) {
				t.Fatalf("CertPEM holds %d certificates; want %d (leaf and intermediates, no root)", len(certs), 1+len(tt.chain))
			}
			if !certs[0].Equal(l.Cert) {
				t.Error("first certificate in CertPEM is not the leaf")
			}
			if !slices.EqualFunc(certs[1:], tt.chain, (*x509.Certificate).Equal) {
				t.Error("CertPEM intermediates are not the issuing chain in order")
			}
			inters := x509.NewCertPool()
			for _, c := range certs[1:] {
				inters.AddCert(c)
			}
			chains, err := l.Cert.Verify(x509.VerifyOptions{Roots: root.Pool(), Intermediates: inters, DNSName: "leaf.internal"})
			if err != nil {
				t.Fatalf("Verify against root with CertPEM intermediates: %v", err)
			}
			if got := len(chains[0]); got != 2+len(tt.chain) {
				t.Errorf("chain length %d; want %d", got, 2+len(tt.chain))
			}
			if len(tt.chain) > 0 {
				if _, err := l.Cert.Verify(x509.VerifyOptions{Roots: root.Pool(), DNSName: "leaf.internal"}); err == nil {
					t.Error("Verify without intermediates succeeded; the test proves nothing")
				}
			}
			if tc := l.TLSCertificate(); len(tc.Certificate) != len(certs) {
				t.Errorf("TLSCertificate has %d certificates; want %d", len(tc.Certificate), len(certs))
			}
		})
	}
}

func TestWriteFiles(t *testing.T) {
	ca := newCA(t, "root")
	l := issue(t, ca, pki.LeafOptions{CommonName: "c", Client: true})
	dir := t.TempDir()
	certFile, keyFile, err := l.WriteFiles(dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("LoadX509KeyPair(%s, %s): %v", certFile, keyFile, err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("key file mode %v; want no group or other access", perm)
	}
	caFile, err := ca.WriteCert(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, ca.CertPEM) {
		t.Error("WriteCert wrote something other than CertPEM")
	}
}

func TestIssueUnknownKeyType(t *testing.T) {
	ca := newCA(t, "root")
	if l, err := ca.Issue(pki.LeafOptions{CommonName: "c", KeyType: "dsa"}); err == nil {
		t.Errorf("Issue with key type dsa = %v, nil; want an error", l.Cert.Subject)
	}
}

func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
