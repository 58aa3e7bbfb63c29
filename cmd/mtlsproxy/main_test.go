package main

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"
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

// runningProxy is "mtlsproxy run" started in-process by a test.
type runningProxy struct {
	Addr   string // listener address, host:port
	Stderr *syncBuffer
	Stdout *syncBuffer
}

// startRun runs "mtlsproxy run args..." in-process until the test ends. It
// fails the test if the command does not start listening.
func startRun(t testing.TB, args ...string) *runningProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rp := &runningProxy{Stderr: &syncBuffer{}, Stdout: &syncBuffer{}}
	ready := make(chan net.Addr, 1)
	c := &cli{stdout: rp.Stdout, stderr: rp.Stderr, getenv: func(string) string { return "" },
		// Only the first listener is reported; later ones (gateways,
		// admin) must not block the proxy.
		onListen: func(_ string, a net.Addr) {
			select {
			case ready <- a:
			default:
			}
		}}
	done := make(chan error, 1)
	go func() { done <- c.main(ctx, append([]string{"run"}, args...)) }()
	select {
	case a := <-ready:
		rp.Addr = a.String()
	case err := <-done:
		cancel()
		t.Fatalf("mtlsproxy run %v: exited before listening: %v\nstderr:\n%s", args, err, rp.Stderr)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("mtlsproxy run %v: not listening after 10s\nstderr:\n%s", args, rp.Stderr)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mtlsproxy run exited with %v", err)
			}
		case <-time.After(35 * time.Second):
			t.Errorf("mtlsproxy run did not stop")
		}
	})
	return rp
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
