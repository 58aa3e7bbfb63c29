package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// fastH1 carries simple requests (GET, HEAD, OPTIONS and TRACE without a
// body) over pooled HTTP/1.1 upstream connections, writing the request and
// reading the response on the caller's goroutine. http.Transport spends
// two extra goroutines, several channel hand-offs and a cancellable
// context per request; for a proxy whose requests are mostly small GETs
// that is most of its CPU. Everything else (bodies, Expect, upgrades,
// HTTP/2 upstreams) keeps using http.Transport.
type fastH1 struct {
	route *Route
	// h2 is set once an upstream chose HTTP/2 by ALPN: from then on every
	// request goes to http.Transport, which speaks it.
	h2 atomic.Bool

	mu     sync.Mutex
	idle   map[string][]*h1Conn // by host:port, most recent last
	closed bool
	// sweep closes connections idle past the timeout when traffic has
	// stopped; it is armed while the pool holds any.
	sweep *time.Timer
}

type h1Conn struct {
	tc     *tls.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	state  *tls.ConnectionState
	idleAt time.Time
	// headBy is the response-header deadline of the request in flight;
	// short is set while the connection's read deadline is an earlier
	// client check instead (see sendHead and fullDeadline).
	headBy time.Time
	short  bool
}

// fullDeadline gives the rest of the response head the whole
// response-header deadline, after sendHead waited for its first byte in
// client-check steps.
func (pc *h1Conn) fullDeadline() {
	if pc.short {
		_ = pc.tc.SetReadDeadline(pc.headBy)
		pc.short = false
	}
}

func newFastH1(r *Route) *fastH1 {
	return &fastH1{route: r, idle: map[string][]*h1Conn{}}
}

// eligible reports whether req can take the fast path.
func (f *fastH1) eligible(req *http.Request) bool {
	if f.h2.Load() {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		return false
	}
	if req.ContentLength != 0 || (req.Body != nil && req.Body != http.NoBody) {
		return false
	}
	if _, ok := req.Header["Expect"]; ok {
		return false
	}
	return !isUpgrade(req.Header)
}

// errFallback means the upstream chose HTTP/2: use http.Transport.
var errFallback = errors.New("upstream speaks HTTP/2")

// roundTrip sends req. The requests it takes are idempotent and bodiless,
// so a reused connection that turns out to be closed by the upstream is
// retried once on a new one.
func (f *fastH1) roundTrip(req *http.Request, ex *exchange) (*http.Response, error) {
	addr := req.URL.Host
	if ex != nil && ex.host != "" {
		addr = ex.host // host:port, normalized by prepare
	} else if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(req.URL.Hostname(), "443")
	}
	return f.do(req.Context(), addr, (*stdHead)(req), req, ex)
}

// headWriter writes a bodiless request head to an upstream connection.
type headWriter interface{ writeHead(bw *bufio.Writer) }

// stdHead writes an *http.Request's head with writeRequestHead.
type stdHead http.Request

func (h *stdHead) writeHead(bw *bufio.Writer) { writeRequestHead(bw, (*http.Request)(h)) }

// do sends the head hw writes to addr (host:port, the pool key) and reads
// the response; rreq tells http.ReadResponse the method (a HEAD response
// has no body) and whether the connection may be reused.
func (f *fastH1) do(ctx context.Context, addr string, hw headWriter, rreq *http.Request, ex *exchange) (*http.Response, error) {
	pc, stop, err := f.open(ctx, addr, hw, ex, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.readResponse(pc, rreq)
	if !stop() {
		// The client went away and cut the deadline: the connection is
		// spoiled.
		_ = pc.tc.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		_ = pc.tc.Close()
		return nil, readError(ctx, err)
	}
	f.attach(resp, pc, addr, !rreq.Close)
	return resp, nil
}

// open sends the head hw writes to addr on a pooled or new connection
// and waits for the first byte of the answer. A pooled connection that
// the upstream had closed meanwhile is retried once on a new one: the
// requests taken here are idempotent. Until stop is called, ctx ending
// cuts the connection's deadline. alive, if set, is asked every
// clientCheckInterval while the upstream has not answered; when it says
// the client is gone, open gives up with errClientGone.
func (f *fastH1) open(ctx context.Context, addr string, hw headWriter, ex *exchange, alive func() bool) (_ *h1Conn, stop func() bool, _ error) {
	for attempt := 0; ; attempt++ {
		pc, reused := f.get(addr)
		if pc == nil {
			var err error
			if pc, err = f.dial(ctx, addr); err != nil {
				return nil, nil, err
			}
		}
		if ex != nil {
			ex.reused = reused
		}
		stop := noStop
		if ctx.Done() != nil {
			// A client that goes away stops the wait for the upstream.
			stop = context.AfterFunc(ctx, func() { _ = pc.tc.SetDeadline(time.Unix(1, 0)) })
		}
		err := f.sendHead(pc, hw, alive)
		if err == nil {
			return pc, stop, nil
		}
		stop()
		_ = pc.tc.Close()
		// Retry only what means "the upstream had already closed this
		// idle connection": nothing of the response was read.
		stale := errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
		if !reused || attempt > 0 || !stale || ctx.Err() != nil {
			return nil, nil, readError(ctx, err)
		}
	}
}

// sendHead writes the head on pc and waits for the first byte of the
// answer, up to the response-header timeout.
func (f *fastH1) sendHead(pc *h1Conn, hw headWriter, alive func() bool) error {
	hw.writeHead(pc.bw)
	if err := pc.bw.Flush(); err != nil {
		return err
	}
	deadline := time.Now().Add(f.route.timeouts.ResponseHeader)
	for {
		step := deadline
		if alive != nil {
			if t := time.Now().Add(clientCheckInterval); t.Before(deadline) {
				step = t
			}
		}
		_ = pc.tc.SetReadDeadline(step)
		_, err := pc.br.Peek(1)
		if err == nil {
			// The deadline may be a client-check step: the caller lifts it
			// to headBy with fullDeadline before it waits for more of the
			// head (usually the whole head came with the first byte).
			pc.headBy, pc.short = deadline, step.Before(deadline)
			return nil
		}
		if step.Before(deadline) && isTimeout(err) {
			// A read timeout leaves a TLS connection usable: wait on, as
			// long as someone is waiting for the answer.
			if !alive() {
				return errClientGone
			}
			continue
		}
		// A pooled connection the upstream has closed meanwhile answers
		// with EOF (or a reset) before the first byte: say so plainly, so
		// that the caller retries on a new connection.
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = io.EOF
		}
		return err
	}
}

// clientCheckInterval is how often a request waiting for its upstream
// checks that its client is still there.
const clientCheckInterval = 500 * time.Millisecond

// errClientGone ends the wait for an upstream whose client has left.
var errClientGone = fmt.Errorf("the client closed its connection: %w", context.Canceled)

func (f *fastH1) dial(ctx context.Context, addr string) (*h1Conn, error) {
	c, err := f.route.dialTLS(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == "h2" {
		f.h2.Store(true)
		_ = tc.Close()
		return nil, errFallback
	}
	return &h1Conn{tc: tc, br: bufio.NewReaderSize(tc, 4096), bw: bufio.NewWriterSize(tc, 4096), state: &cs}, nil
}

// readResponse reads the response to req from pc, skipping
// informational answers (103 Early Hints). Its body still reads from pc:
// see attach.
func (f *fastH1) readResponse(pc *h1Conn, req *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		_ = pc.tc.SetReadDeadline(time.Time{})
		resp.TLS = pc.state
		return resp, nil
	}
}

// attach gives pc back to the pool at addr once resp's body has been read,
// unless either side asked to close it.
func (f *fastH1) attach(resp *http.Response, pc *h1Conn, addr string, reusable bool) {
	reusable = reusable && !resp.Close
	if resp.Body == http.NoBody || resp.Body == nil {
		if reusable {
			f.put(addr, pc)
		} else {
			_ = pc.tc.Close()
		}
		return
	}
	resp.Body = &h1Body{f: f, pc: pc, body: resp.Body, key: addr, reusable: reusable}
}

// noStop stands in for context.AfterFunc's stop when there is nothing to
// stop.
func noStop() bool { return true }

// readError explains a failure to read the response head: the
// response-header deadline, the client going away, or the connection's
// own error.
func readError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return errResponseHeaderTimeout
	}
	return err
}

// errResponseHeaderTimeout reads as a timeout to classifyUpstreamError.
var errResponseHeaderTimeout = &timeoutError{"timeout awaiting response headers"}

// timeoutError is a timeout mtlsproxy detects itself; it is a net.Error
// whose Timeout is true, like the standard library's.
type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// h1Body returns the connection to the pool once the body has been read
// to the end; a body closed early closes the connection instead of
// draining what might be an endless stream.
type h1Body struct {
	f        *fastH1
	pc       *h1Conn
	body     io.ReadCloser
	key      string
	reusable bool
	done     bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.done = true
		if b.reusable {
			b.f.put(b.key, b.pc)
		} else {
			_ = b.pc.tc.Close()
		}
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.done = true
		_ = b.pc.tc.Close()
	}
	return nil
}

func (f *fastH1) get(key string) (*h1Conn, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	conns := f.idle[key]
	for len(conns) > 0 {
		pc := conns[len(conns)-1]
		conns = conns[:len(conns)-1]
		f.idle[key] = conns
		if time.Since(pc.idleAt) > f.route.timeouts.IdleConn {
			_ = pc.tc.Close()
			continue
		}
		return pc, true
	}
	return nil, false
}

func (f *fastH1) put(key string, pc *h1Conn) {
	if pc.br.Buffered() > 0 {
		_ = pc.tc.Close() // the upstream sent more than one response
		return
	}
	pc.idleAt = time.Now()
	f.mu.Lock()
	if f.closed || len(f.idle[key]) >= f.route.maxIdle {
		f.mu.Unlock()
		_ = pc.tc.Close()
		return
	}
	conns := append(f.idle[key], pc)
	// The pool is used last-in first-out, so connections at the front can
	// sit unused after a burst: close those idle for too long.
	var stale []*h1Conn
	for len(conns) > 1 && pc.idleAt.Sub(conns[0].idleAt) > f.route.timeouts.IdleConn {
		stale = append(stale, conns[0])
		conns = conns[1:]
	}
	f.idle[key] = conns
	if f.sweep == nil {
		f.sweep = time.AfterFunc(f.route.timeouts.IdleConn, f.sweepIdle)
	}
	f.mu.Unlock()
	for _, c := range stale {
		_ = c.tc.Close()
	}
}

// sweepIdle closes every connection idle past the timeout, and re-arms
// itself while connections remain.
func (f *fastH1) sweepIdle() {
	now := time.Now()
	var stale []*h1Conn
	f.mu.Lock()
	for key, conns := range f.idle {
		keep := conns[:0]
		for _, c := range conns {
			if now.Sub(c.idleAt) > f.route.timeouts.IdleConn {
				stale = append(stale, c)
			} else {
				keep = append(keep, c)
			}
		}
		if len(keep) == 0 {
			delete(f.idle, key)
		} else {
			f.idle[key] = keep
		}
	}
	f.sweep = nil
	if len(f.idle) > 0 && !f.closed {
		f.sweep = time.AfterFunc(f.route.timeouts.IdleConn, f.sweepIdle)
	}
	f.mu.Unlock()
	for _, c := range stale {
		_ = c.tc.Close()
	}
}

// closeIdle closes every idle connection; with final set, connections
// that come back later are closed too.
func (f *fastH1) closeIdle(final bool) {
	f.mu.Lock()
	idle := f.idle
	f.idle = map[string][]*h1Conn{}
	if final {
		f.closed = true
	}
	f.mu.Unlock()
	for _, conns := range idle {
		for _, pc := range conns {
			_ = pc.tc.Close()
		}
	}
}

// writeRequestHead writes a bodiless request's head the way
// http.Request.Write would (including its default User-Agent), without
// its allocations. The header names and values come from Go's server,
// which has already refused invalid ones.
func writeRequestHead(bw *bufio.Writer, req *http.Request) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI()) // escapes; no allocation for a plain path
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if _, ok := req.Header["User-Agent"]; !ok {
		bw.WriteString("User-Agent: Go-http-client/1.1\r\n")
	}
	for k, vs := range req.Header {
		if k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" || k == "Connection" {
			continue
		}
		for _, v := range vs {
			if k == "User-Agent" && v == "" {
				continue // an explicitly empty User-Agent means: send none
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}
