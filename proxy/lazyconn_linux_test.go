//go:build linux && !386

package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// lazyPair returns a connection accepted by a rawListener on addr and
// the client's end of it.
func lazyPair(t *testing.T, network, addr string) (*lazyConn, net.Conn, *rawListener) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s: %v", addr, err)
	}
	fl := fastListener(ln)
	rl, ok := fl.(*rawListener)
	if !ok {
		t.Fatalf("fastListener gave %T; want *rawListener", fl)
	}
	t.Cleanup(func() { _ = rl.Close() })
	dialAddr := rl.Addr().String()
	if a := rl.Addr().(*net.TCPAddr); a.IP.IsUnspecified() {
		dialAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port))
	}
	client, err := net.Dial(network, dialAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	c, err := rl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*lazyConn), client, rl
}

func wantTimeout(t *testing.T, what string, err error) {
	t.Helper()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: %v (%T); want a net.Error timeout", what, err, err)
	}
	if !strings.HasPrefix(err.Error(), "read tcp") && !strings.HasPrefix(err.Error(), "write tcp") {
		t.Fatalf("%s: message %q; want it to read like a TCP connection's", what, err)
	}
}

// TestLazyConnActsLikeATCPConn checks a lazyConn against what Go's own
// TCP connections do, before and after it switches to the poller.
func TestLazyConnActsLikeATCPConn(t *testing.T) {
	c, client, _ := lazyPair(t, "tcp", "127.0.0.1:0")
	if c.RemoteAddr().String() != client.LocalAddr().String() || c.LocalAddr().String() != client.RemoteAddr().String() {
		t.Fatalf("addresses %v -> %v; client sees %v -> %v", c.RemoteAddr(), c.LocalAddr(), client.LocalAddr(), client.RemoteAddr())
	}
	// A deadline set before any wait applies without waiting.
	_ = c.SetReadDeadline(time.Unix(1, 0))
	_, err := c.Read(make([]byte, 8))
	wantTimeout(t, "read past deadline, direct", err)
	if c.f.Load() != nil {
		t.Fatal("a read past its deadline switched to the poller")
	}
	_ = c.SetReadDeadline(time.Time{})

	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.ReadAtLeast(c, buf, 5)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	// Nothing more to read: the read waits, on the poller, for its deadline.
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err = c.Read(buf)
	wantTimeout(t, "read with nothing to read", err)
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Fatalf("read gave up after %v; want it to wait for its deadline", d)
	}
	if c.f.Load() == nil {
		t.Fatal("a read that had to wait did not switch to the poller")
	}
	// Then data arrives and reads work again.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	go func() { _, _ = client.Write([]byte("again")) }()
	n, err = io.ReadAtLeast(c, buf, 5)
	if err != nil || string(buf[:n]) != "again" {
		t.Fatalf("read after the switch: %q, %v", buf[:n], err)
	}
	// A blocked read ends when another goroutine closes the connection.
	_ = c.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() { _, err := c.Read(buf); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read during close: %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close did not end a blocked read")
	}
	if err := c.Close(); err == nil {
		t.Fatal("second close succeeded")
	}
}

// TestLazyConnWritesWhatDoesNotFit checks that a write larger than the
// socket buffers arrives whole once the peer reads it, and that the peer
// closing is seen as EOF.
func TestLazyConnWritesWhatDoesNotFit(t *testing.T) {
	c, client, _ := lazyPair(t, "tcp", "127.0.0.1:0")
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the socket buffers fill
	got, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("client read %d bytes (%v); want %d intact", len(got), err, len(want))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// After CloseWrite the connection still reads; the client's close
	// reads as EOF.
	_, _ = client.Write([]byte("bye"))
	_ = client.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "bye" {
		t.Fatalf("read %q, %v; want \"bye\" then EOF", b, err)
	}
}

// TestLazyConnClosedBeforeWaiting checks a connection closed while it
// never waited: reads and writes say it is closed.
func TestLazyConnClosedBeforeWaiting(t *testing.T) {
	c, _, _ := lazyPair(t, "tcp", "127.0.0.1:0")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := c.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("set deadline after close: %v", err)
	}
}

// TestRawListenerAddresses checks the addresses of connections accepted
// on the unspecified address and over IPv6, and that closing the
// listener ends a waiting Accept.
func TestRawListenerAddresses(t *testing.T) {
	c, client, rl := lazyPair(t, "tcp4", "0.0.0.0:0")
	if c.LocalAddr().String() != client.RemoteAddr().String() {
		t.Errorf("local address %v; the client dialed %v", c.LocalAddr(), client.RemoteAddr())
	}
	errc := make(chan error, 1)
	go func() { _, err := rl.Accept(); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	_ = rl.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("accept after close: %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the listener did not end Accept")
	}

	c6, client6, _ := lazyPair(t, "tcp6", "[::1]:0")
	if c6.RemoteAddr().String() != client6.LocalAddr().String() || c6.LocalAddr().String() != client6.RemoteAddr().String() {
		t.Errorf("IPv6 addresses %v -> %v; client sees %v -> %v", c6.RemoteAddr(), c6.LocalAddr(), client6.LocalAddr(), client6.RemoteAddr())
	}
}
