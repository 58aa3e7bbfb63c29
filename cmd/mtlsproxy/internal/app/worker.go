package app

// --workers N: a supervisor process opens the listeners and starts N
// copies of itself that serve them. Each worker is an ordinary `run`
// process that takes the listening sockets from its supervisor instead of
// opening them, and serves its admin endpoints on a private unix socket;
// the supervisor's own admin listener answers for all of them.
//
// Why processes: Go's scheduler shares one network poller between its
// threads and hands ready connections from one thread to another, and on
// a machine where the clients and the upstream compete for the same CPUs
// that leaves CPUs idle between hand-offs. A worker with one scheduler
// thread waits on its own poller, like a thread of nginx or HAProxy.
//
// The hazards this owns: a listening socket is shared by every worker
// (one open file description), so nothing may switch it to blocking mode
// (see listenerFile); and a worker must not outlive its supervisor, which
// it learns from the pipe it inherits (see Worker.WatchParent).

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The environment a worker is started with. MTLSPROXY_WORKER_INDEX marks
// a worker; its listening sockets are its file descriptors from 3 on, in
// the order of listenerAddrs, and the read end of the supervisor's pipe
// follows them.
const (
	envWorkerIndex     = "MTLSPROXY_WORKER_INDEX"
	envWorkerListeners = "MTLSPROXY_WORKER_LISTENERS"
	envWorkerAdmin     = "MTLSPROXY_WORKER_ADMIN"
)

// Worker is what a worker process learns from its supervisor.
type Worker struct {
	// Index numbers the worker from 0, for its log lines.
	Index int
	// Admin is the worker's private admin listener, unix:PATH, or "" when
	// the supervisor has no admin listener.
	Admin string
	// Listeners are the listening sockets, for Options.Inherited.
	Listeners []*os.File
	// parent reads EOF once the supervisor is gone.
	parent *os.File
}

// WorkerFromEnv returns what this process inherited if it is a worker, or
// nil.
func WorkerFromEnv(getenv func(string) string) (*Worker, error) {
	idx := getenv(envWorkerIndex)
	if idx == "" {
		return nil, nil
	}
	w := &Worker{Admin: getenv(envWorkerAdmin)}
	var err error
	if w.Index, err = strconv.Atoi(idx); err != nil || w.Index < 0 {
		return nil, fmt.Errorf("%s=%q: not a worker index", envWorkerIndex, idx)
	}
	n, err := strconv.Atoi(getenv(envWorkerListeners))
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%s=%q: not a count", envWorkerListeners, getenv(envWorkerListeners))
	}
	for i := range n {
		w.Listeners = append(w.Listeners, os.NewFile(uintptr(3+i), "listener"))
	}
	// The pipe is blocking as inherited; non-blocking, a read waits in the
	// poller instead of holding a thread.
	fd := 3 + n
	if err := syscall.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("the supervisor's pipe (descriptor %d): %w", fd, err)
	}
	w.parent = os.NewFile(uintptr(fd), "supervisor")
	return w, nil
}

// WatchParent returns a context that ends with ctx or when the supervisor
// is gone, whatever killed it: the worker then drains and exits as on
// SIGTERM. Unlike a parent-death signal, the pipe tells of the supervisor
// itself, not of the thread that happened to start the worker.
func (w *Worker) WatchParent(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		// Nothing is ever written: Read returns at EOF.
		_, _ = io.Copy(io.Discard, w.parent)
	}()
	return ctx, func() {
		cancel()
		_ = w.parent.Close()
	}
}

// inherit turns the next listening socket from the supervisor into a
// listener for addr. The supervisor read the same configuration a moment
// earlier; a socket on another port or path means that it changed since,
// and the worker refuses to serve what the supervisor did not check.
func (rt *runtime) inherit(name, addr string) (net.Listener, error) {
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
			name, name, addr, ListenName(ln.Addr()))
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
