package tlsconf_test

// End-to-end reloads: a Set driven by Watch while real files are swapped
// under it, as a Kubernetes secret update and an operator's mv do.

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// watchSet runs Watch over set's files, reloading the set on each call,
// and delivers every non-empty batch of news.
func watchSet(t *testing.T, set *tlsconf.Set) <-chan []tlsconf.Result {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	news := make(chan []tlsconf.Result, 100)
	err := tlsconf.Watch(ctx, tlsconf.WatchOptions{
		Files:    set.Files(),
		Debounce: watchDebounce,
		OnChange: func(reason string) {
			if n := set.Reload(reason); len(n) > 0 {
				news <- n
			}
		},
		OnError: func(err error) { t.Errorf("watcher error: %v", err) },
	})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	return news
}

func TestSetWatchSwaps(t *testing.T) {
	s := pkitest.New(t)
	ca2, err := pki.NewCA("rotated CA")
	if err != nil {
		t.Fatal(err)
	}
	client := func(ca *pki.CA, cn string) *pki.Leaf {
		return pkitest.Issue(t, ca, pki.LeafOptions{CommonName: cn, Client: true})
	}
	secretFiles := func(cert, key *pki.Leaf, cas ...*pki.CA) map[string]string {
		var bundle []byte
		for _, ca := range cas {
			bundle = append(bundle, ca.CertPEM...)
		}
		return map[string]string{"tls.crt": string(cert.CertPEM), "tls.key": string(key.KeyPEM), "ca.crt": string(bundle)}
	}

	v1, v2, v4 := client(s.CA, "v1"), client(s.CA, "v2"), client(ca2, "v4")
	secret := watchNewK8sSecret(t, secretFiles(v1, v1, s.CA))
	id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{
		CertFile: filepath.Join(secret.dir, "tls.crt"), KeyFile: filepath.Join(secret.dir, "tls.key")})
	if err != nil {
		t.Fatal(err)
	}
	trust, err := tlsconf.LoadTrustBundle("internal", []string{filepath.Join(secret.dir, "ca.crt")}, false)
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey, err := tlsconf.InitMitmCA(filepath.Join(t.TempDir(), "ca"), []string{"api.internal"}, "watched CA")
	if err != nil {
		t.Fatal(err)
	}
	mitmCA, err := tlsconf.LoadMitmCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaves := tlsconf.NewLeafCache(mitmCA, 0, 0)
	newMitmCert, newMitmKey, err := tlsconf.InitMitmCA(filepath.Join(t.TempDir(), "ca"), []string{"api.internal"}, "renewed CA")
	if err != nil {
		t.Fatal(err)
	}

	set := tlsconf.NewSet(id, trust, leaves)
	news := watchSet(t, set)

	steps := []struct {
		name   string
		change func(t *testing.T)
		want   []summary
	}{
		{"secret swapped: new client certificate", func(t *testing.T) {
			secret.swap(t, secretFiles(v2, v2, s.CA))
		}, []summary{{Name: "app", Changed: true, Gen: 2}}},
		{"secret swapped: the same content again", func(t *testing.T) {
			secret.swap(t, secretFiles(v2, v2, s.CA))
		}, nil},
		{"secret swapped: a key that does not match", func(t *testing.T) {
			secret.swap(t, secretFiles(v4, v2, s.CA))
		}, []summary{{Name: "app", Gen: 2, Err: "does not match certificate"}}},
		{"secret swapped: CA rotated and a new certificate from it", func(t *testing.T) {
			secret.swap(t, secretFiles(v4, v4, s.CA, ca2))
		}, []summary{{Name: "app", Changed: true, Recovered: true, Gen: 3}, {Name: "internal", Changed: true, Gen: 2}}},
		{"MITM CA renamed over", func(t *testing.T) {
			renameOver(t, caKey, readFile(t, newMitmKey))
			renameOver(t, caCert, readFile(t, newMitmCert))
		}, []summary{{Name: "mitm_ca", Changed: true, Gen: 2}}},
		{"MITM CA key renamed over with garbage", func(t *testing.T) {
			renameOver(t, caKey, []byte("garbage"))
		}, []summary{{Name: "mitm_ca", Gen: 2, Err: "MITM CA key"}}},
	}
	for _, st := range steps {
		st.change(t)
		if st.want == nil {
			expectNoNews(t, st.name, news)
			continue
		}
		select {
		case got := <-news:
			checkNews(t, st.name, got, st.want)
			for _, r := range got {
				if !strings.HasPrefix(r.Reason, "file change: ") {
					t.Errorf("%s: %s reason %q; want a file change", st.name, r.Name, r.Reason)
				}
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: no reload news within 3s; want %v", st.name, st.want)
		}
		// A swap is several events; whatever further reloads they cause
		// bring no news. Neither does a periodic re-read of a broken file.
		expectNoNews(t, st.name+", then", news)
		if got := set.Reload("periodic re-read"); len(got) != 0 {
			t.Errorf("%s: a periodic re-read brought %v; want no news", st.name, summarize(got))
		}
	}

	if cn := id.Leaf().Subject.CommonName; cn != "v4" {
		t.Errorf("identity in use is %q; want v4", cn)
	}
	if _, err := v4.Cert.Verify(x509.VerifyOptions{Roots: trust.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the rotated CA is not in the trust pool in use: %v", err)
	}
	if got, want := leaves.CA().Certificate().Subject.CommonName, "renewed CA"; got != want {
		t.Errorf("MITM CA in use is %q; want %q (the broken key must not replace it)", got, want)
	}
}

func expectNoNews(t *testing.T, what string, news <-chan []tlsconf.Result) {
	t.Helper()
	select {
	case got := <-news:
		t.Errorf("%s: reload news %v; want none", what, summarize(got))
	case <-time.After(watchQuiet):
	}
}
