package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"strings"
)

// CodeProxyAuthRequired answers a request without valid proxy credentials
// when callers must authenticate (407).
const CodeProxyAuthRequired = "proxy-auth-required"

// Clients are the callers allowed to use the proxy, by name, with the
// SHA-256 of their passwords. An empty Clients lets anyone who reaches the
// listener in.
type Clients map[string][sha256.Size]byte

// NewClients builds Clients from names and passwords.
func NewClients(passwords map[string]string) Clients {
	c := make(Clients, len(passwords))
	for name, pw := range passwords {
		c[name] = sha256.Sum256([]byte(pw))
	}
	return c
}

// dummy is compared against when the user name is unknown, so that the
// time taken does not tell whether the name exists.
var dummy = sha256.Sum256([]byte("mtlsproxy: no such client"))

// authenticate returns the caller's name from a Proxy-Authorization Basic
// header, or "" and false. It never says which part was wrong.
func (c Clients) authenticate(h http.Header) (string, bool) {
	return c.authenticateValue(h.Get("Proxy-Authorization"))
}

// authenticateValue is authenticate for the Proxy-Authorization value v.
func (c Clients) authenticateValue(v string) (string, bool) {
	scheme, creds, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(creds))
	if err != nil {
		return "", false
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", false
	}
	want, known := c[user]
	if !known {
		want = dummy
	}
	got := sha256.Sum256([]byte(pass))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 || !known {
		return "", false
	}
	return user, true
}

func proxyAuthRequired() *proxyError {
	return &proxyError{status: http.StatusProxyAuthRequired, code: CodeProxyAuthRequired,
		msg: "proxy authentication required: send your client name and password (curl --proxy-user NAME:PASSWORD, or http://NAME:PASSWORD@host:port in HTTP_PROXY)"}
}
