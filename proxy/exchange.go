package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

type exchangeKey struct{}

// exchange is the state of one proxied request, filled in as it goes and
// written to the access log at the end.
type exchange struct {
	start   time.Time
	gateway bool
	connect bool
	client  string // authenticated caller, if clients are configured
	// finish writes the access line of a request inside an intercepted
	// tunnel, which ServeHTTP never sees.
	finish     func()
	host       string // upstream host:port
	route      *Route
	status     int
	code       string // error code, "" on success
	detail     string // underlying error, for the log
	bytesIn    int64
	bytesOut   int64
	tlsVersion uint16
	reused     bool
	hijacked   bool
	// clientBuf holds what the server read from the client past the
	// request head, once the connection is hijacked.
	clientBuf *bufio.Reader
	// clientConn is the hijacked client connection, closed when the
	// exchange ends (goproxy leaves it open after a WebSocket ends).
	clientConn net.Conn
	trace      httptrace.ClientTrace
	// upstreamBodyErr is the error that cut the upstream's response body
	// short while goproxy copied it.
	upstreamBodyErr error
	// clientBodyErr is the error reading the client's request body (such
	// as malformed chunked framing), which is the client's fault, not the
	// upstream's.
	// It is set on the transport's goroutine.
	clientBodyErr atomic.Pointer[error]
	// watch is the client connection's Transfer-Encoding watch, if any.
	watch *teWatch
	// closeAfter closes the client connection after the response.
	closeAfter bool
	// wrote is set once the front has begun writing the answer.
	wrote bool
}

func (ex *exchange) fail(perr *proxyError, cause error) {
	ex.code = perr.code
	ex.detail = perr.msg
	if cause != nil {
		ex.detail = perr.msg + " (" + cause.Error() + ")"
	}
}

func (ex *exchange) gotConn(info httptrace.GotConnInfo) {
	ex.reused = info.Reused
}

// logAccess ends the exchange: it records its metrics and writes its
// access-log line.
func (p *Proxy) logAccess(ex *exchange, r *http.Request) {
	p.logExchange(ex, r.Method, r.URL.Path, r.RemoteAddr, nil)
}

// logExchange is logAccess for a request known by its method, path and
// client address; path, if nil, is rawPath unescaped.
func (p *Proxy) logExchange(ex *exchange, method, path, remote string, rawPath []byte) {
	elapsed := time.Since(ex.start)
	rm := p.unrouted
	if ex.route != nil {
		rm = ex.route.metrics
	}
	rm.observe(ex.status, ex.code, elapsed.Seconds())
	ce := p.access.Check(zap.InfoLevel, "request")
	if ce == nil {
		return
	}
	route, identity := "", ""
	if ex.route != nil {
		route = ex.route.name
		// A tunnel carries the client's own TLS: no identity is presented.
		if ex.route.identity != nil && !ex.connect {
			identity = ex.route.identity.Name()
		}
	}
	if rawPath != nil {
		path = string(rawPath)
		if u, err := url.PathUnescape(path); err == nil {
			path = u
		}
	}
	fp := logFields.Get().(*[]zap.Field)
	fields := append((*fp)[:0],
		zap.String("method", method),
		zap.String("host", ex.host),
		zap.String("path", path),
		zap.String("route", route),
		zap.String("identity", identity),
		zap.Int("status", ex.status),
		zap.Int64("bytes_in", ex.bytesIn),
		zap.Int64("bytes_out", ex.bytesOut),
		zap.Duration("duration", elapsed),
		zap.String("tls_version", tlsVersionName(ex.tlsVersion)),
		zap.Bool("reused", ex.reused),
		zap.String("error", ex.code),
		zap.String("client", remote),
		zap.String("caller", ex.client),
	)
	if ex.detail != "" {
		fields = append(fields, zap.String("detail", ex.detail))
	}
	ce.Write(fields...)
	clear(fields) // drop references before pooling
	*fp = fields[:0]
	logFields.Put(fp)
}

// logFields are the access log's field slices, reused across requests.
var logFields = sync.Pool{New: func() any { f := make([]zap.Field, 0, 16); return &f }}

func tlsVersionName(v uint16) string {
	if v == 0 {
		return ""
	}
	return tls.VersionName(v)
}

// recoverPanic answers a panic in the request path with a 500, logs it
// with its stack, and keeps the process up. http.ErrAbortHandler is the
// server's own signal and passes through.
func (p *Proxy) recoverPanic(w *recorder, r *http.Request, ex *exchange) {
	v := recover()
	if v == nil {
		return
	}
	perr := p.panicked(v, ex, r.Method)
	if (!w.wroteHeader || w.retract()) && !ex.hijacked {
		w.Header().Set("Connection", "close")
		perr.write(w)
	} else {
		ex.status = http.StatusInternalServerError
	}
	p.logAccess(ex, r)
}

// panicked logs a panic recovered while handling a request, with its
// stack, and returns the answer the client gets. It re-panics
// http.ErrAbortHandler, the server's own signal.
func (p *Proxy) panicked(v any, ex *exchange, method string) *proxyError {
	if v == http.ErrAbortHandler {
		panic(v)
	}
	p.log.Error("panic while handling a request", zap.Any("panic", v), zap.String("method", method),
		zap.String("host", ex.host), zap.Stack("stack"))
	perr := &proxyError{status: http.StatusInternalServerError, code: codeInternal,
		msg: "internal error while handling the request (logged with a stack trace)"}
	ex.fail(perr, nil)
	return perr
}

// recorder records status and size for the access log and flushes every
// write, so streamed responses reach the client as they arrive. It keeps
// http.Hijacker working for upgrades. It holds a final status back until
// the first byte of the body (or a flush, or the end): net/http would not
// send the head earlier anyway, and until then an upstream body that
// fails at once can still be answered with an error instead.
type recorder struct {
	w           http.ResponseWriter
	flusher     http.Flusher
	ex          *exchange
	wroteHeader bool
	// pending is a final status not yet passed to w.
	pending int
}

var (
	_ http.ResponseWriter = (*recorder)(nil)
	_ http.Flusher        = (*recorder)(nil)
	_ http.Hijacker       = (*recorder)(nil)
)

func newRecorder(w http.ResponseWriter, ex *exchange) *recorder {
	f, _ := w.(http.Flusher)
	return &recorder{w: w, flusher: f, ex: ex}
}

func (w *recorder) Header() http.Header { return w.w.Header() }

func (w *recorder) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.w.WriteHeader(code) // informational: on its way at once
		return
	}
	w.ex.status = code
	w.wroteHeader = true
	if code == http.StatusSwitchingProtocols {
		w.w.WriteHeader(code)
		return
	}
	w.pending = code
}

// commit passes a held status on. An answer without a Content-Type
// keeps none: Go's server would sniff one from the body, and a proxy does
// not invent what the upstream did not say.
func (w *recorder) commit() {
	if w.pending != 0 {
		if h := w.w.Header(); h["Content-Type"] == nil {
			h["Content-Type"] = nil
		}
		w.w.WriteHeader(w.pending)
		w.pending = 0
	}
}

// retract drops a status not yet passed on, and the headers with it, so
// that another answer can be written; it reports whether it could.
func (w *recorder) retract() bool {
	if w.pending == 0 || w.ex.bytesOut > 0 {
		return false
	}
	clear(w.w.Header())
	w.pending, w.wroteHeader = 0, false
	return true
}

func (w *recorder) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.commit()
	n, err := w.w.Write(b)
	w.ex.bytesOut += int64(n)
	if w.flusher != nil && err == nil {
		w.flusher.Flush()
	}
	return n, err
}

func (w *recorder) Flush() {
	w.commit()
	if w.flusher != nil {
		w.flusher.Flush()
	}
}

func (w *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("mtlsproxy: connection cannot be hijacked")
	}
	w.ex.hijacked = true
	if w.ex.watch != nil {
		w.ex.watch.off.Store(true) // no longer HTTP/1.1 requests
	}
	c, rw, err := hj.Hijack()
	if err == nil {
		w.ex.clientBuf = rw.Reader
		w.ex.clientConn = c
	}
	return c, rw, err
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *recorder) Unwrap() http.ResponseWriter { return w.w }

// countingBody counts request body bytes for the access log and records
// an error reading them.
type countingBody struct {
	io.ReadCloser
	ex *exchange
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.ex.bytesIn += int64(n)
	if err != nil && err != io.EOF {
		b.ex.clientBodyErr.CompareAndSwap(nil, &err)
	}
	return n, err
}

// goproxyLogger adapts goproxy's Printf-style logger to zap. The level is
// checked before anything is formatted.
type goproxyLogger struct{ l *zap.Logger }

func (g goproxyLogger) Printf(format string, v ...any) {
	if strings.Contains(format, "Cannot handshake client") && len(v) >= 3 {
		// v is (session, CONNECT host, error).
		g.l.Warn("client refused the TLS handshake inside an intercepted tunnel; if it does not trust the local CA, install the mitm_ca certificate in its trust store (README: Trusting the local CA)",
			zap.Any("host", v[1]), zap.Any("error", v[2]))
		return
	}
	level := zap.DebugLevel
	if strings.Contains(format, "WARN: ") {
		level = zap.WarnLevel
	}
	if g.l.Core().Enabled(level) {
		g.l.Log(level, strings.TrimSpace(fmt.Sprintf(format, v...)))
	}
}
