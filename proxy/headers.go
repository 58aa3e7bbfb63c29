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
	"Http2-Settings", // belongs to an h2c upgrade, which is never passed on
}

// removeHopHeaders deletes hop-by-hop headers, including every name listed
// in Connection. For an upgrade (WebSocket) the Connection and Upgrade
// headers are the point of the request and stay.
func removeHopHeaders(h http.Header, upgrade bool) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
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

// isUpgrade reports whether h asks for a WebSocket upgrade, the one
// upgrade mtlsproxy passes on (h2c and others are dropped with the other
// hop-by-hop headers).
func isUpgrade(h http.Header) bool {
	websocket := false
	for _, v := range h["Upgrade"] {
		for p := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(p), "websocket") {
				websocket = true
			}
		}
	}
	if !websocket {
		return false
	}
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(name), "upgrade") {
				return true
			}
		}
	}
	return false
}

// addVia appends this hop to the Via header. The received protocol is the
// one of the message as it arrived here.
func addVia(h http.Header, major, minor int, via string) {
	hop := via
	if major == 2 {
		hop = "2" + via[len("1.1"):]
	} else if major == 1 && minor == 0 {
		hop = "1.0" + via[len("1.1"):]
	}
	if prior := h.Get("Via"); prior != "" {
		hop = prior + ", " + hop
	}
	h.Set("Via", hop)
}
