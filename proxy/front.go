package proxy

// The front is the HTTP/1.1 accelerator on the client side (Server.Front).
//
// Go's HTTP server spends more per request than the forwarding itself: a
// read ahead on the connection after every request (a goroutine, and a
// read that finds nothing), a context, a header map, a response writer,
// and goproxy's own per-request state. So the front reads each
// connection's requests itself and serves the common, simple ones on the
// connection's goroutine: an HTTP/1.1 GET or HEAD without a body, with a
// head that fits in 4 KiB and that package h1 reads exactly as net/http
// would. Everything the proxy decides and sends is the reference
// pipeline's: the same admission, the same decide, the same upstream
// request (built as an *http.Request and sent by the route), the same
// error rendering and access line.
//
// The first request the front does not take (a body, CONNECT, an
// upgrade, HTTP/1.0, anything unusual in its head, any refusal) hands the
// whole connection, with the bytes already read, to Go's server running
// the Proxy through goproxy, which keeps the connection from then on.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy/internal/h1"
	"go.uber.org/zap"
)

// frontBufSize bounds a request head the front takes itself; a longer
// one is handed over.
const frontBufSize = 4 << 10

const (
	// stateIdle: waiting for the first byte of a request.
	stateIdle int32 = iota
	// stateHead: a request head is arriving. Like idle, Shutdown closes
	// the connection then (as Go's server does before a whole head).
	stateHead
	// stateActive: a request is being served; Shutdown lets it finish.
	stateActive
	stateClosing
)

// clientCheckInterval is how often a request waiting for its upstream
// checks that its client is still there (as Go's server notices a client
// that goes away through its read ahead).
const clientCheckInterval = 100 * time.Millisecond

// frontServer is a Server's front: its connections and its hand-over to
// Go's server.
type frontServer struct {
	s        *Server
	mu       sync.Mutex
	handoff  *handoffListener
	conns    map[*frontConn]struct{}
	lns      map[net.Listener]struct{}
	shutdown atomic.Bool
	active   sync.WaitGroup
	// handoffs counts connections handed to Go's server (for tests).
	handoffs  atomic.Int64
	dateCache atomic.Pointer[cachedDate]
}

// serve accepts connections on ln until the server stops.
func (f *frontServer) serve(ln net.Listener) error {
	f.mu.Lock()
	if f.shutdown.Load() {
		f.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	if f.handoff == nil {
		f.conns = map[*frontConn]struct{}{}
		f.lns = map[net.Listener]struct{}{}
		f.handoff = &handoffListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
		go func() { _ = f.s.HTTP.Serve(f.handoff) }()
	}
	f.lns[ln] = struct{}{}
	f.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.shutdown.Load() {
				return ErrServerClosed
			}
			// Out of file descriptors and the like: wait and go on, as
			// Go's server does.
			if ne, ok := err.(net.Error); ok && ne.Temporary() { //nolint:staticcheck // what net/http checks too
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				f.s.Proxy.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		fc := frontConns.Get().(*frontConn)
		fc.f, fc.w = f, &teWatch{Conn: c}
		f.mu.Lock()
		if f.shutdown.Load() {
			f.mu.Unlock()
			_ = c.Close()
			frontConns.Put(fc)
			return ErrServerClosed
		}
		f.conns[fc] = struct{}{}
		f.active.Add(1)
		f.mu.Unlock()
		if m := f.s.Metrics; m != nil {
			m.openConns.Inc()
		}
		go fc.serve()
	}
}

// stop marks the front as shutting down, closes its listeners and wakes
// its idle connections so that they close.
func (f *frontServer) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdown.Store(true)
	for ln := range f.lns {
		_ = ln.Close()
	}
	for fc := range f.conns {
		if fc.state.CompareAndSwap(stateIdle, stateClosing) || fc.state.CompareAndSwap(stateHead, stateClosing) {
			_ = fc.w.SetReadDeadline(aLongTimeAgo)
		}
	}
	if f.handoff != nil {
		f.handoff.close()
	}
}

// wait waits for the connections the front still serves.
func (f *frontServer) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		f.active.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeAll closes every connection the front serves.
func (f *frontServer) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		_ = fc.w.Close()
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// handoffListener gives Go's server the connections the front hands over.
type handoffListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error { l.close(); return nil }

func (l *handoffListener) close() { l.once.Do(func() { close(l.done) }) }

func (l *handoffListener) Addr() net.Addr { return l.addr }

// deliver passes c to Go's server, or closes it if that has stopped.
func (l *handoffListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// replayConn is a handed-over connection: it first returns the bytes the
// front had already read.
type replayConn struct {
	*teWatch
	buf []byte
	// headBy, if set, is when the head that was arriving at the hand-over
	// must be complete: the server's first read deadline does not go past
	// it, so that the hand-over does not restart ReadHeaderTimeout.
	headBy time.Time
}

func (c *replayConn) SetReadDeadline(t time.Time) error {
	if !c.headBy.IsZero() {
		if t.IsZero() || t.After(c.headBy) {
			t = c.headBy
		}
		c.headBy = time.Time{}
	}
	return c.teWatch.SetReadDeadline(t)
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.teWatch.Read(p)
}

// frontConn is one client connection the front serves.
type frontConn struct {
	f      *frontServer
	w      *teWatch
	br     *bufio.Reader
	bw     *bufio.Writer
	bwSet  bool
	remote string
	state  atomic.Int32
	req    h1.Request
	// head is the request head being served, copied out of br.
	head []byte
	// headBy is when the head being read must be complete.
	headBy time.Time
	// idleArmed is when the idle deadline now set was armed (zero:
	// another deadline is set).
	idleArmed time.Time
	// checked is set once alive has changed the read deadline.
	checked bool
}

// frontConns are reused: each holds two 4 KiB buffers and room for a
// head's headers, which a connection per request would otherwise
// allocate every time.
var frontConns = sync.Pool{New: func() any {
	return &frontConn{br: bufio.NewReaderSize(nil, frontBufSize), bw: bufio.NewWriterSize(nil, frontBufSize)}
}}

func (fc *frontConn) release() {
	fc.br.Reset(nil)
	fc.bw.Reset(nil)
	fc.bwSet = false
	fc.f, fc.w, fc.remote = nil, nil, ""
	fc.state.Store(stateIdle)
	fc.req = h1.Request{}
	fc.head, fc.headBy, fc.idleArmed, fc.checked = fc.head[:0], time.Time{}, time.Time{}, false
	frontConns.Put(fc)
}

func (fc *frontConn) serve() {
	f := fc.f
	handed := false
	defer func() {
		if !handed {
			_ = fc.w.Close()
			if m := f.s.Metrics; m != nil {
				m.openConns.Dec()
			}
		}
		f.mu.Lock()
		delete(f.conns, fc)
		f.mu.Unlock()
		f.active.Done()
		fc.release()
	}()
	fc.remote = fc.w.RemoteAddr().String()
	fc.br.Reset(fc.w)
	hdrTimeout := f.s.HTTP.ReadHeaderTimeout
	idleTimeout := f.s.HTTP.IdleTimeout
	if idleTimeout == 0 {
		idleTimeout = f.s.HTTP.ReadTimeout // as Go's server
	}
	for first := true; ; first = false {
		fc.headBy = time.Time{}
		if t := idleTimeout; !first && t > 0 {
			// Re-armed at most once a second: a busy connection would
			// otherwise pay for a timer update per request.
			now := time.Now()
			if now.Sub(fc.idleArmed) > min(time.Second, t/2) {
				_ = fc.w.SetReadDeadline(now.Add(t))
				fc.idleArmed = now
			}
		} else if first && hdrTimeout > 0 {
			fc.headBy = time.Now().Add(hdrTimeout)
			_ = fc.w.SetReadDeadline(fc.headBy)
		} else if fc.checked {
			_ = fc.w.SetReadDeadline(time.Time{})
		}
		fc.checked = false
		if fc.state.Load() == stateClosing {
			return
		}
		if _, err := fc.br.Peek(1); err != nil {
			return
		}
		if !fc.state.CompareAndSwap(stateIdle, stateHead) {
			return // shutting down
		}
		n := fc.bufferedHead()
		if n < 0 {
			// The head is still arriving: give it ReadHeaderTimeout.
			if !first && hdrTimeout > 0 {
				fc.headBy = time.Now().Add(hdrTimeout)
				_ = fc.w.SetReadDeadline(fc.headBy)
				fc.idleArmed = time.Time{}
			}
			var err error
			if n, err = readHead(fc.br); err != nil {
				return // the client went away, was too slow, or Shutdown closed it: as Go's server, just close
			}
		}
		if !fc.state.CompareAndSwap(stateHead, stateActive) {
			return // shutting down
		}
		keep, take := fc.handle(n)
		if !take {
			handed = true
			fc.handOver()
			return
		}
		fc.state.Store(stateIdle)
		if !keep || f.shutdown.Load() {
			return
		}
	}
}

func (fc *frontConn) bufferedHead() int {
	buf, _ := fc.br.Peek(fc.br.Buffered())
	return h1.HeadLen(buf)
}

// readHead waits until a whole head is buffered in br and returns its
// length, or 0 if it is left to Go's reader (too long, bare LFs).
func readHead(br *bufio.Reader) (int, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if n := h1.HeadLen(buf); n >= 0 {
			return n, nil
		}
		if len(buf) == br.Size() {
			return 0, nil
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && !isTimeout(err) && errors.Is(err, io.EOF) {
				return 0, nil // a partial head: Go's server says what is wrong with it
			}
			return 0, err
		}
	}
}

// handOver passes the connection and what was read of it to Go's server.
func (fc *frontConn) handOver() {
	f := fc.f
	f.handoffs.Add(1)
	if m := f.s.Metrics; m != nil {
		m.openConns.Dec() // the server's ConnState counts it from here
	}
	buffered, _ := fc.br.Peek(fc.br.Buffered())
	f.handoff.deliver(&replayConn{teWatch: fc.w, buf: bytes.Clone(buffered), headBy: fc.headBy})
}

// handle serves the request whose head is the first n buffered bytes.
// take is false if the request is left to Go's server (nothing has been
// read or written for it yet); keep is false if the connection must
// close.
func (fc *frontConn) handle(n int) (keep, take bool) {
	if n == 0 {
		return false, false
	}
	p := fc.f.s.Proxy
	var ex *exchange
	defer func() {
		// As on Go's path: 500, a stack in the log, an access line, and
		// the process goes on.
		if v := recover(); v != nil {
			if ex == nil {
				ex = &exchange{start: time.Now()}
			}
			perr := p.panicked(v, ex, fc.req.Method)
			ex.status = perr.status
			if !ex.wrote {
				_ = fc.writeError(perr, true)
			}
			p.logExchange(ex, fc.req.Method, "", fc.remote, fc.req.Path)
			keep, take = false, true
		}
	}()
	// The head is parsed from a copy, so that the read buffer is free to
	// watch the client while the upstream thinks.
	head, _ := fc.br.Peek(n)
	fc.head = append(fc.head[:0], head...)
	r := &fc.req
	if !r.Parse(fc.head, h1.Options{Gateway: p.gwTarget.host != "", Strip: p.strip}) || (r.Via && p.via != "") {
		return false, false
	}
	// An exchange of its own per request: http.Transport may still use
	// its trace from a dial it started for this request after the
	// request is done.
	ex = &exchange{start: time.Now(), gateway: r.Gateway, watch: fc.w}
	var tg target
	e := entryForward
	if r.Gateway {
		tg, e = p.gwTarget, entryGateway
	} else {
		host, port, _ := h1.Authority(r.Authority)
		tg = newTarget(NormalizeHost(string(host)), string(port), true)
	}
	if len(p.clients) > 0 {
		if len(r.Creds) == 0 {
			return false, false // 407 from Go's path
		}
		name, ok := p.clients.authenticateValue(string(r.Creds))
		if !ok {
			return false, false
		}
		ex.client = name
	}
	route, perr := p.decide(ex, e, tg.host, tg.port)
	if perr != nil {
		return false, false // Go's path answers the refusal
	}
	ex.closeAfter = r.Close || fc.w.seen.Load()
	if ce := p.log.Check(zap.DebugLevel, "forwarding"); ce != nil {
		ce.Write(zap.String("method", r.Method), zap.String("upstream", tg.hostHeader), zap.ByteString("path", r.Path),
			zap.String("route", route.name), zap.Bool("gateway", ex.gateway))
	}
	_, _ = fc.br.Discard(n)
	keep = fc.forward(route, r, &tg, ex)
	p.logExchange(ex, r.Method, "", fc.remote, r.Path)
	return keep, true
}

// target is where an absolute-form authority (or the gateway upstream)
// leads.
type target struct {
	host, port string // normalized; port 80 (or none) already mapped to 443
	hostport   string // host:port, the pool key
	hostHeader string // the Host header sent upstream
}

// newTarget is host:port as a target; an empty port is 443, and so is
// port 80 of an http:// authority (fromHTTP).
func newTarget(host, port string, fromHTTP bool) target {
	if port == "" || (fromHTTP && port == "80") {
		port = "443"
	}
	hp := net.JoinHostPort(host, port)
	return target{host: host, port: port, hostport: hp, hostHeader: stripDefaultPort(hp, "443")}
}

// gatewayTarget is where origin-form requests go when the front may take
// them itself: an upstream URL without a base path or query.
func gatewayTarget(u *url.URL) target {
	if u == nil || (u.Path != "" && u.Path != "/") || u.RawPath != "" || u.RawQuery != "" || u.User != nil {
		return target{}
	}
	return newTarget(NormalizeHost(u.Hostname()), u.Port(), false)
}

// upstreamRequest builds the request the reference path would send:
// canonical header names, the same headers removed and added.
func upstreamRequest(r *h1.Request, tg *target, via string) (*http.Request, error) {
	u, err := url.ParseRequestURI(r.URIPre + string(r.URI))
	if err != nil {
		return nil, err
	}
	u.Scheme, u.Host = "https", tg.hostHeader
	h := r.Header()
	if via != "" {
		h.Set("Via", via)
	}
	return &http.Request{Method: r.Method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: tg.hostHeader}, nil
}

// forward sends the request over the route and copies the answer to the
// client; it reports whether the connection is still usable.
func (fc *frontConn) forward(route *Route, r *h1.Request, tg *target, ex *exchange) (keep bool) {
	p := fc.f.s.Proxy
	req, err := upstreamRequest(r, tg, p.via)
	if err != nil {
		perr := badRequest("bad request target: %v", err)
		ex.fail(perr, nil)
		ex.status = perr.status
		_ = fc.writeError(perr, true)
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req = req.WithContext(ctx)
	// While the upstream thinks, check now and then that the client is
	// still there, as Go's server's read ahead would.
	var mu sync.Mutex
	waiting := true
	var check *time.Timer
	mu.Lock() // the callback reads check
	check = time.AfterFunc(clientCheckInterval, func() {
		mu.Lock()
		defer mu.Unlock()
		if !waiting {
			return
		}
		if !fc.alive() {
			cancel()
			return
		}
		check.Reset(clientCheckInterval)
	})
	mu.Unlock()
	// The watch goes on while the body is copied: a client that leaves
	// during a long poll or a slow body cancels the upstream request, as
	// on Go's path. Only the timer's goroutine reads from the client
	// meanwhile.
	defer func() {
		mu.Lock()
		waiting = false
		check.Stop()
		mu.Unlock()
	}()
	resp, err, perr := fc.roundTrip(route, req, ex)
	closeAfter := ex.closeAfter || fc.f.shutdown.Load()
	if err != nil {
		perr = classifyUpstreamError(err, ex.host)
		ex.fail(perr, err)
	}
	if perr != nil {
		ex.status = perr.status
		return fc.writeError(perr, closeAfter) && !closeAfter
	}
	return fc.writeResponse(resp, ex, r.Method == http.MethodHead, closeAfter, p.via) && !closeAfter
}

// roundTrip sends req over the route; a panic is answered as on Go's
// path (perr).
func (fc *frontConn) roundTrip(route *Route, req *http.Request, ex *exchange) (resp *http.Response, err error, perr *proxyError) {
	defer func() {
		if v := recover(); v != nil {
			resp, err, perr = nil, nil, fc.f.s.Proxy.panicked(v, ex, req.Method)
		}
	}()
	fc.f.s.Proxy.hook("roundtrip")
	resp, err = route.send(req, ex)
	return resp, err, nil
}

// alive reports whether the client is still connected while its request
// waits for the upstream: a read that waits at most a millisecond tells
// a closed connection from a quiet one. Bytes it reads (a pipelined
// request) stay buffered for later.
func (fc *frontConn) alive() bool {
	if fc.br.Buffered() > 0 {
		return true
	}
	fc.idleArmed, fc.checked = time.Time{}, true
	_ = fc.w.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := fc.br.Peek(1)
	return err == nil || isTimeout(err)
}
