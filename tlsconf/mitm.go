package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MitmCA is the local certificate authority that signs the leaf
// certificates mtlsproxy shows to clients inside intercepted CONNECT
// tunnels (connect: mitm). Clients must trust it; its name constraints
// limit what a leaked key could impersonate.
type MitmCA struct {
	certFile, keyFile string
	cert              *x509.Certificate
	key               crypto.Signer
}

// LoadMitmCA reads a CA certificate and its key (PEM) and checks that they
// belong together and that the certificate is a CA.
func LoadMitmCA(certFile, keyFile string) (*MitmCA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read MITM CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read MITM CA key: %w", err)
	}
	certs, err := parseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("MITM CA certificate %s: %w", certFile, err)
	}
	key, err := parsePrivateKey(keyPEM, nil, false)
	if err != nil {
		return nil, fmt.Errorf("MITM CA key %s: %w", keyFile, err)
	}
	if err := keyMatches(certs[0], key); err != nil {
		return nil, fmt.Errorf("MITM CA key %s: %w", keyFile, err)
	}
	if !certs[0].IsCA || certs[0].KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("MITM CA certificate %s is not a CA certificate (make one with: mtlsproxy ca init)", certFile)
	}
	return &MitmCA{certFile: certFile, keyFile: keyFile, cert: certs[0], key: key}, nil
}

// Certificate is the CA certificate.
func (ca *MitmCA) Certificate() *x509.Certificate { return ca.cert }

// Constrained reports whether the CA carries permitted DNS name
// constraints.
func (ca *MitmCA) Constrained() bool { return len(ca.cert.PermittedDNSDomains) > 0 }

// InitMitmCA writes a new ECDSA P-256 CA certificate (ca.crt) and key
// (ca.key, mode 0600) into dir, valid for one year, with X.509 name
// constraints that permit only the given DNS domains (and their
// subdomains) and exclude every IP address. It refuses to overwrite.
func InitMitmCA(dir string, permit []string, commonName string) (certFile, keyFile string, err error) {
	if len(permit) == 0 {
		return "", "", errors.New("no permitted domains: a CA without name constraints could impersonate any site")
	}
	certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	for _, f := range []string{certFile, keyFile} {
		if _, err := os.Stat(f); err == nil {
			return "", "", fmt.Errorf("%s already exists; not overwriting it", f)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:                randomSerial(),
		Subject:                     pkix.Name{CommonName: commonName, Organization: []string{"mtlsproxy local MITM CA"}},
		NotBefore:                   now.Add(-time.Hour),
		NotAfter:                    now.AddDate(1, 0, 0),
		IsCA:                        true,
		BasicConstraintsValid:       true,
		MaxPathLenZero:              true,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         permit,
		ExcludedIPRanges: []*net.IPNet{
			{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "", "", fmt.Errorf("create CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

// LeafCache mints and caches the leaf certificates shown to clients, one
// per name: ECDSA P-256, valid for Validity, minted again when a third of
// that is left. A burst of connections for a new name mints once.
//
// LeafCache is also the Source of the MITM CA: Reload re-reads the CA's
// files and, when the CA changed, swaps it in as SetCA does. (MitmCA itself
// is one immutable loaded CA; its Files method predates Source.)
type LeafCache struct {
	ca       atomic.Pointer[MitmCA]
	gen      atomic.Uint64
	reloadMu sync.Mutex
	validity time.Duration
	max      int

	mu       sync.Mutex
	leaves   map[string]*tls.Certificate
	inflight map[string]*mintCall
	mints    atomic.Int64
}

type mintCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// NewLeafCache makes a cache of at most max leaves (default 1024) valid
// for validity (default 12h).
func NewLeafCache(ca *MitmCA, validity time.Duration, max int) *LeafCache {
	if validity <= 0 {
		validity = 12 * time.Hour
	}
	if max <= 0 {
		max = 1024
	}
	c := &LeafCache{validity: validity, max: max, leaves: map[string]*tls.Certificate{}, inflight: map[string]*mintCall{}}
	c.ca.Store(ca)
	c.gen.Store(1)
	return c
}

// SetCA swaps the CA (after a reload) and drops the leaves it signed.
func (c *LeafCache) SetCA(ca *MitmCA) {
	c.ca.Store(ca)
	c.mu.Lock()
	c.leaves = map[string]*tls.Certificate{}
	c.mu.Unlock()
	c.gen.Add(1)
}

// MitmCASourceName is the Name of every LeafCache: there is one MITM CA
// per proxy.
const MitmCASourceName = "mitm_ca"

// Name is MitmCASourceName.
func (c *LeafCache) Name() string { return MitmCASourceName }

// Files are the CA's certificate and key files.
func (c *LeafCache) Files() []string {
	var out []string
	certFile, keyFile := c.ca.Load().Files()
	for _, f := range []string{certFile, keyFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Generation is 1 for a new cache and increases each time a different CA
// is put in use (by Reload or SetCA).
func (c *LeafCache) Generation() uint64 { return c.gen.Load() }

// Reload re-reads the CA from the files it was loaded from. On any error
// the CA in use stays as it was; the same CA read again changes nothing,
// so the leaves minted so far stay valid.
func (c *LeafCache) Reload() error {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	old := c.ca.Load()
	if old.certFile == "" {
		return nil // built in memory: nothing to re-read
	}
	ca, err := LoadMitmCA(old.Files())
	if err != nil {
		return err
	}
	if bytes.Equal(ca.cert.Raw, old.cert.Raw) {
		return nil
	}
	c.SetCA(ca)
	return nil
}

// CA is the CA in use.
func (c *LeafCache) CA() *MitmCA { return c.ca.Load() }

// Mints counts the leaves minted so far.
func (c *LeafCache) Mints() int64 { return c.mints.Load() }

// Certificate returns a leaf for name (a DNS name or an IP address).
func (c *LeafCache) Certificate(name string) (*tls.Certificate, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	now := time.Now()
	c.mu.Lock()
	if leaf, ok := c.leaves[name]; ok && leaf.Leaf.NotAfter.Sub(now) > c.validity/3 {
		c.mu.Unlock()
		return leaf, nil
	}
	if call, ok := c.inflight[name]; ok {
		c.mu.Unlock()
		<-call.done
		return call.cert, call.err
	}
	call := &mintCall{done: make(chan struct{})}
	c.inflight[name] = call
	c.mu.Unlock()

	call.cert, call.err = c.mint(name, now)
	c.mu.Lock()
	delete(c.inflight, name)
	if call.err == nil {
		if len(c.leaves) >= c.max {
			c.evict(now)
		}
		c.leaves[name] = call.cert
	}
	c.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}

// evict drops the leaf that expires first. Called with mu held.
func (c *LeafCache) evict(now time.Time) {
	var victim string
	var soonest time.Time
	for name, leaf := range c.leaves {
		if victim == "" || leaf.Leaf.NotAfter.Before(soonest) {
			victim, soonest = name, leaf.Leaf.NotAfter
		}
	}
	delete(c.leaves, victim)
}

func (c *LeafCache) mint(name string, now time.Time) (*tls.Certificate, error) {
	ca := c.ca.Load()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(c.validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("mint certificate for %q: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c.mints.Add(1)
	return &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// Files are the CA's certificate and key files.
func (ca *MitmCA) Files() (certFile, keyFile string) { return ca.certFile, ca.keyFile }
