package proxy

import (
	"io"
	"net/http"
	"sync"
)

// copyBufs are the buffers response bodies are copied through. Without
// them io.Copy allocates 32 KiB per request, which dominates the garbage
// the proxy makes.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// upstreamBody is an upstream response body on its way to the client. It
// records a read error that cuts the body short (goproxy ignores it, and
// the server would then end a chunked response cleanly, so the client
// would take a truncated body for a whole one), copies through a pooled
// buffer (io.Copy prefers io.WriterTo), and, inside an intercepted
// tunnel, counts the bytes and ends the exchange when the body is done.
type upstreamBody struct {
	io.ReadCloser
	ex   *exchange
	once sync.Once
}

var _ io.WriterTo = (*upstreamBody)(nil)

// wrapBody wraps resp.Body; ex may be nil. Upgrades keep their
// read-write body, which goproxy needs.
func wrapBody(resp *http.Response, ex *exchange) {
	if resp == nil || resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode == http.StatusSwitchingProtocols || ex == nil {
		return
	}
	resp.Body = &upstreamBody{ReadCloser: resp.Body, ex: ex}
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.count(int64(n))
	if err != nil {
		b.end(err)
	}
	return n, err
}

func (b *upstreamBody) WriteTo(w io.Writer) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := b.ReadCloser.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			b.count(int64(m))
			if werr != nil {
				b.end(nil)
				return total, werr
			}
			if m != n {
				b.end(nil)
				return total, io.ErrShortWrite
			}
		}
		if rerr != nil {
			b.end(rerr)
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

func (b *upstreamBody) Close() error {
	err := b.ReadCloser.Close()
	b.end(nil)
	return err
}

// count adds to the bytes sent to the client of an exchange inside an
// intercepted tunnel; elsewhere the response writer counts them.
func (b *upstreamBody) count(n int64) {
	if b.ex.finish != nil {
		b.ex.bytesOut += n
	}
}

// end records an upstream read error (io.EOF is none) and, inside an
// intercepted tunnel, ends the exchange.
func (b *upstreamBody) end(err error) {
	b.once.Do(func() {
		if err != nil && err != io.EOF {
			b.ex.upstreamBodyErr = err
		}
		if b.ex.finish != nil {
			b.ex.finish()
		}
	})
}
