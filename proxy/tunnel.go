package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// tunnel dials the route's upstream for a CONNECT and relays bytes both
// ways until both sides are done or the tunnel is idle for too long. The
// client's own TLS passes through; no identity is added.
func (p *Proxy) tunnel(req *http.Request, client net.Conn, route *Route, ex *exchange) {
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), route.timeouts.Dial)
	up, err := route.dial(ctx, "tcp", ex.host)
	cancel()
	if err != nil {
		perr := classifyUpstreamError(err, ex.host)
		ex.fail(perr, err)
		ex.status = perr.status
		resp := perr.response(req)
		resp.Header.Set("Connection", "close")
		_ = resp.Write(client)
		return
	}
	defer up.Close()
	if rm := route.metrics; rm != nil {
		rm.m.tunnels.Inc()
		defer rm.m.tunnels.Dec()
	}
	ex.status = http.StatusOK
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// A client that does not wait for the 200 (sending its ClientHello in
	// the same write as the CONNECT) has bytes in the server's buffer,
	// which the hijacked connection no longer returns.
	var early int64
	if br := ex.clientBuf; br != nil && br.Buffered() > 0 {
		b, _ := br.Peek(br.Buffered())
		if _, err := up.Write(b); err != nil {
			return
		}
		early = int64(len(b))
	}
	in, out := relay(client, up, route.timeouts.TunnelIdle)
	ex.bytesIn, ex.bytesOut = early+in, out
}

// relay copies a→b and b→a until both directions are done or no byte has
// moved for idle. When one side finishes sending, the other is told with a
// half-close, so protocols that rely on it keep working. The caller closes
// both connections.
func relay(a, b net.Conn, idle time.Duration) (aToB, bToA int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(2)
	pump := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			_ = src.SetReadDeadline(time.Now().Add(idle))
			k, err := src.Read(buf)
			if k > 0 {
				last.Store(time.Now().UnixNano())
				// A peer that stops reading must not pin the tunnel past
				// the idle limit once the socket buffers are full.
				_ = dst.SetWriteDeadline(time.Now().Add(idle))
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
				*n += int64(k)
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction is busy
				}
				break
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	go pump(b, a, &aToB)
	go pump(a, b, &bToA)
	wg.Wait()
	return aToB, bToA
}
