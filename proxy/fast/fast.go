// Package fast is mtlsproxy's optional HTTP/1.1 upstream accelerator: a
// client for bodiless GET and HEAD requests that keeps upstream
// connections and does each exchange on the caller's goroutine.
//
// http.Transport spends two goroutines per connection, several channel
// hand-offs and a cancellable context per request; for a proxy whose
// requests are mostly small GETs that is much of its CPU. This client
// writes requests with net/http's own writer (Request.Write) and reads
// responses with its own reader (http.ReadResponse), so nothing here
// parses or frames HTTP by hand: what it sends and how it reads an answer
// are net/http's. What it adds is connection reuse, and reuse is where a
// pool can hand one exchange's bytes to another, so a connection goes
// back to the pool only when its response was read to the end of its
// framing with nothing left over, and is taken out again only after a
// check that nothing has arrived on it since (no unsolicited bytes, no
// close). Transport does the latter with a goroutine reading every idle
// connection; this client looks when it takes one (see alive).
package fast

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrHTTP2 means the request was not sent and should go to a transport
// that speaks HTTP/2: the upstream chose HTTP/2 by ALPN (this client
// sends nothing more then), or the first connection, which learns the
// protocol, is still being made.
var ErrHTTP2 = errors.New("fast: upstream chose HTTP/2, or its protocol is not known yet")

// Client sends bodiless requests over persistent HTTP/1.1 connections.
type Client struct {
	// Dial connects to addr (host:port) and completes the TLS handshake.
	// Required.
	Dial func(ctx context.Context, addr string) (*tls.Conn, error)
	// ResponseHeaderTimeout bounds writing the request and reading the
	// response head. If zero, 60s.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout is how long an idle connection is kept. If zero, 90s.
	IdleTimeout time.Duration
	// MaxIdlePerHost bounds the idle connections per address. If zero,
	// 512.
	MaxIdlePerHost int

	h2 atomic.Bool
	// proto is what the first connection learned: protoUnknown until a
	// dial completes, protoLearning while one is in progress (so that a
	// burst of first requests does not dial a connection each, all of
	// them wasted if the upstream speaks HTTP/2), then protoH1.
	proto atomic.Int32

	mu     sync.Mutex
	idle   map[string][]*conn // most recently used last
	closed bool
	sweep  *time.Timer
}

// conn is one upstream connection.
type conn struct {
	tc     *tls.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	state  *tls.ConnectionState
	idleAt time.Time
}

const (
	protoUnknown int32 = iota
	protoLearning
	protoH1
)

// Eligible reports whether the client takes req: GET or HEAD, no body,
// no Expect, no upgrade.
func Eligible(req *http.Request) bool {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return false
	}
	if req.ContentLength != 0 || (req.Body != nil && req.Body != http.NoBody) {
		return false
	}
	if _, ok := req.Header["Expect"]; ok {
		return false
	}
	_, upgrade := req.Header["Upgrade"]
	return !upgrade
}

// Usable reports whether the client can send requests: the platform can
// check idle connections, and no upstream has chosen HTTP/2.
func (c *Client) Usable() bool { return canPeek && !c.h2.Load() }

// RoundTrip sends req (which must be Eligible, with an https URL) to addr
// (host:port, the pool key). reused says whether the answer came over a
// connection used before. A reused connection that fails before any byte
// of the answer arrived (the upstream closed it as the request went out)
// is retried once on a new one: the request is bodiless and idempotent.
func (c *Client) RoundTrip(req *http.Request, addr string) (resp *http.Response, reused bool, err error) {
	if c.h2.Load() {
		return nil, false, ErrHTTP2
	}
	learning := false
	if p := c.proto.Load(); p != protoH1 {
		if !c.proto.CompareAndSwap(protoUnknown, protoLearning) {
			return nil, false, ErrHTTP2 // another request is learning it
		}
		learning = true
		defer func() {
			if c.proto.Load() == protoLearning {
				c.proto.Store(protoUnknown) // the dial failed: try again later
			}
		}()
	}
	for attempt := 0; ; attempt++ {
		pc := c.get(addr)
		reused = pc != nil
		if pc == nil {
			tc, err := c.Dial(req.Context(), addr)
			if err != nil {
				return nil, false, err
			}
			if learning && tc.ConnectionState().NegotiatedProtocol != "h2" {
				c.proto.Store(protoH1)
			}
			if tc.ConnectionState().NegotiatedProtocol == "h2" {
				// One handshake is spent learning it, once per client
				// (a route's, until its next Refresh).
				c.h2.Store(true)
				_ = tc.Close()
				return nil, false, ErrHTTP2
			}
			st := tc.ConnectionState()
			pc = &conn{tc: tc, br: bufio.NewReader(tc), bw: bufio.NewWriter(tc), state: &st}
		}
		resp, got, err := c.exchange(pc, req, addr)
		if err == nil {
			return resp, reused, nil
		}
		_ = pc.tc.Close()
		if reused && !got && attempt == 0 && req.Context().Err() == nil && closedByPeer(err) {
			continue
		}
		return nil, reused, err
	}
}

// closedByPeer reports whether err is the upstream closing or resetting
// the connection (as it does to an idle one it no longer wants), not a
// timeout or anything else that a retry would repeat.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// exchange writes req on pc and reads the response head; got says
// whether any byte of an answer arrived.
func (c *Client) exchange(pc *conn, req *http.Request, addr string) (_ *http.Response, got bool, _ error) {
	timeout := c.ResponseHeaderTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx := req.Context()
	// The deadline first: a cancellation that has already happened then
	// overrides it, instead of the other way round.
	_ = pc.tc.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() { _ = pc.tc.SetDeadline(aLongTimeAgo) })
	if err := req.Write(pc.bw); err != nil {
		stop()
		return nil, false, c.ctxErr(ctx, err)
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, false, c.ctxErr(ctx, err)
	}
	for {
		if _, err := pc.br.Peek(1); err != nil {
			stop()
			return nil, false, c.ctxErr(ctx, err)
		}
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			stop()
			return nil, true, c.ctxErr(ctx, err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			stop()
			return nil, true, errors.New("fast: upstream switched protocols unasked")
		}
		if resp.StatusCode >= 200 {
			if !stop() {
				// The request was cancelled as the head arrived; the
				// deadline may be spoiled either way.
				return nil, true, c.ctxErr(ctx, context.Canceled)
			}
			_ = pc.tc.SetDeadline(time.Time{}) // bodies have no time limit
			resp.TLS = pc.state
			b := &body{rc: resp.Body, c: c, pc: pc, addr: addr, resp: resp, cancel: context.AfterFunc(ctx, func() { _ = pc.tc.SetDeadline(aLongTimeAgo) })}
			if resp.Body == http.NoBody {
				// Nothing more to read (HEAD, 204, 304, an empty body):
				// the connection is free now.
				b.finish(true)
				return resp, true, nil
			}
			resp.Body = b
			return resp, true, nil
		}
		// 1xx informational answers are not passed on (as the
		// goproxy path does not pass them); read the next one.
		_ = resp.Body.Close()
	}
}

// ctxErr prefers the request's cancellation over the network error it
// caused.
func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return &timeoutError{"timeout awaiting response headers"}
	}
	return err
}

type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// body is a response body; reading it to the end gives the connection
// back to the pool if nothing follows the response on it.
type body struct {
	rc     io.ReadCloser
	c      *Client
	pc     *conn
	addr   string
	resp   *http.Response
	cancel func() bool
	done   bool
}

func (b *body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err != nil {
		b.finish(err == io.EOF)
	}
	return n, err
}

// Close ends the body; a body not read to its end closes the connection
// first, so that net/http's body does not drain the rest.
func (b *body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return b.rc.Close()
}

func (b *body) finish(atEOF bool) {
	b.done = true
	stopped := b.cancel()
	if atEOF && stopped && !b.resp.Close && b.resp.ProtoAtLeast(1, 1) && b.pc.br.Buffered() == 0 {
		b.c.put(b.addr, b.pc)
		return
	}
	_ = b.pc.tc.Close()
}

// get takes the most recently used idle connection to addr that is
// still good, closing the ones that are not.
func (c *Client) get(addr string) *conn {
	for {
		c.mu.Lock()
		list := c.idle[addr]
		if len(list) == 0 {
			c.mu.Unlock()
			return nil
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		c.idle[addr] = list[:len(list)-1]
		c.mu.Unlock()
		if time.Since(pc.idleAt) < c.idleTimeout() && alive(pc) {
			return pc
		}
		_ = pc.tc.Close()
	}
}

// alive reports whether nothing has arrived on an idle connection since
// its last response: not a byte (an unsolicited or late answer, the tail
// of a response that over-ran its framing) and not a close. It looks in
// the TLS connection's own buffers (a record already read holds more
// than the response), then in the socket's.
func alive(pc *conn) bool {
	// The socket first: its check needs the deadline a pooled connection
	// has (none). Then, with the deadline past, a read returns what the
	// TLS connection holds already, and does not touch the socket. The
	// deadline stays past: the exchange that follows sets its own.
	if !socketQuiet(pc.tc.NetConn()) {
		return false
	}
	_ = pc.tc.SetReadDeadline(aLongTimeAgo)
	_, err := pc.br.Peek(1)
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout() // else data or an error
}

func (c *Client) idleTimeout() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return 90 * time.Second
}

func (c *Client) put(addr string, pc *conn) {
	max := c.MaxIdlePerHost
	if max <= 0 {
		max = 512
	}
	pc.idleAt = time.Now()
	c.mu.Lock()
	if c.closed || len(c.idle[addr]) >= max {
		c.mu.Unlock()
		_ = pc.tc.Close()
		return
	}
	if c.idle == nil {
		c.idle = map[string][]*conn{}
	}
	c.idle[addr] = append(c.idle[addr], pc)
	if c.sweep == nil {
		c.sweep = time.AfterFunc(c.idleTimeout(), c.sweepIdle)
	}
	c.mu.Unlock()
}

// sweepIdle closes connections idle past the timeout once traffic has
// stopped (while it flows, get closes them).
func (c *Client) sweepIdle() {
	limit := c.idleTimeout()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep = nil
	any := false
	for addr, list := range c.idle {
		kept := list[:0]
		for _, pc := range list {
			if time.Since(pc.idleAt) >= limit {
				_ = pc.tc.Close()
			} else {
				kept = append(kept, pc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(c.idle, addr)
		} else {
			c.idle[addr] = kept
			any = true
		}
	}
	if any && !c.closed {
		c.sweep = time.AfterFunc(limit, c.sweepIdle)
	}
}

// CloseIdleConnections closes the idle connections; with final, the
// client keeps none from then on (connections in use close when their
// response ends).
func (c *Client) CloseIdleConnections(final bool) {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	if final {
		c.closed = true
	}
	c.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			_ = pc.tc.Close()
		}
	}
}
