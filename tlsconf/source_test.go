package tlsconf_test

// Tests of the Source contract shared by every kind of reloadable material
// (identity, trust bundle, MITM CA), of Set's reporting and of Tracker.

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// renameOver replaces path with data the way careful tools do: write a
// temporary file beside it, then rename it over, so that a reader never
// sees half a file.
func renameOver(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// sourceFixture is one source loaded from files in a temporary directory,
// with ways to change those files.
type sourceFixture struct {
	src tlsconf.Source
	// renew writes different material.
	renew func(t *testing.T)
	// rewrite writes the material in use again, in new bytes where the
	// format allows.
	rewrite func(t *testing.T)
	// corrupt writes files that do not load.
	corrupt func(t *testing.T)
	// current is the material in use, compared by identity.
	current func() any
}

func identityFixture(t *testing.T) sourceFixture {
	s := pkitest.New(t)
	dir := t.TempDir()
	leaf := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "gen-1", Client: true})
	certFile, keyFile, err := leaf.WriteFiles(dir, "tls")
	if err != nil {
		t.Fatal(err)
	}
	id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	n := 1
	return sourceFixture{
		src: id,
		renew: func(t *testing.T) {
			n++
			leaf = pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "gen-" + string(rune('0'+n)), Client: true})
			renameOver(t, keyFile, leaf.KeyPEM)
			renameOver(t, certFile, leaf.CertPEM)
		},
		rewrite: func(t *testing.T) {
			renameOver(t, certFile, leaf.CertPEM)
			renameOver(t, keyFile, leaf.KeyPEM)
		},
		corrupt: func(t *testing.T) {
			other := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "other", Client: true})
			renameOver(t, certFile, other.CertPEM) // the key no longer matches
		},
		current: func() any { return id.Certificate() },
	}
}

func trustFixture(t *testing.T) sourceFixture {
	dir := t.TempDir()
	newCA := func(t *testing.T) []byte {
		ca, err := pki.NewCA("trust fixture CA")
		if err != nil {
			t.Fatal(err)
		}
		return ca.CertPEM
	}
	first := newCA(t)
	caFile := filepath.Join(dir, "ca.crt")
	writeFile(t, caFile, first)
	pem := first
	tb, err := tlsconf.LoadTrustBundle("internal", []string{caFile}, false)
	if err != nil {
		t.Fatal(err)
	}
	return sourceFixture{
		src: tb,
		renew: func(t *testing.T) {
			// A second CA beside the first, as in a CA rotation.
			pem = append(append([]byte{}, pem...), newCA(t)...)
			renameOver(t, caFile, pem)
		},
		rewrite: func(t *testing.T) {
			// The same certificates in different bytes: a comment, as
			// bundles written by tools carry.
			renameOver(t, caFile, append([]byte("# rewritten\n"), pem...))
		},
		corrupt: func(t *testing.T) {
			renameOver(t, caFile, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
		},
		current: func() any { return tb.Pool() },
	}
}

func mitmFixture(t *testing.T) sourceFixture {
	dir := t.TempDir()
	certFile, keyFile, err := tlsconf.InitMitmCA(filepath.Join(dir, "ca"), []string{"api.internal"}, "fixture CA")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tlsconf.LoadMitmCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaves := tlsconf.NewLeafCache(ca, 0, 0)
	n := 0
	return sourceFixture{
		src: leaves,
		renew: func(t *testing.T) {
			n++
			c, k, err := tlsconf.InitMitmCA(filepath.Join(dir, "new", string(rune('a'+n))), []string{"api.internal"}, "fixture CA")
			if err != nil {
				t.Fatal(err)
			}
			renameOver(t, keyFile, readFile(t, k))
			renameOver(t, certFile, readFile(t, c))
		},
		rewrite: func(t *testing.T) {
			renameOver(t, certFile, readFile(t, certFile))
		},
		corrupt: func(t *testing.T) {
			renameOver(t, keyFile, []byte("garbage"))
		},
		current: func() any { return leaves.CA() },
	}
}

var sourceFixtures = []struct {
	name string
	make func(t *testing.T) sourceFixture
}{
	{"identity", identityFixture},
	{"trust", trustFixture},
	{"mitm_ca", mitmFixture},
}

// TestSourceGenerations holds every source to the contract: generation 1
// after loading; a re-read of the same material changes nothing; new
// material is published and bumps the generation once; a broken file
// returns an error and keeps the material; a fix is a change again.
func TestSourceGenerations(t *testing.T) {
	for _, fx := range sourceFixtures {
		t.Run(fx.name, func(t *testing.T) {
			f := fx.make(t)
			check := func(what string, wantGen uint64, wantSame any) {
				t.Helper()
				if got := f.src.Generation(); got != wantGen {
					t.Errorf("%s: Generation() = %d; want %d", what, got, wantGen)
				}
				if wantSame != nil && f.current() != wantSame {
					t.Errorf("%s: the material in use changed; want it kept", what)
				}
			}
			if len(f.src.Files()) == 0 {
				t.Error("Files() is empty for a file-backed source")
			}
			first := f.current()
			check("after loading", 1, first)

			if err := f.src.Reload(); err != nil {
				t.Fatalf("Reload of unchanged files: %v", err)
			}
			check("after reloading unchanged files", 1, first)
			f.rewrite(t)
			if err := f.src.Reload(); err != nil {
				t.Fatalf("Reload of rewritten files: %v", err)
			}
			check("after rewriting the same material", 1, first)

			f.renew(t)
			if err := f.src.Reload(); err != nil {
				t.Fatalf("Reload of new material: %v", err)
			}
			second := f.current()
			if second == first {
				t.Fatal("after new material, the material in use is the old one")
			}
			check("after new material", 2, second)

			f.corrupt(t)
			for i := range 3 {
				if err := f.src.Reload(); err == nil {
					t.Fatalf("Reload %d of a broken file = nil; want an error", i+1)
				}
				check("after a broken file", 2, second)
			}

			f.renew(t)
			if err := f.src.Reload(); err != nil {
				t.Fatalf("Reload after the fix: %v", err)
			}
			check("after the fix", 3, nil)
			if f.current() == second {
				t.Error("after the fix, the material in use is still the previous one")
			}
		})
	}
}

// TestSourceReloadRace reloads while others read, for the race detector:
// every reader sees whole material and a generation that never goes back.
func TestSourceReloadRace(t *testing.T) {
	for _, fx := range sourceFixtures {
		t.Run(fx.name, func(t *testing.T) {
			f := fx.make(t)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var last uint64
					for {
						select {
						case <-stop:
							return
						default:
						}
						g := f.src.Generation()
						if g < last {
							t.Errorf("generation went back from %d to %d", last, g)
							return
						}
						last = g
						if f.current() == nil {
							t.Error("no material in use")
							return
						}
					}
				}()
			}
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 20 {
						_ = f.src.Reload()
					}
				}()
			}
			for range 5 {
				f.renew(t)
				_ = f.src.Reload()
			}
			close(stop)
			wg.Wait()
			// Five renewals; concurrent reloads of the same files may not
			// count one twice.
			if got := f.src.Generation(); got != 6 {
				t.Errorf("after 5 renewals, Generation() = %d; want 6", got)
			}
		})
	}
}

// setFixtures loads one source of each kind into a set.
func setFixtures(t *testing.T) (*tlsconf.Set, map[string]sourceFixture) {
	t.Helper()
	fxs := map[string]sourceFixture{}
	var srcs []tlsconf.Source
	for _, fx := range sourceFixtures {
		f := fx.make(t)
		fxs[fx.name] = f
		srcs = append(srcs, f.src)
	}
	return tlsconf.NewSet(srcs...), fxs
}

// summary is a Result without the pointers, to compare.
type summary struct {
	Name               string
	Changed, Recovered bool
	Gen                uint64
	Err                string // a substring of the error, "" for none
}

func checkNews(t *testing.T, what string, got []tlsconf.Result, want []summary) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d results %v; want %d %v", what, len(got), summarize(got), len(want), want)
		return
	}
	for i, r := range got {
		w := want[i]
		errOK := (r.Err == nil) == (w.Err == "") && (r.Err == nil || strings.Contains(r.Err.Error(), w.Err))
		if r.Name != w.Name || r.Changed != w.Changed || r.Recovered != w.Recovered || r.Generation != w.Gen || !errOK {
			t.Errorf("%s: result %d = %+v; want %+v", what, i, summarize(got)[i], w)
		}
		if r.Source.Name() != r.Name {
			t.Errorf("%s: result %d names %q, its source %q", what, i, r.Name, r.Source.Name())
		}
	}
}

func summarize(rs []tlsconf.Result) []summary {
	out := make([]summary, len(rs))
	for i, r := range rs {
		out[i] = summary{Name: r.Name, Changed: r.Changed, Recovered: r.Recovered, Gen: r.Generation}
		if r.Err != nil {
			out[i].Err = r.Err.Error()
		}
	}
	return out
}

// TestSetReloadNews walks a set through a sequence of file changes and
// checks that each Reload returns exactly the news: changes, new errors
// (once, however often the broken file is re-read) and recoveries.
func TestSetReloadNews(t *testing.T) {
	set, fx := setFixtures(t)
	steps := []struct {
		name   string
		change func(t *testing.T)
		want   []summary
	}{
		{"nothing changed", func(*testing.T) {}, nil},
		{"files rewritten with the same material", func(t *testing.T) {
			for _, f := range fx {
				f.rewrite(t)
			}
		}, nil},
		{"new identity", fx["identity"].renew, []summary{{Name: "app", Changed: true, Gen: 2}}},
		{"new CA bundle and MITM CA", func(t *testing.T) {
			fx["trust"].renew(t)
			fx["mitm_ca"].renew(t)
		}, []summary{{Name: "internal", Changed: true, Gen: 2}, {Name: "mitm_ca", Changed: true, Gen: 2}}},
		{"broken identity", fx["identity"].corrupt, []summary{{Name: "app", Gen: 2, Err: `load identity "app"`}}},
		{"the same broken identity re-read", func(*testing.T) {}, nil},
		{"the same broken identity re-read again", func(*testing.T) {}, nil},
		{"a different error", func(t *testing.T) {
			if err := os.Remove(fx["identity"].src.Files()[1]); err != nil {
				t.Fatal(err)
			}
		}, []summary{{Name: "app", Gen: 2, Err: "read key"}}},
		{"broken trust too", fx["trust"].corrupt, []summary{{Name: "internal", Gen: 2, Err: `load trust "internal"`}}},
		{"identity fixed", fx["identity"].renew, []summary{{Name: "app", Changed: true, Recovered: true, Gen: 3}}},
		{"trust still broken", func(*testing.T) {}, nil},
		{"trust fixed back to the same certificates", fx["trust"].rewrite, []summary{{Name: "internal", Recovered: true, Gen: 2}}},
		{"quiet again", func(*testing.T) {}, nil},
	}
	for _, st := range steps {
		st.change(t)
		news := set.Reload(st.name)
		checkNews(t, st.name, news, st.want)
		for _, r := range news {
			if r.Reason != st.name {
				t.Errorf("%s: %s has reason %q; want the one given to Reload", st.name, r.Name, r.Reason)
			}
		}
	}
}

// TestSetReloadErrorUnwraps checks that a Result's error keeps its cause,
// so a caller can tell a missing file from a bad one.
func TestSetReloadErrorUnwraps(t *testing.T) {
	set, fx := setFixtures(t)
	for _, f := range fx {
		for _, file := range f.src.Files() {
			if err := os.Remove(file); err != nil {
				t.Fatal(err)
			}
		}
	}
	news := set.Reload("files gone")
	if len(news) != len(fx) {
		t.Fatalf("%d results; want one per source (%d)", len(news), len(fx))
	}
	for _, r := range news {
		if !errors.Is(r.Err, fs.ErrNotExist) {
			t.Errorf("%s: Err = %v; want fs.ErrNotExist", r.Name, r.Err)
		}
	}
}

func TestSetAddAndFiles(t *testing.T) {
	s := pkitest.New(t)
	id := loadClient(t, s)
	// Identity and trust share the CA directory; ca.crt is in both.
	tb, err := tlsconf.LoadTrustBundle("internal", []string{s.CAFile, s.CAFile}, false)
	if err != nil {
		t.Fatal(err)
	}
	sys, err := tlsconf.LoadTrustBundle("system", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var unset *tlsconf.Identity
	set := tlsconf.NewSet(id, nil, unset, tb)
	set.Add(id, sys) // id again: skipped
	if got := len(set.Sources()); got != 3 {
		t.Errorf("%d sources; want 3 (nil, a nil *Identity and a duplicate skipped)", got)
	}
	want := []string{s.CAFile, s.ClientCert, s.ClientKey}
	if got := set.Files(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Files() = %v; want %v (sorted, each once)", got, want)
	}
	if got := sys.Files(); got != nil {
		t.Errorf("system-only bundle Files() = %v; want nil", got)
	}
	if news := set.Reload("check"); len(news) != 0 {
		t.Errorf("Reload with nothing changed = %v; want no news", summarize(news))
	}
}

func TestLoadTrustBundleErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	writeFile(t, empty, []byte("# no certificates\n"))
	tests := []struct {
		name   string
		files  []string
		system bool
		want   string
	}{
		{"nothing", nil, false, "nothing would be trusted"},
		{"missing file", []string{filepath.Join(dir, "nope.pem")}, false, "read CA bundle"},
		{"no certificate", []string{empty}, true, "no PEM CERTIFICATE block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb, err := tlsconf.LoadTrustBundle("internal", tt.files, tt.system)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), `load trust "internal": `) {
				t.Errorf("LoadTrustBundle = %v, %v; want an error starting load trust \"internal\" and containing %q", tb, err, tt.want)
			}
		})
	}
}

// TestTrackerChanged checks that of many consumers racing over one change,
// one refreshes, and that a tracker sees changes of any of its sources.
func TestTrackerChanged(t *testing.T) {
	idFx, trustFx := identityFixture(t), trustFixture(t)
	var unset *tlsconf.TrustBundle
	tr := tlsconf.NewTracker(idFx.src, nil, unset, trustFx.src)
	if tr.Changed() {
		t.Fatal("Changed() before any reload = true")
	}
	for _, step := range []struct {
		name string
		fx   sourceFixture
		want bool
	}{
		{"identity renewed", idFx, true},
		{"trust renewed", trustFx, true},
		{"identity rewritten", sourceFixture{renew: idFx.rewrite, src: idFx.src}, false},
	} {
		step.fx.renew(t)
		if err := step.fx.src.Reload(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		trues := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if tr.Changed() {
					mu.Lock()
					trues++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		want := 0
		if step.want {
			want = 1
		}
		if trues != want {
			t.Errorf("%s: %d of 8 racing Changed() calls returned true; want %d", step.name, trues, want)
		}
		if tr.Changed() {
			t.Errorf("%s: Changed() true again with no new change", step.name)
		}
	}
}

// memSource is material that is not in files (as SPIFFE's or PKCS#11's
// will be). It is a value with a slice in it, which interfaces cannot
// compare: the set must not try.
type memSource struct {
	name  string
	tags  []string
	state *memState
}

type memState struct {
	mu      sync.Mutex
	gen     uint64
	pending func() (changed bool, err error)
}

func (m memSource) Name() string    { return m.name }
func (m memSource) Files() []string { return nil }
func (m memSource) Generation() uint64 {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	return m.state.gen
}

func (m memSource) Reload() error {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	if m.state.pending == nil {
		return nil
	}
	changed, err := m.state.pending()
	if changed && err == nil {
		m.state.gen++
	}
	return err
}

var _ tlsconf.Source = memSource{}

func TestSetNonFileSource(t *testing.T) {
	a := memSource{name: "spiffe", tags: []string{"x"}, state: &memState{gen: 1}}
	b := memSource{name: "pkcs11", tags: []string{"y"}, state: &memState{gen: 1}}
	set := tlsconf.NewSet(a, b)
	if got := len(set.Sources()); got != 2 {
		t.Fatalf("%d sources; want 2", got)
	}
	if f := set.Files(); f != nil {
		t.Errorf("Files() = %v; want nil for sources without files", f)
	}
	tr := tlsconf.NewTracker(a, b)
	steps := []struct {
		name    string
		pending func() (bool, error)
		want    []summary
	}{
		{"no change", func() (bool, error) { return false, nil }, nil},
		{"new SVID", func() (bool, error) { return true, nil }, []summary{{Name: "spiffe", Changed: true, Gen: 2}}},
		{"agent down", func() (bool, error) { return false, errors.New("workload API: connection refused") },
			[]summary{{Name: "spiffe", Gen: 2, Err: "connection refused"}}},
		{"agent still down", func() (bool, error) { return false, errors.New("workload API: connection refused") }, nil},
		{"agent back, same SVID", func() (bool, error) { return false, nil }, []summary{{Name: "spiffe", Recovered: true, Gen: 2}}},
	}
	for _, st := range steps {
		a.state.pending = st.pending
		checkNews(t, st.name, set.Reload(st.name), st.want)
	}
	if !tr.Changed() || tr.Changed() {
		t.Error("tracker: want one change reported once")
	}
}
