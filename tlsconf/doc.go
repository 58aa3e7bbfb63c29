// Package tlsconf is the TLS side of mtlsproxy: it loads client identities
// and trust bundles and builds the one client *tls.Config used for every
// upstream connection. It knows nothing about HTTP routing.
package tlsconf
