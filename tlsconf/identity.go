package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// Identity is a client certificate and its private key, presented to
// upstream servers that ask for one. The loaded certificate sits behind an
// atomic pointer so that a reload is a pointer swap: handshakes in flight keep
// the certificate they started with, and a reload that fails leaves the
// previous certificate in place.
type Identity struct {
	name     string
	certFile string
	keyFile  string
	cert     atomic.Pointer[tls.Certificate]
}

// LoadPEMIdentity reads a PEM certificate file (leaf first, then any
// intermediates) and a PEM private key file (PKCS#8, PKCS#1 or SEC 1; RSA,
// ECDSA or Ed25519) and checks that the key belongs to the leaf.
func LoadPEMIdentity(name, certFile, keyFile string) (*Identity, error) {
	id := &Identity{name: name, certFile: certFile, keyFile: keyFile}
	if err := id.Reload(); err != nil {
		return nil, err
	}
	return id, nil
}

// Name is the identity's name as given in the configuration.
func (id *Identity) Name() string { return id.name }

// Reload re-reads the identity's files. On any error the certificate in use
// stays as it was.
func (id *Identity) Reload() error {
	cert, err := readPEMPair(id.certFile, id.keyFile)
	if err != nil {
		return fmt.Errorf("load identity %q: %w", id.name, err)
	}
	id.cert.Store(cert)
	return nil
}

// Certificate returns the certificate currently in use. It is never nil for
// an Identity returned by LoadPEMIdentity.
func (id *Identity) Certificate() *tls.Certificate { return id.cert.Load() }

// Leaf returns the parsed leaf certificate currently in use.
func (id *Identity) Leaf() *x509.Certificate { return id.cert.Load().Leaf }

// Expired reports whether the leaf certificate is outside its validity
// period at time now.
func (id *Identity) Expired(now time.Time) bool {
	leaf := id.Leaf()
	return now.After(leaf.NotAfter) || now.Before(leaf.NotBefore)
}

// GetClientCertificate implements tls.Config.GetClientCertificate.
func (id *Identity) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return id.cert.Load(), nil
}

func readPEMPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	chain, err := parseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", certFile, err)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", keyFile, err)
	}
	if err := keyMatches(chain[0], key); err != nil {
		return nil, fmt.Errorf("key %s: %w (certificate %s)", keyFile, err, certFile)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// parseCertificates returns every CERTIFICATE block in data, in order.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

func parsePrivateKey(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key block found")
		}
		switch block.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse PKCS#8 key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported key type %T", k)
			}
			return s, nil
		case "RSA PRIVATE KEY":
			if _, ok := block.Headers["DEK-Info"]; ok {
				return nil, errors.New("encrypted PEM keys are not supported: convert the key to unencrypted PKCS#8 (openssl pkcs8 -topk8 -nocrypt)")
			}
			return x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			if _, ok := block.Headers["DEK-Info"]; ok {
				return nil, errors.New("encrypted PEM keys are not supported: convert the key to unencrypted PKCS#8 (openssl pkcs8 -topk8 -nocrypt)")
			}
			return x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted PKCS#8 keys are not supported yet: decrypt it first (openssl pkcs8 -in KEY -out PLAIN)")
		}
	}
}

// keyMatches checks that key is the private half of the leaf's public key.
func keyMatches(leaf *x509.Certificate, key crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok || !pub.Equal(leaf.PublicKey) {
		return fmt.Errorf("private key (%s) does not match certificate (%s, subject %q)",
			keyKind(key.Public()), keyKind(leaf.PublicKey), leaf.Subject.String())
	}
	return nil
}

func keyKind(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// Describe is a one-line summary of the identity for start-up logs.
func (id *Identity) Describe() string {
	leaf := id.Leaf()
	var b bytes.Buffer
	fmt.Fprintf(&b, "subject %q, issuer %q, %s key, expires %s",
		leaf.Subject.String(), leaf.Issuer.String(), keyKind(leaf.PublicKey), leaf.NotAfter.UTC().Format(time.RFC3339))
	return b.String()
}
