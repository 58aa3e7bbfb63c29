// Package h1 is the pure part of mtlsproxy's HTTP/1.1 front accelerator:
// finding a request head in a buffer, reading the simple heads the front
// serves itself, and writing response heads. Bytes in, values out, no
// I/O beyond a bufio.Writer. What Parse accepts, net/http's
// http.ReadRequest accepts and reads the same way (method, target,
// header names and values, no body); FuzzParse holds it to that. Anything
// unusual is refused, so that the front hands the connection to Go's
// server, which takes, refuses or explains it.
package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// HeadLen finds the end of a request head at the start of buf: its
// length, -1 if it is not all there, or 0 if a line ends in a bare LF
// (which Go's reader accepts and the front leaves to it).
func HeadLen(buf []byte) int {
	start := 0
	for {
		i := bytes.IndexByte(buf[start:], '\n')
		if i < 0 {
			return -1
		}
		i += start
		if i == 0 || buf[i-1] != '\r' {
			return 0
		}
		if i == start+1 && start > 0 {
			return i + 1 // an empty line ends the head
		}
		start = i + 1
	}
}

// Header is one header line of a parsed head: slices of the head.
type Header struct{ Name, Value []byte }

// Request is a simple request head: slices of the head it was parsed
// from, valid while that is.
type Request struct {
	Method    string // GET or HEAD
	Gateway   bool   // origin-form (a path), for a gateway's upstream
	Authority []byte // absolute-form host[:port]
	URIPre    string // "/" when the target has no path
	URI       []byte // path and query, as they came
	Path      []byte // URI up to '?'
	Close     bool   // Connection: close
	HasUA     bool   // a User-Agent line was present (maybe empty)
	Creds     []byte // Proxy-Authorization
	Via       bool   // a Via line was present
	Headers   []Header
	hdrBuf    [48]Header
}

// Options say what Parse may take.
type Options struct {
	// Gateway allows origin-form targets.
	Gateway bool
	// Strip are header names dropped from the forwarded headers.
	Strip []string
}

// Parse reads head (request line, headers and the empty line, as HeadLen
// measured it). It returns false for anything the front does not take
// itself: a method other than GET or HEAD, a protocol other than
// HTTP/1.1, a body or anything about one (Content-Length,
// Transfer-Encoding, Expect), an upgrade, a target or header Go's server
// might read differently, more than one Host, more than 48 headers.
// Hop-by-hop headers are dropped; so are the Strip ones.
func (r *Request) Parse(head []byte, o Options) bool {
	*r = Request{}
	r.Headers = r.hdrBuf[:0]
	i := bytes.Index(head, []byte("\r\n"))
	if i < 0 {
		return false
	}
	line, rest := head[:i], head[i+2:]
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	switch string(line[:sp]) {
	case "GET":
		r.Method = "GET"
	case "HEAD":
		r.Method = "HEAD"
	default:
		return false
	}
	line = line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 || string(line[sp+1:]) != "HTTP/1.1" {
		return false
	}
	tgt := line[:sp]
	switch {
	case tgt[0] == '/':
		if !o.Gateway || (len(tgt) > 1 && tgt[1] == '/') {
			return false
		}
		r.Gateway, r.URI = true, tgt
	case len(tgt) > 7 && string(tgt[:7]) == "http://":
		rest := tgt[7:]
		end := len(rest)
		if j := bytes.IndexAny(rest, "/?"); j >= 0 {
			end = j
		}
		r.Authority, r.URI = rest[:end], rest[end:]
		if _, _, ok := Authority(r.Authority); !ok {
			return false
		}
	default:
		return false
	}
	if !validTarget(r.URI) {
		return false
	}
	if len(r.URI) == 0 || r.URI[0] == '?' {
		r.URIPre = "/"
	}
	r.Path = r.URI
	if q := bytes.IndexByte(r.URI, '?'); q >= 0 {
		r.Path = r.URI[:q]
	}
	hosts := 0
	for {
		name, value, more, ok := nextHeader(&rest)
		if !ok {
			return false
		}
		if !more {
			break
		}
		switch {
		case EqFold(name, "Host"):
			hosts++
			if !validHost(value) {
				return false
			}
			continue
		case EqFold(name, "Content-Length"), EqFold(name, "Transfer-Encoding"), EqFold(name, "Expect"),
			EqFold(name, "Upgrade"), EqFold(name, "Te"), EqFold(name, "Trailer"), EqFold(name, "Http2-Settings"):
			return false
		case EqFold(name, "Connection"):
			if !connectionTokens(value, &r.Close) {
				return false
			}
			continue
		case EqFold(name, "Proxy-Connection"), EqFold(name, "Keep-Alive"), EqFold(name, "Proxy-Authenticate"):
			continue
		case EqFold(name, "Proxy-Authorization"):
			if r.Creds != nil {
				return false
			}
			r.Creds = value
			continue
		case EqFold(name, "Close"):
			// Named by "Connection: close", Go's path drops it as a
			// hop-by-hop header; rare enough to leave to it.
			return false
		}
		if stripped(name, o.Strip) {
			continue // a stripped User-Agent is absent: Go sends its default
		}
		switch {
		case EqFold(name, "Via"):
			r.Via = true
		case EqFold(name, "User-Agent"):
			if r.HasUA {
				return false // net/http sends the first of several
			}
			r.HasUA = true
			if len(value) == 0 {
				continue // an explicitly empty User-Agent means: send none
			}
		}
		if len(r.Headers) == cap(r.Headers) {
			return false
		}
		r.Headers = append(r.Headers, Header{name, value})
	}
	return hosts == 1 && len(rest) == 0
}

// Header is the forwarded headers as net/http's reader would give them:
// canonical names, values in order, and "Pragma: no-cache" implying
// "Cache-Control: no-cache" as http.ReadRequest makes it (RFC 9111
// section 5.4). An explicitly empty User-Agent is kept empty, which
// Request.Write sends as none.
func (r *Request) Header() http.Header {
	h := make(http.Header, len(r.Headers)+2)
	for _, hd := range r.Headers {
		h.Add(string(hd.Name), string(hd.Value))
	}
	if r.HasUA && len(h["User-Agent"]) == 0 {
		h["User-Agent"] = []string{""}
	}
	if hp := h["Pragma"]; len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	return h
}

// nextHeader reads the next header line of a head from *rest (after the
// start line). more is false at the empty line that ends the head; ok is
// false for a line the front does not take (no colon, a bad name, control
// characters in the value, a missing CRLF).
func nextHeader(rest *[]byte) (name, value []byte, more, ok bool) {
	i := bytes.Index(*rest, []byte("\r\n"))
	if i < 0 {
		return nil, nil, false, false
	}
	line := (*rest)[:i]
	*rest = (*rest)[i+2:]
	if len(line) == 0 {
		return nil, nil, false, true
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !validToken(line[:colon]) {
		return nil, nil, false, false
	}
	name, value = line[:colon], trimOWS(line[colon+1:])
	return name, value, true, validValue(value)
}

// connectionTokens reads a Connection value, setting *close for "close".
// It is false if the value names anything but close and keep-alive: a
// header to drop, which Go's path does.
func connectionTokens(value []byte, close *bool) bool {
	for tok := range bytes.SplitSeq(value, []byte(",")) {
		tok = trimOWS(tok)
		switch {
		case EqFold(tok, "close"):
			*close = true
		case len(tok) == 0, EqFold(tok, "keep-alive"):
		default:
			return false
		}
	}
	return true
}

func stripped(name []byte, strip []string) bool {
	for _, s := range strip {
		if EqFold(name, s) {
			return true
		}
	}
	return false
}

// EqFold compares an ASCII header name or token with s, ignoring case.
func EqFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// charTable is the set of bytes in the string, with ASCII letters and
// digits.
func charTable(extra string) (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || bytes.IndexByte([]byte(extra), byte(c)) >= 0
	}
	return t
}

var (
	tokenChars = charTable("!#$%&'*+-.^_`|~")
	// Go's server's Host bytes (httpguts): no '@', so that a Host with
	// user info gets the same 400 from Go's server.
	hostChars = charTable("!$%&'()*+,-.:;=[]_~")
	// RFC 3986 pchar, '/' and '?': what Go's URL parser keeps byte for
	// byte. '%' is checked separately.
	targetChars = charTable("-._~!$&'()*+,;=:@/?")
)

func validToken(b []byte) bool {
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return len(b) > 0
}

// validValue accepts visible characters, spaces, tabs and obs-text, as
// Go's server does.
func validValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func validHost(b []byte) bool {
	for _, c := range b {
		if !hostChars[c] {
			return false
		}
	}
	return true
}

func validTarget(b []byte) bool {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '%' {
			if i+2 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) {
				return false
			}
			i += 2
			continue
		}
		if !targetChars[c] {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// Authority reads an absolute-form authority: a host name or IPv4 address
// and an optional port (digits, at most 5). IPv6 literals, user info and
// anything unusual are refused.
func Authority(a []byte) (host, port []byte, ok bool) {
	host = a
	if i := bytes.IndexByte(a, ':'); i >= 0 {
		host, port = a[:i], a[i+1:]
		if len(port) == 0 || len(port) > 5 {
			return nil, nil, false
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return nil, nil, false
			}
		}
	}
	if len(host) == 0 {
		return nil, nil, false
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return nil, nil, false
		}
	}
	return host, port, true
}

// WriteStatusLine writes "HTTP/1.1 <code> <text>\r\n".
func WriteStatusLine(bw *bufio.Writer, code int) {
	var b [20]byte
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	bw.WriteByte(' ')
	if text := statusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	}
	bw.WriteString("\r\n")
}

// WriteHeader writes one "k: v" line per value, skipping a name or value
// that is not valid on the wire (httpguts), as net/http's writer does.
func WriteHeader(bw *bufio.Writer, k string, vs []string) {
	if !httpguts.ValidHeaderFieldName(k) {
		return
	}
	for _, v := range vs {
		if !httpguts.ValidHeaderFieldValue(v) {
			continue
		}
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(v)
		bw.WriteString("\r\n")
	}
}
