package h1

import "net/http"

func statusText(code int) string { return http.StatusText(code) }
