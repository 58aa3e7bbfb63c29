// Package pkitest gives tests a fresh PKI in a temporary directory: a CA,
// a server certificate for api.internal, localhost and 127.0.0.1, and a
// client certificate, all valid from an hour ago to a day from now.
package pkitest

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

// Set is a test PKI written to Dir.
type Set struct {
	Dir    string
	CA     *pki.CA
	CAFile string

	Server                *pki.Leaf
	ServerCert, ServerKey string
	Client                *pki.Leaf
	ClientCert, ClientKey string
	ClientSubject         string
}

// ServerNames are the names in the server certificate.
var ServerNames = []string{"api.internal", "localhost"}

// New makes a Set in t.TempDir().
func New(t testing.TB) *Set {
	t.Helper()
	s := &Set{Dir: t.TempDir()}
	var err error
	if s.CA, err = pki.NewCA("mtlsproxy test CA"); err != nil {
		t.Fatal(err)
	}
	if s.CAFile, err = s.CA.WriteCert(s.Dir, "ca"); err != nil {
		t.Fatal(err)
	}
	s.Server = Issue(t, s.CA, pki.LeafOptions{CommonName: "api.internal", DNSNames: ServerNames,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, Server: true})
	if s.ServerCert, s.ServerKey, err = s.Server.WriteFiles(s.Dir, "server"); err != nil {
		t.Fatal(err)
	}
	s.Client = Issue(t, s.CA, pki.LeafOptions{CommonName: "test-client", Client: true})
	if s.ClientCert, s.ClientKey, err = s.Client.WriteFiles(s.Dir, "client"); err != nil {
		t.Fatal(err)
	}
	s.ClientSubject = s.Client.Cert.Subject.String()
	return s
}

// Issue signs a leaf or fails the test.
func Issue(t testing.TB, ca *pki.CA, o pki.LeafOptions) *pki.Leaf {
	t.Helper()
	l, err := ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ServerTLS is a server config presenting the server certificate and
// requiring a client certificate from the set's CA.
func (s *Set) ServerTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{s.Server.TLSCertificate()},
		ClientCAs:    s.CA.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}
