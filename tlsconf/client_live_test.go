package tlsconf_test

// The client config's side of reloads: configs built from a TrustSource,
// and LiveClientConfig.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// TestClientConfigTrustReload checks the route's side: a config built from
// a TrustSource uses the pool of its time, and a rebuild after the tracker
// reports a change trusts the new CA.
func TestClientConfigTrustReload(t *testing.T) {
	old, upstream := pkitest.New(t), pkitest.New(t)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, caFile, old.CA.CertPEM)
	trust, err := tlsconf.LoadTrustBundle("internal", []string{caFile}, false)
	if err != nil {
		t.Fatal(err)
	}
	id := loadClient(t, upstream)
	opts := tlsconf.ClientOptions{Identity: id, Trust: trust, ServerName: "api.internal"}
	tracker := tlsconf.NewTracker(id, trust)
	cfg := tlsconf.ClientConfig(opts)

	var unknown x509.UnknownAuthorityError
	if _, _, err, _ := exchange(t, upstream.ServerTLS(), cfg); err == nil || !errors.As(err, &unknown) {
		t.Fatalf("handshake trusting only the old CA: %v; want an unknown authority error", err)
	}
	renameOver(t, caFile, upstream.CA.CertPEM)
	if news := tlsconf.NewSet(trust).Reload("test"); len(news) != 1 || !news[0].Changed {
		t.Fatalf("reload of the new CA file: %v; want one change", summarize(news))
	}
	if !tracker.Changed() {
		t.Fatal("tracker did not report the trust bundle's change")
	}
	cfg = tlsconf.ClientConfig(opts)
	if _, _, err, _ := exchange(t, upstream.ServerTLS(), cfg); err != nil {
		t.Fatalf("handshake after the rebuild: %v", err)
	}

	// RootCAs is the fallback when Trust is unset, including a typed nil.
	var unset *tlsconf.TrustBundle
	cfg = tlsconf.ClientConfig(tlsconf.ClientOptions{Trust: unset, RootCAs: upstream.CA.Pool()})
	if cfg.RootCAs == nil || !cfg.RootCAs.Equal(upstream.CA.Pool()) {
		t.Error("with a nil *TrustBundle, RootCAs was not used")
	}
	if cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Trust: trust, RootCAs: old.CA.Pool()}); cfg.RootCAs != trust.Pool() {
		t.Error("with Trust and RootCAs both set, Trust's pool was not used")
	}
}

// TestLiveClientConfig checks that the config follows its sources: the same
// config while nothing changed, a new one (new pool, new session cache)
// after a change, built by one of many racing callers and returned to all.
func TestLiveClientConfig(t *testing.T) {
	idFx, trustFx := identityFixture(t), trustFixture(t)
	trust := trustFx.src.(*tlsconf.TrustBundle)
	live := tlsconf.NewLiveClientConfig(tlsconf.ClientOptions{
		Identity: idFx.src.(*tlsconf.Identity), Trust: trust, ServerName: "api.internal"})
	first, rebuilt := live.Config()
	if rebuilt || first.RootCAs != trust.Pool() || first.GetClientCertificate == nil || first.ServerName != "api.internal" {
		t.Fatalf("first Config: rebuilt %v, pool in use %v, client cert callback %v, ServerName %q",
			rebuilt, first.RootCAs == trust.Pool(), first.GetClientCertificate != nil, first.ServerName)
	}
	steps := []struct {
		name        string
		change      func(t *testing.T)
		wantRebuilt bool
	}{
		{"nothing changed", func(*testing.T) {}, false},
		{"files rewritten, same material", func(t *testing.T) { idFx.rewrite(t); trustFx.rewrite(t) }, false},
		{"identity renewed", idFx.renew, true},
		{"trust renewed", trustFx.renew, true},
		{"trust broken", trustFx.corrupt, false},
	}
	prev := first
	for _, st := range steps {
		st.change(t)
		tlsconf.NewSet(idFx.src, trustFx.src).Reload(st.name)
		var wg sync.WaitGroup
		cfgs := make([]*tls.Config, 8)
		rebuilds := make([]bool, 8)
		for i := range cfgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cfgs[i], rebuilds[i] = live.Config()
			}()
		}
		wg.Wait()
		n := 0
		for i, cfg := range cfgs {
			if cfg != cfgs[0] {
				t.Errorf("%s: racing callers got different configs", st.name)
			}
			if rebuilds[i] {
				n++
			}
		}
		cfg := cfgs[0]
		if st.wantRebuilt {
			if n != 1 || cfg == prev || cfg.ClientSessionCache == prev.ClientSessionCache {
				t.Errorf("%s: %d of 8 calls rebuilt, new config %v, new session cache %v; want 1, true, true",
					st.name, n, cfg != prev, cfg.ClientSessionCache != prev.ClientSessionCache)
			}
		} else if n != 0 || cfg != prev {
			t.Errorf("%s: %d calls rebuilt, new config %v; want the same config", st.name, n, cfg != prev)
		}
		if cfg.RootCAs != trust.Pool() {
			t.Errorf("%s: the config's pool is not the trust bundle's pool in use", st.name)
		}
		prev = cfg
	}
}
