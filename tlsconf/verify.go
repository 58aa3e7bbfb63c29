package tlsconf

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
)

// Pin is the SHA-256 digest of a certificate's SubjectPublicKeyInfo.
type Pin [sha256.Size]byte

// ParsePin parses "sha256/BASE64" or plain BASE64 (standard or URL
// alphabet, padding optional), as printed by
//
//	openssl x509 -in server.crt -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64
func ParsePin(s string) (Pin, error) {
	var p Pin
	b64 := strings.TrimPrefix(s, "sha256/")
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err = enc.DecodeString(b64); err == nil {
			break
		}
	}
	if err != nil {
		return p, fmt.Errorf("pin %q: not base64: %w", s, err)
	}
	if len(raw) != sha256.Size {
		return p, fmt.Errorf("pin %q: decodes to %d bytes; a SHA-256 pin has 32", s, len(raw))
	}
	copy(p[:], raw)
	return p, nil
}

// PinOf returns the pin of cert.
func PinOf(cert *x509.Certificate) Pin { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// String formats the pin as "sha256/BASE64".
func (p Pin) String() string { return "sha256/" + base64.StdEncoding.EncodeToString(p[:]) }

// VerifyError reports a server certificate that chains to a trusted root
// but fails a route's extra checks (SAN or pin).
type VerifyError struct {
	Check string   // "SAN" or "pin"
	Want  []string // the accepted values
	Got   []string // what the server presented
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("server certificate %s mismatch: want one of [%s], server presented [%s]",
		e.Check, strings.Join(e.Want, ", "), strings.Join(e.Got, ", "))
}

// verifyPeer builds a tls.Config.VerifyConnection callback that runs the
// extra checks after the standard chain and name verification.
func verifyPeer(sans []string, pins []Pin) func(tls.ConnectionState) error {
	if len(sans) == 0 && len(pins) == 0 {
		return nil
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		if len(sans) > 0 && !matchSAN(leaf, sans) {
			return &VerifyError{Check: "SAN", Want: sans, Got: presentedSANs(leaf)}
		}
		if len(pins) > 0 {
			got := PinOf(leaf)
			ok := false
			want := make([]string, len(pins))
			for i, p := range pins {
				want[i] = p.String()
				ok = ok || p == got
			}
			if !ok {
				return &VerifyError{Check: "pin", Want: want, Got: []string{got.String()}}
			}
		}
		return nil
	}
}

// matchSAN reports whether leaf carries one of the wanted names: a URI SAN
// when the wanted value contains "://" (such as a SPIFFE ID), otherwise a
// DNS name (case-insensitive, exact) or an IP address.
func matchSAN(leaf *x509.Certificate, want []string) bool {
	for _, w := range want {
		if strings.Contains(w, "://") {
			for _, u := range leaf.URIs {
				if u.String() == w {
					return true
				}
			}
			continue
		}
		if ip := net.ParseIP(w); ip != nil {
			for _, a := range leaf.IPAddresses {
				if a.Equal(ip) {
					return true
				}
			}
			continue
		}
		for _, d := range leaf.DNSNames {
			if strings.EqualFold(strings.TrimSuffix(d, "."), strings.TrimSuffix(w, ".")) {
				return true
			}
		}
	}
	return false
}

// presentedSANs lists a certificate's subject alternative names.
func presentedSANs(c *x509.Certificate) []string {
	var out []string
	for _, d := range c.DNSNames {
		out = append(out, "DNS:"+d)
	}
	for _, ip := range c.IPAddresses {
		out = append(out, "IP:"+ip.String())
	}
	for _, u := range c.URIs {
		out = append(out, "URI:"+u.String())
	}
	if len(out) == 0 {
		out = append(out, "(none)")
	}
	return out
}

// PresentedSANs lists a certificate's subject alternative names as
// "DNS:x", "IP:x" and "URI:x".
func PresentedSANs(c *x509.Certificate) []string { return presentedSANs(c) }
