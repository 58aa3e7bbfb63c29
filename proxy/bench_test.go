package proxy

import (
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// BenchmarkForward measures one keep-alive forward-mode GET through the
// proxy to an in-process mTLS upstream, including the JSON access log
// (written to io.Discard). The client, proxy and upstream share the
// machine, so compare runs with benchstat rather than reading ns/op alone.
func BenchmarkForward(b *testing.B) {
	for _, size := range []int{0, 16 << 10} {
		b.Run(map[int]string{0: "empty", 16 << 10: "16KiB"}[size], func(b *testing.B) {
			benchForward(b, size, false)
		})
	}
	// A connection to the proxy per request (the client sends
	// Connection: close), as with clients that do not keep connections.
	b.Run("empty-close", func(b *testing.B) { benchForward(b, 0, true) })
}

func benchForward(b *testing.B, size int, closeEach bool) {
	set := pkitest.New(b)
	payload := make([]byte, size)
	up := newUpstream(b, set.ServerTLS(), func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(payload)
	})
	id, err := tlsconf.LoadPEMIdentity("app", set.ClientCert, set.ClientKey)
	if err != nil {
		b.Fatal(err)
	}
	route := NewRoute(RouteOptions{Name: "bench", Hosts: []HostPattern{mustParseHostPattern("api.internal")},
		Identity: id, RootCAs: set.CA.Pool(), Resolve: Resolve{"api.internal:" + up.port: "127.0.0.1:" + up.port},
		FastPath: testFastPath})
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	logger := zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
	p, err := New(Options{Routes: []*Route{route}, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	pu, _ := url.Parse(serveProxy(b, p))
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), MaxIdleConnsPerHost: 64,
		DisableKeepAlives: closeEach}}
	target := "http://api.internal:" + up.port + "/bench"

	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(target)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}
