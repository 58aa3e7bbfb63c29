package proxy

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"net/url"
)

// frontReq is a request head as Server parsed it: slices of the
// connection's read buffer, valid until the request is done.
type frontReq struct {
	method    string
	gateway   bool   // origin-form, for the gateway upstream
	authority []byte // absolute-form host[:port]
	uriPre    string // "/" when the target has no path
	uri       []byte // path and query, sent upstream as they came
	path      []byte // uri up to '?', for the access log
	close     bool   // Connection: close
	hasUA     bool
	creds     []byte // Proxy-Authorization
	// hostHeader and via are set for the upstream request.
	hostHeader string
	via        string
	hdrs       []frontHeader // forwarded, in order
	hdrBuf     [48]frontHeader
}

type frontHeader struct{ name, value []byte }

// parse reads head (request line, headers and the empty line). It returns
// false for anything Server does not take itself: the request then goes
// to Go's server and goproxy, which take, refuse or explain it.
func (r *frontReq) parse(head []byte, p *Proxy) bool {
	*r = frontReq{hdrs: r.hdrBuf[:0], via: p.via}
	i := bytes.Index(head, []byte("\r\n"))
	line, rest := head[:i], head[i+2:]
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	switch string(line[:sp]) {
	case "GET":
		r.method = "GET"
	case "HEAD":
		r.method = "HEAD"
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
		if !p.gwFast || (len(tgt) > 1 && tgt[1] == '/') {
			return false
		}
		r.gateway, r.uri = true, tgt
	case len(tgt) > 7 && string(tgt[:7]) == "http://":
		rest := tgt[7:]
		end := len(rest)
		if j := bytes.IndexAny(rest, "/?"); j >= 0 {
			end = j
		}
		r.authority, r.uri = rest[:end], rest[end:]
		if len(r.authority) == 0 {
			return false
		}
	default:
		return false
	}
	if !validTarget(r.uri) {
		return false
	}
	if len(r.uri) == 0 || r.uri[0] == '?' {
		r.uriPre = "/"
	}
	r.path = r.uri
	if q := bytes.IndexByte(r.uri, '?'); q >= 0 {
		r.path = r.uri[:q]
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
		case eqFold(name, "Host"):
			hosts++
			if !validHost(value) {
				return false
			}
			continue
		case eqFold(name, "Content-Length"), eqFold(name, "Transfer-Encoding"), eqFold(name, "Expect"),
			eqFold(name, "Upgrade"), eqFold(name, "Te"), eqFold(name, "Trailer"), eqFold(name, "Http2-Settings"):
			return false
		case eqFold(name, "Connection"):
			if !connectionTokens(value, &r.close) {
				return false
			}
			continue
		case eqFold(name, "Proxy-Connection"), eqFold(name, "Keep-Alive"), eqFold(name, "Proxy-Authenticate"):
			continue
		case eqFold(name, "Proxy-Authorization"):
			if r.creds != nil {
				return false
			}
			r.creds = value
			continue
		case eqFold(name, "Via"):
			if r.via != "" {
				return false // this hop is added to it on the goproxy path
			}
		case eqFold(name, "User-Agent"):
			r.hasUA = true
			if len(value) == 0 {
				continue // an explicitly empty User-Agent means: send none
			}
		}
		if stripped(name, p.strip) {
			continue
		}
		if len(r.hdrs) == cap(r.hdrs) {
			return false
		}
		r.hdrs = append(r.hdrs, frontHeader{name, value})
	}
	return hosts == 1
}

// nextHeader reads the next header line of a head from *rest (after the
// start line). more is false at the empty line that ends the head; ok is
// false for a line Server does not take (no colon, a bad name, control
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
// header to drop, which the goproxy path does.
func connectionTokens(value []byte, close *bool) bool {
	for tok := range bytes.SplitSeq(value, []byte(",")) {
		tok = trimOWS(tok)
		switch {
		case eqFold(tok, "close"):
			*close = true
		case len(tok) == 0, eqFold(tok, "keep-alive"):
		default:
			return false
		}
	}
	return true
}

// writeHeaderLines writes "name: value" lines.
func writeHeaderLines(bw *bufio.Writer, hdrs []frontHeader) {
	for _, h := range hdrs {
		bw.Write(h.name)
		bw.WriteString(": ")
		bw.Write(h.value)
		bw.WriteString("\r\n")
	}
}

func stripped(name []byte, strip []string) bool {
	for _, s := range strip {
		if eqFold(name, s) {
			return true
		}
	}
	return false
}

// writeHead writes the upstream request.
func (r *frontReq) writeHead(bw *bufio.Writer) {
	bw.WriteString(r.method)
	bw.WriteByte(' ')
	bw.WriteString(r.uriPre)
	bw.Write(r.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.hostHeader)
	bw.WriteString("\r\n")
	if !r.hasUA {
		bw.WriteString("User-Agent: Go-http-client/1.1\r\n") // as http.Request.Write, like the goproxy path
	}
	writeHeaderLines(bw, r.hdrs)
	if r.via != "" {
		bw.WriteString("Via: ")
		bw.WriteString(r.via)
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
}

// toRequest builds the request the goproxy path would send upstream.
func (r *frontReq) toRequest(tg *target) (*http.Request, error) {
	u, err := url.ParseRequestURI(r.uriPre + string(r.uri))
	if err != nil {
		return nil, err
	}
	u.Scheme, u.Host = "https", tg.hostHeader
	h := make(http.Header, len(r.hdrs)+2)
	for _, hd := range r.hdrs {
		h.Add(string(hd.name), string(hd.value))
	}
	if r.hasUA && len(h["User-Agent"]) == 0 {
		h["User-Agent"] = []string{""} // sent empty by the client: send none
	}
	if r.via != "" {
		h.Set("Via", r.via)
	}
	return &http.Request{Method: r.method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: tg.hostHeader}, nil
}

// parseAuthority reads an absolute-form authority: a host name or IPv4
// address and an optional port. IPv6 literals, user info and anything
// unusual are left to the goproxy path.
func parseAuthority(a []byte) (target, bool) {
	host, port := a, []byte(nil)
	if i := bytes.IndexByte(a, ':'); i >= 0 {
		host, port = a[:i], a[i+1:]
		if len(port) == 0 || len(port) > 5 {
			return target{}, false
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return target{}, false
			}
		}
	}
	if len(host) == 0 {
		return target{}, false
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return target{}, false
		}
	}
	p := string(port)
	if p == "" || p == "80" {
		p = "443"
	} else if _, err := checkPort(p); err != nil {
		return target{}, false
	}
	return newTarget(NormalizeHost(string(host)), p), true
}

func newTarget(host, port string) target {
	hp := net.JoinHostPort(host, port)
	return target{host: host, port: port, hostport: hp, hostHeader: stripDefaultPort(hp, "443")}
}

// gatewayTarget is where origin-form requests go when Server may take
// them itself: an upstream URL without a base path or query.
func gatewayTarget(u *url.URL) (target, bool) {
	if u == nil || (u.Path != "" && u.Path != "/") || u.RawPath != "" || u.RawQuery != "" || u.User != nil {
		return target{}, false
	}
	host := NormalizeHost(u.Hostname())
	if host == "" {
		return target{}, false
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return newTarget(host, port), true
}

// eqFold compares an ASCII header name or token with s, ignoring case.
func eqFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
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

var tokenChars, hostChars, targetChars [256]bool

func init() {
	for c := 0; c < 256; c++ {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		tokenChars[c] = alnum || bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), byte(c)) >= 0
		// Go's server's Host bytes (httpguts): no '@', so that a Host
		// with user info gets the same 400 on both paths.
		hostChars[c] = alnum || bytes.IndexByte([]byte("!$%&'()*+,-.:;=[]_~"), byte(c)) >= 0
		// RFC 3986 pchar, '/' and '?': what Go's URL parser keeps byte
		// for byte. '%' is checked separately.
		targetChars[c] = alnum || bytes.IndexByte([]byte("-._~!$&'()*+,;=:@/?"), byte(c)) >= 0
	}
}

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

// rawResp is an upstream response head parsed in place: a final status,
// a Content-Length or no body, clean headers. Anything else is read by
// Go's http.ReadResponse instead.
type rawResp struct {
	code   int
	length int64  // body bytes to copy
	clen   []byte // the Content-Length value, if any
	close  bool   // the upstream will close the connection
	hdrs   []frontHeader
	hdrBuf [48]frontHeader
}

func (r *rawResp) parse(head []byte, isHead, via bool) bool {
	r.hdrs, r.close, r.clen = r.hdrBuf[:0], false, nil
	i := bytes.Index(head, []byte("\r\n"))
	line, rest := head[:i], head[i+2:]
	if len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return false
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return false
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 {
		return false
	}
	r.code = code
	for {
		name, value, more, ok := nextHeader(&rest)
		if !ok {
			return false
		}
		if !more {
			break
		}
		switch {
		case eqFold(name, "Content-Length"):
			if r.clen != nil || len(value) == 0 || len(value) > 18 {
				return false
			}
			for _, c := range value {
				if c < '0' || c > '9' {
					return false
				}
			}
			r.clen = value
			continue
		case eqFold(name, "Transfer-Encoding"), eqFold(name, "Trailer"), eqFold(name, "Upgrade"):
			return false
		case eqFold(name, "Connection"):
			if !connectionTokens(value, &r.close) {
				return false
			}
			continue
		case eqFold(name, "Keep-Alive"), eqFold(name, "Proxy-Connection"), eqFold(name, "Proxy-Authenticate"),
			eqFold(name, "Proxy-Authorization"), eqFold(name, "Te"), eqFold(name, "Http2-Settings"):
			continue
		case via && eqFold(name, "Via"):
			return false
		}
		if len(r.hdrs) == cap(r.hdrs) {
			return false
		}
		r.hdrs = append(r.hdrs, frontHeader{name, value})
	}
	r.length = 0
	if isHead || code == 204 || code == 304 {
		return true
	}
	if r.clen == nil {
		return false // chunked or up to the close
	}
	for _, c := range r.clen { // at most 18 digits: no overflow
		r.length = r.length*10 + int64(c-'0')
	}
	return true
}
