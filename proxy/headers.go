package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
)

// hopHeaders apply to one connection only and are never forwarded
// (RFC 9110 section 7.6.1, plus the de-facto Proxy-Connection).
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// removeHopHeaders deletes hop-by-hop headers, including every name listed
// in Connection. For an upgrade (WebSocket) the Connection and Upgrade
// headers are the point of the request and stay.
func removeHopHeaders(h http.Header, upgrade bool) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			name = textproto.TrimString(name)
			if name == "" || (upgrade && strings.EqualFold(name, "upgrade")) {
				continue
			}
			h.Del(name)
		}
	}
	keepTrailers := false
	for _, v := range h["Te"] {
		if strings.Contains(strings.ToLower(v), "trailers") {
			keepTrailers = true
		}
	}
	for _, name := range hopHeaders {
		if upgrade && (name == "Connection" || name == "Upgrade") {
			continue
		}
		if _, ok := h[name]; ok {
			delete(h, name)
		}
	}
	if keepTrailers {
		// "TE: trailers" tells the upstream the client accepts trailers;
		// it is the one TE value that survives a hop.
		h["Te"] = []string{"trailers"}
	}
	if upgrade {
		h["Connection"] = []string{"Upgrade"}
	}
}

// isUpgrade reports whether h asks for a protocol upgrade (WebSocket).
func isUpgrade(h http.Header) bool {
	if _, ok := h["Upgrade"]; !ok {
		return false
	}
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if strings.EqualFold(textproto.TrimString(name), "upgrade") {
				return true
			}
		}
	}
	return false
}
