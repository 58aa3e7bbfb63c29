package app

import (
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
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// SupervisorOptions are what Supervise needs besides the plan.
type SupervisorOptions struct {
	// Args are the run command's arguments, which every worker gets.
	Args []string
	// Logger is the supervisor's logger.
	Logger *zap.Logger
	// Stdout and Stderr are the workers' outputs.
	Stdout, Stderr io.Writer
	// Getenv reads the environment (GOMAXPROCS).
	Getenv func(string) string
}

// namedAddr is a client listener of the plan.
type namedAddr struct{ name, addr string }

// listenerAddrs are the client listeners of pl, in the order in which
// runtime.listen opens them.
func listenerAddrs(pl *Plan) []namedAddr {
	var out []namedAddr
	if len(pl.routes) > 0 || pl.upstream != nil {
		out = append(out, namedAddr{"listen", pl.cfg.Listen})
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

func (f *sharedFiles) close() {
	for _, file := range f.all {
		_ = file.Close()
	}
	f.all = nil
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
			f, err := listenerFile(ul)
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
			f, err := listenerFile(ln.(*net.TCPListener))
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

// Supervise opens pl's listeners, starts pl's workers on them and serves
// the admin endpoints for all of them until ctx ends (then it stops them,
// which drain as a single process does) or a worker exits on its own
// (then it stops the others and fails).
func Supervise(ctx context.Context, pl *Plan, o SupervisorOptions) error {
	logger, workers := o.Logger, pl.cfg.Workers
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--workers: cannot find this program to start workers: %w", err)
	}
	files, mainAddr, sockets, err := openShared(listenerAddrs(pl), workers, pl.socketMode)
	defer func() {
		files.close()
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
	if pl.cfg.Admin != "" {
		if adminLn, err = listen(pl.cfg.Admin, pl.socketMode); err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		defer adminLn.Close()
	}
	dir, err := os.MkdirTemp("", "mtlsproxy-workers-")
	if err != nil {
		return fmt.Errorf("--workers: %w", err)
	}
	defer os.RemoveAll(dir)
	// The workers hold the read end of this pipe and this process the
	// write end, which the kernel closes however this process ends: the
	// workers then read EOF and drain.
	parentR, parentW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("--workers: %w", err)
	}
	defer parentW.Close()

	procs := make([]*workerProc, workers)
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
	gomaxprocs := o.Getenv("GOMAXPROCS")
	setProcs := gomaxprocs == ""
	if setProcs {
		gomaxprocs = strconv.Itoa(max(1, goruntime.GOMAXPROCS(0)/workers))
	}
	for i := range procs {
		w := &workerProc{index: i, exited: make(chan struct{})}
		adminAddr := ""
		if pl.cfg.Admin != "" {
			w.admin = filepath.Join(dir, fmt.Sprintf("worker-%d.sock", i))
			adminAddr = "unix:" + w.admin
		}
		w.cmd = exec.Command(self, append([]string{"run"}, o.Args...)...)
		w.cmd.Env = append(os.Environ(), envWorkerIndex+"="+strconv.Itoa(i),
			envWorkerListeners+"="+strconv.Itoa(len(files.perWorker[i])), envWorkerAdmin+"="+adminAddr)
		if setProcs {
			w.cmd.Env = append(w.cmd.Env, "GOMAXPROCS="+gomaxprocs)
		}
		w.cmd.Stdout, w.cmd.Stderr = o.Stdout, o.Stderr
		w.cmd.ExtraFiles = append(append([]*os.File{}, files.perWorker[i]...), parentR)
		if err := w.cmd.Start(); err != nil {
			_ = parentR.Close()
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
	// The workers hold the listening sockets and the pipe's read end now.
	files.close()
	_ = parentR.Close()

	if adminLn != nil {
		adminSrv := &http.Server{Handler: supervisorAdmin(procs, pl.level), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: zap.NewStdLog(logger.Named("http").WithOptions(zap.IncreaseLevel(zap.WarnLevel)))}
		go func() { _ = adminSrv.Serve(adminLn) }()
		defer adminSrv.Close()
	}
	fields := []zap.Field{zap.Int("workers", workers)}
	if mainAddr != nil {
		fields = append(fields, zap.String("listen", ListenName(mainAddr)))
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
