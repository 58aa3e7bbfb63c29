package main

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
)

const metricsText = `# HELP mtlsproxy_upstream_handshakes_total Full or resumed upstream TLS handshakes, by route and result (ok, error).
# TYPE mtlsproxy_upstream_handshakes_total counter
mtlsproxy_upstream_handshakes_total{result="error",route="forward"} 2
mtlsproxy_upstream_handshakes_total{result="ok",route="forward"} 33
mtlsproxy_upstream_handshakes_total_extra{result="ok"} 7
mtlsproxy_upstream_handshakes 9
mtlsproxy_requests_total{code="200",route="forward"} 1.2345e+06
`

func TestParseMetric(t *testing.T) {
	got := parseMetric(metricsText, "mtlsproxy_upstream_handshakes_total")
	want := map[string]float64{
		`{result="error",route="forward"}`: 2,
		`{result="ok",route="forward"}`:    33,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := parseMetric(metricsText, "mtlsproxy_requests_total"); got[`{code="200",route="forward"}`] != 1234500 {
		t.Errorf("requests: %v", got)
	}
	if got := parseMetric("plain_metric 4\n", "plain_metric"); got[""] != 4 {
		t.Errorf("no labels: %v", got)
	}
}

func TestDiffCounters(t *testing.T) {
	a := map[string]float64{"x": 3}
	b := map[string]float64{"x": 10, "y": 2}
	if got := diffCounters(a, b); !reflect.DeepEqual(got, map[string]float64{"x": 7, "y": 2}) {
		t.Errorf("got %v", got)
	}
}

func TestMedianRotate(t *testing.T) {
	if m := median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("odd median %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("even median %v", m)
	}
	if m := median(nil); m != 0 {
		t.Errorf("empty median %v", m)
	}
	s := []string{"a", "b", "c"}
	for n, want := range [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}} {
		if got := rotate(s, n); !reflect.DeepEqual(got, want) {
			t.Errorf("rotate %d = %v, want %v", n, got, want)
		}
	}
	if !reflect.DeepEqual(s, []string{"a", "b", "c"}) {
		t.Errorf("rotate changed its input: %v", s)
	}
}

func TestSelect(t *testing.T) {
	def, err := selectProxies("default")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range def {
		if n == "mtlsproxy-gateway-warn" {
			t.Error("default includes an optional proxy")
		}
	}
	all, _ := selectProxies("all")
	if len(all) != len(allProxies) {
		t.Errorf("all: %v", all)
	}
	got, err := selectProxies("haproxy, mtlsproxy-forward")
	if err != nil || !reflect.DeepEqual(got, []string{"mtlsproxy-forward", "haproxy"}) {
		t.Errorf("got %v, %v; want table order", got, err)
	}
	if _, err := selectProxies("envoy"); err == nil {
		t.Error("unknown proxy accepted")
	}
	if _, err := selectCases("keepalive,bogus"); err == nil {
		t.Error("unknown case accepted")
	}
	if got, _ := selectCases("large,keepalive"); !reflect.DeepEqual(got, []string{"keepalive", "large"}) {
		t.Errorf("cases %v", got)
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-duration", "5s", "-rounds", "1", "-logs"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration.Seconds() != 5 || o.Rounds != 1 || !o.Keep || len(o.Cases) != 4 {
		t.Errorf("got %+v", o)
	}
	for _, args := range [][]string{{"-duration", "500ms"}, {"-warmup", "10ms"}, {"-rounds", "0"}, {"extra"}} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestSummarize(t *testing.T) {
	proxies := []*runningProxy{
		{def: proxyDef{Name: "mtlsproxy-forward"}, Name: "mtlsproxy-forward", Level: "http", Status: "ok", IdleRSS: 10 << 20},
		{def: proxyDef{Name: "nginx", Peer: true}, Name: "nginx", Level: "http", Status: "ok"},
	}
	cases := []benchCase{{Name: "keepalive"}}
	run := func(proxy string, round int, rps, p99, cpu float64, hs float64) runResult {
		r := runResult{Round: round, Case: "keepalive", Proxy: proxy, CPUPerReqUS: cpu, PeakRSS: uint64(round) << 20,
			Wrk: wrkResult{RPS: rps, Requests: 100, Latency: map[string]float64{"50": p99 / 2, "99": p99}, ReadErrors: 1}}
		if proxy == "mtlsproxy-forward" {
			r.HandshakesWarmup = map[string]float64{`{result="ok",route="forward"}`: hs}
			r.HandshakesRun = map[string]float64{`{result="ok",route="forward"}`: 1, `{result="error",route="forward"}`: 1}
		}
		return r
	}
	runs := []runResult{
		run("mtlsproxy-forward", 1, 100, 10, 50, 30),
		run("nginx", 1, 200, 5, 20, 0),
		run("mtlsproxy-forward", 2, 300, 30, 40, 2),
		run("nginx", 2, 150, 6, 25, 0),
		run("mtlsproxy-forward", 3, 200, 20, 45, 0),
		{Round: 3, Case: "keepalive", Proxy: "nginx", Error: "wrk: killed"},
	}
	sums := summarize(proxies, cases, runs)
	if len(sums) != 2 {
		t.Fatalf("%d rows", len(sums))
	}
	m := sums[0]
	if m.Proxy != "mtlsproxy-forward" || m.Rounds != 3 || m.MedianRPS != 200 || m.MinRPS != 100 || m.MaxRPS != 300 ||
		m.P99US != 20 || m.CPUPerReqUS != 45 || m.PeakRSS != 3<<20 || m.IdleRSS != 10<<20 || m.Errors != 3 || m.Requests != 300 {
		t.Errorf("mtlsproxy row %+v", m)
	}
	if m.Handshakes == nil || *m.Handshakes != 30+2+0+3 || *m.HandshakesRun != 3 || *m.HandshakeErrors != 3 {
		t.Errorf("handshakes %v / %v / %v", m.Handshakes, m.HandshakesRun, m.HandshakeErrors)
	}
	n := sums[1]
	if n.Rounds != 2 || n.FailedRuns != 1 || n.MedianRPS != 175 || n.Handshakes != nil {
		t.Errorf("nginx row %+v", n)
	}

	var buf bytes.Buffer
	writeMarkdown(&buf, report{Summary: sums, Proxies: proxies})
	out := buf.String()
	for _, want := range []string{
		"| keepalive | mtlsproxy-forward | 200 | 100–300 | 10 µs | 20 µs | 45.0 | 3.0 | 10.0 | 3 | 32 + 3 (+3 failed) |",
		"| keepalive | nginx | 175 | 150–200 |",
		"(1 run(s) failed)",
		"keepalive: mtlsproxy-forward 200 rps vs nginx 175 rps: 1.14×",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatting(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 45273.08: "45,273", 1234567: "1,234,567"} {
		if got := fmtInt(in); got != want {
			t.Errorf("fmtInt(%v) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[float64]string{0: "–", 660: "660 µs", 1560: "1.56 ms", 1.5e6: "1.50 s"} {
		if got := fmtLatency(in); got != want {
			t.Errorf("fmtLatency(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestVersionLine(t *testing.T) {
	for _, tc := range []struct{ name, out, want string }{
		{"nginx", "nginx version: nginx/1.22.1\n", "nginx/1.22.1"},
		{"haproxy", "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\nStatus: long-term\n", "HAProxy version 2.6.12-1+deb12u4 2026/10/17"},
		{"stunnel", "Initializing inetd mode configuration\nstunnel 5.68 on x86_64-pc-linux-gnu platform\nCompiled with OpenSSL 3.0.9\n", "stunnel 5.68 on x86_64-pc-linux-gnu platform"},
		{"wrk", "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\nUsage: ...", "wrk debian/4.1.0-3+b2 [epoll]"},
		{"ghostunnel", "", "unknown"},
	} {
		if got := versionLine(tc.name, tc.out); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestCPUModel(t *testing.T) {
	info := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
	if got := cpuModel(info); got != "AMD EPYC 7B13" {
		t.Errorf("got %q", got)
	}
	if got := cpuModel(""); got != "unknown" {
		t.Errorf("empty: %q", got)
	}
}

// The no-proxy row is neither ours nor a peer: it only sets the ceiling
// that the best mtlsproxy row is measured against.
func TestComparisonsNoProxy(t *testing.T) {
	row := func(proxy, level string, peer bool, rps float64) summary {
		return summary{Proxy: proxy, Case: "close", Level: level, Peer: peer, Rounds: 3, MedianRPS: rps, P99US: 1000, CPUPerReqUS: 50}
	}
	sums := []summary{
		row("mtlsproxy-forward", "http", false, 12000),
		row("haproxy", "http", true, 10000),
		row("stunnel", "tcp", true, 1000),
		row("no-proxy", "none", false, 16000),
	}
	got := comparisons(sums)
	want := "close: mtlsproxy-forward 12,000 rps vs haproxy 10,000 rps: 1.20×; p99 1.00 ms vs 1.00 ms; CPU 50.0 vs 50.0 µs/req; " +
		"12× the best TCP-level tunnel (stunnel, 1,000 rps); with no proxy at all, 16,000 rps: mtlsproxy reaches 75% of it"
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	// A faster no-proxy row must not be taken for mtlsproxy's best.
	sums[3].MedianRPS = 99000
	if got := comparisons(sums); len(got) != 1 || !strings.HasPrefix(got[0], "close: mtlsproxy-forward 12,000 rps") {
		t.Errorf("no-proxy row taken as ours: %q", got)
	}
}
