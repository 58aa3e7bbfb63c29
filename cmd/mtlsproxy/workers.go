package main

// --workers N: a supervisor process opens the listeners and starts N
// copies of itself that serve them. Each worker is an ordinary `run`
// process that takes the listening sockets from its parent instead of
// opening them, and serves its admin endpoints on a private Unix socket;
// the supervisor's own admin listener answers for all of them.
//
// Why processes: Go's scheduler shares one network poller between its
// threads and hands ready connections from one thread to another, and on
// a machine where the clients and the upstream compete for the same CPUs
// that leaves CPUs idle between hand-offs. A worker with one scheduler
// thread waits on its own poller, like a thread of nginx or HAProxy.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy/admin"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// maxWorkers bounds --workers: far more than CPUs only adds processes.
const maxWorkers = 64

// The environment a worker is started with. MTLSPROXY_WORKER_INDEX marks
// a worker; the listening sockets are its file descriptors from 3 on, in
// the order of listenerAddrs.
const (
	envWorkerIndex     = "MTLSPROXY_WORKER_INDEX"
	envWorkerListeners = "MTLSPROXY_WORKER_LISTENERS"
	envWorkerAdmin     = "MTLSPROXY_WORKER_ADMIN"
)

func checkWorkers(n int, pprof bool) error {
	switch {
	case n < 1 || n > maxWorkers:
		return fmt.Errorf("%d: want 1 to %d", n, maxWorkers)
	case n > 1 && runtime.GOOS != "linux":
		return fmt.Errorf("%d: more than one worker is supported on Linux only", n)
	case n > 1 && pprof:
		return fmt.Errorf("%d: the profiler sees one process; profile with one worker", n)
	}
	return nil
}

// workerEnv is what a worker learns from its parent.
type workerEnv struct {
	index     int
	listeners []*os.File
	admin     string // unix:PATH, or "" when the parent has no admin listener
}

// workerFromEnv reports whether this process is a worker, and what it
// inherited.
func (c *cli) workerFromEnv() (*workerEnv, error) {
	idx := c.getenv(envWorkerIndex)
	if idx == "" {
		return nil, nil
	}
	w := &workerEnv{admin: c.getenv(envWorkerAdmin)}
	var err error
	if w.index, err = strconv.Atoi(idx); err != nil || w.index < 0 {
		return nil, fmt.Errorf("%s=%q: not a worker index", envWorkerIndex, idx)
	}
	n, err := strconv.Atoi(c.getenv(envWorkerListeners))
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%s=%q: not a count", envWorkerListeners, c.getenv(envWorkerListeners))
	}
	for i := range n {
		w.listeners = append(w.listeners, os.NewFile(uintptr(3+i), "listener"))
	}
	return w, nil
}

// inherit turns the next listening socket from the parent into a
// listener for addr. The parent read the same configuration a moment
// earlier; a socket on another port or path means that it changed since,
// and the worker refuses to serve what the parent did not check.
func (rt *proxyRuntime) inherit(name, addr string) (net.Listener, error) {
	if rt.nextFile >= len(rt.inherited) {
		return nil, fmt.Errorf("%s: the parent passed %d listening sockets, fewer than this configuration has", name, len(rt.inherited))
	}
	f := rt.inherited[rt.nextFile]
	rt.nextFile++
	ln, err := net.FileListener(f)
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: listening socket from the parent: %w", name, err)
	}
	if !sameListenAddr(addr, ln.Addr()) {
		_ = ln.Close()
		return nil, fmt.Errorf("%s: the configuration changed while the workers started: %s is to listen on %s, but the parent's socket is %s; start again",
			name, name, addr, listenName(ln.Addr()))
	}
	return ln, nil
}

// sameListenAddr reports whether a listener opened for addr may be got:
// the same unix path, or the same port (any port for :0).
func sameListenAddr(addr string, got net.Addr) bool {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return got.Network() == "unix" && got.String() == path
	}
	_, port, err := net.SplitHostPort(addr)
	_, gotPort, gerr := net.SplitHostPort(got.String())
	return err == nil && gerr == nil && (port == "0" || port == gotPort)
}

// namedAddr is a listener of the plan.
type namedAddr struct{ name, addr string }

// listenerAddrs are the client listeners of pl, in the order in which
// proxyRuntime.listen opens them.
func listenerAddrs(pl *plan) []namedAddr {
	var out []namedAddr
	if len(pl.routes) > 0 || pl.upstream != nil {
		out = append(out, namedAddr{"listen", pl.listen})
	}
	for _, g := range pl.gateways {
		out = append(out, namedAddr{g.name, g.listen})
	}
	return out
}

// sharedFiles are the listening sockets of the workers: perWorker[i] for
// worker i, in the order of listenerAddrs; all of them once each.
type sharedFiles struct {
	perWorker [][]*os.File
	all       []*os.File
}

// openShared opens the listeners for n workers. A TCP address gets one
// socket per worker, bound with SO_REUSEPORT, after a plain bind has shown
// that nothing else listens there (sockets with SO_REUSEPORT would share
// the port with another process of the same user without a word). A
// unix:PATH listener is one socket that every worker accepts from.
func openShared(addrs []namedAddr, n int, mode os.FileMode) (files sharedFiles, main net.Addr, sockets []string, err error) {
	files.perWorker = make([][]*os.File, n)
	for _, na := range addrs {
		ln, err := listen(na.addr, mode)
		if err != nil {
			return files, main, sockets, fmt.Errorf("%s: %w", na.name, err)
		}
		if main == nil {
			main = ln.Addr()
		}
		if ul, ok := ln.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
			sockets = append(sockets, strings.TrimPrefix(na.addr, "unix:"))
			f, err := ul.File()
			_ = ln.Close()
			if err != nil {
				return files, main, sockets, fmt.Errorf("%s: %w", na.name, err)
			}
			files.all = append(files.all, f)
			for i := range files.perWorker {
				files.perWorker[i] = append(files.perWorker[i], f)
			}
			continue
		}
		addr := ln.Addr().String() // the port chosen for :0
		_ = ln.Close()
		lc := net.ListenConfig{KeepAlive: -1, Control: reusePort}
		for i := range files.perWorker {
			ln, err := lc.Listen(context.Background(), "tcp", addr)
			if err != nil {
				return files, main, sockets, fmt.Errorf("%s: %w", na.name, err)
			}
			f, err := ln.(*net.TCPListener).File()
			_ = ln.Close()
			if err != nil {
				return files, main, sockets, fmt.Errorf("%s: %w", na.name, err)
			}
			files.all = append(files.all, f)
			files.perWorker[i] = append(files.perWorker[i], f)
		}
	}
	return files, main, sockets, nil
}

// workerProc is one started worker.
type workerProc struct {
	index  int
	cmd    *exec.Cmd
	admin  string // socket path, or ""
	exited chan struct{}
	err    error // cmd.Wait's result once exited is closed
}

// supervise opens pl's listeners, starts pl.workers workers on them and
// serves the admin endpoints for all of them until ctx ends (then it
// stops them, which drain as a single process does) or a worker exits on
// its own (then it stops the others and fails).
func (c *cli) supervise(ctx context.Context, pl *plan, args []string, logger *zap.Logger) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--workers: cannot find this program to start workers: %w", err)
	}
	files, mainAddr, sockets, err := openShared(listenerAddrs(pl), pl.workers, pl.socketMode)
	defer func() {
		for _, f := range files.all {
			_ = f.Close()
		}
		for _, p := range sockets {
			_ = os.Remove(p)
		}
	}()
	if err != nil {
		return err
	}
	// The admin listener too is opened before any worker starts, so that
	// a taken address fails the start as it does without workers.
	var adminLn net.Listener
	if pl.admin != "" {
		if adminLn, err = listen(pl.admin, pl.socketMode); err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		defer adminLn.Close()
	}
	dir, err := os.MkdirTemp("", "mtlsproxy-workers-")
	if err != nil {
		return fmt.Errorf("--workers: %w", err)
	}
	defer os.RemoveAll(dir)

	procs := make([]*workerProc, pl.workers)
	exits := make(chan *workerProc, len(procs))
	signalAll := func(sig os.Signal) {
		for _, w := range procs {
			if w != nil {
				_ = w.cmd.Process.Signal(sig)
			}
		}
	}
	waitAll := func() error {
		var errs []error
		for _, w := range procs {
			if w == nil {
				continue
			}
			<-w.exited
			if w.err != nil && !stoppedBySignal(w.err) {
				errs = append(errs, fmt.Errorf("worker %d: %w", w.index, w.err))
			}
		}
		return errors.Join(errs...)
	}
	// Unless GOMAXPROCS is set, the workers share this process's CPUs.
	gomaxprocs := c.getenv("GOMAXPROCS")
	setProcs := gomaxprocs == ""
	if setProcs {
		gomaxprocs = strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/pl.workers))
	}
	for i := range procs {
		w := &workerProc{index: i, exited: make(chan struct{})}
		if pl.admin != "" {
			w.admin = filepath.Join(dir, fmt.Sprintf("worker-%d.sock", i))
		}
		w.cmd = exec.Command(self, append([]string{"run"}, args...)...)
		adminAddr := ""
		if w.admin != "" {
			adminAddr = "unix:" + w.admin
		}
		w.cmd.Env = append(os.Environ(), envWorkerIndex+"="+strconv.Itoa(i),
			envWorkerListeners+"="+strconv.Itoa(len(files.perWorker[i])), envWorkerAdmin+"="+adminAddr)
		if setProcs {
			w.cmd.Env = append(w.cmd.Env, "GOMAXPROCS="+gomaxprocs)
		}
		w.cmd.Stdout, w.cmd.Stderr = c.stdout, c.stderr
		w.cmd.ExtraFiles = files.perWorker[i]
		w.cmd.SysProcAttr = workerSysProcAttr()
		if err := w.cmd.Start(); err != nil {
			signalAll(syscall.SIGTERM)
			_ = waitAll()
			return fmt.Errorf("start worker %d: %w", i, err)
		}
		procs[i] = w
		go func() {
			w.err = w.cmd.Wait()
			close(w.exited)
			exits <- w
		}()
		logger.Info("worker started", zap.Int("worker", i), zap.Int("pid", w.cmd.Process.Pid), zap.String("gomaxprocs", gomaxprocs))
	}
	// The workers hold the listening sockets now.
	for _, f := range files.all {
		_ = f.Close()
	}
	files.all = nil

	if adminLn != nil {
		adminSrv := &http.Server{Handler: supervisorAdmin(procs, pl.level), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: zap.NewStdLog(logger.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel)))}
		go func() { _ = adminSrv.Serve(adminLn) }()
		defer adminSrv.Close()
	}
	fields := []zap.Field{zap.Int("workers", pl.workers)}
	if mainAddr != nil {
		fields = append(fields, zap.String("listen", listenName(mainAddr)))
	}
	logger.Info("mtlsproxy started", fields...)

	// stop stops every worker, which drain, and waits for them.
	stop := func() error {
		signalAll(syscall.SIGTERM)
		err := waitAll()
		if err == nil {
			logger.Info("stopped")
		}
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			signalAll(syscall.SIGHUP)
		case w := <-exits:
			if ctx.Err() != nil || w.err == nil || stoppedBySignal(w.err) {
				// A signal to the whole process group (Ctrl-C, systemd)
				// may reach a worker first, or someone stopped one worker:
				// either way a clean stop, so all stop.
				logger.Info("a worker stopped; stopping the others", zap.Int("worker", w.index))
				return stop()
			}
			logger.Error("worker exited on its own; stopping the others", zap.Int("worker", w.index), zap.Error(w.err))
			_ = stop()
			return fmt.Errorf("worker %d exited on its own: %w", w.index, w.err)
		case <-ctx.Done():
			logger.Info("stopping the workers")
			return stop()
		}
	}
}

// stoppedBySignal reports whether a worker ended from SIGTERM or SIGINT
// itself: one that gets it before it has set up its handlers (still
// starting) is stopped, not failed.
func stoppedBySignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT)
}

// supervisorAdmin answers the admin endpoints for the workers: ready when
// every worker is, their metrics with a worker label, and a log level set
// on every worker.
func supervisorAdmin(procs []*workerProc, level zap.AtomicLevel) http.Handler {
	clients := make([]*http.Client, len(procs))
	for i, w := range procs {
		sock := w.admin
		clients[i] = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			DisableKeepAlives: true,
		}}
	}
	ready := func() error {
		for i, c := range clients {
			status, body, err := workerCall(c, http.MethodGet, "/readyz", "", nil)
			if err != nil {
				return fmt.Errorf("worker %d: %v", i, err)
			}
			if status != http.StatusOK {
				return fmt.Errorf("worker %d: %s", i, strings.TrimPrefix(strings.TrimSpace(body), "not ready: "))
			}
		}
		return nil
	}
	setLevel := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut {
			level.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The workers first: a level they refuse changes nothing here.
		for i, c := range clients {
			status, out, err := workerCall(c, http.MethodPut, "/loglevel", r.Header.Get("Content-Type"), body)
			switch {
			case err != nil || status >= 500:
				if err == nil {
					err = fmt.Errorf("%d %s", status, strings.TrimSpace(out))
				}
				http.Error(w, fmt.Sprintf("worker %d: %v", i, err), http.StatusBadGateway)
				return
			case status != http.StatusOK:
				// A bad request: every worker would refuse it, and so would
				// this process.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, out)
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		level.ServeHTTP(w, r)
	})
	return admin.Handler(admin.Options{Ready: ready, Gatherer: workerGatherer(clients), Level: level, LevelHandler: setLevel})
}

// workerCall makes one admin request to a worker.
func workerCall(c *http.Client, method, path, contentType string, body []byte) (int, string, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://worker"+path, rd)
	if err != nil {
		return 0, "", err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(out), err
}

// workerGatherer gathers every worker's metrics and labels each series
// with worker="N".
func workerGatherer(clients []*http.Client) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		byName := map[string]*dto.MetricFamily{}
		var errs []error
		for i, c := range clients {
			fams, err := workerMetrics(c)
			if err != nil {
				errs = append(errs, fmt.Errorf("worker %d: %w", i, err))
				continue
			}
			mergeFamilies(byName, fams, strconv.Itoa(i))
		}
		out := make([]*dto.MetricFamily, 0, len(byName))
		for _, f := range byName {
			out = append(out, f)
		}
		sort.Slice(out, func(a, b int) bool { return out[a].GetName() < out[b].GetName() })
		return out, errors.Join(errs...)
	})
}

// protoFormat asks promhttp for length-delimited protocol buffers.
const protoFormat = `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited`

func workerMetrics(c *http.Client) ([]*dto.MetricFamily, error) {
	req, err := http.NewRequest(http.MethodGet, "http://worker/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", protoFormat)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	var fams []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err != nil {
			if errors.Is(err, io.EOF) {
				return fams, nil
			}
			return nil, err
		}
		fams = append(fams, mf)
	}
}

// mergeFamilies adds fams to byName, each series labelled worker=index.
func mergeFamilies(byName map[string]*dto.MetricFamily, fams []*dto.MetricFamily, index string) {
	for _, f := range fams {
		for _, m := range f.Metric {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String("worker"), Value: proto.String(index)})
			sort.Slice(m.Label, func(a, b int) bool { return m.Label[a].GetName() < m.Label[b].GetName() })
		}
		if have, ok := byName[f.GetName()]; ok {
			have.Metric = append(have.Metric, f.Metric...)
		} else {
			byName[f.GetName()] = f
		}
	}
}
