package main

import (
	"strings"
	"testing"
)

// Output of wrk 4.1 with --latency: a clean keep-alive run.
const wrkClean = `Running 5s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   705.06us  256.51us   9.77ms   86.31%
    Req/Sec    45.51k     2.52k   49.66k    80.00%
  Latency Distribution
     50%  660.00us
     75%  780.00us
     90%    0.93ms
     99%    1.56ms
  226385 requests in 5.00s, 35.84MB read
Requests/sec:  45273.08
Transfer/sec:      7.17MB
`

// A run with socket errors, error responses and latencies in seconds.
const wrkErrors = `Running 10s test @ http://127.0.0.1:8081/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   101.23ms  300.12ms    1.99s    95.00%
    Req/Sec   152.30     40.11   230.00     70.00%
  Latency Distribution
     50%   32.60ms
     75%   45.00ms
     90%  120.00ms
     99%    1.50s
  1523 requests in 10.01s, 210.44KB read
  Socket errors: connect 3, read 17, write 2, timeout 5
  Non-2xx or 3xx responses: 12
Requests/sec:    152.15
Transfer/sec:     21.02KB
`

func TestParseWrkClean(t *testing.T) {
	r, err := parseWrk(wrkClean)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 226385 || r.Seconds != 5 || r.RPS != 45273.08 {
		t.Errorf("requests %d in %vs at %v rps; want 226385 in 5s at 45273.08", r.Requests, r.Seconds, r.RPS)
	}
	want := map[string]float64{"50": 660, "75": 780, "90": 930, "99": 1560}
	for k, v := range want {
		if got := r.Latency[k]; !near(got, v) {
			t.Errorf("p%s = %v µs, want %v", k, got, v)
		}
	}
	if r.Errors() != 0 {
		t.Errorf("errors %d, want 0", r.Errors())
	}
	if r.TransferPerS != "7.17MB" {
		t.Errorf("transfer %q", r.TransferPerS)
	}
}

func TestParseWrkErrors(t *testing.T) {
	r, err := parseWrk(wrkErrors)
	if err != nil {
		t.Fatal(err)
	}
	if r.ConnectErrors != 3 || r.ReadErrors != 17 || r.WriteErrors != 2 || r.Timeouts != 5 || r.Non2xx != 12 {
		t.Errorf("errors %+v", r)
	}
	if r.Errors() != 3+17+2+5+12 {
		t.Errorf("Errors() = %d", r.Errors())
	}
	if !near(r.Latency["99"], 1.5e6) || !near(r.Latency["50"], 32600) {
		t.Errorf("latency %v", r.Latency)
	}
	if !near(r.Seconds, 10.01) || r.RPS != 152.15 {
		t.Errorf("seconds %v rps %v", r.Seconds, r.RPS)
	}
}

func TestParseWrkIncomplete(t *testing.T) {
	for name, out := range map[string]string{
		"empty":         "",
		"unable":        "unable to connect to 127.0.0.1:1 Connection refused\n",
		"no rps":        strings.Replace(wrkClean, "Requests/sec:  45273.08\n", "", 1),
		"no --latency":  strings.Replace(wrkClean, "     50%  660.00us\n     75%  780.00us\n     90%    0.93ms\n     99%    1.56ms\n", "", 1),
		"no requests":   strings.Replace(wrkClean, "  226385 requests in 5.00s, 35.84MB read\n", "", 1),
		"garbage lines": "Requests/sec: many\n",
	} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestWrkScript(t *testing.T) {
	got := wrkScript(wrkRequest{Path: "http://api.internal:8443/", Headers: map[string]string{
		"Host": "api.internal:8443", "Connection": "close"}})
	for _, want := range []string{
		`wrk.method = "GET"`,
		`wrk.path = "http://api.internal:8443/"`,
		`wrk.headers["Connection"] = "close"`,
		`wrk.headers["Host"] = "api.internal:8443"`,
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("script lacks %q:\n%s", want, got)
		}
	}
	if i, j := strings.Index(got, "Connection"), strings.Index(got, "Host"); i > j {
		t.Errorf("headers not sorted:\n%s", got)
	}
}

func TestLuaString(t *testing.T) {
	for in, want := range map[string]string{
		`/`:        `"/"`,
		`a"b\c`:    `"a\"b\\c"`,
		"x\ny\x7f": `"x\010y\127"`,
	} {
		if got := luaString(in); got != want {
			t.Errorf("luaString(%q) = %s, want %s", in, got, want)
		}
	}
}

func near(a, b float64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d <= 1e-6*max(1, b)
}
