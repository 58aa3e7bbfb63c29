package main

import (
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestBaselineRows(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"-proxies", "nginx,mtlsproxy-forward-workers,mtlsproxy-forward", "-cases", "keepalive",
		"-baseline", exe}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"mtlsproxy-forward", "mtlsproxy-forward@baseline", "mtlsproxy-forward-workers",
		"mtlsproxy-forward-workers@baseline", "nginx"}
	if !reflect.DeepEqual(o.Proxies, want) || o.Baseline != exe {
		t.Errorf("proxies %v, baseline %q; want %v", o.Proxies, o.Baseline, want)
	}
	w, _ := proxyByName("mtlsproxy-forward-workers")
	b, ok := proxyByName("mtlsproxy-forward-workers@baseline")
	if !ok || !b.Baseline || w.Baseline || b.ABOf != "mtlsproxy-forward-warn@baseline" ||
		!reflect.DeepEqual(b.mtlsArgs, w.mtlsArgs) || b.Forward != w.Forward || b.Peer {
		t.Errorf("baseline row %+v", b)
	}
	if _, ok := proxyByName("nginx@baseline"); ok {
		t.Error("a peer has a baseline row")
	}
	if _, ok := proxyByName("mtlsproxy-forward@baseline@baseline"); ok {
		t.Error("a baseline of a baseline row")
	}
	for _, args := range [][]string{
		{"-proxies", "nginx,haproxy", "-baseline", exe}, // no mtlsproxy row
		{"-baseline", "/nonexistent/mtlsproxy"},         // no such file
		{"-baseline", os.TempDir()},                     // a directory
		{"-proxies", "mtlsproxy-forward@baseline"},      // only through -baseline
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// Each row goes first once in n rounds, and the rows of an A/B pair next
// to each other take turns going first.
func TestRoundOrder(t *testing.T) {
	s := []string{"a", "b", "c", "d"}
	for r, want := range [][]string{{"a", "b", "c", "d"}, {"b", "a", "d", "c"}, {"c", "d", "a", "b"}, {"d", "c", "b", "a"}, {"a", "b", "c", "d"}} {
		if got := roundOrder(s, r+1); !reflect.DeepEqual(got, want) {
			t.Errorf("round %d: %v, want %v", r+1, got, want)
		}
	}
	if !reflect.DeepEqual(s, []string{"a", "b", "c", "d"}) {
		t.Errorf("roundOrder changed its input: %v", s)
	}
}

func TestPairComparisons(t *testing.T) {
	row := func(proxy string, rps float64) summary {
		s := summary{Proxy: proxy, Case: "keepalive", Level: "http", Rounds: 5, MedianRPS: rps, P99US: 2000, CPUPerReqUS: 40}
		s.Baseline = strings.HasSuffix(proxy, baselineSuffix)
		if strings.HasPrefix(proxy, "mtlsproxy-forward-workers") {
			s.ABOf = strings.Replace(proxy, "workers", "warn", 1)
		}
		return s
	}
	sums := []summary{
		row("mtlsproxy-forward", 10000),
		row("mtlsproxy-forward@baseline", 40000),
		row("mtlsproxy-forward-warn", 11000),
		row("mtlsproxy-forward-warn@baseline", 30000),
		row("mtlsproxy-forward-workers", 11500),
		row("mtlsproxy-forward-workers@baseline", 36000),
		{Proxy: "nginx", Case: "keepalive", Level: "http", Peer: true, Rounds: 5, MedianRPS: 20000, P99US: 1000, CPUPerReqUS: 20},
	}
	got := comparisons(sums)
	want := []string{
		// The best row of this binary, not the faster baseline.
		"keepalive: mtlsproxy-forward-workers 11,500 rps vs nginx 20,000 rps: 0.57×; p99 2.00 ms vs 1.00 ms; CPU 40.0 vs 20.0 µs/req",
		"keepalive: this binary against -baseline: " +
			"mtlsproxy-forward 0.25× mtlsproxy-forward@baseline (10,000 vs 40,000 rps; p99 2.00 ms vs 2.00 ms; CPU 40.0 vs 40.0 µs/req); " +
			"mtlsproxy-forward-warn 0.37× mtlsproxy-forward-warn@baseline (11,000 vs 30,000 rps; p99 2.00 ms vs 2.00 ms; CPU 40.0 vs 40.0 µs/req); " +
			"mtlsproxy-forward-workers 0.32× mtlsproxy-forward-workers@baseline (11,500 vs 36,000 rps; p99 2.00 ms vs 2.00 ms; CPU 40.0 vs 40.0 µs/req)",
		"keepalive: A/B mtlsproxy-forward-workers 1.05× mtlsproxy-forward-warn (11,500 vs 11,000 rps; p99 2.00 ms vs 2.00 ms; CPU 40.0 vs 40.0 µs/req); ≥ 1.10× (earns its place): no",
		"keepalive: A/B mtlsproxy-forward-workers@baseline 1.20× mtlsproxy-forward-warn@baseline (36,000 vs 30,000 rps; p99 2.00 ms vs 2.00 ms; CPU 40.0 vs 40.0 µs/req); ≥ 1.10× (earns its place): yes",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Round by round: the ratio within each round both rows completed.
	a := summary{Proxy: "a", RoundRPS: map[int]float64{1: 100, 2: 300, 3: 90, 4: 50}}
	b := summary{Proxy: "b", RoundRPS: map[int]float64{1: 100, 2: 200, 3: 100}}
	if got, want := roundRatios(&a, &b), "; round by round 0.90–1.50×, median 1.00×"; got != want {
		t.Errorf("roundRatios %q, want %q", got, want)
	}
	if got := roundRatios(&a, &summary{RoundRPS: map[int]float64{4: 10}}); got != "" {
		t.Errorf("one common round: %q", got)
	}
	// Without the row it is measured against, an A/B line is left out.
	if got := comparisons(append([]summary{}, sums[4], sums[6])); len(got) != 1 {
		t.Errorf("lone workers row: %q", got)
	}
}

func TestVCSRevision(t *testing.T) {
	if got := vcsRevision("/nonexistent/mtlsproxy"); got != "" {
		t.Errorf("missing binary: %q", got)
	}
	if got := vcsRevision("/proc/self/status"); got != "" {
		t.Errorf("not a Go binary: %q", got)
	}
}
