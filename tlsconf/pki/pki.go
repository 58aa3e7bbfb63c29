// Package pki makes throwaway certificate authorities and leaf certificates
// for the demo and for tests. Everything it makes lives in memory or in a
// directory the caller chooses, with validity relative to now; it is not
// meant for long-lived keys.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// KeyType selects the algorithm of a generated key.
type KeyType string

// Supported key types.
const (
	ECDSA   KeyType = "ecdsa"
	RSA     KeyType = "rsa"
	Ed25519 KeyType = "ed25519"
)

// CA is a certificate authority that can issue leaves and intermediates.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	// chainPEM is the PEM of this CA followed by its issuers, excluding the
	// root, so that leaves can carry a full chain.
	chainPEM []byte
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte // leaf, then the intermediates that issued it
	KeyPEM  []byte // PKCS#8
}

// LeafOptions describe a leaf certificate.
type LeafOptions struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	Client     bool // ExtKeyUsageClientAuth
	Server     bool // ExtKeyUsageServerAuth
	KeyType    KeyType
	// NotBefore and NotAfter default to one hour ago and one day from now.
	NotBefore, NotAfter time.Time
	// URIs are URI SANs, such as a SPIFFE ID.
	URIs []*url.URL
}

// NewCA makes a self-signed ECDSA P-256 root valid for a day.
func NewCA(commonName string) (*CA, error) {
	key, err := newKey(ECDSA)
	if err != nil {
		return nil, err
	}
	tmpl := caTemplate(commonName)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodeCert(der)}, nil
}

// NewIntermediate makes an intermediate CA signed by ca.
func (ca *CA) NewIntermediate(commonName string) (*CA, error) {
	key, err := newKey(ECDSA)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, caTemplate(commonName), ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("create intermediate %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pemBytes := encodeCert(der)
	return &CA{Cert: cert, Key: key, CertPEM: pemBytes, chainPEM: append(append([]byte{}, pemBytes...), ca.chainPEM...)}, nil
}

// Issue signs a new leaf certificate.
func (ca *CA) Issue(o LeafOptions) (*Leaf, error) {
	if o.KeyType == "" {
		o.KeyType = ECDSA
	}
	key, err := newKey(o.KeyType)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: o.CommonName, Organization: []string{"mtlsproxy test"}},
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPs,
		URIs:         o.URIs,
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if o.KeyType == RSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if o.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if o.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue %q: %w", o.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Leaf{
		Cert:    cert,
		Key:     key,
		CertPEM: append(encodeCert(der), ca.chainPEM...),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// TLSCertificate returns the leaf as a tls.Certificate with its chain.
func (l *Leaf) TLSCertificate() tls.Certificate {
	c, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		// Only reachable if this package produced an inconsistent pair.
		panic(fmt.Sprintf("pki: inconsistent leaf: %v", err))
	}
	return c
}

// WriteFiles writes name.crt and name.key (mode 0600) into dir.
func (l *Leaf) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	certFile = filepath.Join(dir, name+".crt")
	keyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, l.CertPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, l.KeyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// WriteCert writes the CA certificate as name.crt into dir.
func (ca *CA) WriteCert(dir, name string) (string, error) {
	f := filepath.Join(dir, name+".crt")
	return f, os.WriteFile(f, ca.CertPEM, 0o644)
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func caTemplate(cn string) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"mtlsproxy test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func newKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case ECDSA:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA:
		return rsa.GenerateKey(rand.Reader, 2048)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown key type %q", t)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
