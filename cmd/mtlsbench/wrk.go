package main

// Driving wrk and reading what it prints with --latency.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what one wrk run printed.
type wrkResult struct {
	Requests      uint64             `json:"requests"`
	Seconds       float64            `json:"seconds"` // wrk's own measured duration
	RPS           float64            `json:"rps"`
	Latency       map[string]float64 `json:"latency_us"` // "50", "75", "90", "99" -> microseconds
	ConnectErrors uint64             `json:"connect_errors"`
	ReadErrors    uint64             `json:"read_errors"`
	WriteErrors   uint64             `json:"write_errors"`
	Timeouts      uint64             `json:"timeouts"`
	Non2xx        uint64             `json:"non_2xx_3xx"`
	TransferPerS  string             `json:"transfer_per_sec"`
}

// Errors is every failed request wrk counted: socket errors, timeouts and
// responses with a status of 400 or more.
func (r wrkResult) Errors() uint64 {
	return r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.Timeouts + r.Non2xx
}

var (
	wrkRequestsRE = regexp.MustCompile(`^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h), `)
	wrkPercentRE  = regexp.MustCompile(`^\s*(\d+(?:\.\d+)?)%\s+([0-9.]+)(us|ms|s|m|h)\s*$`)
	wrkSocketRE   = regexp.MustCompile(`^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$`)
	wrkNon2xxRE   = regexp.MustCompile(`^\s*Non-2xx or 3xx responses: (\d+)\s*$`)
	wrkRPSRE      = regexp.MustCompile(`^\s*Requests/sec:\s+([0-9.]+)\s*$`)
	wrkTransferRE = regexp.MustCompile(`^\s*Transfer/sec:\s+(\S+)\s*$`)
)

// timeUnit converts a wrk time unit to microseconds.
var timeUnit = map[string]float64{"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

// parseWrk parses the output of wrk --latency. It needs at least the
// request count, Requests/sec and the latency distribution; the error
// lines appear only when there were errors.
func parseWrk(out string) (wrkResult, error) {
	r := wrkResult{Latency: map[string]float64{}}
	var sawRequests, sawRPS bool
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := wrkRequestsRE.FindStringSubmatch(line); m != nil {
			r.Requests, _ = strconv.ParseUint(m[1], 10, 64)
			v, _ := strconv.ParseFloat(m[2], 64)
			r.Seconds = v * timeUnit[m[3]] / 1e6
			sawRequests = true
		} else if m := wrkPercentRE.FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseFloat(m[2], 64)
			r.Latency[strings.TrimSuffix(strings.TrimSuffix(m[1], ".000"), ".00")] = v * timeUnit[m[3]]
		} else if m := wrkSocketRE.FindStringSubmatch(line); m != nil {
			r.ConnectErrors, _ = strconv.ParseUint(m[1], 10, 64)
			r.ReadErrors, _ = strconv.ParseUint(m[2], 10, 64)
			r.WriteErrors, _ = strconv.ParseUint(m[3], 10, 64)
			r.Timeouts, _ = strconv.ParseUint(m[4], 10, 64)
		} else if m := wrkNon2xxRE.FindStringSubmatch(line); m != nil {
			r.Non2xx, _ = strconv.ParseUint(m[1], 10, 64)
		} else if m := wrkRPSRE.FindStringSubmatch(line); m != nil {
			r.RPS, _ = strconv.ParseFloat(m[1], 64)
			sawRPS = true
		} else if m := wrkTransferRE.FindStringSubmatch(line); m != nil {
			r.TransferPerS = m[1]
		}
	}
	switch {
	case !sawRequests:
		return r, fmt.Errorf("wrk output has no %q line", "N requests in T")
	case !sawRPS:
		return r, fmt.Errorf("wrk output has no Requests/sec line")
	case r.Requests > 0 && (r.Latency["50"] == 0 && r.Latency["99"] == 0):
		return r, fmt.Errorf("wrk output has no latency distribution (run wrk with --latency)")
	}
	return r, nil
}

// wrkRequest is the request a case sends.
type wrkRequest struct {
	Path    string            // request target: "/" or an absolute URL
	Headers map[string]string // Host, Connection
}

// wrkScript is the Lua script that makes wrk send req. wrk builds each
// request line from wrk.path, so an absolute URL there gives the
// absolute-form request line of a client that uses HTTP_PROXY.
func wrkScript(req wrkRequest) string {
	var b strings.Builder
	b.WriteString("-- written by mtlsbench\n")
	fmt.Fprintf(&b, "wrk.method = %s\n", luaString("GET"))
	fmt.Fprintf(&b, "wrk.path = %s\n", luaString(req.Path))
	names := make([]string, 0, len(req.Headers))
	for k := range req.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "wrk.headers[%s] = %s\n", luaString(k), luaString(req.Headers[k]))
	}
	return b.String()
}

// luaString quotes s as a Lua string literal.
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// runWrk runs wrk -t threads -c conns for d against url with the script,
// and parses its output.
func runWrk(ctx context.Context, procs *procGroup, wrkBin, dir string, threads, conns int, d time.Duration, url string, req wrkRequest) (wrkResult, string, error) {
	script := filepath.Join(dir, fmt.Sprintf("wrk-%d.lua", time.Now().UnixNano()))
	if err := os.WriteFile(script, []byte(wrkScript(req)), 0o644); err != nil {
		return wrkResult{}, "", err
	}
	defer os.Remove(script)
	secs := int(d.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	args := []string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s",
		"--latency", "-s", script, url}
	cmd := exec.Command(wrkBin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := procs.run(ctx, cmd, d+30*time.Second); err != nil {
		return wrkResult{}, out.String(), fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	res, err := parseWrk(out.String())
	if err != nil {
		return res, out.String(), fmt.Errorf("%v; wrk printed:\n%s", err, out.String())
	}
	return res, out.String(), nil
}
