// Package testutil holds test helpers shared by packages: a raw recording
// mTLS upstream that reads requests with its own small, strict reader and
// answers with scripted bytes, and a raw client that records every byte
// it receives.
package testutil

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Wait bounds every wait in these helpers for something that should
// happen at once.
const Wait = 5 * time.Second

// UpRequest is one request as the upstream read it.
type UpRequest struct {
	// Conn numbers the upstream connection, from 1 in accept order
	// (across restarts); Seq numbers the request on it, from 1; Order
	// numbers it among all requests the upstream read, from 1.
	Conn, Seq, Order int
	Method, Target   string
	Proto            string
	// Header holds the header fields, canonical names, in order of
	// arrival within each name.
	Header http.Header
	// Head is the request line and header section as received, blank
	// line included; Body is the body, chunked coding removed.
	Head, Body []byte
	// Anomaly, if not empty, says what about the request's framing a
	// strict reader objects to (both Content-Length and
	// Transfer-Encoding, several lengths, bare LF, a space before a
	// colon, a control byte, ...). A proxy must never send such a
	// request.
	Anomaly string
}

// Tag is the request's target with the query removed.
func (r UpRequest) Tag() string {
	if i := strings.IndexByte(r.Target, '?'); i >= 0 {
		return r.Target[:i]
	}
	return r.Target
}

// Reply is what the upstream does with one request.
type Reply struct {
	// Wait delays Raw.
	Wait time.Duration
	// Raw is written as one Write; Then, if set, right after it as a
	// second Write (so as a TLS record of its own).
	Raw, Then []byte
	// Later, if set, is written LaterBy after Raw, as bytes nobody asked
	// for. The upstream goes on reading requests meanwhile.
	Later   []byte
	LaterBy time.Duration
	// Close closes the connection after Raw (and Later) are written,
	// without any notice.
	Close bool
}

// Script answers a request. It runs on the connection's goroutine.
type Script func(r *UpRequest) Reply

// Upstream is an mTLS server speaking raw bytes: it reads each request
// itself, records exactly what it received, and answers with whatever
// its Script says.
type Upstream struct {
	// Addr is 127.0.0.1:Port.
	Addr, Port string
	// Handshakes counts completed TLS handshakes.
	Handshakes atomic.Int64

	t      testing.TB
	cfg    *tls.Config
	script atomic.Pointer[Script]
	early  atomic.Pointer[func(*UpRequest) []byte]
	drain  atomic.Int64

	mu     sync.Mutex
	ln     net.Listener
	reqs   []UpRequest
	conns  map[int]*upConn
	nconn  int
	order  int
	closed bool
	wg     sync.WaitGroup
}

type upConn struct {
	c      *tls.Conn
	wmu    sync.Mutex
	gone   chan struct{} // closed when the connection ended, either side
	once   sync.Once
	closer sync.Once
}

func (c *upConn) end() {
	c.once.Do(func() { close(c.gone) })
}

func (c *upConn) close() {
	c.closer.Do(func() { _ = c.c.Close() })
	c.end()
}

// NewUpstream starts an Upstream on a new loopback port with cfg (which
// should require and verify client certificates). It stops at the end
// of the test.
func NewUpstream(t testing.TB, cfg *tls.Config, script Script) *Upstream {
	t.Helper()
	u := &Upstream{t: t, cfg: cfg.Clone(), conns: map[int]*upConn{}}
	u.cfg.GetConfigForClient = nil
	u.SetScript(script)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.Addr = ln.Addr().String()
	_, u.Port, _ = net.SplitHostPort(u.Addr)
	u.start(ln)
	t.Cleanup(u.Close)
	return u
}

// SetScript replaces the script for requests read from now on.
func (u *Upstream) SetScript(s Script) { u.script.Store(&s) }

// SetEarly has the upstream call f with each request's head, before it
// reads the body: if f returns bytes, they are the answer, written before
// the body is read; then the upstream closes its side, reads and drops
// up to drain bytes (all, if drain < 0; for up to Wait) and hangs up. The
// request is recorded without its body.
func (u *Upstream) SetEarly(f func(head *UpRequest) []byte, drain int64) {
	u.early.Store(&f)
	u.drain.Store(drain)
}

func (u *Upstream) start(ln net.Listener) {
	u.mu.Lock()
	u.ln = ln
	u.mu.Unlock()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			if u.closed {
				u.mu.Unlock()
				_ = c.Close()
				return
			}
			u.nconn++
			uc := &upConn{c: tls.Server(c, u.cfg), gone: make(chan struct{})}
			n := u.nconn
			u.conns[n] = uc
			u.wg.Add(1)
			u.mu.Unlock()
			go func() {
				defer u.wg.Done()
				u.serve(n, uc)
			}()
		}
	}()
}

func (u *Upstream) serve(n int, uc *upConn) {
	defer uc.close()
	_ = uc.c.SetDeadline(time.Now().Add(Wait))
	if err := uc.c.Handshake(); err != nil {
		return
	}
	_ = uc.c.SetDeadline(time.Time{})
	u.Handshakes.Add(1)
	br := bufio.NewReaderSize(uc.c, 64<<10)
	var later sync.WaitGroup
	defer later.Wait()
	for seq := 1; ; seq++ {
		var early []byte
		r, err := readRequest(br, func(r *UpRequest) bool {
			if f := u.early.Load(); f != nil {
				early = (*f)(r)
			}
			return early != nil
		})
		if early != nil && r != nil {
			r.Conn, r.Seq = n, seq
			u.mu.Lock()
			u.order++
			r.Order = u.order
			u.reqs = append(u.reqs, *r)
			u.mu.Unlock()
			uc.wmu.Lock()
			_, _ = uc.c.Write(early)
			_ = uc.c.CloseWrite()
			uc.wmu.Unlock()
			_ = uc.c.SetReadDeadline(time.Now().Add(Wait))
			var rd io.Reader = br
			if d := u.drain.Load(); d >= 0 {
				rd = io.LimitReader(br, d)
			}
			_, _ = io.Copy(io.Discard, rd)
			return
		}
		if err != nil && (r == nil || !errors.Is(err, ErrMalformed)) {
			return
		}
		r.Conn, r.Seq = n, seq
		if err != nil {
			// Record what could be read of it, and hang up.
			r.Anomaly = strings.TrimPrefix(r.Anomaly+"; "+err.Error(), "; ")
			u.mu.Lock()
			u.order++
			r.Order = u.order
			u.reqs = append(u.reqs, *r)
			u.mu.Unlock()
			return
		}
		u.mu.Lock()
		u.order++
		r.Order = u.order
		u.reqs = append(u.reqs, *r)
		u.mu.Unlock()
		rep := (*u.script.Load())(r)
		if rep.Wait > 0 {
			select {
			case <-time.After(rep.Wait):
			case <-uc.gone:
				return
			}
		}
		uc.wmu.Lock()
		_, err = uc.c.Write(rep.Raw)
		if err == nil && rep.Then != nil {
			_, err = uc.c.Write(rep.Then)
		}
		uc.wmu.Unlock()
		if err != nil {
			return
		}
		if rep.Later != nil {
			later.Add(1)
			go func() {
				defer later.Done()
				select {
				case <-time.After(rep.LaterBy):
				case <-uc.gone:
					return
				}
				uc.wmu.Lock()
				_, _ = uc.c.Write(rep.Later)
				uc.wmu.Unlock()
				if rep.Close {
					uc.close()
				}
			}()
			if rep.Close {
				return
			}
		}
		if rep.Close {
			return
		}
	}
}

// Requests returns the requests read so far, in order.
func (u *Upstream) Requests() []UpRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]UpRequest(nil), u.reqs...)
}

// Reset forgets the requests read so far.
func (u *Upstream) Reset() {
	u.mu.Lock()
	u.reqs = nil
	u.mu.Unlock()
}

// Conns is the number of connections accepted so far.
func (u *Upstream) Conns() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.nconn
}

// Gone returns a channel closed when connection n (see UpRequest.Conn)
// has ended, closed by either side.
func (u *Upstream) Gone(n int) <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	if c, ok := u.conns[n]; ok {
		return c.gone
	}
	ch := make(chan struct{})
	close(ch)
	return ch
}

// OpenConns is the number of connections not yet ended.
func (u *Upstream) OpenConns() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, c := range u.conns {
		select {
		case <-c.gone:
		default:
			n++
		}
	}
	return n
}

// Restart closes the listener and every connection, as a process that
// exits would, and listens again on the same port.
func (u *Upstream) Restart(t testing.TB) {
	t.Helper()
	u.mu.Lock()
	_ = u.ln.Close()
	conns := make([]*upConn, 0, len(u.conns))
	for _, c := range u.conns {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(Wait); ; {
		if ln, err = net.Listen("tcp", u.Addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart on %s: %v", u.Addr, err)
	}
	u.start(ln)
}

// Close stops the upstream and waits for its goroutines.
func (u *Upstream) Close() {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	_ = u.ln.Close()
	conns := make([]*upConn, 0, len(u.conns))
	for _, c := range u.conns {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	u.wg.Wait()
}

// ErrMalformed is returned by ReadRequest for bytes it cannot read as a
// request at all.
var ErrMalformed = errors.New("testutil: malformed request")

// ReadRequest reads one request from br with a small reader of its own:
// (when bytes after the request line cannot be read as a request, it
// returns what it read so far with an error wrapping ErrMalformed)
// CRLF or bare LF line ends, header fields split at the first colon,
// the body framed by the last Transfer-Encoding (chunked) or else the
// first Content-Length. What a strict reader would object to is noted
// in Anomaly instead of refused, so that tests can see it.
func ReadRequest(br *bufio.Reader) (*UpRequest, error) { return readRequest(br, nil) }

// readRequest is ReadRequest; if afterHead returns true, it returns the
// request as soon as its head is read.
func readRequest(br *bufio.Reader, afterHead func(*UpRequest) bool) (*UpRequest, error) {
	var head bytes.Buffer
	var anomalies []string
	note := func(f string, a ...any) { anomalies = append(anomalies, fmt.Sprintf(f, a...)) }
	readLine := func() (string, error) {
		line, err := br.ReadSlice('\n')
		head.Write(line)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return "", fmt.Errorf("%w: line too long", ErrMalformed)
			}
			return "", err
		}
		if head.Len() > 1<<20 {
			return "", fmt.Errorf("%w: head too long", ErrMalformed)
		}
		s := string(line[:len(line)-1])
		if strings.HasSuffix(s, "\r") {
			s = s[:len(s)-1]
		} else {
			note("bare LF")
		}
		if strings.ContainsRune(s, '\r') {
			note("bare CR")
		}
		return s, nil
	}
	line, err := readLine()
	if err != nil {
		return nil, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 {
		return &UpRequest{Target: line, Head: head.Bytes(), Header: http.Header{}, Anomaly: "malformed request line"},
			fmt.Errorf("%w: request line %q", ErrMalformed, line)
	}
	r := &UpRequest{Method: parts[0], Target: parts[1], Proto: parts[2], Header: http.Header{}}
	fail := func(err error) (*UpRequest, error) {
		r.Head = head.Bytes()
		r.Anomaly = strings.Join(anomalies, "; ")
		return r, err
	}
	if r.Proto != "HTTP/1.1" && r.Proto != "HTTP/1.0" {
		note("protocol %q", r.Proto)
	}
	for {
		line, err := readLine()
		if err != nil {
			return fail(err)
		}
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			note("obs-fold %q", line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			note("no colon in %q", line)
			continue
		}
		if name == "" || strings.ContainsAny(name, " \t") {
			note("bad field name %q", name)
		}
		for _, b := range []byte(name + value) {
			if (b < 0x20 && b != '\t') || b == 0x7f {
				note("control byte %#x in %q", b, line)
				break
			}
		}
		r.Header.Add(strings.TrimSpace(name), strings.Trim(value, " \t"))
	}
	r.Head = head.Bytes()
	if afterHead != nil && afterHead(r) {
		r.Anomaly = strings.Join(anomalies, "; ")
		return r, nil
	}
	te := r.Header.Values("Transfer-Encoding")
	cl := r.Header.Values("Content-Length")
	if len(te) > 0 && len(cl) > 0 {
		note("both Content-Length %q and Transfer-Encoding %q", cl, te)
	}
	if len(cl) > 1 {
		note("%d Content-Length fields %q", len(cl), cl)
	}
	if len(te) > 0 && r.Proto == "HTTP/1.0" {
		note("Transfer-Encoding in HTTP/1.0")
	}
	switch {
	case len(te) > 0:
		codings := strings.Split(strings.Join(te, ","), ",")
		if last := strings.TrimSpace(codings[len(codings)-1]); !strings.EqualFold(last, "chunked") {
			note("Transfer-Encoding %q does not end in chunked", te)
			r.Anomaly = strings.Join(anomalies, "; ")
			return r, nil // no way to frame the body; the caller should close
		}
		if len(codings) > 1 {
			note("Transfer-Encoding %q is not just chunked", te)
		}
		body, err := readChunked(br, note)
		if err != nil {
			return fail(err)
		}
		r.Body = body
	case len(cl) > 0:
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 || cl[0][0] == '+' {
			note("Content-Length %q", cl[0])
			n = 0
		}
		if n > 64<<20 {
			return fail(fmt.Errorf("%w: Content-Length %d", ErrMalformed, n))
		}
		r.Body = make([]byte, n)
		if _, err := ioReadFull(br, r.Body); err != nil {
			return fail(err)
		}
	}
	r.Anomaly = strings.Join(anomalies, "; ")
	return r, nil
}

func readChunked(br *bufio.Reader, note func(string, ...any)) ([]byte, error) {
	var body []byte
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if !strings.HasSuffix(line, "\r\n") {
			note("chunk line %q not ended by CRLF", line)
		}
		size, ext, _ := strings.Cut(strings.TrimRight(line, "\r\n"), ";")
		_ = ext
		n, err := strconv.ParseUint(size, 16, 32)
		if err != nil || size == "" {
			return nil, fmt.Errorf("%w: chunk size %q", ErrMalformed, size)
		}
		if n == 0 {
			break
		}
		chunk := make([]byte, n+2)
		if _, err := ioReadFull(br, chunk); err != nil {
			return nil, err
		}
		if string(chunk[n:]) != "\r\n" {
			return nil, fmt.Errorf("%w: chunk not followed by CRLF", ErrMalformed)
		}
		body = append(body, chunk[:n]...)
	}
	for { // trailer section
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if line == "\r\n" || line == "\n" {
			return body, nil
		}
	}
}

func ioReadFull(br *bufio.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := br.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
