package tlsconf

// Tests of the local MITM CA (connect: mitm): what "ca init" writes, the
// name constraints and that Go's verifier honours them, loading, and the
// leaf cache (one mint per name under concurrency, renewal, bound, swap).
// An internal test so that the cache's size can be read.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// mitmtPermit are the domains the test CAs may sign for.
var mitmtPermit = []string{"api.internal", "corp.example"}

// mitmtCA makes a CA with InitMitmCA in a fresh directory and loads it.
func mitmtCA(t testing.TB) (ca *MitmCA, dir string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "ca")
	certFile, keyFile, err := InitMitmCA(dir, mitmtPermit, "mitmt CA")
	if err != nil {
		t.Fatal(err)
	}
	if ca, err = LoadMitmCA(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

// mitmtVerify verifies leaf for name as a TLS client trusting only ca.
func mitmtVerify(leaf *tls.Certificate, ca *MitmCA, name string) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	_, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

func TestMitmInitCAFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "ca") // made by InitMitmCA
	certFile, keyFile, err := InitMitmCA(dir, mitmtPermit, "mitmt CA")
	if err != nil {
		t.Fatal(err)
	}
	if certFile != filepath.Join(dir, "ca.crt") || keyFile != filepath.Join(dir, "ca.key") {
		t.Errorf("files %s, %s; want ca.crt and ca.key in %s", certFile, keyFile, dir)
	}
	for file, want := range map[string]fs.FileMode{certFile: 0o644, keyFile: 0o600} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v; want %v", filepath.Base(file), got, want)
		}
	}

	certPEM, _ := os.ReadFile(certFile)
	block, rest := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("ca.crt is not exactly one PEM CERTIFICATE block:\n%s", certPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := os.ReadFile(keyFile)
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("ca.key is not a PKCS#8 PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		t.Fatalf("CA key is %T; want ECDSA P-256", key)
	}
	if !ek.PublicKey.Equal(cert.PublicKey) {
		t.Error("ca.key does not belong to ca.crt")
	}

	if !cert.IsCA || !cert.BasicConstraintsValid || !cert.MaxPathLenZero || cert.MaxPathLen != 0 {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v MaxPathLen=%d (zero %v); want a CA that cannot sign other CAs",
			cert.IsCA, cert.BasicConstraintsValid, cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("the CA lacks the certificate-signing key usage")
	}
	if cert.Subject.CommonName != "mitmt CA" {
		t.Errorf("common name %q; want %q", cert.Subject.CommonName, "mitmt CA")
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if life := cert.NotAfter.Sub(time.Now()); life < 364*24*time.Hour || life > 367*24*time.Hour {
		t.Errorf("valid for another %v; want about a year", life)
	}

	// The name constraints: critical, the permitted domains, every IP
	// address excluded.
	if !cert.PermittedDNSDomainsCritical {
		t.Error("the name constraints extension is not critical: clients that do not understand it would ignore it")
	}
	if !reflect.DeepEqual(cert.PermittedDNSDomains, mitmtPermit) {
		t.Errorf("permitted DNS domains %q; want %q", cert.PermittedDNSDomains, mitmtPermit)
	}
	var excluded []string
	for _, n := range cert.ExcludedIPRanges {
		excluded = append(excluded, n.String())
	}
	if want := []string{"0.0.0.0/0", "::/0"}; !reflect.DeepEqual(excluded, want) {
		t.Errorf("excluded IP ranges %q; want %q", excluded, want)
	}
	if len(cert.PermittedIPRanges) != 0 || len(cert.ExcludedDNSDomains) != 0 {
		t.Errorf("unexpected constraints: permitted IPs %v, excluded domains %v", cert.PermittedIPRanges, cert.ExcludedDNSDomains)
	}

	ca, err := LoadMitmCA(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadMitmCA of what InitMitmCA wrote: %v", err)
	}
	if !ca.Constrained() {
		t.Error("Constrained() = false for a CA with permitted domains")
	}
	if c, k := ca.Files(); c != certFile || k != keyFile {
		t.Errorf("Files() = %s, %s; want %s, %s", c, k, certFile, keyFile)
	}
}

func TestMitmInitCARefuses(t *testing.T) {
	t.Run("overwrite", func(t *testing.T) {
		_, dir := mitmtCA(t)
		before := map[string][]byte{}
		for _, f := range []string{"ca.crt", "ca.key"} {
			before[f], _ = os.ReadFile(filepath.Join(dir, f))
		}
		_, _, err := InitMitmCA(dir, mitmtPermit, "again")
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("second InitMitmCA in the same directory: %v; want an \"already exists\" error", err)
		}
		for f, b := range before {
			if after, _ := os.ReadFile(filepath.Join(dir, f)); string(after) != string(b) {
				t.Errorf("%s was changed by the refused InitMitmCA", f)
			}
		}
	})
	t.Run("overwrite key only", func(t *testing.T) {
		// A key left behind must not be replaced either.
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "ca.key"), []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := InitMitmCA(dir, mitmtPermit, "x"); err == nil || !strings.Contains(err.Error(), "ca.key already exists") {
			t.Fatalf("InitMitmCA with an existing ca.key: %v; want an \"already exists\" error", err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "ca.key")); string(b) != "precious" {
			t.Error("ca.key was overwritten")
		}
		if _, err := os.Stat(filepath.Join(dir, "ca.crt")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ca.crt written although the CA was refused: %v", err)
		}
	})
	t.Run("no permitted domains", func(t *testing.T) {
		dir := t.TempDir()
		for _, permit := range [][]string{nil, {}} {
			_, _, err := InitMitmCA(dir, permit, "x")
			if err == nil || !strings.Contains(err.Error(), "no permitted domains") {
				t.Errorf("InitMitmCA(%#v): %v; want a \"no permitted domains\" error", permit, err)
			}
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("files written for a refused CA: %v", ents)
		}
	})
}

// TestMitmNameConstraintsHonoured checks that the constraints do what they
// are for: Go's verifier accepts leaves for the permitted domains and
// their subdomains, and refuses a leaf the same key signed for any other
// name or an IP address.
func TestMitmNameConstraintsHonoured(t *testing.T) {
	ca, _ := mitmtCA(t)
	c := NewLeafCache(ca, 0, 0)
	for _, name := range []string{"api.internal", "corp.example", "git.corp.example", "a.b.corp.example"} {
		leaf, err := c.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := mitmtVerify(leaf, ca, name); err != nil {
			t.Errorf("leaf for permitted %s does not verify: %v", name, err)
		}
	}
	for _, name := range []string{"evil.example", "notcorp.example", "internal", "api.internal.evil.example", "127.0.0.1", "::1"} {
		leaf, err := c.Certificate(name)
		if err != nil {
			t.Fatalf("mint %s: %v", name, err)
		}
		if ip := net.ParseIP(name); ip != nil {
			if len(leaf.Leaf.IPAddresses) != 1 || !leaf.Leaf.IPAddresses[0].Equal(ip) || len(leaf.Leaf.DNSNames) != 0 {
				t.Errorf("leaf for %s: IPs %v, DNS names %v; want the IP address only", name, leaf.Leaf.IPAddresses, leaf.Leaf.DNSNames)
			}
		}
		err = mitmtVerify(leaf, ca, name)
		if err == nil {
			t.Errorf("leaf for %s, outside the name constraints, verifies", name)
			continue
		}
		var inv x509.CertificateInvalidError
		if !errors.As(err, &inv) || inv.Reason != x509.CANotAuthorizedForThisName || !strings.Contains(err.Error(), "constraint") {
			t.Errorf("leaf for %s: %v; want a name-constraint error", name, err)
		}
	}
}

func TestMitmLoadCAErrors(t *testing.T) {
	set := pkitest.New(t)
	_, dir := mitmtCA(t)
	_, otherDir := mitmtCA(t)
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, cert, key string
		want            []string
		notExist        bool
	}{
		{"server certificate, not a CA", set.ServerCert, set.ServerKey, []string{"is not a CA certificate", "mtlsproxy ca init"}, false},
		{"client certificate, not a CA", set.ClientCert, set.ClientKey, []string{"is not a CA certificate"}, false},
		{"key of another CA", caCrt, filepath.Join(otherDir, "ca.key"), []string{"MITM CA key", "does not match"}, false},
		{"key of a leaf", caCrt, set.ServerKey, []string{"does not match"}, false},
		{"certificate missing", missing, caKey, []string{"read MITM CA certificate"}, true},
		{"key missing", caCrt, missing, []string{"read MITM CA key"}, true},
		{"certificate not PEM", garbage, caKey, []string{"MITM CA certificate " + garbage}, false},
		{"key not PEM", caCrt, garbage, []string{"MITM CA key " + garbage}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, err := LoadMitmCA(tt.cert, tt.key)
			if err == nil {
				t.Fatalf("LoadMitmCA succeeded (%v); want an error", ca.Certificate().Subject)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.notExist != errors.Is(err, fs.ErrNotExist) {
				t.Errorf("errors.Is(%v, fs.ErrNotExist) = %v; want %v", err, !tt.notExist, tt.notExist)
			}
			if b, _ := os.ReadFile(tt.key); len(b) > 0 && strings.Contains(err.Error(), string(b)) {
				t.Errorf("error %q contains the key", err)
			}
		})
	}
}

func TestMitmLeafCacheLeaves(t *testing.T) {
	ca, _ := mitmtCA(t)
	c := NewLeafCache(ca, 0, 0) // the defaults: 12h, 1024 leaves
	start := time.Now()
	leaf, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if c.Mints() != 1 {
		t.Fatalf("Mints() = %d after the first leaf; want 1", c.Mints())
	}
	l := leaf.Leaf
	if l == nil {
		t.Fatal("tls.Certificate.Leaf is nil")
	}
	if k, ok := leaf.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("leaf key is %T; want ECDSA P-256", leaf.PrivateKey)
	} else if !k.PublicKey.Equal(l.PublicKey) {
		t.Error("the leaf's key does not belong to its certificate")
	}
	if l.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("leaf public key algorithm %v; want ECDSA", l.PublicKeyAlgorithm)
	}
	if life := l.NotAfter.Sub(start); life > 12*time.Hour || life < 12*time.Hour-time.Minute {
		t.Errorf("leaf valid for another %v; want 12h", life)
	}
	if l.NotBefore.After(start) {
		t.Errorf("NotBefore %v is after the mint (%v): clients with a clock slightly behind would refuse it", l.NotBefore, start)
	}
	if l.IsCA || !reflect.DeepEqual(l.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("leaf IsCA=%v ExtKeyUsage=%v; want a server-only leaf", l.IsCA, l.ExtKeyUsage)
	}
	if !reflect.DeepEqual(l.DNSNames, []string{"api.internal"}) || l.Subject.CommonName != "api.internal" {
		t.Errorf("leaf names %v, CN %q; want api.internal", l.DNSNames, l.Subject.CommonName)
	}
	if len(leaf.Certificate) != 2 || string(leaf.Certificate[1]) != string(ca.Certificate().Raw) {
		t.Errorf("chain has %d certificates; want the leaf and the CA", len(leaf.Certificate))
	}
	if err := mitmtVerify(leaf, ca, "api.internal"); err != nil {
		t.Errorf("leaf does not verify against the CA: %v", err)
	}

	// Cached: the same leaf, however the name is spelled, and no mint.
	for _, name := range []string{"api.internal", "API.Internal", "api.internal."} {
		again, err := c.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		if again != leaf {
			t.Errorf("Certificate(%q) minted a new leaf; want the cached one", name)
		}
	}
	if c.Mints() != 1 {
		t.Errorf("Mints() = %d after cache hits; want 1", c.Mints())
	}
	other, err := c.Certificate("git.corp.example")
	if err != nil {
		t.Fatal(err)
	}
	if other == leaf || c.Mints() != 2 {
		t.Errorf("a new name: same leaf %v, Mints() = %d; want a new leaf and 2", other == leaf, c.Mints())
	}
	if other.Leaf.SerialNumber.Cmp(l.SerialNumber) == 0 {
		t.Error("two leaves share a serial number")
	}
	if other.PrivateKey.(*ecdsa.PrivateKey).Equal(leaf.PrivateKey) {
		t.Error("two leaves share a key")
	}
}

// TestMitmLeafCacheSingleFlight sends 50 concurrent requests for a name
// not yet cached: one mint, one leaf for all.
func TestMitmLeafCacheSingleFlight(t *testing.T) {
	ca, _ := mitmtCA(t)
	for round := range 5 {
		c := NewLeafCache(ca, 0, 0)
		const n = 50
		name := fmt.Sprintf("burst%d.corp.example", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		leaves := make([]*tls.Certificate, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				leaves[i], errs[i] = c.Certificate(name)
			}()
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("request %d: %v", i, errs[i])
			}
			if leaves[i] != leaves[0] {
				t.Fatalf("request %d got a different leaf than request 0", i)
			}
		}
		if got := c.Mints(); got != 1 {
			t.Fatalf("round %d: %d concurrent requests for a new name minted %d leaves; want 1", round, n, got)
		}
	}
}

// TestMitmLeafCacheRenews checks that a leaf is minted again when less
// than a third of its validity is left, and served from the cache before.
func TestMitmLeafCacheRenews(t *testing.T) {
	ca, _ := mitmtCA(t)
	// Certificates carry whole seconds: a 3s leaf has 2s to 3s left when
	// minted, more than a third (1s); 2.1s later it has less than 1s.
	c := NewLeafCache(ca, 3*time.Second, 0)
	first, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(first.Leaf.NotAfter); life > 3*time.Second {
		t.Errorf("leaf valid for another %v; want at most the 3s asked for", life)
	}
	time.Sleep(500 * time.Millisecond)
	if again, _ := c.Certificate("api.internal"); again != first || c.Mints() != 1 {
		t.Fatalf("with two thirds of the validity left: new leaf %v, Mints() = %d; want the cached leaf", again != first, c.Mints())
	}
	time.Sleep(1600 * time.Millisecond)
	renewed, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if renewed == first || c.Mints() != 2 {
		t.Fatalf("with less than a third left: new leaf %v, Mints() = %d; want a renewed leaf and 2 mints", renewed != first, c.Mints())
	}
	if !renewed.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Errorf("renewed leaf expires %v, not after the old one (%v)", renewed.Leaf.NotAfter, first.Leaf.NotAfter)
	}
	if again, _ := c.Certificate("api.internal"); again != renewed || c.Mints() != 2 {
		t.Errorf("the renewed leaf is not cached: Mints() = %d", c.Mints())
	}
}

// TestMitmLeafNeverOutlivesCA checks that a leaf stops when its CA does.
func TestMitmLeafNeverOutlivesCA(t *testing.T) {
	ca, _ := mitmtCA(t)
	c := NewLeafCache(ca, 2*365*24*time.Hour, 0)
	leaf, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Leaf.NotAfter.After(ca.Certificate().NotAfter) {
		t.Errorf("leaf NotAfter %v is after the CA's %v", leaf.Leaf.NotAfter, ca.Certificate().NotAfter)
	}
}

func TestMitmLeafCacheBounded(t *testing.T) {
	ca, _ := mitmtCA(t)
	c := NewLeafCache(ca, 0, 3)
	names := []string{"a.corp.example", "b.corp.example", "c.corp.example", "d.corp.example", "e.corp.example"}
	for i, name := range names {
		if _, err := c.Certificate(name); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		size := len(c.leaves)
		c.mu.Unlock()
		if size > 3 {
			t.Fatalf("after %d names the cache holds %d leaves; want at most 3", i+1, size)
		}
		// Leaves minted in the same second would expire together: give
		// each next one a longer life, so that the order of expiry is the
		// order of minting.
		c.validity += time.Hour
	}
	if c.Mints() != 5 {
		t.Fatalf("Mints() = %d; want 5", c.Mints())
	}
	// The leaves that expire first went; the newest are still cached.
	c.mu.Lock()
	var kept []string
	for name := range c.leaves {
		kept = append(kept, name)
	}
	c.mu.Unlock()
	for _, name := range names[2:] {
		if _, err := c.Certificate(name); err != nil {
			t.Fatal(err)
		}
	}
	if c.Mints() != 5 {
		t.Errorf("the 3 newest leaves were not all cached (kept %v): Mints() = %d; want 5", kept, c.Mints())
	}
	if _, err := c.Certificate(names[0]); err != nil {
		t.Fatal(err)
	}
	if c.Mints() != 6 {
		t.Errorf("the oldest leaf was still cached: Mints() = %d; want 6", c.Mints())
	}
}

// TestMitmLeafCacheSetCA checks that a new CA drops the leaves the old one
// signed: the next leaf verifies against the new CA only.
func TestMitmLeafCacheSetCA(t *testing.T) {
	oldCA, _ := mitmtCA(t)
	newCA, _ := mitmtCA(t)
	c := NewLeafCache(oldCA, 0, 0)
	before, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	c.SetCA(newCA)
	if c.CA() != newCA {
		t.Fatal("CA() is not the CA given to SetCA")
	}
	after, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if after == before || c.Mints() != 2 {
		t.Fatalf("after SetCA: new leaf %v, Mints() = %d; want a leaf from the new CA", after != before, c.Mints())
	}
	if err := mitmtVerify(after, newCA, "api.internal"); err != nil {
		t.Errorf("leaf after SetCA does not verify against the new CA: %v", err)
	}
	if err := mitmtVerify(after, oldCA, "api.internal"); err == nil {
		t.Error("leaf after SetCA verifies against the old CA")
	}
	if string(after.Certificate[1]) != string(newCA.Certificate().Raw) {
		t.Error("the chain after SetCA carries the old CA")
	}
}

// BenchmarkMint measures minting one leaf (ECDSA P-256 key generation and
// signature) through the cache, for a name never seen before.
func BenchmarkMint(b *testing.B) {
	ca, _ := mitmtCA(b)
	c := NewLeafCache(ca, 0, b.N+1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := c.Certificate(fmt.Sprintf("h%d.corp.example", i)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if c.Mints() != int64(b.N) {
		b.Fatalf("Mints() = %d; want %d", c.Mints(), b.N)
	}
}

// BenchmarkMintCached measures a cache hit, the cost every intercepted
// handshake after the first pays.
func BenchmarkMintCached(b *testing.B) {
	ca, _ := mitmtCA(b)
	c := NewLeafCache(ca, 0, 0)
	if _, err := c.Certificate("api.internal"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Certificate("api.internal"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMitmLeafCacheReload checks the cache as the MITM CA's Source: a
// re-read of the same CA keeps the minted leaves (re-minting every leaf at
// each periodic re-read would cost a key generation per name), and a new
// CA drops them.
func TestMitmLeafCacheReload(t *testing.T) {
	ca, dir := mitmtCA(t)
	c := NewLeafCache(ca, 0, 0)
	before, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err != nil {
		t.Fatalf("Reload of the same CA: %v", err)
	}
	if again, _ := c.Certificate("api.internal"); again != before || c.Generation() != 1 || c.CA() != ca {
		t.Errorf("after reloading the same CA: same leaf %v, generation %d, same CA %v; want true, 1, true",
			again == before, c.Generation(), c.CA() == ca)
	}
	other, _ := mitmtCA(t)
	certFile, keyFile := other.Files()
	for src, dst := range map[string]string{certFile: filepath.Join(dir, "ca.crt"), keyFile: filepath.Join(dir, "ca.key")} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Reload(); err != nil {
		t.Fatalf("Reload of a new CA: %v", err)
	}
	after, err := c.Certificate("api.internal")
	if err != nil {
		t.Fatal(err)
	}
	if c.Generation() != 2 || after == before {
		t.Errorf("after a new CA: generation %d, new leaf %v; want 2, true", c.Generation(), after != before)
	}
	if err := mitmtVerify(after, c.CA(), "api.internal"); err != nil || !c.CA().Certificate().Equal(other.Certificate()) {
		t.Errorf("the leaf after the reload does not come from the new CA: %v", err)
	}
}
