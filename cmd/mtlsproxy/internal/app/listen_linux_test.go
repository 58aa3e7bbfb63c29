package app

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestListenDefersAccept checks that a TCP listener hands over a client
// connection once its first bytes are there, with those bytes ready to
// read, and still hands over a client that stays silent.
func TestListenDefersAccept(t *testing.T) {
	ln, err := listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	_ = rc.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT)
	})
	if gerr != nil || v == 0 {
		t.Fatalf("TCP_DEFER_ACCEPT = %d, %v; want it set", v, gerr)
	}
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()

	talker, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	select {
	case c := <-accepted:
		c.Close()
		t.Fatal("a connection that sent nothing yet was accepted at once")
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := talker.Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection that sent its request was not accepted")
	}
	defer c.Close()
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.ReadAtLeast(c, buf, 16)
	if err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("first read: %q, %v", buf[:n], err)
	}

	// A client that never speaks is handed over after the deferral, so
	// that the server's own timeouts deal with it.
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	select {
	case c := <-accepted:
		c.Close()
		t.Logf("silent client accepted after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("a silent client was never accepted")
	}
}
