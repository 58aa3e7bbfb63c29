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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/youmark/pkcs8"
	"software.sslmate.com/src/go-pkcs12"
)

// Identity is a client certificate and its private key, presented to
// upstream servers that ask for one. The loaded certificate sits behind an
// atomic pointer so that a reload is a pointer swap: handshakes in flight keep
// the certificate they started with, and a reload that fails leaves the
// previous certificate in place. Identity is the file-backed
// CertificateSource.
type Identity struct {
	name string
	src  IdentitySource
	cert atomic.Pointer[tls.Certificate]
	// gen counts the certificates published; see Source.
	gen atomic.Uint64
	// reloadMu serialises Reload, so that two concurrent reloads of the
	// same new files bump the generation once.
	reloadMu sync.Mutex
}

// IdentitySource says where an identity's files are: either PEM files
// (CertFile and KeyFile, with KeyPassFile for an encrypted PKCS#8 key) or
// a PKCS#12 bundle (PKCS12File with PKCS12PassFile). It only names files;
// the loaded, reloadable identity is the Identity, a Source.
type IdentitySource struct {
	CertFile    string
	KeyFile     string
	KeyPassFile string

	PKCS12File     string
	PKCS12PassFile string
}

// Files lists every file the identity is read from, for watching.
func (s IdentitySource) Files() []string {
	var out []string
	for _, f := range []string{s.CertFile, s.KeyFile, s.KeyPassFile, s.PKCS12File, s.PKCS12PassFile} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// LoadPEMIdentity reads a PEM certificate file (leaf first, then any
// intermediates) and a PEM private key file (PKCS#8, PKCS#1 or SEC 1; RSA,
// ECDSA or Ed25519) and checks that the key belongs to the leaf.
func LoadPEMIdentity(name, certFile, keyFile string) (*Identity, error) {
	return LoadIdentity(name, IdentitySource{CertFile: certFile, KeyFile: keyFile})
}

// LoadIdentity reads an identity from src and checks that its key belongs
// to its leaf certificate.
func LoadIdentity(name string, src IdentitySource) (*Identity, error) {
	pem := src.CertFile != "" || src.KeyFile != "" || src.KeyPassFile != ""
	p12 := src.PKCS12File != "" || src.PKCS12PassFile != ""
	switch {
	case pem && p12:
		return nil, fmt.Errorf("load identity %q: give PEM files or a PKCS#12 file, not both", name)
	case p12 && src.PKCS12File == "":
		return nil, fmt.Errorf("load identity %q: a PKCS#12 password file without the PKCS#12 file", name)
	case !p12 && (src.CertFile == "" || src.KeyFile == ""):
		return nil, fmt.Errorf("load identity %q: need both a certificate and a key file", name)
	}
	id := &Identity{name: name, src: src}
	if err := id.Reload(); err != nil {
		return nil, err
	}
	return id, nil
}

// Source is where the identity is read from.
func (id *Identity) Source() IdentitySource { return id.src }

// Name is the identity's name as given in the configuration.
func (id *Identity) Name() string { return id.name }

// Files lists the files the identity is read from, for watching.
func (id *Identity) Files() []string { return id.src.Files() }

// Generation is 1 after the identity was loaded and increases with each
// reload that put a different certificate chain in use.
func (id *Identity) Generation() uint64 { return id.gen.Load() }

// Reload re-reads the identity's files. On any error the certificate in use
// stays as it was. Files that hold the certificate chain already in use
// change nothing: Certificate keeps returning the same pointer and the
// generation stays.
func (id *Identity) Reload() error {
	id.reloadMu.Lock()
	defer id.reloadMu.Unlock()
	var cert *tls.Certificate
	var err error
	if id.src.PKCS12File != "" {
		cert, err = readPKCS12(id.src.PKCS12File, id.src.PKCS12PassFile)
	} else {
		cert, err = readPEMPair(id.src.CertFile, id.src.KeyFile, id.src.KeyPassFile)
	}
	if err != nil {
		return fmt.Errorf("load identity %q: %w", id.name, err)
	}
	if old := id.cert.Load(); old != nil && sameChain(old.Certificate, cert.Certificate) {
		return nil
	}
	// Publish before counting, so that whoever sees the new generation
	// reads the new certificate.
	id.cert.Store(cert)
	id.gen.Add(1)
	return nil
}

// sameChain reports whether two DER chains are equal. The key needs no
// comparison: it was checked against the leaf's public key.
func sameChain(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
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

func readPEMPair(certFile, keyFile, passFile string) (*tls.Certificate, error) {
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
	var pass []byte
	if passFile != "" {
		if pass, err = readPassFile(passFile); err != nil {
			return nil, err
		}
	}
	key, err := parsePrivateKey(keyPEM, pass, passFile != "")
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", keyFile, err)
	}
	return assemble(chain, key, keyFile, certFile)
}

// assemble checks that key belongs to the leaf and builds the certificate.
func assemble(chain []*x509.Certificate, key crypto.Signer, keyFile, certFile string) (*tls.Certificate, error) {
	if err := keyMatches(chain[0], key); err != nil {
		if keyFile == certFile {
			return nil, fmt.Errorf("%s: %w", keyFile, err)
		}
		return nil, fmt.Errorf("key %s: %w (certificate %s)", keyFile, err, certFile)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// readPassFile reads a passphrase file; one trailing newline is not part of
// the passphrase.
func readPassFile(f string) ([]byte, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	return b, nil
}

func readPKCS12(file, passFile string) (*tls.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read PKCS#12: %w", err)
	}
	var pass []byte
	if passFile != "" {
		if pass, err = readPassFile(passFile); err != nil {
			return nil, err
		}
	}
	key, leaf, cas, err := pkcs12.DecodeChain(data, string(pass))
	if err != nil {
		if errors.Is(err, pkcs12.ErrIncorrectPassword) {
			if passFile == "" {
				return nil, fmt.Errorf("decrypt PKCS#12 %s: it needs a password: give its password file", file)
			}
			return nil, fmt.Errorf("decrypt PKCS#12 %s: wrong password? (from %s)", file, passFile)
		}
		return nil, fmt.Errorf("decode PKCS#12 %s: %w", file, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("PKCS#12 %s: unsupported key type %T", file, key)
	}
	return assemble(append([]*x509.Certificate{leaf}, cas...), signer, file, file)
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

func parsePrivateKey(data, pass []byte, havePass bool) (crypto.Signer, error) {
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
			if !havePass {
				return nil, errors.New("the key is encrypted: give its passphrase file (--key-pass-file, or password_file in the config)")
			}
			k, err := pkcs8.ParsePKCS8PrivateKey(block.Bytes, pass)
			if err != nil {
				if strings.Contains(err.Error(), "incorrect password") {
					return nil, errors.New("decrypt key: wrong passphrase?")
				}
				return nil, fmt.Errorf("decrypt PKCS#8 key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported key type %T", k)
			}
			return s, nil
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

// LooseFiles lists the identity's secret files (key, PKCS#12, passphrase)
// that group or others may read, with their modes, so the caller can warn.
func (s IdentitySource) LooseFiles() []string {
	var out []string
	for _, f := range []string{s.KeyFile, s.KeyPassFile, s.PKCS12File, s.PKCS12PassFile} {
		if f == "" {
			continue
		}
		if fi, err := os.Stat(f); err == nil && fi.Mode().Perm()&0o077 != 0 {
			out = append(out, fmt.Sprintf("%s (mode %04o)", f, fi.Mode().Perm()))
		}
	}
	return out
}
