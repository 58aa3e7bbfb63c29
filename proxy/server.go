package proxy

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves a Proxy on a plain-HTTP listener with Go's HTTP server,
// configured so that the proxy, not the server, answers every request,
// and so that a client cannot make the proxy and itself disagree on where
// one request ends and the next begins.
//
// Go's server reads a request with both Content-Length and
// Transfer-Encoding by its chunked framing and drops the Content-Length
// (RFC 9112 section 6.3), and reads an HTTP/1.0 request's body by its
// Content-Length, ignoring Transfer-Encoding. Either way the request the
// proxy forwards is framed anew by the upstream transport, so the
// upstream cannot disagree with the proxy. A client that meant something
// else could, so the connection is closed after any request that carried
// Transfer-Encoding, and an HTTP/1.0 one is refused (RFC 9112 section
// 6.1). Whether a request carried it is read off the bytes the client
// sent, which Go's server does not keep: see teWatch.
type Server struct {
	// Proxy answers every request. Required.
	Proxy *Proxy
	// HTTP is the server the Proxy runs in. Its Handler must be Proxy (if
	// nil, Serve sets it). Serve takes its MaxHeaderBytes as the limit of
	// the request line and headers together (net/http itself reads
	// 4 KiB beyond it) and sets it accordingly; zero means 64 KiB. Serve
	// sets DisableGeneralOptionsHandler, so that "OPTIONS *" reaches the
	// Proxy too. Its ConnContext, if set, is kept.
	HTTP *http.Server
	// Front serves simple requests (bodiless HTTP/1.1 GETs and HEADs) on
	// the connection's goroutine instead of Go's server, which takes the
	// connection over at the first request the front does not take; see
	// front.go. The answers are the same either way.
	Front bool
	// Metrics counts the open connections the front serves; Go's server
	// counts its own through its ConnState (Metrics.ConnState). It may be
	// nil.
	Metrics *Metrics

	front frontServer

	once sync.Once
	mu   sync.Mutex
	// fresh are the connections that have not yet sent a whole request
	// head (StateNew): Go's Shutdown waits five seconds before it takes
	// them for idle, so Shutdown closes them itself.
	fresh map[net.Conn]struct{}
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// defaultMaxHead is the default limit on a request's line and headers.
const defaultMaxHead = 64 << 10

// headSlop is what net/http reads beyond MaxHeaderBytes before it answers
// 431 (its initialReadLimitSize).
const headSlop = 4096

func (s *Server) init() {
	s.once.Do(func() {
		h := s.HTTP
		if h.Handler == nil {
			h.Handler = s.Proxy
		}
		limit := h.MaxHeaderBytes
		if limit <= 0 {
			limit = defaultMaxHead
		}
		h.MaxHeaderBytes = max(limit-headSlop, 1)
		h.DisableGeneralOptionsHandler = true
		s.front.s = s
		s.fresh = map[net.Conn]struct{}{}
		state := h.ConnState
		h.ConnState = func(c net.Conn, cs http.ConnState) {
			s.mu.Lock()
			if cs == http.StateNew {
				s.fresh[c] = struct{}{}
			} else {
				delete(s.fresh, c)
			}
			s.mu.Unlock()
			if state != nil {
				state(c, cs)
			}
		}
		next := h.ConnContext
		h.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			if next != nil {
				ctx = next(ctx, c)
			}
			if w, ok := c.(interface{ watch() *teWatch }); ok {
				ctx = context.WithValue(ctx, teWatchKey{}, w.watch())
			}
			return ctx
		}
	})
}

// Serve accepts connections on ln until Shutdown or Close, and returns
// ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	if s.Front {
		return s.front.serve(ln)
	}
	return s.HTTP.Serve(teWatchListener{ln})
}

// Shutdown stops accepting, closes idle connections (and those that have
// not sent a request yet), and waits for the requests in progress until
// ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.front.stop()
	errc := make(chan error, 1)
	go func() { errc <- s.HTTP.Shutdown(ctx) }()
	// Go's Shutdown closes the listeners and the idle connections, and
	// polls until the rest are done; the fresh ones are closed here on
	// the same rhythm, which also catches any accepted just before the
	// listeners closed.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		for c := range s.fresh {
			_ = c.Close()
			delete(s.fresh, c)
		}
		s.mu.Unlock()
		select {
		case err := <-errc:
			if ferr := s.front.wait(ctx); err == nil {
				err = ferr
			}
			return err
		case <-tick.C:
		}
	}
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.init()
	s.front.stop()
	s.front.closeAll()
	return s.HTTP.Close()
}

// teWatchListener wraps each accepted connection in a teWatch.
type teWatchListener struct{ net.Listener }

func (l teWatchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &teWatch{Conn: c}, nil
}

type teWatchKey struct{}

// teWatch notes whether a client connection has sent a line that starts
// with "Transfer-Encoding" (in any case), anywhere: in a head, in a body,
// in a request read ahead. It does not try to tell which request the line
// belonged to: a parser beside Go's server that tracked message
// boundaries could lose step with it and blame the wrong request. Seen
// once, it stays seen, and the proxy closes the connection after the
// response in progress: the worst a false sighting (such a line inside a
// body) costs is a new connection.
type teWatch struct {
	net.Conn
	seen atomic.Bool
	// off is set when the connection stops carrying HTTP/1.1 requests (a
	// tunnel, an upgrade): nothing is scanned from then on.
	off atomic.Bool
	// matched is how much of teName the current line has matched so far;
	// -1 once the line cannot match. Only the reading goroutine uses it.
	matched int
}

const teName = "transfer-encoding"

// watch lets ConnContext find the watch under a connection the front
// handed over (replayConn embeds it).
func (c *teWatch) watch() *teWatch { return c }

func (c *teWatch) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.off.Load() && !c.seen.Load() {
		c.scan(p[:n])
	}
	return n, err
}

// scan feeds b through the line matcher.
func (c *teWatch) scan(b []byte) {
	for len(b) > 0 {
		if c.matched < 0 {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return
			}
			b = b[i+1:]
			c.matched = 0
			continue
		}
		ch := b[0]
		b = b[1:]
		if ch == '\n' {
			c.matched = 0
			continue
		}
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != teName[c.matched] {
			c.matched = -1
			continue
		}
		c.matched++
		if c.matched == len(teName) {
			c.seen.Store(true)
			c.matched = -1
			return
		}
	}
}

// CloseWrite and CloseRead keep half-closes working for tunnels.
func (c *teWatch) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *teWatch) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return nil
}

// watchOf returns the teWatch of the connection ctx belongs to, or nil
// (a Proxy served by a plain http.Server, or a request inside a tunnel).
func watchOf(ctx context.Context) *teWatch {
	w, _ := ctx.Value(teWatchKey{}).(*teWatch)
	return w
}
