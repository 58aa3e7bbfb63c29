package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/app"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
)

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// inProcessRun is "mtlsproxy run" started in-process by a test, with the
// address of every listener it reported, by name ("listen", "admin", or a
// gateway's name).
type inProcessRun struct {
	mu     sync.Mutex
	addrs  map[string]string
	first  string // the first listener reported
	stdout *syncBuffer
	stderr *syncBuffer
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// addr is the address of the named listener.
func (r *inProcessRun) addr(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addrs[name]
}

// stop ends the run and returns its error; later calls return the same.
func (r *inProcessRun) stop(testing.TB) error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(35 * time.Second):
			r.err = errors.New("did not stop within 35s")
		}
	})
	return r.err
}

// startRunUntil runs "mtlsproxy run args..." in-process until the test
// ends, and returns once up says enough listeners are up (it is given the
// addresses so far). It fails the test if that does not happen in 10s, or
// if a listener is reported twice.
func startRunUntil(t testing.TB, up func(addrs map[string]string) bool, args ...string) *inProcessRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &inProcessRun{addrs: map[string]string{}, stdout: &syncBuffer{}, stderr: &syncBuffer{},
		cancel: cancel, done: make(chan error, 1)}
	reported := make(chan struct{}, 64)
	c := &cli{stdout: r.stdout, stderr: r.stderr, getenv: func(string) string { return "" },
		onListen: func(name string, a net.Addr) {
			r.mu.Lock()
			if _, dup := r.addrs[name]; dup {
				t.Errorf("listener %q reported twice", name)
			}
			r.addrs[name] = a.String()
			if r.first == "" {
				r.first = a.String()
			}
			r.mu.Unlock()
			select {
			case reported <- struct{}{}:
			default:
			}
		}}
	go func() { r.done <- c.main(ctx, append([]string{"run"}, args...)) }()
	timeout := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := up(r.addrs)
		r.mu.Unlock()
		if ok {
			break
		}
		select {
		case <-reported:
		case err := <-r.done:
			cancel()
			t.Fatalf("mtlsproxy run %v: exited before listening: %v\nstderr:\n%s", args, err, r.stderr)
		case <-timeout:
			cancel()
			t.Fatalf("mtlsproxy run %v: listeners not all up after 10s (have %v)\nstderr:\n%s", args, r.addrs, r.stderr)
		}
	}
	t.Cleanup(func() {
		if err := r.stop(t); err != nil {
			t.Errorf("mtlsproxy run exited with %v", err)
		}
	})
	return r
}

// atLeast is an up condition: n listeners.
func atLeast(n int) func(map[string]string) bool {
	return func(addrs map[string]string) bool { return len(addrs) >= n }
}

// allOf is an up condition: every named listener.
func allOf(names []string) func(map[string]string) bool {
	return func(addrs map[string]string) bool {
		for _, n := range names {
			if _, ok := addrs[n]; !ok {
				return false
			}
		}
		return true
	}
}

// runningProxy is "mtlsproxy run" started in-process by a test.
type runningProxy struct {
	Addr   string // the first listener's address, host:port
	Stderr *syncBuffer
	Stdout *syncBuffer
}

// startRun runs "mtlsproxy run args..." in-process until the test ends. It
// fails the test if the command does not start listening.
func startRun(t testing.TB, args ...string) *runningProxy {
	t.Helper()
	r := startRunUntil(t, atLeast(1), args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	return &runningProxy{Addr: r.first, Stderr: r.stderr, Stdout: r.stdout}
}

// runOnce runs a command that is expected to exit, with the given
// environment, and returns its error and output.
func runOnce(env map[string]string, args ...string) (stdout, stderr string, err error) {
	var o, e syncBuffer
	c := &cli{stdout: &o, stderr: &e, getenv: func(k string) string { return env[k] }}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.main(ctx, args)
	return o.String(), e.String(), err
}

// loadRun parses run's arguments with env as the environment and loads
// what they describe, as run does before it listens.
func loadRun(env map[string]string, args ...string) (*app.Plan, error) {
	r := config.NewRun()
	r.FlagSet().SetOutput(io.Discard)
	if err := r.FlagSet().Parse(args); err != nil {
		return nil, err
	}
	cfg, err := r.Config(func(k string) string { return env[k] })
	if err != nil {
		return nil, err
	}
	return app.Load(cfg)
}
