package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
)

// ClientOptions describes one upstream TLS client configuration.
type ClientOptions struct {
	// Identity is presented when the server asks for a client certificate.
	// If nil, no client certificate is sent.
	Identity *Identity
	// RootCAs verifies the server's chain. If nil, and Trust is nil, the
	// system roots are used.
	RootCAs *x509.CertPool
	// Trust, if set, verifies the server's chain with its pool at the time
	// of the call, instead of RootCAs. A tls.Config has no callback for
	// roots, so a consumer builds the config again when Trust's generation
	// moves (see Tracker).
	Trust TrustSource
	// ServerName overrides the name sent in SNI and checked against the
	// server certificate. If empty, the dialed host name is used.
	ServerName string
	// MinVersion is the lowest TLS version offered. If zero, TLS 1.2.
	MinVersion uint16
	// VerifySAN, if set, requires the server certificate to carry one of
	// these names (DNS names, IPs, or URIs such as SPIFFE IDs), on top of
	// the usual chain and host name checks.
	VerifySAN []string
	// Pins, if set, requires the server leaf's public key to match one of
	// these SHA-256 SubjectPublicKeyInfo digests.
	Pins []Pin
	// HTTP2 offers HTTP/2 by ALPN as well as HTTP/1.1.
	HTTP2 bool
	// SessionCacheSize is the number of TLS sessions kept for resumption.
	// If zero, 1024.
	SessionCacheSize int
}

// ClientConfig builds the client *tls.Config for one upstream. Verification
// is always on: there is deliberately no way to skip it.
func ClientConfig(o ClientOptions) *tls.Config {
	minVersion := o.MinVersion
	if minVersion < tls.VersionTLS12 {
		minVersion = tls.VersionTLS12
	}
	size := o.SessionCacheSize
	if size <= 0 {
		size = 1024
	}
	protos := []string{"http/1.1"}
	if o.HTTP2 {
		protos = []string{"h2", "http/1.1"}
	}
	roots := o.RootCAs
	if !isNil(o.Trust) {
		roots = o.Trust.Pool()
	}
	cfg := &tls.Config{
		MinVersion:         minVersion,
		RootCAs:            roots,
		ServerName:         o.ServerName,
		ClientSessionCache: tls.NewLRUClientSessionCache(size),
		NextProtos:         protos,
		VerifyConnection:   verifyPeer(o.VerifySAN, o.Pins),
	}
	if o.Identity != nil {
		cfg.GetClientCertificate = o.Identity.GetClientCertificate
	}
	return cfg
}
