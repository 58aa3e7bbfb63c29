package proxy

// Writing the front's answers to the client.

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy/internal/h1"
)

func (fc *frontConn) writer() *bufio.Writer {
	if !fc.bwSet {
		fc.bw.Reset(fc.w)
		fc.bwSet = true
	}
	return fc.bw
}

// writeError answers with perr, rendered as everywhere else; it reports
// whether the connection is still usable.
func (fc *frontConn) writeError(perr *proxyError, closeAfter bool) bool {
	body := perr.body()
	h := make(http.Header, 6)
	perr.setHeaders(h, len(body))
	h["Date"] = []string{fc.f.date()}
	if closeAfter {
		h["Connection"] = []string{"close"}
	}
	bw := fc.writer()
	h1.WriteStatusLine(bw, perr.status)
	for k, vs := range h {
		h1.WriteHeader(bw, k, vs)
	}
	bw.WriteString("\r\n")
	bw.WriteString(body)
	return bw.Flush() == nil
}

// writeResponse copies resp to the client as Go's server would write the
// reference path's answer, flushing after every read that does not end
// the body, so that streamed responses flow. The head waits for the
// first byte of the body, so that a body that fails at once is answered
// with an error instead. It reports whether the connection is still
// usable.
func (fc *frontConn) writeResponse(resp *http.Response, ex *exchange, isHead, closeAfter bool, via string) bool {
	fc.f.s.Proxy.hook("response")
	ex.status = resp.StatusCode
	if resp.TLS != nil {
		ex.tlsVersion = resp.TLS.Version
	}
	removeHopHeaders(resp.Header, false)
	if via != "" {
		addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor, via)
	}
	code := resp.StatusCode
	bodyless := isHead || code == http.StatusNoContent || code == http.StatusNotModified
	chunked := !bodyless && resp.ContentLength < 0
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var n int
	var rerr error
	if !bodyless && resp.ContentLength != 0 {
		n, rerr = resp.Body.Read(buf)
		if n == 0 && rerr != nil && rerr != io.EOF {
			_ = resp.Body.Close()
			perr := &proxyError{status: http.StatusBadGateway, code: CodeUpstreamConnect,
				msg: "upstream " + ex.host + ": invalid response body", cause: rerr}
			ex.fail(perr, rerr)
			ex.status = perr.status
			_ = fc.writeError(perr, true)
			return false
		}
	}
	bw := fc.writer()
	ex.wrote = true
	h1.WriteStatusLine(bw, code)
	for k, vs := range resp.Header {
		if k == "Content-Length" && (!bodyless || code == http.StatusNoContent) {
			continue
		}
		if k == "Connection" || k == "Transfer-Encoding" {
			continue
		}
		h1.WriteHeader(bw, k, vs)
	}
	if _, ok := resp.Header["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.WriteString(fc.f.date())
		bw.WriteString("\r\n")
	}
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case !bodyless:
		var b [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(b[:0], resp.ContentLength, 10))
		bw.WriteString("\r\n")
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if bodyless || resp.ContentLength == 0 {
		_ = resp.Body.Close()
		return bw.Flush() == nil
	}
	for {
		if n > 0 {
			ex.bytesOut += int64(n)
			if chunked {
				var b [16]byte
				bw.Write(strconv.AppendInt(b[:0], int64(n), 16))
				bw.WriteString("\r\n")
			}
			_, werr := bw.Write(buf[:n])
			if chunked {
				bw.WriteString("\r\n")
			}
			if werr != nil {
				_ = resp.Body.Close()
				return false
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The upstream broke off: the client sees a short body and a
			// closed connection, as it would from the upstream itself.
			_ = resp.Body.Close()
			_ = bw.Flush()
			ex.detail = "upstream body: " + rerr.Error()
			return false
		}
		// More is to come, and the next read may wait for the upstream:
		// send what there is. (Go's body readers return the last bytes
		// together with io.EOF when the end is already buffered, so a
		// small response still goes out in one write.)
		if n > 0 && bw.Flush() != nil {
			_ = resp.Body.Close()
			return false
		}
		n, rerr = resp.Body.Read(buf)
	}
	_ = resp.Body.Close()
	if chunked {
		bw.WriteString("0\r\n")
		// Trailers are known once the body has been read.
		for k, vs := range resp.Trailer {
			h1.WriteHeader(bw, k, vs)
		}
		bw.WriteString("\r\n")
	}
	return bw.Flush() == nil
}

type cachedDate struct {
	unix int64
	text string
}

// date is the current time in the format of the Date header, as Go's
// server writes it; it is formatted once a second.
func (f *frontServer) date() string {
	now := time.Now()
	if d := f.dateCache.Load(); d != nil && d.unix == now.Unix() {
		return d.text
	}
	d := &cachedDate{unix: now.Unix(), text: now.UTC().Format(http.TimeFormat)}
	f.dateCache.Store(d)
	return d.text
}
