package h1

import "net/http"

// statusText is net/http's reason phrase; its own file so that the pure
// code above needs net/http for nothing else.
func statusText(code int) string { return http.StatusText(code) }
