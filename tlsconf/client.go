package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"sync/atomic"
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
	if id := o.Identity; id != nil {
		cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if ctx := cri.Context(); ctx != nil {
				if f, ok := ctx.Value(certificateRequestedKey{}).(func()); ok {
					f()
				}
			}
			return id.GetClientCertificate(cri)
		}
	}
	return cfg
}

type certificateRequestedKey struct{}

// WithCertificateRequested returns a context under which a handshake made
// with a ClientConfig calls f when the server asks for the client
// certificate, so that a probe can tell a server that asked from one that
// did not.
func WithCertificateRequested(ctx context.Context, f func()) context.Context {
	return context.WithValue(ctx, certificateRequestedKey{}, f)
}

// LiveClientConfig keeps one upstream's client config current with its
// sources, as ghostunnel's certloader does: Config returns the config built
// from the options, built again (with a new session cache, since a resumed
// session would carry the old client certificate) once the identity's or
// the trust's generation has moved. The certificate is already read per
// handshake through GetClientCertificate; the roots are not, because
// tls.Config has no callback for them, hence the rebuild.
type LiveClientConfig struct {
	opts    ClientOptions
	sources []Source
	mu      sync.Mutex // serialises rebuilds
	cur     atomic.Pointer[liveConfig]
}

// liveConfig is a built config with the generations it was built from.
type liveConfig struct {
	cfg  *tls.Config
	gens []uint64
}

// NewLiveClientConfig builds the first config from o.
func NewLiveClientConfig(o ClientOptions) *LiveClientConfig {
	c := &LiveClientConfig{opts: o}
	for _, src := range []Source{o.Identity, o.Trust} {
		if !isNil(src) {
			c.sources = append(c.sources, src)
		}
	}
	c.cur.Store(c.build())
	return c
}

// build reads the generations before building, so that a change that lands
// during the build is seen by the next Config call.
func (c *LiveClientConfig) build() *liveConfig {
	lc := &liveConfig{gens: make([]uint64, len(c.sources))}
	for i, src := range c.sources {
		lc.gens[i] = src.Generation()
	}
	lc.cfg = ClientConfig(c.opts)
	return lc
}

func (c *LiveClientConfig) current(lc *liveConfig) bool {
	for i, src := range c.sources {
		if src.Generation() != lc.gens[i] {
			return false
		}
	}
	return true
}

// Config returns the config to handshake with; it must not be modified.
// rebuilt is true for the one call that built it again after a change, so
// that caller can retire connections made with the previous one. A call
// that starts after a source's generation moved never gets the previous
// config.
func (c *LiveClientConfig) Config() (cfg *tls.Config, rebuilt bool) {
	if lc := c.cur.Load(); c.current(lc) {
		return lc.cfg, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if lc := c.cur.Load(); c.current(lc) {
		return lc.cfg, false // another call rebuilt it
	}
	lc := c.build()
	c.cur.Store(lc)
	return lc.cfg, true
}
