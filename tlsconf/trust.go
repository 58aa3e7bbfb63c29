package tlsconf

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// LoadCAFiles builds a certificate pool from PEM bundle files. With no files
// it returns the system roots. A file that holds no certificate is an error,
// never an empty pool: an empty pool would make every handshake fail with a
// misleading "unknown authority".
func LoadCAFiles(files []string) (*x509.CertPool, error) {
	return LoadTrust(files, len(files) == 0)
}

// LoadTrust builds a pool from PEM bundle files, starting from the system
// roots when system is set. Unlike LoadCAFiles, no files and no system
// roots is an error.
func LoadTrust(files []string, system bool) (*x509.CertPool, error) {
	st, err := readTrust(files, system)
	if err != nil {
		return nil, err
	}
	return st.pool, nil
}

// TrustBundle is a reloadable pool of the CAs that verify upstream
// servers: PEM bundle files, optionally on top of the system roots. It is
// the file-backed TrustSource. A reload that reads the same certificates
// keeps the pool and the generation, whatever else changed in the files
// (comments, line endings, a rewrite with the same content): a new pool
// makes every route start over with new connections, which a re-read must
// not cause. Different certificates make a new pool.
type TrustBundle struct {
	name   string
	files  []string
	system bool
	state  atomic.Pointer[trustState]
	gen    atomic.Uint64
	// reloadMu serialises Reload, so that one change bumps the generation
	// once.
	reloadMu sync.Mutex
}

// trustState is one loaded version of a bundle, published as a whole.
type trustState struct {
	pool  *x509.CertPool
	certs []*x509.Certificate // from the files, in order; not the system roots
	sum   [sha256.Size]byte   // of certs, to tell a change from a re-read
}

// LoadTrustBundle loads a trust bundle called name (for logs) from PEM
// files, starting from the system roots when system is set. No files and
// no system roots is an error, as for LoadTrust; for LoadCAFiles' meaning
// (the system roots when no file is given), pass system = len(files) == 0.
func LoadTrustBundle(name string, files []string, system bool) (*TrustBundle, error) {
	t := &TrustBundle{name: name, files: append([]string(nil), files...), system: system}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Name is the bundle's name as given in the configuration.
func (t *TrustBundle) Name() string { return t.name }

// Files are the bundle's PEM files. Nil for the system roots alone, which
// Go reads once per process, so there is nothing to watch.
func (t *TrustBundle) Files() []string { return append([]string(nil), t.files...) }

// System reports whether the pool starts from the system roots.
func (t *TrustBundle) System() bool { return t.system }

// Pool is the pool in use. It must not be modified: build a new bundle
// instead.
func (t *TrustBundle) Pool() *x509.CertPool { return t.state.Load().pool }

// Certificates are the CA certificates read from the files, in order (not
// the system roots), for logs.
func (t *TrustBundle) Certificates() []*x509.Certificate {
	return append([]*x509.Certificate(nil), t.state.Load().certs...)
}

// Generation is 1 after the bundle was loaded and increases with each
// reload that put different certificates in use.
func (t *TrustBundle) Generation() uint64 { return t.gen.Load() }

// Reload re-reads the bundle's files. On any error the pool in use stays
// as it was.
func (t *TrustBundle) Reload() error {
	t.reloadMu.Lock()
	defer t.reloadMu.Unlock()
	st, err := readTrust(t.files, t.system)
	if err != nil {
		return fmt.Errorf("load trust %q: %w", t.name, err)
	}
	if old := t.state.Load(); old != nil && old.sum == st.sum {
		return nil
	}
	// Publish before counting; see Source.
	t.state.Store(st)
	t.gen.Add(1)
	return nil
}

func readTrust(files []string, system bool) (*trustState, error) {
	if len(files) == 0 && !system {
		return nil, errors.New("no CA files and no system roots: nothing would be trusted")
	}
	st := &trustState{pool: x509.NewCertPool()}
	h := sha256.New()
	if system {
		sys, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("load system roots: %w", err)
		}
		st.pool = sys
		h.Write([]byte("system\x00"))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
		certs, err := parseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("CA bundle %s: %w", f, err)
		}
		for _, c := range certs {
			st.pool.AddCert(c)
			// Length-prefixed, so that no two different lists of
			// certificates hash alike.
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(c.Raw))))
			h.Write(c.Raw)
		}
		st.certs = append(st.certs, certs...)
	}
	h.Sum(st.sum[:0])
	return st, nil
}
