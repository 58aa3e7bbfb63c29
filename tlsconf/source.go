package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
)

// Source is reloadable TLS material: a client identity, a trust bundle, the
// MITM CA, and later SPIFFE or PKCS#11 identities. Every implementation
// keeps its material behind an atomic pointer, so readers never block and a
// handshake in flight keeps what it started with.
//
// The contract, which Set and Tracker rely on:
//
//   - Name is the name the material was configured under, for logs and
//     metric labels. Two sources of different kinds may share a name (an
//     identity and a trust bundle both called "app").
//   - Reload re-reads the material from where it lives. If that fails, the
//     material in use stays as it was and the error is returned. If it
//     succeeds and the material differs from what was in use, the new
//     material is published and then Generation increases; reading the
//     same material again changes nothing. Reload is safe to call
//     concurrently with itself and with the readers.
//   - Generation is 1 after the first load and increases by one with each
//     change. A consumer that built state from the material (a route's
//     pool, a session cache) rebuilds when it moves; see Tracker. Because
//     the material is published before the generation moves, a consumer
//     that sees a new generation reads the new material.
//   - Files lists the files the material is read from, for a watcher. A
//     source that is not file-backed returns nil and reloads on its own
//     schedule or on the periodic re-read.
//
// Reload returns only an error (not "changed") so that Identity keeps the
// Reload method it always had; Set derives "changed" from Generation.
type Source interface {
	Name() string
	Reload() error
	Generation() uint64
	Files() []string
}

// CertificateSource is a Source that presents a client certificate.
type CertificateSource interface {
	Source
	// GetClientCertificate implements tls.Config.GetClientCertificate.
	GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error)
}

// TrustSource is a Source of the roots that verify upstream servers.
type TrustSource interface {
	Source
	// Pool is the pool in use. It must not be modified.
	Pool() *x509.CertPool
}

// Interface guards.
var (
	_ CertificateSource = (*Identity)(nil)
	_ TrustSource       = (*TrustBundle)(nil)
	_ Source            = (*LeafCache)(nil)
)

// Result is what one reload of one source brought.
type Result struct {
	// Source is the source reloaded; a type switch tells an identity from
	// a trust bundle or the MITM CA.
	Source Source
	// Name is Source.Name().
	Name string
	// Reason is the reason given to Set.Reload.
	Reason string
	// Changed reports new material in use.
	Changed bool
	// Generation is the source's generation after the reload.
	Generation uint64
	// Err is why the reload failed; the previous material stays in use.
	Err error
	// Recovered reports a reload that succeeded after the previous one
	// failed, whether or not the material changed.
	Recovered bool
}

// Set holds the sources of a running proxy and reloads them together, on
// SIGHUP, a file change or the periodic re-read. It remembers each source's
// last error so that a broken file is reported once, not at every re-read
// until someone fixes it.
type Set struct {
	mu      sync.Mutex
	entries []*setEntry
}

type setEntry struct {
	src Source
	// failing is set while reloads fail; lastErr is the text of the
	// error reported. The text, not the value: each failed reload makes a
	// new error value that says the same thing.
	failing bool
	lastErr string
}

// NewSet makes a set of the given sources. Nil sources are skipped.
func NewSet(sources ...Source) *Set {
	s := &Set{}
	s.Add(sources...)
	return s
}

// Add adds sources to the set. Nil sources, and sources already in the set,
// are skipped.
func (s *Set) Add(sources ...Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, src := range sources {
		if isNil(src) || s.has(src) {
			continue
		}
		s.entries = append(s.entries, &setEntry{src: src})
	}
}

// has reports whether src is in the set. Called with mu held.
func (s *Set) has(src Source) bool {
	// Comparing interfaces that hold an incomparable type (a struct with
	// a slice) panics; such a source cannot be a duplicate by identity.
	if !reflect.TypeOf(src).Comparable() {
		return false
	}
	for _, e := range s.entries {
		if reflect.TypeOf(e.src) == reflect.TypeOf(src) && e.src == src {
			return true
		}
	}
	return false
}

// Sources lists the set's sources in the order they were added.
func (s *Set) Sources() []Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Source, len(s.entries))
	for i, e := range s.entries {
		out[i] = e.src
	}
	return out
}

// Files is the sorted union of the sources' files, for Watch.
func (s *Set) Files() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, e := range s.entries {
		for _, f := range e.src.Files() {
			if f != "" && !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Reload reloads every source, in the order they were added, and returns
// the news: a Result for each source whose material changed, whose reload
// failed with an error other than the one its previous reload reported, or
// that recovered from a failure. A source that re-read the same material,
// or failed again with the error already reported, is left out, so the
// caller can log and count every Result it gets. Reloads of one set never
// run concurrently.
func (s *Set) Reload(reason string) []Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	var news []Result
	for _, e := range s.entries {
		before := e.src.Generation()
		err := e.src.Reload()
		r := Result{Source: e.src, Name: e.src.Name(), Reason: reason, Generation: e.src.Generation()}
		if err != nil {
			if e.failing && e.lastErr == err.Error() {
				continue
			}
			e.failing, e.lastErr = true, err.Error()
			r.Err = err
			news = append(news, r)
			continue
		}
		r.Recovered = e.failing
		e.failing, e.lastErr = false, ""
		r.Changed = r.Generation != before
		if r.Changed || r.Recovered {
			news = append(news, r)
		}
	}
	return news
}

// Tracker tells a consumer that material it built state from has changed:
// a route that made its transports and session cache from an identity and
// a trust bundle calls Changed before it dials, or after each Set.Reload,
// and refreshes when it reports true. It needs no registration with the
// set and holds no lock; the cost is one atomic load per source.
type Tracker struct {
	sources []Source
	seen    []atomic.Uint64
}

// NewTracker tracks the given sources from their current generations. Nil
// sources (an unset identity) are skipped.
func NewTracker(sources ...Source) *Tracker {
	t := &Tracker{}
	for _, src := range sources {
		if !isNil(src) {
			t.sources = append(t.sources, src)
		}
	}
	t.seen = make([]atomic.Uint64, len(t.sources))
	for i, src := range t.sources {
		t.seen[i].Store(src.Generation())
	}
	return t
}

// Changed reports whether any source's generation moved since the previous
// call (or NewTracker), and takes note of the new generations. Of callers
// racing over one change, exactly one gets true, so the consumer refreshes
// once.
func (t *Tracker) Changed() bool {
	changed := false
	for i, src := range t.sources {
		cur := src.Generation()
		old := t.seen[i].Load()
		if cur != old && t.seen[i].CompareAndSwap(old, cur) {
			changed = true
		}
	}
	return changed
}

// isNil reports a nil interface or an interface holding a nil pointer, as
// a consumer passing an unset *Identity field makes.
func isNil(src any) bool {
	if src == nil {
		return true
	}
	v := reflect.ValueOf(src)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
