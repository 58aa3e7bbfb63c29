// This file is the harness's run from start to end (PKI, upstream, every
// proxy's start-up and check, the interleaved rounds, clean-up); it is
// over 600 lines so that one run reads top to bottom in one place.

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

// runningProxy is a proxy row: started, skipped or failed.
type runningProxy struct {
	def       proxyDef
	Name      string `json:"name"`
	Level     string `json:"level"`
	Forward   bool   `json:"forward"`
	Baseline  bool   `json:"baseline,omitempty"` // run with the -baseline binary
	Status    string `json:"status"`             // ok, skipped (not installed), failed
	Note      string `json:"note"`
	Version   string `json:"version,omitempty"`
	Command   string `json:"command,omitempty"`
	Config    string `json:"config_file,omitempty"`
	Port      int    `json:"port,omitempty"`
	AdminPort int    `json:"admin_port,omitempty"`
	IdleRSS   uint64 `json:"idle_rss_bytes,omitempty"`
	IdlePIDs  int    `json:"idle_processes,omitempty"`
	srv       *server
	logFile   string
	mitm      *mitmTarget // MITM rows: how clients reach the upstream through it
}

// runResult is one measured run of one proxy in one case.
type runResult struct {
	Round        int       `json:"round"`
	Case         string    `json:"case"`
	Proxy        string    `json:"proxy"`
	Start        time.Time `json:"start"`
	Error        string    `json:"error,omitempty"`
	Wrk          wrkResult `json:"wrk"`
	WarmupErrors uint64    `json:"warmup_errors"`
	WarmupReqs   uint64    `json:"warmup_requests"`
	CPUSeconds   float64   `json:"cpu_seconds"`
	CPUPerReqUS  float64   `json:"cpu_us_per_request"`
	Processes    int       `json:"processes"`
	LostPIDs     []int     `json:"lost_pids,omitempty"` // processes that exited during the run: their CPU is missing
	PeakRSS      uint64    `json:"peak_rss_bytes"`
	PeakReset    bool      `json:"peak_rss_reset"` // false: peak since the proxy started
	// Upstream TLS handshakes (mtlsproxy only), by series of
	// mtlsproxy_upstream_handshakes_total, during the warm-up and the run.
	HandshakesWarmup map[string]float64 `json:"handshakes_warmup,omitempty"`
	HandshakesRun    map[string]float64 `json:"handshakes_run,omitempty"`
}

type bench struct {
	opts   options
	procs  *procGroup
	stdout io.Writer
	log    io.Writer

	dir          string
	files        files
	nginxBin     string
	nginxV       string
	wrkBin       string
	upstreamPort int
	upstream     *server
	clk          uint64

	machine machineInfo
	cases   []benchCase
	proxies []*runningProxy
	runs    []runResult
	notes   []string
	failed  bool
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "mtlsbench: "+format+"\n", args...)
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, s)
	b.logf("%s", s)
}

func (b *bench) cleanup() {
	b.procs.stopAll(3 * time.Second)
	if b.dir == "" {
		return
	}
	if b.opts.Keep {
		b.logf("kept %s", b.dir)
		return
	}
	if err := os.RemoveAll(b.dir); err != nil {
		b.logf("remove %s: %v", b.dir, err)
	}
}

func (b *bench) run(ctx context.Context) error {
	b.clk = clockTicks()
	for _, name := range b.opts.Cases {
		for _, c := range allCases {
			if c.Name == name {
				b.cases = append(b.cases, c)
			}
		}
	}
	var ok bool
	needWrk := false
	for _, c := range b.cases {
		needWrk = needWrk || !c.MITM
	}
	if b.wrkBin, ok = lookBinary([]string{b.opts.Wrk}); !ok && needWrk {
		return fmt.Errorf("wrk not found (%q): apt-get install wrk", b.opts.Wrk)
	}
	if b.nginxBin, ok = lookBinary([]string{"nginx", "/usr/sbin/nginx"}); !ok {
		return errors.New("nginx not found: it is the upstream for every proxy; apt-get install nginx-light")
	}
	v, _ := exec.Command(b.nginxBin, "-V").CombinedOutput()
	b.nginxV = string(v)
	b.machine = gatherMachine(b.opts.GoCmd, b.wrkBin)

	var err error
	if b.dir, err = os.MkdirTemp("", "mtlsbench-"); err != nil {
		return err
	}
	// nginx workers run as an unprivileged user when nginx starts as root,
	// and serve the 1 MiB file from here. Private keys stay mode 0600.
	if err := os.Chmod(b.dir, 0o755); err != nil {
		return err
	}
	b.logf("working in %s", b.dir)
	if err := b.makeFiles(); err != nil {
		return err
	}

	// One port for the upstream, a listener and an admin port per proxy.
	ports, err := freePorts(1 + 2*len(b.opts.Proxies))
	if err != nil {
		return err
	}
	b.upstreamPort = ports[0]
	if err := b.startUpstream(ctx); err != nil {
		return err
	}

	var mtlsBin string
	for i, name := range b.opts.Proxies {
		def, _ := proxyByName(name)
		rp := &runningProxy{def: def, Name: def.Name, Level: def.Level, Forward: def.Forward, Note: def.Note,
			Baseline: def.Baseline, Port: ports[1+2*i]}
		b.proxies = append(b.proxies, rp)
		if def.mtlsArgs != nil && !def.Baseline && mtlsBin == "" {
			if mtlsBin, err = b.buildMtlsproxy(ctx); err != nil {
				return err
			}
		}
		if err := b.startProxy(ctx, rp, mtlsBin, ports[2+2*i]); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if rp.Status == "" {
				rp.Status = "failed"
				b.failed = true
			}
			rp.Note = err.Error()
			b.note("%s: %s", rp.Name, err)
			if rp.srv != nil {
				b.procs.stop(rp.srv)
			}
			continue
		}
		rp.Status = "ok"
		b.logf("%s ready on 127.0.0.1:%d (%s), idle RSS %.1f MiB in %d process(es)", rp.Name, rp.Port, rp.Version,
			float64(rp.IdleRSS)/(1<<20), rp.IdlePIDs)
	}
	var active []*runningProxy
	for _, rp := range b.proxies {
		if rp.Status == "ok" {
			active = append(active, rp)
		}
	}
	if len(active) == 0 {
		return errors.New("no proxy could be started")
	}

	total := 0
	for _, c := range b.cases {
		for _, rp := range active {
			if c.MITM == rp.def.MITM {
				total += b.opts.Rounds
			}
		}
	}
	per := b.opts.Duration + b.opts.Warmup + b.opts.Pause
	b.logf("%d runs of %v (+%v warm-up, %v pause): about %v", total, b.opts.Duration, b.opts.Warmup, b.opts.Pause,
		(time.Duration(total) * per).Round(time.Second))
	b.machine.LoadStart = readLoadavg()
	n := 0
	for round := 1; round <= b.opts.Rounds; round++ {
		for _, c := range b.cases {
			for _, rp := range roundOrder(active, round) {
				if err := ctx.Err(); err != nil {
					return err
				}
				if c.MITM != rp.def.MITM {
					continue
				}
				if done, werr := rp.srv.Exited(); done {
					if rp.Status == "ok" {
						rp.Status = "failed"
						rp.Note = fmt.Sprintf("exited during the benchmark: %v%s", werr, b.logTail(rp))
						b.failed = true
						b.note("%s: %s", rp.Name, rp.Note)
					}
					continue
				}
				n++
				res := b.measure(ctx, rp, c, round)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				b.runs = append(b.runs, res)
				if res.Error != "" {
					b.logf("[%d/%d] round %d %-9s %-22s error: %s", n, total, round, c.Name, rp.Name, res.Error)
				} else {
					b.logf("[%d/%d] round %d %-9s %-22s %9.0f rps  p99 %-9s  %.1f µs CPU/req  errors %d",
						n, total, round, c.Name, rp.Name, res.Wrk.RPS, fmtLatency(res.Wrk.Latency["99"]),
						res.CPUPerReqUS, res.Wrk.Errors())
				}
				if b.opts.Pause > 0 {
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(b.opts.Pause):
					}
				}
			}
		}
	}
	b.machine.LoadEnd = readLoadavg()

	sums := summarize(b.proxies, b.cases, b.runs)
	rep := report{Machine: b.machine, Config: b.config(), Cases: b.cases, Proxies: b.proxies,
		Summary: sums, Runs: b.runs, Notes: b.notes, Comparisons: comparisons(sums)}
	writeMarkdown(b.stdout, rep)
	if b.opts.JSON != "" {
		if err := writeJSON(b.opts.JSON, rep); err != nil {
			return fmt.Errorf("write %s: %v", b.opts.JSON, err)
		}
		b.logf("wrote %s", b.opts.JSON)
	}
	return nil
}

func (b *bench) config() runConfig {
	return runConfig{Duration: b.opts.Duration.String(), Warmup: b.opts.Warmup.String(), Pause: b.opts.Pause.String(),
		Rounds: b.opts.Rounds, WrkThreads: b.opts.Threads, UpstreamWorkers: b.opts.UpstreamWorkers,
		NginxWorkers: b.opts.Workers, Baseline: b.opts.Baseline, ClockTicks: b.clk, MtlsproxyLog: map[bool]string{true: "file", false: "/dev/null"}[b.opts.Logs]}
}

// makeFiles writes the throwaway PKI and the 1 MiB body.
func (b *bench) makeFiles() error {
	f := files{Dir: b.dir, WWW: filepath.Join(b.dir, "www")}
	ca, err := pki.NewCA("mtlsbench CA")
	if err != nil {
		return err
	}
	if f.CA, err = ca.WriteCert(b.dir, "ca"); err != nil {
		return err
	}
	server, err := ca.Issue(pki.LeafOptions{CommonName: upstreamHost, DNSNames: []string{upstreamHost, "localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		return err
	}
	if f.ServerCert, f.ServerKey, err = server.WriteFiles(b.dir, "server"); err != nil {
		return err
	}
	client, err := ca.Issue(pki.LeafOptions{CommonName: "mtlsbench-client", Client: true})
	if err != nil {
		return err
	}
	if f.ClientCert, f.ClientKey, err = client.WriteFiles(b.dir, "client"); err != nil {
		return err
	}
	f.ClientPEM = filepath.Join(b.dir, "client.pem")
	if err := os.WriteFile(f.ClientPEM, append(append([]byte{}, client.CertPEM...), client.KeyPEM...), 0o600); err != nil {
		return err
	}
	if err := os.Mkdir(f.WWW, 0o755); err != nil {
		return err
	}
	body := make([]byte, largeSize)
	if _, err := rand.Read(body); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.WWW, strings.TrimPrefix(largePath, "/")), body, 0o644); err != nil {
		return err
	}
	b.files = f
	return nil
}

// startNginx starts nginx with conf in dir, its output going to
// dir/stderr.log.
func (b *bench) startNginx(dir, conf string) (*server, string, error) {
	logFile := filepath.Join(dir, "stderr.log")
	out, err := os.Create(logFile)
	if err != nil {
		return nil, "", err
	}
	defer out.Close()
	cmd := exec.Command(b.nginxBin, "-p", dir+"/", "-c", conf, "-e", "stderr")
	cmd.Stdout, cmd.Stderr = out, out
	s, err := b.procs.start(cmd)
	return s, logFile, err
}

func (b *bench) startUpstream(ctx context.Context) error {
	dir := filepath.Join(b.dir, "upstream")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	conf, err := writeFile(dir, "nginx.conf", upstreamNginxConfig(dir, b.nginxV, b.opts.UpstreamWorkers, b.files, b.upstreamPort))
	if err != nil {
		return err
	}
	s, logFile, err := b.startNginx(dir, conf)
	if err != nil {
		return fmt.Errorf("start upstream nginx: %v", err)
	}
	b.upstream = s
	addr := "127.0.0.1:" + strconv.Itoa(b.upstreamPort)
	fail := func(err error) error {
		return fmt.Errorf("upstream nginx: %v%s", err, tail(logFile))
	}
	if err := waitAccept(ctx, addr, s, 30*time.Second); err != nil {
		return fail(err)
	}
	// A direct mTLS request proves the upstream works before any proxy
	// stands in front of it.
	cert, err := tls.LoadX509KeyPair(b.files.ClientCert, b.files.ClientKey)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(b.files.CA)
	if err != nil {
		return err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: upstreamHost, Certificates: []tls.Certificate{cert},
		RootCAs: poolFromPEM(caPEM)}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	if err := checkGet(ctx, tr, "https://"+addr+smallPath, []byte(smallBody)); err != nil {
		return fail(err)
	}
	b.logf("upstream nginx (worker_processes %s) ready on %s", b.opts.UpstreamWorkers, addr)
	return nil
}

func (b *bench) buildMtlsproxy(ctx context.Context) (string, error) {
	if b.opts.Mtlsproxy != "" {
		p, err := filepath.Abs(b.opts.Mtlsproxy)
		if err != nil {
			return "", err
		}
		return p, nil
	}
	out := filepath.Join(b.dir, "mtlsproxy")
	b.logf("building %s", b.opts.MtlsproxyPkg)
	cmd := exec.Command(b.opts.GoCmd, "build", "-buildvcs=true", "-o", out, b.opts.MtlsproxyPkg)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := b.procs.run(ctx, cmd, 10*time.Minute); err != nil {
		// -buildvcs=true fails outside a git checkout: try without.
		cmd = exec.Command(b.opts.GoCmd, "build", "-o", out, b.opts.MtlsproxyPkg)
		var buf2 bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf2, &buf2
		if err2 := b.procs.run(ctx, cmd, 10*time.Minute); err2 != nil {
			return "", fmt.Errorf("go build %s: %v\n%s(run mtlsbench from the repository root, or pass -mtlsproxy BINARY)",
				b.opts.MtlsproxyPkg, err2, buf2.String())
		}
	}
	return out, nil
}

// startProxy starts one proxy, waits until it serves a request end to end,
// and records its idle memory. A missing peer sets Status "skipped".
func (b *bench) startProxy(ctx context.Context, rp *runningProxy, mtlsBin string, adminPort int) error {
	def := rp.def
	dir := filepath.Join(b.dir, rp.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	var bin string
	switch {
	case def.Baseline:
		bin = b.opts.Baseline
	case def.mtlsArgs != nil:
		bin = mtlsBin
	default:
		var ok bool
		if bin, ok = lookBinary(def.Binary); !ok {
			rp.Status = "skipped"
			return fmt.Errorf("not installed (%s)", def.Install)
		}
	}
	rp.Version = binaryVersion(rp.Name, bin)
	if def.mtlsArgs != nil {
		rp.Version += vcsRevision(bin)
	}
	var cmd *exec.Cmd
	var err error
	logFile := filepath.Join(dir, "stderr.log")
	switch {
	case def.MITM:
		args, err := b.mitmCommand(rp, bin, dir, adminPort)
		if err != nil {
			return err
		}
		cmd = exec.Command(args[0], args[1:]...)
		if def.mtlsArgs != nil && !b.opts.Logs {
			logFile = ""
		}
	case def.mtlsArgs != nil:
		rp.AdminPort = adminPort
		cmd = exec.Command(bin, mtlsproxyArgs(def.mtlsArgs, b.files, rp.Port, adminPort, b.upstreamPort)...)
		if !b.opts.Logs {
			logFile = "" // stdout and stderr stay nil: /dev/null
		}
	case rp.Name == "nginx":
		rp.Config, err = writeFile(dir, "nginx.conf", nginxForwardConfig(dir, b.nginxV, b.opts.Workers, b.files, rp.Port, b.upstreamPort))
		if err != nil {
			return err
		}
		cmd = exec.Command(bin, "-p", dir+"/", "-c", rp.Config, "-e", "stderr")
	case rp.Name == "no-proxy":
		rp.Config, err = writeFile(dir, "nginx.conf", directNginxConfig(dir, b.nginxV, b.opts.Workers, b.files, rp.Port))
		if err != nil {
			return err
		}
		cmd = exec.Command(bin, "-p", dir+"/", "-c", rp.Config, "-e", "stderr")
	case rp.Name == "haproxy":
		if rp.Config, err = writeFile(dir, "haproxy.cfg", haproxyConfig(b.files, rp.Port, b.upstreamPort)); err != nil {
			return err
		}
		cmd = exec.Command(bin, "-db", "-f", rp.Config)
	case rp.Name == "stunnel":
		if rp.Config, err = writeFile(dir, "stunnel.conf", stunnelConfig(b.files, rp.Port, b.upstreamPort)); err != nil {
			return err
		}
		cmd = exec.Command(bin, rp.Config)
	case rp.Name == "ghostunnel":
		cmd = exec.Command(bin, ghostunnelArgs(b.files, rp.Port, b.upstreamPort)...)
	default:
		return fmt.Errorf("no way to start %s", rp.Name)
	}
	cmd.Dir = dir
	if logFile != "" {
		out, err := os.Create(logFile)
		if err != nil {
			return err
		}
		defer out.Close()
		cmd.Stdout, cmd.Stderr = out, out
		rp.logFile = logFile
	}
	rp.Command = strings.Join(cmd.Args, " ")
	if rp.srv, err = b.procs.start(cmd); err != nil {
		return fmt.Errorf("start: %v", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(rp.Port)
	if err := waitAccept(ctx, addr, rp.srv, 30*time.Second); err != nil {
		return fmt.Errorf("%v%s", err, b.logTail(rp))
	}
	if rp.AdminPort != 0 {
		if err := waitReady(ctx, "http://127.0.0.1:"+strconv.Itoa(rp.AdminPort)+"/readyz", rp.srv); err != nil {
			return fmt.Errorf("%v%s", err, b.logTail(rp))
		}
	}
	if rp.mitm != nil {
		// The upstream requires a client certificate: a 200 with its body
		// shows that the proxy presented one.
		if err := checkMITM(ctx, *rp.mitm, smallPath, []byte(smallBody)); err != nil {
			return fmt.Errorf("request through it failed: %v%s", err, b.logTail(rp))
		}
		time.Sleep(300 * time.Millisecond)
		u := snapshot(rp.srv.PID())
		rp.IdleRSS, rp.IdlePIDs = u.RSS, len(u.PIDs)
		return nil
	}
	tr := b.clientTransport(rp)
	defer tr.CloseIdleConnections()
	if err := checkGet(ctx, tr, b.targetURL(rp, smallPath), []byte(smallBody)); err != nil {
		return fmt.Errorf("request through it failed: %v%s", err, b.logTail(rp))
	}
	// Idle memory: after start-up and one small request, before any load.
	time.Sleep(300 * time.Millisecond)
	u := snapshot(rp.srv.PID())
	rp.IdleRSS, rp.IdlePIDs = u.RSS, len(u.PIDs)
	large, err := os.ReadFile(filepath.Join(b.files.WWW, strings.TrimPrefix(largePath, "/")))
	if err != nil {
		return err
	}
	if err := checkGet(ctx, tr, b.targetURL(rp, largePath), large); err != nil {
		return fmt.Errorf("1 MiB request through it failed: %v%s", err, b.logTail(rp))
	}
	return nil
}

func (b *bench) logTail(rp *runningProxy) string {
	if rp.logFile == "" {
		if rp.def.mtlsArgs != nil {
			return " (its log went to /dev/null: rerun with -logs to keep it)"
		}
		return ""
	}
	return tail(rp.logFile)
}

// tail is the end of a log file, indented, for an error message.
func tail(file string) string {
	data, err := os.ReadFile(file)
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return ""
	}
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return "\n  " + strings.ReplaceAll(strings.TrimSpace(string(data)), "\n", "\n  ")
}

// targetURL is the URL a client asks for through rp: an absolute URL to
// the upstream for a forward proxy, the proxy's own address otherwise.
func (b *bench) targetURL(rp *runningProxy, path string) string {
	if rp.Forward {
		return fmt.Sprintf("http://%s:%d%s", upstreamHost, b.upstreamPort, path)
	}
	return fmt.Sprintf("http://127.0.0.1:%d%s", rp.Port, path)
}

func (b *bench) clientTransport(rp *runningProxy) *http.Transport {
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	if rp.Forward {
		pu := &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(rp.Port)}
		tr.Proxy = http.ProxyURL(pu)
	}
	return tr
}

// wrkRequestFor is the request wrk sends to rp in case c.
func (b *bench) wrkRequestFor(rp *runningProxy, c benchCase) wrkRequest {
	req := wrkRequest{Path: c.Path, Headers: map[string]string{}}
	if rp.Forward {
		req.Path = b.targetURL(rp, c.Path)
		req.Headers["Host"] = fmt.Sprintf("%s:%d", upstreamHost, b.upstreamPort)
	}
	if c.Close {
		req.Headers["Connection"] = "close"
	}
	return req
}

// measure runs the warm-up and the measured run of one proxy in one case.
func (b *bench) measure(ctx context.Context, rp *runningProxy, c benchCase, round int) runResult {
	res := runResult{Round: round, Case: c.Name, Proxy: rp.Name, Start: time.Now().UTC()}
	pid := rp.srv.PID()
	url := fmt.Sprintf("http://127.0.0.1:%d/", rp.Port)
	req := b.wrkRequestFor(rp, c)
	res.PeakReset = resetPeakRSS(snapshot(pid).PIDs)
	hsPre := b.scrapeHandshakes(rp)
	load := func(d time.Duration) (wrkResult, error) {
		if c.MITM {
			return runMITMLoad(ctx, *rp.mitm, c.Conns, d, c.Path)
		}
		w, _, err := runWrk(ctx, b.procs, b.wrkBin, b.dir, b.opts.Threads, c.Conns, d, url, req)
		return w, err
	}
	if b.opts.Warmup > 0 {
		w, err := load(b.opts.Warmup)
		if err != nil {
			res.Error = "warm-up: " + err.Error()
			return res
		}
		res.WarmupErrors, res.WarmupReqs = w.Errors(), w.Requests
	}
	hs0 := b.scrapeHandshakes(rp)
	before := snapshot(pid)
	w, err := load(b.opts.Duration)
	after := snapshot(pid)
	hs1 := b.scrapeHandshakes(rp)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.Wrk = w
	ticks, lost := cpuTicksBetween(before, after)
	res.CPUSeconds = float64(ticks) / float64(b.clk)
	if w.Requests > 0 {
		res.CPUPerReqUS = res.CPUSeconds * 1e6 / float64(w.Requests)
	}
	res.Processes, res.LostPIDs = len(after.PIDs), lost
	res.PeakRSS = after.HWM
	if hsPre != nil && hs0 != nil && hs1 != nil {
		res.HandshakesWarmup, res.HandshakesRun = diffCounters(hsPre, hs0), diffCounters(hs0, hs1)
	}
	return res
}

// scrapeHandshakes reads mtlsproxy_upstream_handshakes_total from an
// mtlsproxy's admin listener; nil for other proxies or on failure.
func (b *bench) scrapeHandshakes(rp *runningProxy) map[string]float64 {
	if rp.AdminPort == 0 {
		return nil
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(rp.AdminPort) + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	return parseMetric(string(data), "mtlsproxy_upstream_handshakes_total")
}

// checkGet fetches u through tr and checks for a 200 with the body want.
func checkGet(ctx context.Context, tr *http.Transport, u string, want []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: reading body: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, truncate(string(body), 300))
	}
	if !bytes.Equal(body, want) {
		return fmt.Errorf("GET %s: body of %d bytes differs from the expected %d bytes", u, len(body), len(want))
	}
	return nil
}

// waitReady polls an mtlsproxy /readyz until it answers 200.
func waitReady(ctx context.Context, u string, s *server) error {
	deadline := time.Now().Add(30 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if done, werr := s.Exited(); done {
			return fmt.Errorf("exited: %v", werr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after 30s: %v", u, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
