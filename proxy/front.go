package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Server serves a Proxy on a plain-HTTP listener.
//
// Go's HTTP server spends more per request than the forwarding itself: a
// goroutine and a read syscall for the background read after every
// request, a context, a header map and a response writer. So Server reads
// each connection's requests itself and answers the common, simple ones
// on the connection's goroutine: an HTTP/1.1 GET or HEAD without a body,
// with a clean head that fits in 4 KiB. To an upstream that speaks
// HTTP/1.1 the request is written from the bytes received, with the same
// changes the goproxy path makes (hop-by-hop and stripped headers
// removed, Via added); to one that chose HTTP/2 it goes through the
// route's http.Transport.
//
// The first request Server does not take itself (a body, CONNECT, an
// upgrade, HTTP/1.0, anything unusual in the head, any error the proxy
// answers itself) hands the whole connection, with the bytes already
// read, to HTTP: Go's server running the Proxy through goproxy, which
// keeps the connection from then on. Both paths route, authenticate, log
// and count the same way.
type Server struct {
	// Proxy routes and logs the requests Server takes itself.
	Proxy *Proxy
	// HTTP serves the connections handed over. Its Handler serves the
	// same Proxy. Its ReadHeaderTimeout and IdleTimeout apply to the
	// connections Server keeps, too; ConnState sees only the ones handed
	// over. If its ConnContext is nil, Serve sets it to WithFramingConn,
	// so that the Proxy refuses requests with ambiguous framing.
	HTTP *http.Server
	// Metrics counts the open connections Server keeps. It may be nil.
	Metrics *Metrics

	mu        sync.Mutex
	handoff   *handoffListener
	conns     map[*frontConn]struct{}
	listeners map[net.Listener]struct{}
	shutdown  atomic.Bool
	active    sync.WaitGroup
	// handoffs counts connections handed to HTTP.
	handoffs atomic.Int64

	// Goroutines done with a connection wait on work for the next one,
	// up to maxIdleWorkers of them, until workDone is closed. A new
	// goroutine starts with a small stack and grows it on every
	// connection; one that has served a connection already has the
	// stack serving needs.
	work        chan *frontConn
	workDone    chan struct{}
	idleWorkers atomic.Int32
	// workers counts the goroutines started to serve connections.
	workers atomic.Int64
	// idleWait, if set (in nanoseconds), replaces workerIdle; for tests.
	idleWait atomic.Int64
}

// maxIdleWorkers bounds the goroutines kept waiting for connections.
// Their stacks shrink at garbage collection when they stay idle.
const maxIdleWorkers = 256

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// Serve accepts connections on ln until Shutdown or Close, and returns
// ErrServerClosed then. On Linux, Serve accepts from a *net.TCPListener's
// socket itself (see rawListener): only Shutdown or Close stop it then,
// closing ln alone does not.
func (s *Server) Serve(ln net.Listener) error {
	ln = fastListener(ln)
	s.mu.Lock()
	if s.shutdown.Load() {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	if s.handoff == nil {
		if s.HTTP.ConnContext == nil {
			s.HTTP.ConnContext = WithFramingConn
		}
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*frontConn]struct{}{}
		s.handoff = &handoffListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
		s.work, s.workDone = make(chan *frontConn), make(chan struct{})
		go func() { _ = s.HTTP.Serve(s.handoff) }()
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			// Out of file descriptors and the like: wait and go on, as
			// Go's server does.
			if ne, ok := err.(net.Error); ok && ne.Temporary() { //nolint:staticcheck // what net/http checks too
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.Proxy.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		fc := frontConns.Get().(*frontConn)
		fc.s, fc.c = s, c
		s.mu.Lock()
		if s.shutdown.Load() {
			s.mu.Unlock()
			_ = c.Close()
			return ErrServerClosed
		}
		s.conns[fc] = struct{}{}
		s.active.Add(1)
		s.mu.Unlock()
		if s.Metrics != nil {
			s.Metrics.openConns.Inc()
		}
		select {
		case s.work <- fc:
		default:
			s.workers.Add(1)
			go s.worker(fc)
		}
	}
}

// worker serves fc, then each connection Serve hands it, until it has
// waited workerIdle for one, there are more idle workers than
// maxIdleWorkers, or the server stops.
func (s *Server) worker(fc *frontConn) {
	var idle *time.Timer
	for {
		fc.serve()
		if s.idleWorkers.Add(1) > maxIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		wait := workerIdle
		if d := s.idleWait.Load(); d > 0 {
			wait = time.Duration(d)
		}
		if idle == nil {
			idle = time.NewTimer(wait)
		} else {
			idle.Reset(wait)
		}
		select {
		case fc = <-s.work:
			s.idleWorkers.Add(-1)
		case <-idle.C:
			s.idleWorkers.Add(-1)
			return
		case <-s.workDone:
			s.idleWorkers.Add(-1)
			return
		}
	}
}

// workerIdle is how long a goroutine done with a connection waits for the
// next one. Under a steady stream of connections it never waits that
// long; after a burst, the goroutines left over leave.
const workerIdle = time.Second

// Shutdown stops accepting, closes idle connections, lets requests in
// progress finish, and waits for them (and for HTTP's Shutdown) until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	errc := make(chan error, 1)
	go func() { errc <- s.httpShutdown(ctx) }()
	done := make(chan struct{})
	go func() {
		s.active.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-errc
}

func (s *Server) httpShutdown(ctx context.Context) error {
	s.mu.Lock()
	started := s.handoff != nil
	s.mu.Unlock()
	if !started {
		return nil
	}
	return s.HTTP.Shutdown(ctx)
}

// stop marks the server as shutting down, closes its listeners and wakes
// idle connections so that they close.
func (s *Server) stop() {
	s.mu.Lock()
	s.shutdown.Store(true)
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for fc := range s.conns {
		if fc.state.CompareAndSwap(stateIdle, stateClosing) {
			_ = fc.c.SetReadDeadline(time.Unix(1, 0))
		}
	}
	if s.handoff != nil {
		s.handoff.close()
		select {
		case <-s.workDone:
		default:
			close(s.workDone)
		}
	}
	s.mu.Unlock()
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	s.stop()
	s.mu.Lock()
	for fc := range s.conns {
		_ = fc.c.Close()
	}
	started := s.handoff != nil
	s.mu.Unlock()
	if started {
		return s.HTTP.Close()
	}
	return nil
}

// handoffListener gives HTTP the connections Server hands over.
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

// deliver passes c to HTTP, or closes it if HTTP has stopped.
func (l *handoffListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// replayConn is a handed-over connection: it first returns the bytes
// Server had already read.
type replayConn struct {
	net.Conn
	buf []byte
	// headBy, if set, is when the head that was arriving at the handover
	// must be complete: the server's first read deadline does not go past
	// it, so that the handover does not restart ReadHeaderTimeout.
	headBy time.Time
}

func (c *replayConn) SetReadDeadline(t time.Time) error {
	if !c.headBy.IsZero() {
		if t.IsZero() || t.After(c.headBy) {
			t = c.headBy
		}
		c.headBy = time.Time{}
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes, for tunnels, when the connection supports it.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// CloseRead half-closes the read side when the connection supports it.
func (c *replayConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return nil
}

const (
	stateIdle int32 = iota
	stateActive
	stateClosing
)

// frontBufSize bounds a request head Server takes itself; a longer one is
// handed over (Go's server allows 64 KiB and answers 431 past that).
const frontBufSize = 4 << 10

// frontConn is one client connection kept by Server.
type frontConn struct {
	s      *Server
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	bwSet  bool // bw writes to c
	remote string
	state  atomic.Int32
	req    frontReq
	// head is the request head being served, copied out of br.
	head []byte
	// replayHead, if set, is handed over ahead of what br holds.
	replayHead []byte
	// headBy is when the head being read must be complete.
	headBy time.Time
	// idleArmed is when the idle deadline now set on c was armed (zero:
	// another deadline is set).
	idleArmed time.Time
	// checked is set once alive has changed c's read deadline.
	checked bool
	// ex is the exchange of the request being served.
	ex   exchange
	resp rawResp // kept here: on the stack it would grow every new goroutine's stack

	// The last authority and credentials seen, with what they gave:
	// clients send the same ones on every request of a connection. The
	// flags say whether they are set.
	lastAuthority []byte
	lastTarget    target
	authorityOK   bool
	lastCreds     []byte
	lastClient    string
	credsOK       bool
}

// target is where an absolute-form authority (or the gateway upstream)
// leads.
type target struct {
	host, port string // normalized; port 80 already mapped to 443
	hostport   string // host:port, the pool key
	hostHeader string // the Host header sent upstream
}

func (fc *frontConn) serve() {
	s := fc.s
	handed := false
	defer func() {
		if v := recover(); v != nil {
			s.Proxy.log.Error("panic while handling a request", zap.Any("panic", v), zap.Stack("stack"))
		}
		if !handed {
			_ = fc.c.Close()
			if s.Metrics != nil {
				s.Metrics.openConns.Dec()
			}
		}
		s.mu.Lock()
		delete(s.conns, fc)
		s.mu.Unlock()
		s.active.Done()
		fc.release()
	}()
	fc.remote = fc.c.RemoteAddr().String()
	fc.br.Reset(fc.c)
	hdrTimeout := s.HTTP.ReadHeaderTimeout
	idleTimeout := s.HTTP.IdleTimeout
	if idleTimeout == 0 {
		idleTimeout = hdrTimeout
	}
	for first := true; ; first = false {
		fc.headBy = time.Time{}
		if t := idleTimeout; !first && t > 0 {
			// Re-armed at most once a second: a busy connection would
			// otherwise pay for a timer update per request, and a
			// connection idle for IdleTimeout less up to a second is as
			// idle as one idle for IdleTimeout.
			now := time.Now()
			if now.Sub(fc.idleArmed) > min(time.Second, t/2) {
				_ = fc.c.SetReadDeadline(now.Add(t))
				fc.idleArmed = now
			}
		} else if first && hdrTimeout > 0 {
			fc.headBy = time.Now().Add(hdrTimeout)
			_ = fc.c.SetReadDeadline(fc.headBy)
		} else if fc.checked {
			_ = fc.c.SetReadDeadline(time.Time{}) // no timeouts: undo alive's
		}
		fc.checked = false
		if fc.state.Load() == stateClosing {
			return // Shutdown cut the deadline before it was set above
		}
		if _, err := fc.br.Peek(1); err != nil {
			return
		}
		if !fc.state.CompareAndSwap(stateIdle, stateActive) {
			return // shutting down
		}
		n := fc.bufferedHead()
		if n < 0 {
			// The head is still arriving: give it ReadHeaderTimeout.
			if !first && hdrTimeout > 0 {
				fc.headBy = time.Now().Add(hdrTimeout)
				_ = fc.c.SetReadDeadline(fc.headBy)
				fc.idleArmed = time.Time{}
			}
			var err error
			if n, err = readHead(fc.br); err != nil {
				return // the client went away or was too slow: as Go's server, just close
			}
		}
		keep, take := fc.handle(n)
		if !take {
			handed = true
			fc.handOver()
			return
		}
		fc.state.Store(stateIdle)
		if !keep || s.shutdown.Load() {
			return
		}
	}
}

// headLen finds the end of the head at the start of buf: its length, or
// -1 if it is not all there, or 0 if a line ends in a bare LF (which Go's
// reader accepts and Server leaves to it).
func headLen(buf []byte) int {
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

// bufferedHead returns the length of the request head if it is all
// buffered (0: leave it to Go's server), or -1.
func (fc *frontConn) bufferedHead() int {
	buf, _ := fc.br.Peek(fc.br.Buffered())
	return headLen(buf)
}

// readHead waits until a whole head is buffered in br and returns its
// length, or 0 if it is left to Go's reader (too long, bare LFs).
func readHead(br *bufio.Reader) (int, error) {
	for {
		buf, _ := br.Peek(br.Buffered())
		if n := headLen(buf); n >= 0 {
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

// handOver passes the connection and what was read of it to HTTP.
func (fc *frontConn) handOver() {
	s := fc.s
	s.handoffs.Add(1)
	if s.Metrics != nil {
		s.Metrics.openConns.Dec() // HTTP's ConnState counts it from here
	}
	buffered, _ := fc.br.Peek(fc.br.Buffered())
	rc := &replayConn{Conn: fc.c, buf: append(bytes.Clone(fc.replayHead), buffered...), headBy: fc.headBy}
	// The Proxy learns from the FramingConn which requests carried both
	// Content-Length and Transfer-Encoding; it starts at this request.
	s.handoff.deliver(NewFramingConn(rc))
}

// handle serves the request whose head is the first n buffered bytes.
// take is false if the request is left to HTTP (nothing has been read or
// written for it yet); keep is false if the connection must close.
func (fc *frontConn) handle(n int) (keep, take bool) {
	if n == 0 {
		return false, false
	}
	p := fc.s.Proxy
	// The head is parsed from a copy, so that the read buffer is free to
	// watch the client while the upstream thinks.
	head, _ := fc.br.Peek(n)
	fc.head = append(fc.head[:0], head...)
	r := &fc.req
	if !r.parse(fc.head, p) {
		return false, false
	}
	ex := &fc.ex
	*ex = exchange{start: time.Now(), gateway: r.gateway}
	var tg *target
	if r.gateway {
		tg = &p.gwTarget
	} else {
		if !fc.authorityOK || !bytes.Equal(r.authority, fc.lastAuthority) {
			t, ok := parseAuthority(r.authority)
			if !ok {
				return false, false
			}
			fc.lastAuthority = append(fc.lastAuthority[:0], r.authority...)
			fc.lastTarget, fc.authorityOK = t, true
		}
		tg = &fc.lastTarget
	}
	if len(p.clients) > 0 {
		if len(r.creds) == 0 {
			return false, false // 407 from the goproxy path
		}
		if !fc.credsOK || !bytes.Equal(r.creds, fc.lastCreds) {
			fc.credsOK = false
			name, ok := p.clients.authenticateValue(string(r.creds))
			if !ok {
				return false, false
			}
			fc.lastCreds = append(fc.lastCreds[:0], r.creds...)
			fc.lastClient, fc.credsOK = name, true
		}
		ex.client = fc.lastClient
	}
	ex.host = tg.hostport
	route, perr := p.pick(tg.host, tg.port, ex)
	if perr != nil {
		return false, false
	}
	ts := route.conns.Load()
	fast := ts.fast
	r.hostHeader = tg.hostHeader
	if ce := p.log.Check(zap.DebugLevel, "forwarding"); ce != nil {
		ce.Write(zap.String("method", r.method), zap.String("upstream", tg.hostHeader), zap.ByteString("path", r.path),
			zap.String("route", route.name), zap.Bool("gateway", ex.gateway))
	}
	isHead := r.method == http.MethodHead
	_, _ = fc.br.Discard(n)
	var pc *h1Conn
	err := errFallback
	if !fast.h2.Load() {
		pc, _, err = fast.open(context.Background(), tg.hostport, r, ex, fc.alive)
	}
	if err == errFallback {
		// The upstream speaks HTTP/2 (nothing was sent on this path):
		// http.Transport carries the request.
		keep = fc.viaTransport(ts.main, r, tg, ex, isHead)
		p.logExchange(ex, r.method, "", fc.remote, r.path)
		return keep, true
	}
	// Decided once the upstream has answered: a shutdown meanwhile closes
	// the connection after this response.
	closeAfter := r.close || fc.s.shutdown.Load()
	if err == nil {
		var relayed bool
		if relayed, keep = fc.relay(pc, fast, tg.hostport, ex, isHead, closeAfter); !relayed {
			// Something the in-place reader does not take (chunked, no
			// length, 1xx, a long head): Go's reader and writeResponse.
			rreq := getRequest
			if isHead {
				rreq = headRequest
			}
			var resp *http.Response
			pc.fullDeadline()
			if resp, err = fast.readResponse(pc, rreq); err != nil {
				_ = pc.tc.Close()
				err = readError(context.Background(), err)
			} else {
				fast.attach(resp, pc, tg.hostport, true)
				keep = fc.writeResponse(resp, ex, isHead, closeAfter, p.via)
			}
		}
	}
	if err != nil {
		perr := classifyUpstreamError(err, ex.host)
		ex.fail(perr, err)
		ex.status = perr.status
		keep = fc.writeError(perr, closeAfter)
	}
	p.logExchange(ex, r.method, "", fc.remote, r.path)
	return keep && !closeAfter, true
}

// viaTransport sends r over t (an upstream that speaks HTTP/2) and copies
// the answer to the client. The request is the one the goproxy path would
// build: canonical header names, the same headers removed and added.
func (fc *frontConn) viaTransport(t http.RoundTripper, r *frontReq, tg *target, ex *exchange, isHead bool) (keep bool) {
	req, err := r.toRequest(tg)
	if err != nil {
		perr := badRequest("bad request target: %v", err)
		ex.fail(perr, nil)
		ex.status = perr.status
		_ = fc.writeError(perr, true)
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A trace of its own, not ex's: http.Transport may still read it from
	// a dial it started for this request after the request is done, when
	// ex already serves the next one.
	var reused atomic.Bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused.Store(i.Reused) }}
	req = req.WithContext(httptrace.WithClientTrace(ctx, trace))
	// While the upstream thinks, check now and then that the client is
	// still there, as the goproxy path's request context would.
	var mu sync.Mutex
	waiting := true
	var check *time.Timer
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
	resp, err := t.RoundTrip(req)
	mu.Lock()
	waiting = false
	check.Stop()
	mu.Unlock()
	ex.reused = reused.Load()
	closeAfter := r.close || fc.s.shutdown.Load()
	if err != nil {
		perr := classifyUpstreamError(err, ex.host)
		ex.fail(perr, err)
		ex.status = perr.status
		return fc.writeError(perr, closeAfter) && !closeAfter
	}
	poolBody(resp, nil) // writeResponse sees the error itself
	return fc.writeResponse(resp, ex, isHead, closeAfter, fc.s.Proxy.via) && !closeAfter
}

// alive reports whether the client is still connected while its request
// waits for the upstream: a read that waits at most a millisecond tells
// a closed connection from a quiet one. (A deadline already past would
// not even try the read.) Bytes it reads (a pipelined request) stay
// buffered for later.
func (fc *frontConn) alive() bool {
	if fc.br.Buffered() > 0 {
		return true
	}
	fc.idleArmed, fc.checked = time.Time{}, true
	_ = fc.c.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := fc.br.Peek(1)
	return err == nil || isTimeout(err)
}

// relay copies the response waiting on pc to the client when its head
// is simple (see rawResp.parse), and gives pc back to the pool. relayed
// is false if it left the response unread for Go's reader.
func (fc *frontConn) relay(pc *h1Conn, f *fastH1, addr string, ex *exchange, isHead, closeAfter bool) (relayed, keep bool) {
	head, ok := peekHead(pc)
	if !ok {
		return false, false
	}
	rr := &fc.resp
	if !rr.parse(head, isHead, fc.s.Proxy.via != "") {
		return false, false
	}
	ex.status = rr.code
	ex.tlsVersion = pc.state.Version
	bw := fc.writer()
	writeStatusLine(bw, rr.code)
	writeHeaderLines(bw, rr.hdrs)
	if len(rr.clen) > 0 && rr.code != http.StatusNoContent {
		bw.WriteString("Content-Length: ")
		bw.Write(rr.clen)
		bw.WriteString("\r\n")
	}
	if via := fc.s.Proxy.via; via != "" {
		bw.WriteString("Via: ")
		bw.WriteString(via)
		bw.WriteString("\r\n")
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	_, _ = pc.br.Discard(len(head))
	left := rr.length
	if left > int64(pc.br.Buffered()) {
		// The body needs more reads: lift the response-header deadline.
		// (A body already buffered needs no read, and the next request
		// sets a new deadline anyway.)
		_ = pc.tc.SetReadDeadline(time.Time{})
	}
	var werr error
	var big *[]byte
	for left > 0 && werr == nil {
		if pc.br.Buffered() == 0 {
			// Flush before a read that would wait for the upstream, so
			// that a slow body flows.
			if werr = bw.Flush(); werr != nil {
				break
			}
			if left >= 16<<10 {
				// A large body: read past the small buffer.
				if big == nil {
					big = copyBufs.Get().(*[]byte)
					defer copyBufs.Put(big)
				}
				want := int(min(left, int64(len(*big))))
				n, err := pc.br.Read((*big)[:want])
				if n > 0 && n < want && err == nil {
					// A read gives one TLS record (16 KiB at most); more are
					// often already received. Take those too, without
					// waiting (a deadline in the past makes the TLS layer
					// use only what it holds), so that each write to the
					// client carries more.
					_ = pc.tc.SetReadDeadline(time.Unix(1, 0))
					for n < want {
						m, err := pc.br.Read((*big)[n:want])
						n += m
						if m == 0 || err != nil {
							break
						}
					}
					_ = pc.tc.SetReadDeadline(time.Time{})
				}
				if n > 0 {
					_, werr = bw.Write((*big)[:n])
					left -= int64(n)
					ex.bytesOut += int64(n)
					continue
				}
				if err == nil {
					continue
				}
			}
			if _, err := pc.br.Peek(1); err != nil {
				// The upstream broke off: the client gets a short body and
				// a closed connection, as it would from the upstream.
				ex.detail = "upstream body: " + err.Error()
				_ = pc.tc.Close()
				return true, false
			}
		}
		chunk, _ := pc.br.Peek(int(min(left, int64(pc.br.Buffered()))))
		_, werr = bw.Write(chunk)
		_, _ = pc.br.Discard(len(chunk))
		left -= int64(len(chunk))
		ex.bytesOut += int64(len(chunk))
	}
	// The body is all read: pc is free for the next request before the
	// client has the last bytes.
	if werr != nil || rr.close {
		_ = pc.tc.Close()
	} else {
		f.put(addr, pc)
	}
	if werr == nil {
		werr = bw.Flush()
	}
	return true, werr == nil
}

// peekHead returns the response head buffered in br, reading until it is
// complete; false if it does not fit, has bare LFs, or the read fails
// (Go's reader then reads it or reports the failure).
func peekHead(pc *h1Conn) ([]byte, bool) {
	br := pc.br
	buf, _ := br.Peek(br.Buffered())
	n := headLen(buf)
	if n < 0 {
		pc.fullDeadline()
		var err error
		if n, err = readHead(br); err != nil {
			return nil, false
		}
	}
	if n <= 0 {
		return nil, false
	}
	head, _ := br.Peek(n)
	return head, true
}

// Static requests tell http.ReadResponse the method of a request Server
// sent itself.
var (
	getRequest  = &http.Request{Method: http.MethodGet}
	headRequest = &http.Request{Method: http.MethodHead}
)

func (fc *frontConn) writer() *bufio.Writer {
	if !fc.bwSet {
		fc.bw.Reset(fc.c)
		fc.bwSet = true
	}
	return fc.bw
}

// frontConns are reused: each holds two 4 KiB buffers and room for a
// request head's headers, which a connection per request would otherwise
// allocate every time.
var frontConns = sync.Pool{New: func() any {
	return &frontConn{br: bufio.NewReaderSize(nil, frontBufSize), bw: bufio.NewWriterSize(nil, frontBufSize)}
}}

// release clears fc and puts it back in the pool.
func (fc *frontConn) release() {
	fc.br.Reset(nil)
	fc.bw.Reset(nil)
	fc.bwSet = false
	fc.s, fc.c, fc.remote = nil, nil, ""
	fc.state.Store(stateIdle)
	fc.req, fc.resp = frontReq{}, rawResp{}
	fc.head, fc.replayHead, fc.headBy, fc.idleArmed = fc.head[:0], nil, time.Time{}, time.Time{}
	fc.ex, fc.checked = exchange{}, false
	fc.lastAuthority, fc.lastTarget, fc.authorityOK = fc.lastAuthority[:0], target{}, false
	fc.lastCreds, fc.lastClient, fc.credsOK = fc.lastCreds[:0], "", false
	frontConns.Put(fc)
}

// writeError answers with perr; it reports whether the connection is
// still usable.
func (fc *frontConn) writeError(perr *proxyError, closeAfter bool) bool {
	body := perr.body()
	h := make(http.Header, 4)
	perr.setHeaders(h, len(body))
	bw := fc.writer()
	writeStatusLine(bw, perr.status)
	for k, vs := range h {
		writeHeaderValues(bw, k, vs)
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	bw.WriteString(body)
	return bw.Flush() == nil
}

// writeHeaderValues writes one "k: v" line per value.
func writeHeaderValues(bw *bufio.Writer, k string, vs []string) {
	for _, v := range vs {
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(v)
		bw.WriteString("\r\n")
	}
}

func writeStatusLine(bw *bufio.Writer, code int) {
	var b [3]byte
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	}
	bw.WriteString("\r\n")
}

// writeResponse copies resp to the client, flushing after every read that
// does not end the body, so that streamed responses flow. It reports
// whether the connection is still usable.
func (fc *frontConn) writeResponse(resp *http.Response, ex *exchange, isHead, closeAfter bool, via string) bool {
	ex.status = resp.StatusCode
	if resp.TLS != nil {
		ex.tlsVersion = resp.TLS.Version
	}
	removeHopHeaders(resp.Header, false)
	if via != "" {
		addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor, via)
	}
	code := resp.StatusCode
	bodyless := isHead || code == http.StatusNoContent || code == http.StatusNotModified
	chunked := !bodyless && resp.ContentLength < 0
	bw := fc.writer()
	writeStatusLine(bw, code)
	for k, vs := range resp.Header {
		if k == "Content-Length" && (!bodyless || code == http.StatusNoContent) {
			continue
		}
		writeHeaderValues(bw, k, vs)
	}
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case !bodyless:
		var b [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(b[:0], resp.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if bodyless || resp.ContentLength == 0 {
		_ = resp.Body.Close()
		return bw.Flush() == nil
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			ex.bytesOut += int64(n)
			if chunked {
				var b [16]byte
				bw.Write(strconv.AppendInt(b[:0], int64(n), 16))
				bw.WriteString("\r\n")
			}
			_, werr := bw.Write(buf[:n])
			if chunked {
				bw.WriteString("\r\n")
			}
			if werr != nil {
				_ = resp.Body.Close()
				return false
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The upstream broke off: the client sees a short body and a
			// closed connection, as it would from the upstream itself.
			_ = resp.Body.Close()
			_ = bw.Flush()
			ex.detail = "upstream body: " + rerr.Error()
			return false
		}
		// More is to come, and the next read may wait for the upstream:
		// send what there is. (Go's body readers return the last bytes
		// together with io.EOF when the end is already buffered, so a
		// small response still goes out in one write.)
		if bw.Flush() != nil {
			_ = resp.Body.Close()
			return false
		}
	}
	_ = resp.Body.Close()
	if chunked {
		bw.WriteString("0\r\n")
		// Trailers are known once the body has been read.
		for k, vs := range resp.Trailer {
			writeHeaderValues(bw, k, vs)
		}
		bw.WriteString("\r\n")
	}
	return bw.Flush() == nil
}
