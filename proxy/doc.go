// Package proxy is the HTTP side of mtlsproxy: it turns plain-HTTP requests
// from local clients into HTTPS requests to allowed upstreams, presenting the
// route's client certificate. It wires goproxy, routes requests, answers
// errors with stable codes and writes the access log.
package proxy
