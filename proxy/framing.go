package proxy

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"sync"
)

// Go's HTTP server reads a request that has both Content-Length and
// Transfer-Encoding: chunked by its chunked framing and drops the
// Content-Length, which RFC 9112 §6.3 allows, but it neither rejects the
// request nor closes the connection afterwards. Such a request is the
// classic smuggling probe, so mtlsproxy answers it with 400 and closes.
// The handler cannot see the dropped header, so FramingConn watches the
// request heads on the wire, in order, and remembers for each whether it
// carried both; the handler asks with AmbiguousFraming.

// FramingConn wraps a client connection to notice request heads that
// carry both Content-Length and Transfer-Encoding.
type FramingConn struct {
	net.Conn
	mu    sync.Mutex
	st    frameState
	line  []byte
	flags []bool // one per request head seen, oldest first
	// per head
	hasCL, hasTE, chunked bool
	first                 bool
	bodyLeft              int64
}

type frameState int

const (
	stHead      frameState = iota // reading a request head
	stBody                        // skipping bodyLeft bytes of a sized body
	stChunkSize                   // reading a chunk-size line
	stChunkData                   // skipping bodyLeft bytes of chunk data (+CRLF)
	stTrailer                     // reading trailer lines after the last chunk
	stOff                         // gave up (CONNECT, upgrade, or unparsable): no more flags
)

// maxFramingLine bounds a buffered line; longer heads are the server's to
// refuse (431).
const maxFramingLine = 64 << 10

// NewFramingConn wraps c.
func NewFramingConn(c net.Conn) *FramingConn { return &FramingConn{Conn: c, first: true} }

func (f *FramingConn) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if n > 0 {
		f.mu.Lock()
		f.scan(p[:n])
		f.mu.Unlock()
	}
	return n, err
}

// next returns whether the oldest request head not yet asked about was
// ambiguous.
func (f *FramingConn) next() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.flags) == 0 {
		return false
	}
	v := f.flags[0]
	f.flags = f.flags[1:]
	return v
}

func (f *FramingConn) scan(b []byte) {
	for len(b) > 0 && f.st != stOff {
		switch f.st {
		case stBody, stChunkData:
			k := int64(len(b))
			if k > f.bodyLeft {
				k = f.bodyLeft
			}
			f.bodyLeft -= k
			b = b[k:]
			if f.bodyLeft == 0 {
				if f.st == stBody {
					f.st, f.first = stHead, true
				} else {
					f.st = stChunkSize
				}
			}
		default:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				f.line = append(f.line, b...)
				if len(f.line) > maxFramingLine {
					f.st = stOff
				}
				return
			}
			f.line = append(f.line, b[:i]...)
			b = b[i+1:]
			line := bytes.TrimSuffix(f.line, []byte("\r"))
			f.line = f.line[:0]
			f.onLine(line)
		}
	}
}

func (f *FramingConn) onLine(line []byte) {
	switch f.st {
	case stHead:
		if f.first {
			if len(line) == 0 {
				return // tolerated empty lines before a request
			}
			f.first = false
			f.hasCL, f.hasTE, f.chunked = false, false, false
			if bytes.HasPrefix(line, []byte("CONNECT ")) {
				f.st = stOff // what follows is a tunnel
			}
			return
		}
		if len(line) == 0 {
			f.endHead()
			return
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			f.hasCL = true
			if n, err := strconv.ParseInt(string(value), 10, 64); err == nil && n >= 0 {
				f.bodyLeft = n
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			f.hasTE = true
			f.chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Upgrade")):
			f.st = stOff // after a 101 the bytes are not HTTP
		}
	case stChunkSize:
		size, _, _ := bytes.Cut(line, []byte(";"))
		n, err := strconv.ParseInt(string(bytes.TrimSpace(size)), 16, 64)
		switch {
		case err != nil || n < 0:
			f.st = stOff
		case n == 0:
			f.st = stTrailer
		default:
			f.st, f.bodyLeft = stChunkData, n+2 // data and its CRLF
		}
	case stTrailer:
		if len(line) == 0 {
			f.st, f.first = stHead, true
		}
	}
}

func (f *FramingConn) endHead() {
	if f.st == stOff {
		return
	}
	f.flags = append(f.flags, f.hasCL && f.hasTE)
	switch {
	case f.hasTE && f.chunked:
		f.st = stChunkSize
	case f.hasTE:
		f.st = stOff // the server refuses other codings
	case f.hasCL && f.bodyLeft > 0:
		f.st = stBody
	default:
		f.bodyLeft = 0
		f.st, f.first = stHead, true
	}
}

type framingKey struct{}

// WithFramingConn is an http.Server ConnContext: it makes the connection's
// FramingConn, if any, visible to the handler. Server wraps the
// connections it hands over in one.
func WithFramingConn(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*FramingConn); ok {
		return context.WithValue(ctx, framingKey{}, fc)
	}
	return ctx
}

// AmbiguousFraming reports whether the request being handled on this
// connection carried both Content-Length and Transfer-Encoding. Call it
// once per request, in order.
func AmbiguousFraming(ctx context.Context) bool {
	fc, ok := ctx.Value(framingKey{}).(*FramingConn)
	return ok && fc.next()
}

// CloseWrite half-closes, for tunnels, when the connection supports it.
func (f *FramingConn) CloseWrite() error {
	if cw, ok := f.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return f.Conn.Close()
}

// CloseRead half-closes the read side when the connection supports it.
func (f *FramingConn) CloseRead() error {
	if cr, ok := f.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return nil
}
