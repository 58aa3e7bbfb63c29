package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

// Error codes sent to the client in the X-Mtlsproxy-Error header. They are
// part of the user contract: scripts and dashboards match on them.
const (
	CodeHostNotAllowed      = "host-not-allowed"     // 403: no route allows the host, or CONNECT refused
	CodeUpstreamTLS         = "upstream-tls"         // 502: handshake or verification failed
	CodeUpstreamConnect     = "upstream-connect"     // 502: dial refused, DNS failure, connection broken
	CodeUpstreamTimeout     = "upstream-timeout"     // 504: dial, handshake or response-header timeout
	CodeIdentityUnavailable = "identity-unavailable" // 503: the route's identity is not loaded or has expired
	CodeBadRequest          = "bad-request"          // 400: malformed request or URL

	// codeInternal answers a panic in mtlsproxy itself.
	codeInternal = "internal"
	// codeClientClosed is logged, never sent: the client went away before
	// the upstream answered.
	codeClientClosed = "client-closed"
)

// ErrorHeader names the response header that carries the error code.
const ErrorHeader = "X-Mtlsproxy-Error"

// proxyError is an answer mtlsproxy gives itself instead of the
// upstream's: the one error type of every path, rendered one way
// (response and write share body and setHeaders).
type proxyError struct {
	status int
	code   string
	// msg is the one line the client reads after "mtlsproxy: ".
	msg string
	// cause, if any, is logged, never sent.
	cause error
}

func (e *proxyError) Error() string { return e.msg }

func (e *proxyError) Unwrap() error { return e.cause }

// response renders the error as an HTTP response to req: a one-line
// text/plain body that starts with "mtlsproxy:".
func (e *proxyError) response(req *http.Request) *http.Response {
	body := e.body()
	h := make(http.Header, 4)
	e.setHeaders(h, len(body))
	return &http.Response{
		StatusCode:    e.status,
		Status:        strconv.Itoa(e.status) + " " + http.StatusText(e.status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// write sends the error directly on w.
func (e *proxyError) write(w http.ResponseWriter) {
	body := e.body()
	e.setHeaders(w.Header(), len(body))
	w.WriteHeader(e.status)
	_, _ = io.WriteString(w, body)
}

func (e *proxyError) body() string { return "mtlsproxy: " + e.msg + "\n" }

func (e *proxyError) setHeaders(h http.Header, length int) {
	h["Content-Type"] = []string{"text/plain; charset=utf-8"}
	h["X-Content-Type-Options"] = []string{"nosniff"}
	h[ErrorHeader] = []string{e.code}
	h["Content-Length"] = []string{strconv.Itoa(length)}
}

func badRequest(format string, args ...any) *proxyError {
	return &proxyError{status: http.StatusBadRequest, code: CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

// ClassifyUpstreamError explains an error from dialing or handshaking with
// an upstream the way a client would be told: the status, the error code
// and a one-line message. hostport names the upstream in the message.
func ClassifyUpstreamError(err error, hostport string) (status int, code, msg string) {
	e := classifyUpstreamError(err, hostport)
	return e.status, e.code, e.msg
}

// classifyUpstreamError turns a Transport error into the error the client
// sees. hostport names the upstream in the message.
func classifyUpstreamError(err error, hostport string) *proxyError {
	tlsErr := func(format string, args ...any) *proxyError {
		return &proxyError{status: http.StatusBadGateway, code: CodeUpstreamTLS,
			msg: "upstream " + hostport + ": " + fmt.Sprintf(format, args...), cause: err}
	}
	connErr := func(format string, args ...any) *proxyError {
		return &proxyError{status: http.StatusBadGateway, code: CodeUpstreamConnect,
			msg: "upstream " + hostport + ": " + fmt.Sprintf(format, args...), cause: err}
	}

	var (
		unknownAuth x509.UnknownAuthorityError
		hostnameErr x509.HostnameError
		invalidErr  x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
		recordErr   tls.RecordHeaderError
		dnsErr      *net.DNSError
		opErr       *net.OpError
		peerErr     *tlsconf.VerifyError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return &proxyError{status: http.StatusBadGateway, code: codeClientClosed, msg: "client closed the request before the upstream answered"}
	case errors.As(err, &peerErr):
		return tlsErr("TLS handshake failed: %v", peerErr)
	case errors.As(err, &unknownAuth):
		issuer := ""
		if unknownAuth.Cert != nil {
			issuer = fmt.Sprintf(" (issuer %q)", unknownAuth.Cert.Issuer.String())
		}
		return tlsErr("TLS handshake failed: certificate signed by unknown authority%s; add its CA with --cacert (or to the route's trust bundle)", issuer)
	case errors.As(err, &hostnameErr):
		return tlsErr("TLS handshake failed: server name mismatch: %s; set --server-name if the upstream uses another name",
			strings.TrimPrefix(hostnameErr.Error(), "x509: "))
	case errors.As(err, &invalidErr):
		return tlsErr("TLS handshake failed: server certificate invalid: %s", strings.TrimPrefix(invalidErr.Error(), "x509: "))
	case errors.As(err, &verifyErr):
		return tlsErr("TLS handshake failed: server certificate verification failed: %v", verifyErr.Err)
	case errors.As(err, &recordErr):
		return tlsErr("TLS handshake failed: the upstream did not answer with TLS (is it a plain-HTTP port?)")
	case isTimeout(err):
		return &proxyError{status: http.StatusGatewayTimeout, code: CodeUpstreamTimeout,
			msg: "upstream " + hostport + ": " + timeoutPhase(err)}
	case errors.As(err, &dnsErr):
		return connErr("cannot resolve host %q: %s; use --resolve HOST:PORT:ADDR if it is not in DNS", dnsErr.Name, dnsErr.Err)
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		alert := strings.TrimPrefix(opErr.Err.Error(), "tls: ")
		if isClientCertAlert(alert) {
			return tlsErr("client certificate refused by upstream (TLS alert: %s)", alert)
		}
		return tlsErr("TLS handshake failed: upstream sent alert: %s", alert)
	case errors.Is(err, syscall.ECONNREFUSED):
		return connErr("connection refused")
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return connErr("connection closed by upstream before a response")
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return connErr("cannot connect: %v", opErr.Err)
	case errors.Is(err, errUnaskedSwitch):
		return connErr("invalid HTTP response from upstream: %v", err)
	case strings.HasPrefix(err.Error(), "net/http: HTTP/1.x transport connection broken: malformed"),
		strings.Contains(err.Error(), "malformed HTTP"), strings.Contains(err.Error(), "malformed MIME"):
		return connErr("invalid HTTP response from upstream")
	}
	return connErr("%s", strings.TrimPrefix(err.Error(), "net/http: "))
}

// clientErrorText says, without Go's internal wording, why reading a
// client's request body failed.
func clientErrorText(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "chunk"):
		return "malformed chunked encoding"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the body ended before its declared length"
	case strings.Contains(s, "too large"):
		return "the body is too large"
	case isTimeout(err):
		return "timed out waiting for the client to send it"
	}
	return "the client connection failed"
}

// isClientCertAlert reports whether a TLS alert sent by the server means it
// did not accept our client certificate.
func isClientCertAlert(alert string) bool {
	for _, s := range []string{"bad certificate", "unknown certificate authority", "certificate required",
		"certificate expired", "certificate revoked", "unsupported certificate", "unknown certificate",
		"access denied", "decrypt error"} {
		if alert == s {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func timeoutPhase(err error) string {
	var opErr *net.OpError
	s := err.Error()
	switch {
	case strings.Contains(s, "TLS handshake timeout"):
		return "TLS handshake timed out"
	case strings.Contains(s, "timeout awaiting response headers"):
		return "timed out waiting for response headers"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "connect timed out"
	}
	return "timed out: " + s
}
