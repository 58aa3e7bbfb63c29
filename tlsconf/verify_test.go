package tlsconf_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// awkwardPin encodes with both '+' and '/' in the standard alphabet, so the
// standard and URL-safe spellings differ.
var awkwardPin = func() tlsconf.Pin {
	var p tlsconf.Pin
	for i := range p {
		p[i] = []byte{0xfb, 0xef, 0xbe, 0xff}[i%4]
	}
	return p
}()

func TestParsePin(t *testing.T) {
	std := base64.StdEncoding.EncodeToString(awkwardPin[:])
	if !strings.ContainsAny(std, "+/") || !strings.HasSuffix(std, "=") {
		t.Fatalf("test pin %q does not exercise the alphabet and padding", std)
	}
	tests := []struct {
		name, in string
	}{
		{"prefixed std", "sha256/" + std},
		{"plain std", std},
		{"raw std", base64.RawStdEncoding.EncodeToString(awkwardPin[:])},
		{"url", base64.URLEncoding.EncodeToString(awkwardPin[:])},
		{"raw url", base64.RawURLEncoding.EncodeToString(awkwardPin[:])},
		{"prefixed raw url", "sha256/" + base64.RawURLEncoding.EncodeToString(awkwardPin[:])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tlsconf.ParsePin(tt.in)
			if err != nil {
				t.Fatalf("ParsePin(%q): %v", tt.in, err)
			}
			if got != awkwardPin {
				t.Errorf("ParsePin(%q) = %s; want %s", tt.in, got, awkwardPin)
			}
		})
	}
}

func TestParsePinErrors(t *testing.T) {
	sha1Sized := base64.StdEncoding.EncodeToString(make([]byte, 20))
	tests := []struct {
		name, in, contains string
	}{
		{"empty", "", "decodes to 0 bytes"},
		{"prefix only", "sha256/", "decodes to 0 bytes"},
		{"sha1 length", "sha256/" + sha1Sized, "decodes to 20 bytes"},
		{"too long", base64.StdEncoding.EncodeToString(make([]byte, 33)), "decodes to 33 bytes"},
		{"not base64", "sha256/not*base64!", "not base64"},
		{"hex", strings.Repeat("ab", 32), "decodes to 48 bytes"},
		{"mixed alphabets", "+_" + base64.RawStdEncoding.EncodeToString(awkwardPin[:])[2:], "not base64"},
		{"surrounding space", " " + awkwardPin.String() + " ", "not base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tlsconf.ParsePin(tt.in)
			if err == nil {
				t.Fatalf("ParsePin(%q) = %s, nil; want an error", tt.in, got)
			}
			if q := fmt.Sprintf("%q", tt.in); !strings.Contains(err.Error(), q) {
				t.Errorf("error %q does not name the input %s", err, q)
			}
			if !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("error %q does not contain %q", err, tt.contains)
			}
		})
	}
}

func TestPinStringRoundTrip(t *testing.T) {
	for _, p := range []tlsconf.Pin{{}, awkwardPin, sha256.Sum256([]byte("x"))} {
		s := p.String()
		if !strings.HasPrefix(s, "sha256/") {
			t.Errorf("String() = %q; want a sha256/ prefix", s)
		}
		got, err := tlsconf.ParsePin(s)
		if err != nil || got != p {
			t.Errorf("ParsePin(%q) = %s, %v; want %s, nil", s, got, err, p)
		}
	}
}

func TestPinOf(t *testing.T) {
	ca, err := pki.NewCA("pin CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, kt := range []pki.KeyType{pki.ECDSA, pki.RSA, pki.Ed25519} {
		t.Run(string(kt), func(t *testing.T) {
			leaf := pkitest.Issue(t, ca, pki.LeafOptions{CommonName: "pin", KeyType: kt, Server: true})
			got := tlsconf.PinOf(leaf.Cert)
			if want := tlsconf.Pin(sha256.Sum256(leaf.Cert.RawSubjectPublicKeyInfo)); got != want {
				t.Errorf("PinOf = %s; want sha256(RawSubjectPublicKeyInfo) %s", got, want)
			}
			// What the openssl pipeline in ParsePin's doc prints: the DER
			// public key, re-encoded from the key rather than the certificate.
			der, err := x509.MarshalPKIXPublicKey(leaf.Key.Public())
			if err != nil {
				t.Fatal(err)
			}
			if want := tlsconf.Pin(sha256.Sum256(der)); got != want {
				t.Errorf("PinOf = %s; want sha256 of the DER public key %s", got, want)
			}
		})
	}
}

// verifySet is a test PKI whose server certificate carries every kind of
// subject alternative name.
type verifySet struct {
	*pkitest.Set
	leaf     *pki.Leaf
	server   *tls.Config
	presents []string // the leaf's SANs as VerifyError lists them
}

func newVerifySet(t *testing.T) *verifySet {
	t.Helper()
	s := pkitest.New(t)
	spiffe, err := url.Parse("spiffe://corp/api")
	if err != nil {
		t.Fatal(err)
	}
	leaf := pkitest.Issue(t, s.CA, pki.LeafOptions{CommonName: "api.internal", Server: true,
		DNSNames: []string{"api.internal", "svc.corp.example"},
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs:     []*url.URL{spiffe}})
	srv := s.ServerTLS()
	srv.Certificates = []tls.Certificate{leaf.TLSCertificate()}
	return &verifySet{Set: s, leaf: leaf, server: srv,
		presents: []string{"DNS:api.internal", "DNS:svc.corp.example", "IP:127.0.0.1", "URI:spiffe://corp/api"}}
}

func TestVerifySAN(t *testing.T) {
	vs := newVerifySet(t)
	id := loadClient(t, vs.Set)
	tests := []struct {
		name string
		want []string
		ok   bool
	}{
		{"DNS", []string{"svc.corp.example"}, true},
		{"DNS is case-insensitive", []string{"SVC.Corp.Example"}, true},
		{"DNS trailing dot", []string{"svc.corp.example."}, true},
		{"IPv4", []string{"127.0.0.1"}, true},
		{"IPv4-mapped IPv6", []string{"::ffff:127.0.0.1"}, true},
		{"URI", []string{"spiffe://corp/api"}, true},
		{"any of", []string{"spiffe://corp/other", "other.example", "svc.corp.example"}, true},
		{"DNS mismatch", []string{"other.corp.example"}, false},
		{"DNS suffix is not a match", []string{"corp.example"}, false},
		{"IP mismatch", []string{"127.0.0.2"}, false},
		{"URI mismatch", []string{"spiffe://corp/other"}, false},
		{"URI prefix is not a match", []string{"spiffe://corp"}, false},
		{"URI host is not a DNS name", []string{"corp"}, false},
		{"DNS name is not a URI", []string{"https://svc.corp.example"}, false},
		{"none of", []string{"spiffe://corp/other", "other.example", "10.0.0.1"}, false},
	}
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tt := range tests {
			t.Run(tls.VersionName(version)+"/"+tt.name, func(t *testing.T) {
				srv := vs.server.Clone()
				srv.MaxVersion = version
				cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: vs.CA.Pool(),
					ServerName: "api.internal", VerifySAN: tt.want})
				_, _, clientErr, serverErr := exchange(t, srv, cfg)
				if tt.ok {
					if clientErr != nil || serverErr != nil {
						t.Fatalf("exchange: client %v, server %v; want no errors", clientErr, serverErr)
					}
					return
				}
				var verr *tlsconf.VerifyError
				if !errors.As(clientErr, &verr) {
					t.Fatalf("client error = %v (%T); want a *tlsconf.VerifyError", clientErr, clientErr)
				}
				if serverErr == nil {
					t.Error("server finished the exchange; want it cut off by the client")
				}
				if verr.Check != "SAN" {
					t.Errorf("Check = %q; want SAN", verr.Check)
				}
				if !reflect.DeepEqual(verr.Want, tt.want) {
					t.Errorf("Want = %q; want %q", verr.Want, tt.want)
				}
				if !reflect.DeepEqual(verr.Got, vs.presents) {
					t.Errorf("Got = %q; want %q", verr.Got, vs.presents)
				}
				for _, s := range append(append([]string{}, tt.want...), vs.presents...) {
					if !strings.Contains(verr.Error(), s) {
						t.Errorf("error %q does not mention %q", verr, s)
					}
				}
			})
		}
	}
}

func TestVerifyPins(t *testing.T) {
	vs := newVerifySet(t)
	id := loadClient(t, vs.Set)
	leafPin := tlsconf.PinOf(vs.leaf.Cert)
	caPin := tlsconf.PinOf(vs.CA.Cert)
	clientPin := tlsconf.PinOf(vs.Client.Cert)
	tests := []struct {
		name    string
		sans    []string
		pins    []tlsconf.Pin
		wantErr *tlsconf.VerifyError
	}{
		{"leaf pin", nil, []tlsconf.Pin{leafPin}, nil},
		{"any of", nil, []tlsconf.Pin{awkwardPin, leafPin}, nil},
		{"SAN and pin", []string{"spiffe://corp/api"}, []tlsconf.Pin{leafPin}, nil},
		{"mismatch", nil, []tlsconf.Pin{awkwardPin}, &tlsconf.VerifyError{Check: "pin",
			Want: []string{awkwardPin.String()}, Got: []string{leafPin.String()}}},
		{"CA pin does not pin the leaf", nil, []tlsconf.Pin{caPin}, &tlsconf.VerifyError{Check: "pin",
			Want: []string{caPin.String()}, Got: []string{leafPin.String()}}},
		{"none of", nil, []tlsconf.Pin{caPin, clientPin}, &tlsconf.VerifyError{Check: "pin",
			Want: []string{caPin.String(), clientPin.String()}, Got: []string{leafPin.String()}}},
		{"SAN matches, pin does not", []string{"api.internal"}, []tlsconf.Pin{caPin}, &tlsconf.VerifyError{Check: "pin",
			Want: []string{caPin.String()}, Got: []string{leafPin.String()}}},
		{"pin matches, SAN does not", []string{"spiffe://corp/other"}, []tlsconf.Pin{leafPin}, &tlsconf.VerifyError{Check: "SAN",
			Want: []string{"spiffe://corp/other"}, Got: vs.presents}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: vs.CA.Pool(),
				ServerName: "api.internal", VerifySAN: tt.sans, Pins: tt.pins})
			_, _, clientErr, serverErr := exchange(t, vs.server, cfg)
			if tt.wantErr == nil {
				if clientErr != nil || serverErr != nil {
					t.Fatalf("exchange: client %v, server %v; want no errors", clientErr, serverErr)
				}
				return
			}
			var verr *tlsconf.VerifyError
			if !errors.As(clientErr, &verr) {
				t.Fatalf("client error = %v (%T); want a *tlsconf.VerifyError", clientErr, clientErr)
			}
			if !reflect.DeepEqual(verr, tt.wantErr) {
				t.Errorf("VerifyError = %+v; want %+v", verr, tt.wantErr)
			}
		})
	}
}

// countingCache counts the sessions it hands out for resumption.
type countingCache struct {
	tls.ClientSessionCache
	offered atomic.Int64
}

func (c *countingCache) Get(key string) (*tls.ClientSessionState, bool) {
	s, ok := c.ClientSessionCache.Get(key)
	if ok {
		c.offered.Add(1)
	}
	return s, ok
}

// TestVerifyOnResumption checks that the extra checks run on resumed
// sessions too (they would not with VerifyPeerCertificate), and that they
// still see the server certificate when no Certificate message is sent.
func TestVerifyOnResumption(t *testing.T) {
	vs := newVerifySet(t)
	id := loadClient(t, vs.Set)
	leafPin := tlsconf.PinOf(vs.leaf.Cert)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			srv := vs.server.Clone()
			srv.MaxVersion = version
			opts := tlsconf.ClientOptions{Identity: id, RootCAs: vs.CA.Pool(), ServerName: "api.internal",
				VerifySAN: []string{"spiffe://corp/api"}, Pins: []tlsconf.Pin{leafPin}}
			good := tlsconf.ClientConfig(opts)
			cache := &countingCache{ClientSessionCache: good.ClientSessionCache}
			good.ClientSessionCache = cache

			for i, wantResume := range []bool{false, true} {
				client, _, clientErr, serverErr := exchange(t, srv, good)
				if clientErr != nil || serverErr != nil {
					t.Fatalf("connection %d: client %v, server %v; want no errors", i+1, clientErr, serverErr)
				}
				if client.DidResume != wantResume {
					t.Errorf("connection %d: DidResume = %v; want %v", i+1, client.DidResume, wantResume)
				}
				if len(client.PeerCertificates) == 0 || !bytes.Equal(client.PeerCertificates[0].Raw, vs.leaf.Cert.Raw) {
					t.Errorf("connection %d: client state lacks the server leaf", i+1)
				}
			}

			// Same session cache, different pins: the session is offered and
			// the checks must still reject it.
			opts.Pins = []tlsconf.Pin{awkwardPin}
			bad := tlsconf.ClientConfig(opts)
			bad.ClientSessionCache = cache
			before := cache.offered.Load()
			_, _, clientErr, _ := exchange(t, srv, bad)
			if cache.offered.Load() == before {
				t.Fatal("no cached session was offered; the check below would not cover resumption")
			}
			var verr *tlsconf.VerifyError
			if !errors.As(clientErr, &verr) || verr.Check != "pin" {
				t.Errorf("resumed connection with a wrong pin: client error = %v (%T); want a pin *tlsconf.VerifyError", clientErr, clientErr)
			}
		})
	}
}
