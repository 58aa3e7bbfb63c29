package testutil

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// Client is a raw client connection that records every byte it
// receives.
type Client struct {
	t   testing.TB
	c   net.Conn
	rec *recorder
	br  *bufio.Reader
}

type recorder struct {
	r   io.Reader
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// Dial connects to addr; the connection is closed at the end of the
// test.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rec := &recorder{r: c}
	return &Client{t: t, c: c, rec: rec, br: bufio.NewReader(rec)}
}

// Send writes b in one Write.
func (c *Client) Send(b []byte) error {
	_ = c.c.SetWriteDeadline(time.Now().Add(Wait))
	_, err := c.c.Write(b)
	return err
}

// SendSplit writes b in two Writes, split at i.
func (c *Client) SendSplit(b []byte, i int) error {
	if err := c.Send(b[:i]); err != nil {
		return err
	}
	return c.Send(b[i:])
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// Received is every byte received so far.
func (c *Client) Received() []byte {
	c.rec.mu.Lock()
	defer c.rec.mu.Unlock()
	return bytes.Clone(c.rec.buf.Bytes())
}

// Response is one response as a client read it.
type Response struct {
	*http.Response
	// Body is the body read; BodyErr is why reading it stopped early,
	// if it did.
	Body    []byte
	BodyErr error
	// Informational counts the 1xx responses before this one.
	Informational int
}

// ReadResponse reads the next final response to a request with method,
// skipping 1xx responses, and its body, all before deadline.
func (c *Client) ReadResponse(method string, deadline time.Time) (*Response, error) {
	_ = c.c.SetReadDeadline(deadline)
	defer func() { _ = c.c.SetReadDeadline(time.Time{}) }()
	n1xx := 0
	for {
		resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
		if err != nil {
			return nil, err
		}
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			n1xx++
			continue
		}
		b, err := io.ReadAll(resp.Body)
		return &Response{Response: resp, Body: b, BodyErr: err, Informational: n1xx}, nil
	}
}

// Closed reports whether the peer closed the connection before deadline
// without sending anything more; if bytes arrive, it returns false and
// them.
func (c *Client) Closed(deadline time.Time) (bool, []byte) {
	_ = c.c.SetReadDeadline(deadline)
	defer func() { _ = c.c.SetReadDeadline(time.Time{}) }()
	b, err := c.br.ReadByte()
	if err == nil {
		rest, _ := c.br.Peek(c.br.Buffered())
		return false, append([]byte{b}, rest...)
	}
	return !errors.Is(err, os.ErrDeadlineExceeded), nil
}
