//go:build linux && !386

package proxy

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// rawListener accepts TCP connections itself, as lazyConns: a connection
// costs the accept and nothing more until it has to wait.
//
// Go's own TCP connections register with the network poller, ask for
// their local address and set TCP_NODELAY on every accept, and
// unregister on close: five system calls besides accept, read, write and
// close, for a client that sends one request and closes. The listening
// socket carries TCP_NODELAY for the connections it accepts, and a
// client that has already sent its request (the listener defers accepts
// until it has) is served without waiting at all.
type rawListener struct {
	orig   *net.TCPListener
	f      *os.File
	rc     syscall.RawConn
	addr   net.Addr
	anyIP  bool // bound to the unspecified address: ask each connection
	closed atomic.Bool

	mu       sync.Mutex // one Accept at a time, for the fields below
	acceptFn func(uintptr) bool
	nfd      int
	raddr    *net.TCPAddr
	aerr     syscall.Errno
}

// fastListener returns ln, or for a TCP listener, a rawListener on the
// same socket. ln must not be used afterwards; closing it alone does not
// close the socket (the rawListener holds a copy of its descriptor), and
// its keep-alive setting does not apply (connections get no TCP
// keep-alive probes).
func fastListener(ln net.Listener) net.Listener {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return ln
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return ln
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}); err != nil || serr != nil {
		return ln
	}
	// File duplicates the descriptor; the copy shares the socket and its
	// non-blocking mode, and waits on the network poller.
	f, err := tl.File()
	if err != nil {
		return ln
	}
	frc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return ln
	}
	l := &rawListener{orig: tl, f: f, rc: frc, addr: tl.Addr()}
	if a, ok := l.addr.(*net.TCPAddr); !ok || a.IP.IsUnspecified() {
		l.anyIP = true
	}
	l.acceptFn = l.accept
	return l
}

func (l *rawListener) accept(fd uintptr) bool {
	for {
		var rsa syscall.RawSockaddrAny
		n := uint32(syscall.SizeofSockaddrAny)
		nfd, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)),
			syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case syscall.EINTR, syscall.ECONNABORTED:
			continue // as Go's own accept does
		case syscall.EAGAIN:
			return false
		case 0:
			l.nfd, l.raddr = int(nfd), rawToTCP(&rsa)
		default:
			l.aerr = e
		}
		return true
	}
}

// rawToTCP decodes a socket address from accept or getsockname.
func rawToTCP(rsa *syscall.RawSockaddrAny) *net.TCPAddr {
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return &net.TCPAddr{IP: net.IPv4(sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3]), Port: int(p[0])<<8 + int(p[1])}
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		a := &net.TCPAddr{IP: append(net.IP(nil), sa.Addr[:]...), Port: int(p[0])<<8 + int(p[1])}
		if sa.Scope_id != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.Scope_id)); err == nil {
				a.Zone = ifi.Name
			}
		}
		return a
	}
	return &net.TCPAddr{}
}

// Accept waits for and returns the next connection.
func (l *rawListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.aerr = 0
	err := l.rc.Read(l.acceptFn)
	nfd, raddr, aerr := l.nfd, l.raddr, l.aerr
	l.raddr = nil
	l.mu.Unlock()
	if err == nil && aerr != 0 {
		err = os.NewSyscallError("accept4", aerr)
	}
	if err != nil {
		if l.closed.Load() {
			err = net.ErrClosed
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	}
	c := &lazyConn{fd: nfd, raddr: raddr}
	if !l.anyIP {
		c.laddr.Store(&l.addr)
	}
	return c, nil
}

// Close closes the listening socket.
func (l *rawListener) Close() error {
	l.closed.Store(true)
	err := l.f.Close()
	_ = l.orig.Close()
	return err
}

// Addr returns the listener's address.
func (l *rawListener) Addr() net.Addr { return l.addr }

// lazyConn is an accepted TCP connection that reads, writes and closes
// with plain system calls on its descriptor until a read or a write would
// have to wait. Then it registers with the network poller once (as an
// os.File) and goes on from there like any Go connection: reads and
// writes wait, deadlines apply. A client that sends one request and
// closes is thus served with accept, read, write and close only.
type lazyConn struct {
	// mu guards the descriptor until the switch to f, so that Close never
	// closes it under a read or write in progress.
	mu       sync.Mutex
	fd       int
	f        atomic.Pointer[os.File]
	dio      directIO // reads and writes once f is set
	fclosed  atomic.Bool
	closed   bool
	rdl, wdl time.Time // deadlines, until the switch to f
	raddr    *net.TCPAddr
	laddr    atomic.Pointer[net.Addr] // known at accept, or asked once
}

// pollable switches c to the network poller. c.mu is held.
func (c *lazyConn) pollable() {
	f := os.NewFile(uintptr(c.fd), "tcp")
	if rc, err := f.SyscallConn(); err == nil {
		c.dio.init(rc)
	}
	if !c.rdl.IsZero() {
		_ = f.SetReadDeadline(c.rdl)
	}
	if !c.wdl.IsZero() {
		_ = f.SetWriteDeadline(c.wdl)
	}
	c.f.Store(f)
}

func rawRead(fd int, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

// passed reports whether deadline d is set and has passed.
func passed(d time.Time) bool { return !d.IsZero() && !d.After(time.Now()) }

// lockDirect takes c.mu for a direct read (or write) and reports true,
// unless c already waits on the poller (false, nil) or is closed or past
// its deadline (the error). On false, c.mu is not held.
func (c *lazyConn) lockDirect(op string, read bool) (bool, error) {
	if c.f.Load() != nil {
		return false, nil
	}
	c.mu.Lock()
	deadline := c.wdl
	if read {
		deadline = c.rdl
	}
	switch {
	case c.f.Load() != nil:
		c.mu.Unlock()
		return false, nil
	case c.closed:
		c.mu.Unlock()
		return false, c.opError(op, net.ErrClosed)
	case passed(deadline):
		c.mu.Unlock()
		return false, c.opError(op, os.ErrDeadlineExceeded)
	}
	return true, nil
}

// Read reads like a net.TCPConn.
func (c *lazyConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	direct, err := c.lockDirect("read", true)
	if !direct {
		if err != nil {
			return 0, err
		}
		return c.dio.Read(b, c.fileOpError)
	}
	n, e := rawRead(c.fd, b)
	if e == syscall.EAGAIN {
		c.pollable()
		c.mu.Unlock()
		return c.dio.Read(b, c.fileOpError)
	}
	c.mu.Unlock()
	return ioResult("read", n, e, nil, c.opError)
}

// Write writes like a net.TCPConn.
func (c *lazyConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	direct, err := c.lockDirect("write", false)
	if !direct {
		if err != nil {
			return 0, err
		}
		return c.dio.Write(b, c.fileOpError)
	}
	n := 0
	for n < len(b) {
		m, e := rawWrite(c.fd, b[n:])
		if e == syscall.EAGAIN {
			c.pollable()
			c.mu.Unlock()
			m, err := c.dio.Write(b[n:], c.fileOpError)
			return n + m, err
		}
		if e != 0 {
			c.mu.Unlock()
			return ioResult("write", n, e, nil, c.opError)
		}
		n += m
	}
	c.mu.Unlock()
	return n, nil
}

// fileOpError wraps an error from waiting on the poller.
func (c *lazyConn) fileOpError(op string, err error) error {
	if c.fclosed.Load() {
		err = net.ErrClosed
	}
	return c.opError(op, fileError(op, err))
}

// fileError turns an os.File error into what a net.Conn returns.
func fileError(op string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	switch {
	case errors.Is(err, os.ErrClosed):
		return net.ErrClosed
	case errors.Is(err, os.ErrDeadlineExceeded):
		return os.ErrDeadlineExceeded
	}
	if e, ok := err.(syscall.Errno); ok {
		return os.NewSyscallError(op, e)
	}
	return err
}

// opError wraps err as a net.TCPConn does. It may run with c.mu held, so
// it names the local address only if it is known already.
func (c *lazyConn) opError(op string, err error) error {
	var src net.Addr
	if a := c.laddr.Load(); a != nil {
		src = *a
	}
	return &net.OpError{Op: op, Net: "tcp", Source: src, Addr: c.raddr, Err: err}
}

// Close closes the connection.
func (c *lazyConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.f.Load(); f != nil {
		c.fclosed.Store(true)
		if err := f.Close(); err != nil {
			return c.opError("close", fileError("close", err))
		}
		return nil
	}
	if c.closed {
		return c.opError("close", net.ErrClosed)
	}
	c.closed = true
	// A socket without SO_LINGER never waits to close.
	if _, _, e := syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(c.fd), 0, 0); e != 0 {
		return c.opError("close", os.NewSyscallError("close", e))
	}
	return nil
}

// CloseWrite shuts down the sending side.
func (c *lazyConn) CloseWrite() error {
	return c.control("shutdown", func(fd int) error { return syscall.Shutdown(fd, syscall.SHUT_WR) })
}

// control runs fn on the descriptor, which stays open meanwhile.
func (c *lazyConn) control(op string, fn func(fd int) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if f := c.f.Load(); f != nil {
		if c.fclosed.Load() {
			return c.opError(op, net.ErrClosed)
		}
		rc, rerr := f.SyscallConn()
		if rerr != nil {
			return c.opError(op, fileError(op, rerr))
		}
		if cerr := rc.Control(func(fd uintptr) { err = fn(int(fd)) }); cerr != nil {
			return c.opError(op, fileError(op, cerr))
		}
	} else if c.closed {
		return c.opError(op, net.ErrClosed)
	} else {
		err = fn(c.fd)
	}
	if err != nil {
		return c.opError(op, os.NewSyscallError(op, err))
	}
	return nil
}

// LocalAddr returns the local address.
func (c *lazyConn) LocalAddr() net.Addr {
	if a := c.laddr.Load(); a != nil {
		return *a
	}
	var rsa syscall.RawSockaddrAny
	err := c.control("getsockname", func(fd int) error {
		n := uint32(syscall.SizeofSockaddrAny)
		if _, _, e := syscall.RawSyscall(syscall.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n))); e != 0 {
			return e
		}
		return nil
	})
	if err != nil {
		return &net.TCPAddr{}
	}
	var a net.Addr = rawToTCP(&rsa)
	c.laddr.Store(&a)
	return a
}

// RemoteAddr returns the client's address.
func (c *lazyConn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets both deadlines.
func (c *lazyConn) SetDeadline(t time.Time) error {
	return c.setDeadline(t, true, true)
}

// SetReadDeadline sets the read deadline.
func (c *lazyConn) SetReadDeadline(t time.Time) error { return c.setDeadline(t, true, false) }

// SetWriteDeadline sets the write deadline.
func (c *lazyConn) SetWriteDeadline(t time.Time) error { return c.setDeadline(t, false, true) }

func (c *lazyConn) setDeadline(t time.Time, read, write bool) error {
	if f := c.f.Load(); f != nil {
		return c.fileDeadline(f, t, read, write)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.f.Load(); f != nil {
		return c.fileDeadline(f, t, read, write)
	}
	if c.closed {
		return c.opError("set", net.ErrClosed)
	}
	if read {
		c.rdl = t
	}
	if write {
		c.wdl = t
	}
	return nil
}

func (c *lazyConn) fileDeadline(f *os.File, t time.Time, read, write bool) error {
	if c.fclosed.Load() {
		return c.opError("set", net.ErrClosed)
	}
	var err error
	switch {
	case read && write:
		err = f.SetDeadline(t)
	case read:
		err = f.SetReadDeadline(t)
	default:
		err = f.SetWriteDeadline(t)
	}
	if err != nil {
		return c.opError("set", fileError("set", err))
	}
	return nil
}

// directIO reads and writes a non-blocking descriptor through its
// RawConn: the system call is made directly, without the scheduler's
// system call hooks, and only a call that would block waits on the
// network poller (deadlines apply there as usual).
//
// The hooks are what costs: the scheduler's monitor thread watches for
// goroutines in system calls, and a loopback write, which does the
// receiver's TCP work too, can last long enough for it to hand the
// processor to another thread. A process whose hot system calls all
// bypass the hooks lets the monitor sleep; measured with a connection
// per request, context switches per request halved.
type directIO struct {
	rc      syscall.RawConn
	rmu     sync.Mutex // one read at a time, for the fields below
	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(uintptr) bool
	wmu     sync.Mutex // one write at a time, for the fields below
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(uintptr) bool
}

func (d *directIO) init(rc syscall.RawConn) {
	d.rc = rc
	d.readFn, d.writeFn = d.doRead, d.doWrite
}

func (d *directIO) doRead(fd uintptr) bool {
	n, e := rawRead(int(fd), d.rbuf)
	switch e {
	case 0:
		d.rn = n
	case syscall.EAGAIN:
		return false
	default:
		d.rerr = e
	}
	return true
}

func (d *directIO) doWrite(fd uintptr) bool {
	for d.wn < len(d.wbuf) {
		n, e := rawWrite(int(fd), d.wbuf[d.wn:])
		switch e {
		case 0:
			d.wn += n
		case syscall.EAGAIN:
			return false
		default:
			d.werr = e
			return true
		}
	}
	return true
}

// Read reads into b like a net.Conn, with errors wrapped by wrap.
func (d *directIO) Read(b []byte, wrap func(op string, err error) error) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	d.rmu.Lock()
	d.rbuf, d.rn, d.rerr = b, 0, 0
	err := d.rc.Read(d.readFn)
	n, e := d.rn, d.rerr
	d.rbuf = nil
	d.rmu.Unlock()
	return ioResult("read", n, e, err, wrap)
}

// Write writes all of b like a net.Conn, with errors wrapped by wrap.
func (d *directIO) Write(b []byte, wrap func(op string, err error) error) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	d.wmu.Lock()
	d.wbuf, d.wn, d.werr = b, 0, 0
	err := d.rc.Write(d.writeFn)
	n, e := d.wn, d.werr
	d.wbuf = nil
	d.wmu.Unlock()
	return ioResult("write", n, e, err, wrap)
}

// ioResult turns a read's or write's count, error number and error from
// waiting into what a net.Conn returns.
func ioResult(op string, n int, e syscall.Errno, err error, opError func(string, error) error) (int, error) {
	switch {
	case err != nil:
		return n, opError(op, err)
	case e != 0:
		return n, opError(op, os.NewSyscallError(op, e))
	case op == "read" && n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// rawTCP is a dialed TCP connection that reads and writes with directIO.
// It carries the upstream side of TLS connections.
type rawTCP struct {
	*net.TCPConn
	dio directIO
}

// rawIO returns c reading and writing with directIO if it is a TCP
// connection, else c itself.
func rawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawTCP{TCPConn: tc}
	r.dio.init(rc)
	return r
}

// Read reads like net.TCPConn.Read.
func (c *rawTCP) Read(b []byte) (int, error) { return c.dio.Read(b, c.opError) }

// Write writes like net.TCPConn.Write.
func (c *rawTCP) Write(b []byte) (int, error) { return c.dio.Write(b, c.opError) }

// opError wraps err the way net.TCPConn does. RawConn's own errors (a
// passed deadline, a closed connection) come wrapped for a "raw-read" or
// "raw-write": they are rewrapped, so that messages read as usual.
func (c *rawTCP) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
