package tlsconf_test

// Interop with key and PKCS#12 files written by the openssl command, as an
// operator would make them: PKCS#12 bundles in OpenSSL 3's default and legacy
// encryptions, encrypted PKCS#8 keys, and keys from openssl genpkey signed by
// openssl x509 -req. The tests skip when openssl is missing, unless
// MTLSPROXY_REQUIRE_INTEROP=1 (as in CI).

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// formatsPassword has a space and non-ASCII letters, which PKCS#12 encodes
// as UTF-16 and PKCS#8 as UTF-8 bytes: a loader that gets either wrong fails.
const formatsPassword = "s3cret pässwörd"

// formatsOpenSSL skips the test if there is no openssl command, or fails it
// under MTLSPROXY_REQUIRE_INTEROP=1, and logs the version that runs.
func formatsOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("MTLSPROXY_REQUIRE_INTEROP") == "1" {
			t.Fatalf("openssl not found and MTLSPROXY_REQUIRE_INTEROP=1: %v", err)
		}
		t.Skip("openssl not found: skipping interop with files made by openssl (install it, or set MTLSPROXY_REQUIRE_INTEROP=1 to make this a failure)")
	}
	out, err := exec.Command("openssl", "version").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl version: %v\n%s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

// formatsRun runs openssl with args in dir and fails the test if it fails.
func formatsRun(t *testing.T, dir string, args ...string) {
	t.Helper()
	if out, err := formatsTry(dir, args...); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// formatsTry runs openssl with args in dir and returns its output.
func formatsTry(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	return cmd.CombinedOutput()
}

// formatsWrite writes data to name in dir (mode 0600) and returns the path.
func formatsWrite(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// formatsChain is a leaf issued by an intermediate, written to dir as
// leaf.crt (the leaf only), leaf.key (PKCS#8) and inter.crt.
type formatsChain struct {
	dir   string
	root  *pki.CA
	inter *pki.CA
	leaf  *pki.Leaf
}

func formatsNewChain(t *testing.T) *formatsChain {
	t.Helper()
	c := &formatsChain{dir: t.TempDir()}
	var err error
	if c.root, err = pki.NewCA("formats root"); err != nil {
		t.Fatal(err)
	}
	if c.inter, err = c.root.NewIntermediate("formats intermediate"); err != nil {
		t.Fatal(err)
	}
	c.leaf = pkitest.Issue(t, c.inter, pki.LeafOptions{CommonName: "p12-client", Client: true})
	leafOnly := c.leaf.CertPEM[:bytes.Index(c.leaf.CertPEM, []byte("-----END CERTIFICATE-----"))+len("-----END CERTIFICATE-----\n")]
	formatsWrite(t, c.dir, "leaf.crt", leafOnly)
	formatsWrite(t, c.dir, "leaf.key", c.leaf.KeyPEM)
	formatsWrite(t, c.dir, "inter.crt", c.inter.CertPEM)
	formatsWrite(t, c.dir, "export.pass", []byte(formatsPassword))
	return c
}

// formatsCheckChain fails unless id holds c's leaf followed by the
// intermediate.
func formatsCheckChain(t *testing.T, id *tlsconf.Identity, c *formatsChain) {
	t.Helper()
	if got, want := id.Leaf().Subject.String(), c.leaf.Cert.Subject.String(); got != want {
		t.Errorf("leaf subject = %q; want %q", got, want)
	}
	if !id.Leaf().Equal(c.leaf.Cert) {
		t.Error("leaf is not the certificate that was exported")
	}
	chain := id.Certificate().Certificate
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates; want 2 (leaf, intermediate)", len(chain))
	}
	if !bytes.Equal(chain[1], c.inter.Cert.Raw) {
		t.Error("chain[1] is not the intermediate given with -certfile")
	}
}

// formatsPassFiles are ways a password file ends: one trailing newline (or
// CRLF) is not part of the password.
var formatsPassFiles = []struct{ name, suffix string }{
	{"no newline", ""},
	{"newline", "\n"},
	{"crlf", "\r\n"},
}

func TestFormatsPKCS12OpenSSL(t *testing.T) {
	formatsOpenSSL(t)
	c := formatsNewChain(t)
	export := []string{"pkcs12", "-export", "-in", "leaf.crt", "-inkey", "leaf.key", "-certfile", "inter.crt",
		"-name", "client", "-passout", "file:export.pass"}

	// OpenSSL 3 writes RC2-40 only with its legacy provider; without it,
	// fall back to the other legacy algorithms (3DES, SHA-1 MAC).
	legacy, legacyRead := []string{"-legacy"}, []string{"-legacy"}
	legacyInfo := []string{"MAC: sha1", "pbeWithSHA1And40BitRC2-CBC", "pbeWithSHA1And3-KeyTripleDES-CBC"}
	if out, err := formatsTry(c.dir, append(append([]string{}, export...), "-legacy", "-out", "probe.p12")...); err != nil {
		t.Logf("openssl pkcs12 -export -legacy failed (no legacy provider?); using -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1:\n%s", out)
		legacy, legacyRead = []string{"-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"}, nil
		legacyInfo = []string{"MAC: sha1", "pbeWithSHA1And3-KeyTripleDES-CBC"}
	}
	variants := []struct {
		name, file string
		args       []string
		readArgs   []string // for openssl pkcs12 -info
		// wantInfo is what openssl pkcs12 -info says about the bundle, so
		// the test is known to cover the encryption it names.
		wantInfo []string
	}{
		{"modern default", "modern.p12", nil, nil, []string{"MAC: sha256", "PBES2, PBKDF2, AES-256-CBC", "hmacWithSHA256"}},
		{"legacy " + strings.Join(legacy, " "), "legacy.p12", legacy, legacyRead, legacyInfo},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Logf("openssl pkcs12 -export %s", strings.Join(append([]string{"-in -inkey -certfile"}, v.args...), " "))
			formatsRun(t, c.dir, append(append(append([]string{}, export...), v.args...), "-out", v.file)...)
			info, err := formatsTry(c.dir, append([]string{"pkcs12", "-info", "-noout", "-in", v.file, "-passin", "file:export.pass"}, v.readArgs...)...)
			if err != nil {
				t.Fatalf("openssl pkcs12 -info: %v\n%s", err, info)
			}
			for _, want := range v.wantInfo {
				if !bytes.Contains(info, []byte(want)) {
					t.Errorf("openssl pkcs12 -info lacks %q: the bundle is not the variant under test\n%s", want, info)
				}
			}
			p12 := filepath.Join(c.dir, v.file)

			for _, pf := range formatsPassFiles {
				t.Run("password file "+pf.name, func(t *testing.T) {
					pass := formatsWrite(t, t.TempDir(), "pass", []byte(formatsPassword+pf.suffix))
					id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{PKCS12File: p12, PKCS12PassFile: pass})
					if err != nil {
						t.Fatalf("LoadIdentity: %v", err)
					}
					formatsCheckChain(t, id, c)
				})
			}
			t.Run("wrong password", func(t *testing.T) {
				pass := formatsWrite(t, t.TempDir(), "pass", []byte("not the password\n"))
				_, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{PKCS12File: p12, PKCS12PassFile: pass})
				if err == nil || !strings.Contains(err.Error(), "wrong password") || !strings.Contains(err.Error(), pass) {
					t.Errorf("LoadIdentity with a wrong password: %v; want an error saying wrong password and naming %s", err, pass)
				}
			})
			t.Run("no password file", func(t *testing.T) {
				_, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{PKCS12File: p12})
				if err == nil || !strings.Contains(err.Error(), "needs a password") || !strings.Contains(err.Error(), "password file") {
					t.Errorf("LoadIdentity without a password file: %v; want an error saying the bundle needs a password file", err)
				}
			})
		})
	}
}

// TestFormatsPKCS12NoPasswordOpenSSL loads bundles exported with an empty
// password, and with no encryption and no MAC at all, without a password
// file.
func TestFormatsPKCS12NoPasswordOpenSSL(t *testing.T) {
	formatsOpenSSL(t)
	c := formatsNewChain(t)
	tests := []struct {
		name string
		args []string
	}{
		{"empty password", []string{"-passout", "pass:"}},
		{"no encryption, no MAC", []string{"-passout", "pass:", "-keypbe", "NONE", "-certpbe", "NONE", "-nomac"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := "open" + string(rune('a'+i)) + ".p12"
			formatsRun(t, c.dir, append([]string{"pkcs12", "-export", "-in", "leaf.crt", "-inkey", "leaf.key", "-certfile", "inter.crt", "-out", file}, tt.args...)...)
			id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{PKCS12File: filepath.Join(c.dir, file)})
			if err != nil {
				t.Fatalf("LoadIdentity without a password file: %v", err)
			}
			formatsCheckChain(t, id, c)
		})
	}
}

// TestFormatsEncryptedPKCS8OpenSSL loads keys encrypted by openssl pkcs8
// -topk8 with --key-pass-file.
func TestFormatsEncryptedPKCS8OpenSSL(t *testing.T) {
	formatsOpenSSL(t)
	c := formatsNewChain(t)
	certFile := filepath.Join(c.dir, "leaf.crt")
	variants := []struct{ name, out string }{
		{"aes-256-cbc pbkdf2 hmacWithSHA256", "-v2 aes-256-cbc"},
		{"aes-128-cbc pbkdf2 hmacWithSHA1", "-v2 aes-128-cbc -v2prf hmacWithSHA1"},
		{"des3 pbkdf2", "-v2 des3"},
		{"aes-256-cbc scrypt", "-scrypt -v2 aes-256-cbc"},
	}
	for i, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			keyFile := filepath.Join(c.dir, "enc"+string(rune('a'+i))+".key")
			formatsRun(t, c.dir, append([]string{"pkcs8", "-topk8", "-in", "leaf.key", "-out", keyFile, "-passout", "file:export.pass"},
				strings.Fields(v.out)...)...)
			head, err := os.ReadFile(keyFile)
			if err != nil || !bytes.HasPrefix(head, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
				t.Fatalf("openssl did not write an encrypted PKCS#8 key: %v\n%.60s", err, head)
			}
			for _, pf := range formatsPassFiles {
				t.Run("passphrase file "+pf.name, func(t *testing.T) {
					pass := formatsWrite(t, t.TempDir(), "pass", []byte(formatsPassword+pf.suffix))
					id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: certFile, KeyFile: keyFile, KeyPassFile: pass})
					if err != nil {
						t.Fatalf("LoadIdentity: %v", err)
					}
					if !id.Leaf().Equal(c.leaf.Cert) {
						t.Errorf("leaf subject %q; want %q", id.Leaf().Subject, c.leaf.Cert.Subject)
					}
				})
			}
			t.Run("wrong passphrase", func(t *testing.T) {
				pass := formatsWrite(t, t.TempDir(), "pass", []byte("not the passphrase\n"))
				_, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: certFile, KeyFile: keyFile, KeyPassFile: pass})
				if err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
					t.Errorf("LoadIdentity with a wrong passphrase: %v; want an error saying wrong passphrase", err)
				}
			})
			t.Run("no passphrase file", func(t *testing.T) {
				_, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: certFile, KeyFile: keyFile})
				if err == nil || !strings.Contains(err.Error(), "the key is encrypted") || !strings.Contains(err.Error(), "--key-pass-file") {
					t.Errorf("LoadIdentity without a passphrase file: %v; want an error saying the key is encrypted and naming --key-pass-file", err)
				}
			})
		})
	}

	// Encrypted traditional PEM ("Proc-Type: 4,ENCRYPTED") is refused with
	// the command that converts it, even with a passphrase file.
	t.Run("traditional encrypted PEM", func(t *testing.T) {
		formatsRun(t, c.dir, "ec", "-in", "leaf.key", "-out", "trad.key", "-aes256", "-passout", "file:export.pass")
		keyFile := filepath.Join(c.dir, "trad.key")
		if b, _ := os.ReadFile(keyFile); !bytes.Contains(b, []byte("DEK-Info")) {
			t.Fatalf("openssl ec -aes256 did not write a traditional encrypted key:\n%s", b)
		}
		pass := filepath.Join(c.dir, "export.pass")
		_, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: certFile, KeyFile: keyFile, KeyPassFile: pass})
		if err == nil || !strings.Contains(err.Error(), "openssl pkcs8 -topk8") {
			t.Errorf("LoadIdentity of a traditional encrypted key: %v; want an error naming openssl pkcs8 -topk8", err)
		}
	})
}

// TestFormatsOpenSSLKeys loads keys made by openssl (genpkey, and the
// traditional encodings of ecparam and rsa -traditional) with a certificate
// that openssl x509 -req signed with a pki CA, then handshakes with them.
func TestFormatsOpenSSLKeys(t *testing.T) {
	formatsOpenSSL(t)
	dir := t.TempDir()
	ca, err := pki.NewCA("formats CA")
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	formatsWrite(t, dir, "ca.crt", ca.CertPEM)
	formatsWrite(t, dir, "ca.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKey}))
	formatsWrite(t, dir, "client.ext", []byte("extendedKeyUsage = clientAuth\nkeyUsage = digitalSignature\n"))
	server := pkitest.Issue(t, ca, pki.LeafOptions{CommonName: "api.internal", DNSNames: []string{"api.internal"}, Server: true})

	tests := []struct {
		name     string
		gen      [][]string // openssl commands writing NAME.key
		wantKind string
		wantPEM  string
	}{
		{"rsa genpkey", [][]string{{"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "NAME.key"}}, "RSA 2048", "PRIVATE KEY"},
		{"rsa traditional", [][]string{{"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", "NAME.tmp"},
			{"rsa", "-in", "NAME.tmp", "-traditional", "-out", "NAME.key"}}, "RSA 3072", "RSA PRIVATE KEY"},
		{"ecdsa p256 genpkey", [][]string{{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "NAME.key"}}, "ECDSA P-256", "PRIVATE KEY"},
		{"ecdsa p384 genpkey", [][]string{{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "NAME.key"}}, "ECDSA P-384", "PRIVATE KEY"},
		{"ecdsa ecparam", [][]string{{"ecparam", "-name", "prime256v1", "-genkey", "-out", "NAME.key"}}, "ECDSA P-256", "EC PRIVATE KEY"},
		{"ed25519 genpkey", [][]string{{"genpkey", "-algorithm", "ED25519", "-out", "NAME.key"}}, "Ed25519", "PRIVATE KEY"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "k" + string(rune('a'+i))
			for _, args := range tt.gen {
				a := make([]string, len(args))
				for j, s := range args {
					a[j] = strings.ReplaceAll(s, "NAME", name)
				}
				formatsRun(t, dir, a...)
			}
			formatsRun(t, dir, "req", "-new", "-key", name+".key", "-subj", "/O=mtlsproxy test/CN=openssl-"+name, "-out", name+".csr")
			formatsRun(t, dir, "x509", "-req", "-in", name+".csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "0x1234"+name[1:]+"1",
				"-days", "1", "-extfile", "client.ext", "-out", name+".crt")
			keyFile, certFile := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".crt")
			if b, _ := os.ReadFile(keyFile); !bytes.Contains(b, []byte("-----BEGIN "+tt.wantPEM+"-----")) {
				t.Fatalf("openssl wrote no %s block:\n%s", tt.wantPEM, b)
			}
			id, err := tlsconf.LoadPEMIdentity("app", certFile, keyFile)
			if err != nil {
				t.Fatalf("LoadPEMIdentity: %v", err)
			}
			if got, want := id.Leaf().Subject.CommonName, "openssl-"+name; got != want {
				t.Errorf("leaf CN = %q; want %q", got, want)
			}
			if d := id.Describe(); !strings.Contains(d, tt.wantKind+" key") {
				t.Errorf("Describe() = %q; want a %s key", d, tt.wantKind)
			}
			for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				serverCfg := &tls.Config{Certificates: []tls.Certificate{server.TLSCertificate()}, ClientCAs: ca.Pool(),
					ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: version, MaxVersion: version}
				clientCfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: ca.Pool(), ServerName: "api.internal"})
				_, st, cerr, serr := exchange(t, serverCfg, clientCfg)
				if cerr != nil || serr != nil {
					t.Errorf("%s handshake: client %v, server %v", tls.VersionName(version), cerr, serr)
					continue
				}
				if len(st.PeerCertificates) == 0 || !st.PeerCertificates[0].Equal(id.Leaf()) {
					t.Errorf("%s: server did not see the openssl-signed client certificate", tls.VersionName(version))
				}
			}
		})
	}

	// A key from another openssl genpkey run is refused, naming both kinds.
	t.Run("mismatch", func(t *testing.T) {
		formatsRun(t, dir, "genpkey", "-algorithm", "ED25519", "-out", "other.key")
		_, err := tlsconf.LoadPEMIdentity("app", filepath.Join(dir, "ka.crt"), filepath.Join(dir, "other.key"))
		if err == nil || !strings.Contains(err.Error(), "does not match certificate") || !strings.Contains(err.Error(), "Ed25519") {
			t.Errorf("LoadPEMIdentity with another key: %v; want does not match certificate, naming Ed25519", err)
		}
	})
}

// TestFormatsLooseFiles checks what the start-up warning about secret files
// readable by group or others is built from.
func TestFormatsLooseFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, mode os.FileMode) string {
		p := formatsWrite(t, dir, name, []byte("x"))
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert, tightKey, looseKey := file("c.crt", 0o644), file("tight.key", 0o600), file("loose.key", 0o640)
	pass, p12, looseP12 := file("pass", 0o604), file("tight.p12", 0o400), file("loose.p12", 0o644)
	tests := []struct {
		name string
		src  tlsconf.IdentitySource
		want []string
	}{
		{"tight key, public cert", tlsconf.IdentitySource{CertFile: cert, KeyFile: tightKey}, nil},
		{"group-readable key", tlsconf.IdentitySource{CertFile: cert, KeyFile: looseKey}, []string{looseKey + " (mode 0640)"}},
		{"world-readable passphrase", tlsconf.IdentitySource{CertFile: cert, KeyFile: tightKey, KeyPassFile: pass}, []string{pass + " (mode 0604)"}},
		{"tight pkcs12", tlsconf.IdentitySource{PKCS12File: p12}, nil},
		{"loose pkcs12 and password", tlsconf.IdentitySource{PKCS12File: looseP12, PKCS12PassFile: pass},
			[]string{looseP12 + " (mode 0644)", pass + " (mode 0604)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.src.LooseFiles()
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("LooseFiles() = %q; want %q", got, tt.want)
			}
		})
	}
}
