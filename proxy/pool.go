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

// pooledBody lets io.Copy use a pooled buffer: it implements io.WriterTo,
// which io.Copy prefers over allocating its own buffer.
type pooledBody struct {
	io.ReadCloser
	ex *exchange // records an upstream read error; may be nil
}

var _ io.WriterTo = (*pooledBody)(nil)

func (b *pooledBody) WriteTo(w io.Writer) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := b.ReadCloser.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
			if m != n {
				return total, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			if b.ex != nil {
				b.ex.upstreamBodyErr = rerr
			}
			return total, rerr
		}
	}
}

// poolBody wraps resp.Body for pooled copying; an upstream read error is
// recorded in ex (which may be nil). Upgrades keep their read-write body,
// which goproxy needs.
func poolBody(resp *http.Response, ex *exchange) {
	if resp == nil || resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode == http.StatusSwitchingProtocols {
		return
	}
	resp.Body = &pooledBody{ReadCloser: resp.Body, ex: ex}
}

// finishBody ends an exchange whose access line cannot be written by
// ServeHTTP (requests inside an intercepted tunnel) once its response body
// is done.
type finishBody struct {
	io.ReadCloser
	ex   *exchange
	once sync.Once
}

func finishOnBody(resp *http.Response, ex *exchange) {
	if ex == nil || ex.finish == nil || resp == nil || resp.Body == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return
	}
	resp.Body = &finishBody{ReadCloser: resp.Body, ex: ex}
}

func (b *finishBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.ex.bytesOut += int64(n)
	if err != nil {
		b.done()
	}
	return n, err
}

func (b *finishBody) WriteTo(w io.Writer) (int64, error) {
	var n int64
	var err error
	if wt, ok := b.ReadCloser.(io.WriterTo); ok {
		n, err = wt.WriteTo(w)
	} else {
		n, err = io.Copy(w, b.ReadCloser)
	}
	b.ex.bytesOut += n
	b.done()
	return n, err
}

func (b *finishBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

func (b *finishBody) done() { b.once.Do(b.ex.finish) }
