package main

// Starting and stopping child processes. Each child runs in its own process
// group, so that stopping it also stops the workers it forked (nginx), and
// so that a Ctrl-C at the terminal reaches only the harness, which then
// stops everything itself. Pdeathsig kills the children if the harness
// dies without cleaning up.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// procGroup tracks every child the harness started.
type procGroup struct {
	mu      sync.Mutex
	running map[*exec.Cmd]chan struct{} // closed when the child has been waited for
	closed  bool
}

func newProcGroup() *procGroup {
	return &procGroup{running: map[*exec.Cmd]chan struct{}{}}
}

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// server is a long-running child.
type server struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed
}

func (s *server) PID() int { return s.cmd.Process.Pid }

// Exited reports whether the server has exited, and how.
func (s *server) Exited() (bool, error) {
	select {
	case <-s.exited:
		return true, s.err
	default:
		return false, nil
	}
}

// start starts cmd as a long-running server.
func (g *procGroup) start(cmd *exec.Cmd) (*server, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errors.New("shutting down")
	}
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, exited: make(chan struct{})}
	g.running[cmd] = s.exited
	go func() {
		s.err = cmd.Wait()
		g.mu.Lock()
		delete(g.running, cmd)
		g.mu.Unlock()
		close(s.exited)
	}()
	return s, nil
}

// run runs cmd to completion, killing it after timeout or when ctx ends.
func (g *procGroup) run(ctx context.Context, cmd *exec.Cmd, timeout time.Duration) error {
	s, err := g.start(cmd)
	if err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.exited:
		return s.err
	case <-ctx.Done():
		stopGroup(s.cmd, s.exited, time.Second)
		return ctx.Err()
	case <-t.C:
		stopGroup(s.cmd, s.exited, time.Second)
		return fmt.Errorf("killed after %v", timeout)
	}
}

// stop stops one server and its process group.
func (g *procGroup) stop(s *server) {
	stopGroup(s.cmd, s.exited, 3*time.Second)
}

// stopAll stops every child, SIGTERM first, SIGKILL after grace, and
// refuses to start new ones.
func (g *procGroup) stopAll(grace time.Duration) {
	g.mu.Lock()
	g.closed = true
	all := make(map[*exec.Cmd]chan struct{}, len(g.running))
	for c, ch := range g.running {
		all[c] = ch
	}
	g.mu.Unlock()
	var wg sync.WaitGroup
	for c, ch := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopGroup(c, ch, grace)
		}()
	}
	wg.Wait()
}

// stopGroup sends SIGTERM to the child's process group, then SIGKILL if it
// has not exited after grace. The group is killed once more at the end for
// workers that outlive their master.
func stopGroup(c *exec.Cmd, exited <-chan struct{}, grace time.Duration) {
	pgid := c.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. All listeners
// are held until every port is chosen, so the ports differ.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitAccept waits until addr accepts a TCP connection, the server exits,
// or timeout passes.
func waitAccept(ctx context.Context, addr string, s *server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if done, werr := s.Exited(); done {
			return fmt.Errorf("exited before accepting on %s: %v", addr, werr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not accepting on %s after %v: %v", addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}
