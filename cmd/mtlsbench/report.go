// This file is the harness's report (the summary, the markdown table, the
// comparison lines, the JSON); it is over 600 lines because each output
// is built from the same medians and is easier to keep consistent side by
// side.

package main

import (
	"bufio"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// machineInfo is the shape of the machine the figures come from.
type machineInfo struct {
	NumCPU    int               `json:"nproc"`
	CPUModel  string            `json:"cpu_model"`
	MemTotal  string            `json:"mem_total"`
	Kernel    string            `json:"kernel"`
	GoVersion string            `json:"go_version"`
	Versions  map[string]string `json:"versions"`
	Sysctls   map[string]string `json:"sysctls"`
	LoadStart string            `json:"loadavg_start"`
	LoadEnd   string            `json:"loadavg_end"`
}

type runConfig struct {
	Duration        string `json:"duration"`
	Warmup          string `json:"warmup"`
	Pause           string `json:"pause"`
	Rounds          int    `json:"rounds"`
	WrkThreads      int    `json:"wrk_threads"`
	UpstreamWorkers string `json:"upstream_worker_processes"`
	NginxWorkers    string `json:"nginx_proxy_worker_processes"`
	Baseline        string `json:"baseline_binary,omitempty"`
	ClockTicks      uint64 `json:"clock_ticks_per_second"`
	MtlsproxyLog    string `json:"mtlsproxy_log"`
}

type report struct {
	Machine machineInfo     `json:"machine"`
	Config  runConfig       `json:"config"`
	Cases   []benchCase     `json:"cases"`
	Proxies []*runningProxy `json:"proxies"`
	Summary []summary       `json:"summary"`
	Runs    []runResult     `json:"runs"`
	Notes   []string        `json:"notes,omitempty"`
	// Comparisons are the ratio lines printed below the table
	// (comparisons of Summary).
	Comparisons []string `json:"comparisons,omitempty"`
}

// summary is one table row: one proxy in one case, over every round.
type summary struct {
	Proxy      string  `json:"proxy"`
	Case       string  `json:"case"`
	Level      string  `json:"level"`
	Peer       bool    `json:"peer"`
	Baseline   bool    `json:"baseline,omitempty"` // the -baseline binary
	ABOf       string  `json:"ab_of,omitempty"`    // the row this one differs from by one switch
	Rounds     int     `json:"rounds"`             // measured runs that completed
	FailedRuns int     `json:"failed_runs"`
	MedianRPS  float64 `json:"median_rps"`
	MinRPS     float64 `json:"min_rps"`
	MaxRPS     float64 `json:"max_rps"`
	// RoundRPS is the rps of each round that completed, by round number:
	// A/B lines compare two rows round by round.
	RoundRPS     map[int]float64 `json:"rps_by_round,omitempty"`
	P50US        float64         `json:"median_p50_us"`
	P99US        float64         `json:"median_p99_us"`
	CPUPerReqUS  float64         `json:"median_cpu_us_per_request"`
	PeakRSS      uint64          `json:"max_peak_rss_bytes"`
	IdleRSS      uint64          `json:"idle_rss_bytes"`
	Requests     uint64          `json:"requests"`
	Errors       uint64          `json:"errors"`
	WarmupErrors uint64          `json:"warmup_errors"`
	// Handshakes: upstream TLS handshakes that succeeded during the
	// warm-ups and the measured runs of every round; nil where not known
	// (peers). HandshakesRun is the part during the measured runs.
	Handshakes      *float64 `json:"upstream_handshakes,omitempty"`
	HandshakesRun   *float64 `json:"upstream_handshakes_measured,omitempty"`
	HandshakeErrors *float64 `json:"upstream_handshake_errors,omitempty"`
}

// summarize makes one row per proxy and case, in proxy order within each
// case.
func summarize(proxies []*runningProxy, cases []benchCase, runs []runResult) []summary {
	var out []summary
	for _, c := range cases {
		for _, rp := range proxies {
			s := summary{Proxy: rp.Name, Case: c.Name, Level: rp.Level, Peer: rp.def.Peer, Baseline: rp.def.Baseline,
				ABOf: rp.def.ABOf, IdleRSS: rp.IdleRSS}
			var rps, p50, p99, cpu []float64
			for _, r := range runs {
				if r.Proxy != rp.Name || r.Case != c.Name {
					continue
				}
				s.WarmupErrors += r.WarmupErrors
				if r.HandshakesRun != nil {
					if s.Handshakes == nil {
						s.Handshakes, s.HandshakesRun, s.HandshakeErrors = new(float64), new(float64), new(float64)
					}
					for i, m := range []map[string]float64{r.HandshakesWarmup, r.HandshakesRun} {
						for k, v := range m {
							switch {
							case strings.Contains(k, `result="error"`):
								*s.HandshakeErrors += v
							case i == 1:
								*s.Handshakes += v
								*s.HandshakesRun += v
							default:
								*s.Handshakes += v
							}
						}
					}
				}
				if r.Error != "" {
					s.FailedRuns++
					continue
				}
				s.Rounds++
				if s.RoundRPS == nil {
					s.RoundRPS = map[int]float64{}
				}
				s.RoundRPS[r.Round] = r.Wrk.RPS
				rps = append(rps, r.Wrk.RPS)
				p50 = append(p50, r.Wrk.Latency["50"])
				p99 = append(p99, r.Wrk.Latency["99"])
				cpu = append(cpu, r.CPUPerReqUS)
				s.Requests += r.Wrk.Requests
				s.Errors += r.Wrk.Errors()
				s.PeakRSS = max(s.PeakRSS, r.PeakRSS)
			}
			if s.Rounds == 0 && s.FailedRuns == 0 {
				continue
			}
			s.MedianRPS, s.P50US, s.P99US, s.CPUPerReqUS = median(rps), median(p50), median(p99), median(cpu)
			if len(rps) > 0 {
				s.MinRPS, s.MaxRPS = rps[0], rps[0]
				for _, v := range rps {
					s.MinRPS, s.MaxRPS = min(s.MinRPS, v), max(s.MaxRPS, v)
				}
			}
			out = append(out, s)
		}
	}
	return out
}

func fmtLatency(us float64) string {
	switch {
	case us == 0:
		return "–"
	case us < 1000:
		return fmt.Sprintf("%.0f µs", us)
	case us < 1e6:
		return fmt.Sprintf("%.2f ms", us/1e3)
	default:
		return fmt.Sprintf("%.2f s", us/1e6)
	}
}

func fmtMiB(b uint64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(b)/(1<<20))
}

// fmtInt writes n with thin thousands separators: 45,273.
func fmtInt(f float64) string {
	s := strconv.FormatInt(int64(f+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func writeMarkdown(w io.Writer, r report) {
	m := r.Machine
	fmt.Fprintf(w, "## mtlsbench\n\n")
	fmt.Fprintf(w, "Machine: %d CPUs (%s), %s RAM, Linux %s, %s\n\n", m.NumCPU, m.CPUModel, m.MemTotal, m.Kernel, m.GoVersion)
	var names []string
	for k := range m.Versions {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "Versions:")
	for i, k := range names {
		sep := ";"
		if i == len(names)-1 {
			sep = ""
		}
		fmt.Fprintf(w, " %s: %s%s", k, m.Versions[k], sep)
	}
	fmt.Fprintf(w, "\n\nRun: wrk -t%d, %s per run after a %s warm-up, %d round(s), rows in an order that starts one row later each round and runs down the list in odd rounds, up it in even ones; upstream nginx worker_processes %s, nginx proxy worker_processes %s. wrk, the upstream and the proxy share the machine's CPUs. Load average at start %s, at end %s.\n\n",
		r.Config.WrkThreads, r.Config.Duration, r.Config.Warmup, r.Config.Rounds, r.Config.UpstreamWorkers,
		r.Config.NginxWorkers, m.LoadStart, m.LoadEnd)

	fmt.Fprintln(w, "| case | proxy | rps (median) | rps min–max | p50 | p99 | CPU µs/req | peak RSS MiB | idle RSS MiB | errors | upstream handshakes (warm-up + run) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, s := range r.Summary {
		hs := "–"
		if s.Handshakes != nil {
			hs = fmtInt(*s.Handshakes-*s.HandshakesRun) + " + " + fmtInt(*s.HandshakesRun)
			if *s.HandshakeErrors > 0 {
				hs += fmt.Sprintf(" (+%s failed)", fmtInt(*s.HandshakeErrors))
			}
		}
		errs := fmtInt(float64(s.Errors))
		if s.FailedRuns > 0 {
			errs += fmt.Sprintf(" (%d run(s) failed)", s.FailedRuns)
		}
		if s.WarmupErrors > 0 {
			errs += fmt.Sprintf(" (+%s in warm-up)", fmtInt(float64(s.WarmupErrors)))
		}
		cpu := "–"
		if s.CPUPerReqUS > 0 {
			cpu = fmt.Sprintf("%.1f", s.CPUPerReqUS)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s–%s | %s | %s | %s | %s | %s | %s | %s |\n",
			s.Case, s.Proxy, fmtInt(s.MedianRPS), fmtInt(s.MinRPS), fmtInt(s.MaxRPS),
			fmtLatency(s.P50US), fmtLatency(s.P99US), cpu, fmtMiB(s.PeakRSS), fmtMiB(s.IdleRSS), errs, hs)
	}
	fmt.Fprintln(w)
	if lines := comparisons(r.Summary); len(lines) > 0 {
		fmt.Fprintln(w, "mtlsproxy against the peers (best mtlsproxy row against the best peer row, by median rps; rows of the -baseline binary against the same row of this one; accelerator rows against the row without the switch):")
		fmt.Fprintln(w)
		for _, l := range lines {
			fmt.Fprintln(w, "- "+l)
		}
		fmt.Fprintln(w)
	}
	var skipped []string
	for _, p := range r.Proxies {
		if p.Status != "ok" {
			skipped = append(skipped, fmt.Sprintf("- %s %s: %s", p.Name, p.Status, oneLine(p.Note, 400)))
		}
	}
	if len(skipped) > 0 {
		fmt.Fprintln(w, "Not measured:")
		fmt.Fprintln(w)
		for _, s := range skipped {
			fmt.Fprintln(w, s)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "Rows:")
	fmt.Fprintln(w)
	for _, p := range r.Proxies {
		if p.Status == "ok" {
			fmt.Fprintf(w, "- %s (%s): %s\n", p.Name, p.Version, p.def.Note)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "rps, p50 and p99 are medians over the rounds; CPU µs/req is the proxy's user+system CPU time (all its processes) during the measured run divided by the requests wrk completed; peak RSS is the largest VmHWM (summed over processes) over the rounds; idle RSS is measured after start-up and one request; errors are wrk's socket errors, timeouts and responses with status ≥ 400 in the measured runs; upstream handshakes are mtlsproxy's successful upstream TLS handshakes (full or resumed, from its /metrics), summed over the rounds: during the warm-ups + during the measured runs.")
}

// oneLine joins the lines of s with " / " and keeps at most n bytes.
func oneLine(s string, n int) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return truncate(strings.Join(parts, " / "), n)
}

// mitmAim is the factor by which mtlsproxy-mitm should outrun mitmproxy
// (issue 10).
const mitmAim = 20.0

// comparisons say, per case, how the best mtlsproxy row does against the
// best peer (and, for one connection per request, against the best
// TCP-level tunnel).
func comparisons(sums []summary) []string {
	var out []string
	byCase := map[string][]summary{}
	var order []string
	for _, s := range sums {
		if _, ok := byCase[s.Case]; !ok {
			order = append(order, s.Case)
		}
		byCase[s.Case] = append(byCase[s.Case], s)
	}
	for _, c := range order {
		var ours, peer, tunnel, direct *summary
		for i := range byCase[c] {
			s := &byCase[c][i]
			if s.Rounds == 0 {
				continue
			}
			switch {
			case s.Level == "none":
				direct = s
			case s.Baseline:
			case !s.Peer:
				if ours == nil || s.MedianRPS > ours.MedianRPS {
					ours = s
				}
			case s.Level == "tcp":
				if tunnel == nil || s.MedianRPS > tunnel.MedianRPS {
					tunnel = s
				}
			}
			if s.Peer && (peer == nil || s.MedianRPS > peer.MedianRPS) {
				peer = s
			}
		}
		if ours == nil || peer == nil || peer.MedianRPS == 0 {
			continue
		}
		line := fmt.Sprintf("%s: %s %s rps vs %s %s rps: %.2f×; p99 %s vs %s; CPU %.1f vs %.1f µs/req",
			c, ours.Proxy, fmtInt(ours.MedianRPS), peer.Proxy, fmtInt(peer.MedianRPS), ours.MedianRPS/peer.MedianRPS,
			fmtLatency(ours.P99US), fmtLatency(peer.P99US), ours.CPUPerReqUS, peer.CPUPerReqUS)
		if c == "mitm" {
			ratio := ours.MedianRPS / peer.MedianRPS
			verdict := "met"
			if ratio < mitmAim {
				verdict = "not met"
			}
			line += fmt.Sprintf("; aim ≥ %.0f× rps: %s", mitmAim, verdict)
			if ours.CPUPerReqUS > 0 {
				line += fmt.Sprintf("; %.1f× less CPU per request", peer.CPUPerReqUS/ours.CPUPerReqUS)
			}
		}
		if c == "close" && tunnel != nil && tunnel.MedianRPS > 0 {
			line += fmt.Sprintf("; %.0f× the best TCP-level tunnel (%s, %s rps)", ours.MedianRPS/tunnel.MedianRPS, tunnel.Proxy, fmtInt(tunnel.MedianRPS))
		}
		if direct != nil && direct.MedianRPS > 0 {
			line += fmt.Sprintf("; with no proxy at all, %s rps: mtlsproxy reaches %.0f%% of it", fmtInt(direct.MedianRPS), 100*ours.MedianRPS/direct.MedianRPS)
		}
		out = append(out, line)
	}
	return append(out, pairComparisons(byCase, order)...)
}

// pairComparisons are, per case, the A/B lines: each row of this binary
// against the same row of the -baseline binary (new/old), and each
// accelerator row against the row it differs from by its switch alone,
// with whether it earns the 10% an accelerator must to be kept.
func pairComparisons(byCase map[string][]summary, order []string) []string {
	var out []string
	ratio := func(a, b *summary) string {
		return fmt.Sprintf("%s %.2f× %s (%s vs %s rps%s; p99 %s vs %s; CPU %.1f vs %.1f µs/req)", a.Proxy, a.MedianRPS/b.MedianRPS,
			b.Proxy, fmtInt(a.MedianRPS), fmtInt(b.MedianRPS), roundRatios(a, b), fmtLatency(a.P99US), fmtLatency(b.P99US),
			a.CPUPerReqUS, b.CPUPerReqUS)
	}
	for _, c := range order {
		rows := map[string]*summary{}
		for i := range byCase[c] {
			if s := &byCase[c][i]; s.Rounds > 0 && s.MedianRPS > 0 {
				rows[s.Proxy] = s
			}
		}
		var pairs []string
		for _, s := range byCase[c] {
			if base, old := rows[s.Proxy], rows[s.Proxy+baselineSuffix]; base != nil && old != nil {
				pairs = append(pairs, ratio(base, old))
			}
		}
		if len(pairs) > 0 {
			out = append(out, c+": this binary against -baseline: "+strings.Join(pairs, "; "))
		}
		for _, s := range byCase[c] {
			a, b := rows[s.Proxy], rows[s.ABOf]
			if s.ABOf == "" || a == nil || b == nil {
				continue
			}
			verdict := "no"
			if a.MedianRPS >= 1.1*b.MedianRPS {
				verdict = "yes"
			}
			out = append(out, fmt.Sprintf("%s: A/B %s; ≥ 1.10× (earns its place): %s", c, ratio(a, b), verdict))
		}
	}
	return out
}

// roundRatios is "; round by round 0.91–1.30×, median 1.12×": the ratio
// of a's rps to b's within each round both completed (the two ran minutes
// apart at most, so a change in the machine's load mostly cancels), or ""
// for fewer than two such rounds.
func roundRatios(a, b *summary) string {
	var rs []float64
	for round, x := range a.RoundRPS {
		if y := b.RoundRPS[round]; y > 0 {
			rs = append(rs, x/y)
		}
	}
	if len(rs) < 2 {
		return ""
	}
	sort.Float64s(rs)
	return fmt.Sprintf("; round by round %.2f–%.2f×, median %.2f×", rs[0], rs[len(rs)-1], median(rs))
}

// vcsRevision is " (commit abcdef1)" for a Go binary built in a git
// checkout (" (commit abcdef1, modified)" with uncommitted changes), or "".
func vcsRevision(bin string) string {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return ""
	}
	var rev, mod string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			mod = s.Value
		}
	}
	if rev == "" {
		return ""
	}
	if len(rev) > 7 {
		rev = rev[:7]
	}
	if mod == "true" {
		return " (commit " + rev + ", modified)"
	}
	return " (commit " + rev + ")"
}

func writeJSON(file string, r report) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(data, '\n'), 0o644)
}

// parseMetric returns the series of one metric in Prometheus text format,
// keyed by their label set as written ("" for no labels).
func parseMetric(text, name string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var labels string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[:end+1], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another metric whose name starts with name
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[labels] = v
	}
	return out
}

// diffCounters is b - a per series; a series missing from a counts from 0.
func diffCounters(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range b {
		out[k] = v - a[k]
	}
	return out
}

func poolFromPEM(pemData []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemData)
	return p
}

func readLoadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// cpuModel is the first "model name" in the contents of /proc/cpuinfo.
func cpuModel(cpuinfo string) string {
	for _, line := range strings.Split(cpuinfo, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func gatherMachine(goCmd, wrkBin string) machineInfo {
	m := machineInfo{NumCPU: runtime.NumCPU(), CPUModel: "unknown", Versions: map[string]string{}, Sysctls: map[string]string{}}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = cpuModel(string(data))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				if f := strings.Fields(v); len(f) == 2 {
					if kb, err := strconv.ParseFloat(f[0], 64); err == nil {
						m.MemTotal = fmt.Sprintf("%.1f GiB", kb/(1<<20))
					}
				}
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	m.GoVersion = runtime.Version()
	if out, err := exec.Command(goCmd, "env", "GOVERSION").Output(); err == nil {
		if v := strings.TrimSpace(string(out)); v != "" {
			m.GoVersion = v
		}
	}
	for _, s := range []string{"net/ipv4/ip_local_port_range", "net/ipv4/tcp_tw_reuse", "net/core/somaxconn"} {
		if data, err := os.ReadFile("/proc/sys/" + s); err == nil {
			m.Sysctls[strings.ReplaceAll(s, "/", ".")] = strings.Join(strings.Fields(string(data)), " ")
		}
	}
	m.Versions["wrk"] = binaryVersion("wrk", wrkBin)
	for _, p := range allProxies {
		if p.Binary == nil {
			continue
		}
		if bin, ok := lookBinary(p.Binary); ok {
			m.Versions[p.Name] = binaryVersion(p.Name, bin)
		} else {
			m.Versions[p.Name] = "not installed"
		}
	}
	if bin, ok := lookBinary([]string{"openssl"}); ok {
		m.Versions["openssl"] = binaryVersion("openssl", bin)
	}
	return m
}

// binaryVersion asks a program for its version and keeps the line that
// names it.
func binaryVersion(name, bin string) string {
	var args []string
	switch name {
	case "nginx", "no-proxy":
		args = []string{"-v"}
	case "haproxy":
		args = []string{"-v"}
	case "stunnel":
		args = []string{"-version"}
	case "wrk":
		args = []string{"-v"}
	case "ghostunnel", "mitmproxy":
		args = []string{"--version"}
	case "openssl":
		args = []string{"version"}
	default: // mtlsproxy rows
		args = []string{"version"}
	}
	out, _ := exec.Command(bin, args...).CombinedOutput()
	return versionLine(name, string(out))
}

// versionLine picks the version out of a program's version output.
func versionLine(name, out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	pick := ""
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if pick == "" {
			pick = l
		}
		if name == "stunnel" && strings.HasPrefix(l, "stunnel ") {
			pick = l
			break
		}
	}
	switch name {
	case "nginx", "no-proxy":
		pick = strings.TrimPrefix(pick, "nginx version: ")
	case "wrk":
		if i := strings.Index(pick, " Copyright"); i >= 0 {
			pick = pick[:i]
		}
	case "haproxy":
		if i := strings.Index(pick, " - https://"); i >= 0 {
			pick = pick[:i]
		}
	}
	if pick == "" {
		return "unknown"
	}
	return pick
}
