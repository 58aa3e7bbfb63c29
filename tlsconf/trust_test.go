package tlsconf_test

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

func TestLoadCAFilesSystem(t *testing.T) {
	for _, files := range [][]string{nil, {}} {
		pool, err := tlsconf.LoadCAFiles(files)
		if err != nil {
			t.Fatalf("LoadCAFiles(%#v) = %v; want the system roots", files, err)
		}
		if pool == nil {
			t.Fatalf("LoadCAFiles(%#v) = nil pool", files)
		}
	}
}

func TestLoadCAFiles(t *testing.T) {
	dir := t.TempDir()
	newCA := func(name string) (*pki.CA, string, *x509.Certificate) {
		ca, err := pki.NewCA(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ca.WriteCert(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return ca, f, pkitest.Issue(t, ca, pki.LeafOptions{CommonName: "srv." + name, DNSNames: []string{"srv." + name}, Server: true}).Cert
	}
	_, fileA, leafA := newCA("a")
	_, fileB, leafB := newCA("b")
	_, fileC, leafC := newCA("c")
	bundle := filepath.Join(dir, "bundle.pem")
	// A bundle as some tools write it: text, a key, then two certificates.
	keyCA, _, _ := newCA("k")
	writeFile(t, bundle, append(append([]byte("# corp roots\n"), pkitest.Issue(t, keyCA, pki.LeafOptions{CommonName: "x"}).KeyPEM...),
		append(readFile(t, fileA), readFile(t, fileB)...)...))

	verifies := func(pool *x509.CertPool, leaf *x509.Certificate) bool {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: leaf.DNSNames[0]})
		return err == nil
	}
	tests := []struct {
		name  string
		files []string
		want  map[*x509.Certificate]bool
	}{
		{"one file", []string{fileA}, map[*x509.Certificate]bool{leafA: true, leafB: false, leafC: false}},
		{"two files", []string{fileA, fileB}, map[*x509.Certificate]bool{leafA: true, leafB: true, leafC: false}},
		{"bundle with two certs", []string{bundle}, map[*x509.Certificate]bool{leafA: true, leafB: true, leafC: false}},
		{"bundle and file", []string{bundle, fileC}, map[*x509.Certificate]bool{leafA: true, leafB: true, leafC: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := tlsconf.LoadCAFiles(tt.files)
			if err != nil {
				t.Fatalf("LoadCAFiles: %v", err)
			}
			for leaf, want := range tt.want {
				if got := verifies(pool, leaf); got != want {
					t.Errorf("%s verifies = %v; want %v", leaf.Subject.CommonName, got, want)
				}
			}
		})
	}
}

func TestLoadCAFilesErrors(t *testing.T) {
	s := pkitest.New(t)
	dir := t.TempDir()
	keyOnly := filepath.Join(dir, "key-only.pem")
	writeFile(t, keyOnly, s.Client.KeyPEM)
	empty := filepath.Join(dir, "empty.pem")
	writeFile(t, empty, nil)
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name     string
		files    []string
		want     []string
		notExist bool
	}{
		{"file with only a key", []string{keyOnly}, []string{"key-only.pem", "no PEM CERTIFICATE block"}, false},
		{"empty file after a good one", []string{s.CAFile, empty}, []string{"empty.pem", "no PEM CERTIFICATE block"}, false},
		{"missing file", []string{s.CAFile, missing}, []string{"missing.pem"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := tlsconf.LoadCAFiles(tt.files)
			if err == nil {
				t.Fatalf("LoadCAFiles = %v, nil; want an error", pool)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q; want it to contain %q", err, w)
				}
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tt.notExist {
				t.Errorf("errors.Is(%v, fs.ErrNotExist) = %v; want %v", err, got, tt.notExist)
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
