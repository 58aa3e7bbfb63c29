package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// fakeConn feeds scripted bytes to a FramingConn.
type fakeConn struct {
	net.Conn
	r io.Reader
}

func (c *fakeConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestFramingConnFlags(t *testing.T) {
	tests := []struct {
		name string
		wire string
		want []bool
	}{
		{"simple GETs", "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", []bool{false, false}},
		{"sized body then GET", "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n", []bool{false, false}},
		{"body that looks like a request", "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\nGET /x HTTP/1.1\r\nTransfer-Encoding: x\r\n\r\nGET / HTTP/1.1\r\n\r\n", []bool{false, false}},
		{"chunked with trailer then GET", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n", []bool{false, false}},
		{"CL and TE", "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", []bool{true, false}},
		{"TE then CL, any case", "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n", []bool{true}},
		{"CONNECT stops", "CONNECT a:443 HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Feed the bytes in awkward pieces to exercise line joining.
			fc := NewFramingConn(&fakeConn{r: iotestOneByte(strings.NewReader(tt.wire))})
			_, _ = io.ReadAll(fc)
			var got []bool
			for len(fc.flags) > 0 {
				got = append(got, fc.next())
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("flags = %v; want %v", got, tt.want)
			}
		})
	}
}

// iotestOneByte reads one byte at a time.
func iotestOneByte(r io.Reader) io.Reader { return &oneByte{r} }

type oneByte struct{ r io.Reader }

func (o *oneByte) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

func TestAmbiguousFramingRefused(t *testing.T) {
	set := pkitest.New(t)
	up := newUpstream(t, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %q", b)
	})
	id := newTestProxy(t, set, []string{"api.internal"}, resolveTo(up.port, "api.internal:"+up.port))
	p := id.handler
	conn, err := net.Dial("tcp", strings.TrimPrefix(serveProxy(t, p), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	target := "http://api.internal:" + up.port + "/"
	// A normal chunked POST first: it must pass and keep the connection.
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: api.internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", target)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != `got "abc"` {
		t.Fatalf("chunked POST: %d %q", resp.StatusCode, b)
	}
	seen := up.requests.Load()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: api.internal\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", target)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	wantError(t, resp, string(b), http.StatusBadRequest, CodeBadRequest, "both Content-Length and Transfer-Encoding")
	if !resp.Close {
		t.Errorf("response does not close the connection")
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := br.Read(make([]byte, 1)); err == nil {
		t.Errorf("connection still open after the refusal (read %d bytes)", n)
	}
	if got := up.requests.Load(); got != seen {
		t.Errorf("upstream saw %d more requests; want none", got-seen)
	}
}
