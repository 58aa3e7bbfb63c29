// Command mtlsbench compares mtlsproxy with other mTLS-originating proxies
// (nginx, HAProxy, stunnel, ghostunnel, and mitmproxy for HTTPS clients
// through CONNECT) on this machine.
//
// It makes a throwaway PKI, starts an nginx upstream that requires a client
// certificate, builds and starts mtlsproxy in forward and gateway mode,
// starts every peer that is installed with an equivalent configuration,
// and drives each with wrk -t1 in interleaved rounds: keep-alive,
// connection-per-request and a 1 MiB body. It prints a markdown table
// (median requests per second, latency, CPU per request, memory, errors,
// upstream handshakes) and can write every measurement as JSON.
//
// Run it from the repository root:
//
//	go run ./cmd/mtlsbench -json results.json
//
// See docs/benchmarks.md for what each figure means.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// benchCase is one load pattern.
type benchCase struct {
	Name  string `json:"name"`
	Conns int    `json:"connections"`
	Close bool   `json:"connection_close"` // Connection: close on every request
	Path  string `json:"path"`
	Desc  string `json:"description"`
	// MITM: HTTPS clients through CONNECT, driven by the harness's own load
	// generator instead of wrk, against the MITM rows only.
	MITM bool `json:"mitm,omitempty"`
}

var allCases = []benchCase{
	{Name: "keepalive", Conns: 32, Path: smallPath, Desc: "keep-alive, 32 connections, 3-byte body"},
	{Name: "close", Conns: 16, Close: true, Path: smallPath, Desc: "one connection per request (Connection: close), 16 connections"},
	{Name: "large", Conns: 8, Path: largePath, Desc: "keep-alive, 8 connections, 1 MiB response body"},
	{Name: "mitm", Conns: 32, Path: smallPath, MITM: true,
		Desc: "HTTPS clients: CONNECT, TLS to the proxy with its local CA, keep-alive GETs inside, 32 connections"},
}

// options are the command-line flags.
type options struct {
	Duration        time.Duration
	Warmup          time.Duration
	Pause           time.Duration
	Rounds          int
	Threads         int
	JSON            string
	Proxies         []string
	Cases           []string
	Mtlsproxy       string
	Baseline        string // another mtlsproxy binary: every mtlsproxy row runs with it too
	MtlsproxyPkg    string
	GoCmd           string
	Wrk             string
	UpstreamWorkers string
	Workers         string
	Keep            bool
	Logs            bool
}

func main() {
	os.Exit(mainErr(os.Args[1:], os.Stdout, os.Stderr))
}

func mainErr(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "mtlsbench: %v\n", err)
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	procs := newProcGroup()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(stderr, "\nmtlsbench: %v: stopping every process and cleaning up (again to exit at once)\n", s)
		cancel()
		<-sigs
		procs.stopAll(0)
		os.Exit(130)
	}()

	b := &bench{opts: opts, procs: procs, stdout: stdout, log: stderr}
	err = b.run(ctx)
	b.cleanup()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "mtlsbench: interrupted")
			return 130
		}
		fmt.Fprintf(stderr, "mtlsbench: %v\n", err)
		return 1
	}
	if b.failed {
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("mtlsbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: go run ./cmd/mtlsbench [flags]

Compares mtlsproxy with nginx, HAProxy, stunnel and ghostunnel as mTLS
originators in front of one nginx mTLS upstream, driven by wrk -t1, and
mtlsproxy's connect: mitm with mitmproxy for HTTPS clients (case mitm,
driven by a load generator in the harness). Peers that are not installed
are skipped. Needs nginx, and wrk for every case but mitm:
  apt-get install -y nginx-light wrk haproxy stunnel4 mitmproxy

Proxies: %s
Cases: %s

Flags:
`, proxyNames(), caseNames())
		fs.PrintDefaults()
	}
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "measured wrk run per proxy, case and round (whole seconds)")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "unmeasured wrk run before each measured one (0: none)")
	fs.DurationVar(&o.Pause, "pause", time.Second, "idle time between runs")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds; each runs every case against every proxy, in an order that changes each round")
	fs.IntVar(&o.Threads, "threads", 1, "wrk threads (-t)")
	fs.StringVar(&o.JSON, "json", "", "write every measurement and the summary as JSON to this file")
	proxies := fs.String("proxies", "default", "comma-separated proxies to run, or \"default\" (all but the optional ones) or \"all\"")
	cases := fs.String("cases", "keepalive,close,large,mitm", "comma-separated cases to run")
	fs.StringVar(&o.Mtlsproxy, "mtlsproxy", "", "use this mtlsproxy binary instead of building one")
	fs.StringVar(&o.Baseline, "baseline", "", "also run every selected mtlsproxy row with this other mtlsproxy binary, as <row>"+baselineSuffix+", in the same rounds (an A/B of two versions)")
	fs.StringVar(&o.MtlsproxyPkg, "mtlsproxy-pkg", "./cmd/mtlsproxy", "package to build mtlsproxy from (run from the repository root)")
	fs.StringVar(&o.GoCmd, "go", "go", "go command used to build mtlsproxy")
	fs.StringVar(&o.Wrk, "wrk", "wrk", "wrk binary")
	fs.StringVar(&o.UpstreamWorkers, "upstream-workers", "auto", "worker_processes of the nginx upstream")
	fs.StringVar(&o.Workers, "nginx-workers", "auto", "worker_processes of nginx as a proxy")
	fs.BoolVar(&o.Keep, "keep", false, "keep the temporary directory (configs, PKI, logs)")
	fs.BoolVar(&o.Logs, "logs", false, "write mtlsproxy's log to a file in the temporary directory instead of /dev/null (implies -keep; costs more than /dev/null)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (see -help)", fs.Arg(0))
	}
	if o.Duration < time.Second {
		return o, fmt.Errorf("-duration %v: must be at least 1s (wrk runs whole seconds)", o.Duration)
	}
	if o.Warmup > 0 && o.Warmup < time.Second {
		return o, fmt.Errorf("-warmup %v: must be 0 or at least 1s", o.Warmup)
	}
	if o.Rounds < 1 || o.Threads < 1 {
		return o, errors.New("-rounds and -threads must be at least 1")
	}
	if o.Logs {
		o.Keep = true
	}
	var err error
	if o.Proxies, err = selectProxies(*proxies); err != nil {
		return o, err
	}
	if o.Cases, err = selectCases(*cases); err != nil {
		return o, err
	}
	if o.Proxies, err = proxiesForCases(o.Proxies, o.Cases); err != nil {
		return o, err
	}
	if o.Baseline != "" {
		if o.Baseline, err = filepath.Abs(o.Baseline); err != nil {
			return o, err
		}
		if fi, err := os.Stat(o.Baseline); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return o, fmt.Errorf("-baseline %s: not an executable file", o.Baseline)
		}
		if o.Proxies, err = withBaselines(o.Proxies); err != nil {
			return o, err
		}
	}
	return o, nil
}

func proxyNames() string {
	var n []string
	for _, p := range allProxies {
		if p.Optional {
			n = append(n, p.Name+" (optional)")
		} else {
			n = append(n, p.Name)
		}
	}
	return strings.Join(n, ", ")
}

func caseNames() string {
	var n []string
	for _, c := range allCases {
		n = append(n, c.Name+" ("+c.Desc+")")
	}
	return strings.Join(n, "; ")
}

// selectProxies turns the -proxies value into names, in table order.
func selectProxies(v string) ([]string, error) {
	want := map[string]bool{}
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "":
		case "default", "all":
			for _, p := range allProxies {
				if s == "all" || !p.Optional {
					want[p.Name] = true
				}
			}
		default:
			found := false
			for _, p := range allProxies {
				if p.Name == s {
					found = true
				}
			}
			if !found {
				return nil, fmt.Errorf("-proxies: unknown proxy %q (known: %s)", s, proxyNames())
			}
			want[s] = true
		}
	}
	var out []string
	for _, p := range allProxies {
		if want[p.Name] {
			out = append(out, p.Name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-proxies: no proxy selected")
	}
	return out, nil
}

// proxiesForCases keeps the proxies that run in at least one of the
// cases: MITM rows only in MITM cases, the others only in the rest.
func proxiesForCases(proxies, cases []string) ([]string, error) {
	var mitm, plain bool
	for _, name := range cases {
		c, _ := caseByName(name)
		mitm = mitm || c.MITM
		plain = plain || !c.MITM
	}
	var out []string
	for _, name := range proxies {
		p, _ := proxyByName(name)
		if (p.MITM && mitm) || (!p.MITM && plain) {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-proxies %s: none of them runs in -cases %s (mitm runs only mtlsproxy-mitm and mitmproxy)",
			strings.Join(proxies, ","), strings.Join(cases, ","))
	}
	return out, nil
}

func caseByName(name string) (benchCase, bool) {
	for _, c := range allCases {
		if c.Name == name {
			return c, true
		}
	}
	return benchCase{}, false
}

// proxyByName finds a row of allProxies, or the baseline twin of an
// mtlsproxy row (name ending in baselineSuffix).
func proxyByName(name string) (proxyDef, bool) {
	for _, p := range allProxies {
		if p.Name == name {
			return p, true
		}
		if p.mtlsArgs != nil && p.Name+baselineSuffix == name {
			return baselineDef(p), true
		}
	}
	return proxyDef{}, false
}

func selectCases(v string) ([]string, error) {
	want := map[string]bool{}
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		found := false
		for _, c := range allCases {
			if c.Name == s {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("-cases: unknown case %q (known: %s)", s, caseNames())
		}
		want[s] = true
	}
	var out []string
	for _, c := range allCases {
		if want[c.Name] {
			out = append(out, c.Name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("-cases: no case selected")
	}
	return out, nil
}

// roundOrder is the order in which the rows run in round r (from 1):
// round r starts with the r-th row, odd rounds go down the list and even
// rounds up it, so that each row goes first as often as any other and
// follows each of its two neighbours in about half the rounds (an A/B
// pair next to each other takes turns going first).
func roundOrder[T any](s []T, r int) []T {
	if r%2 == 1 {
		return rotate(s, r-1)
	}
	out := rotate(s, r)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// rotate returns s rotated left by n: round r starts with the r-th proxy,
// so that no proxy always runs first (on a cold machine) or right after
// the same neighbour.
func rotate[T any](s []T, n int) []T {
	if len(s) == 0 {
		return nil
	}
	n %= len(s)
	out := make([]T, 0, len(s))
	out = append(out, s[n:]...)
	return append(out, s[:n]...)
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}
