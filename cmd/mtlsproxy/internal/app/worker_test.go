//go:build linux

package app

import (
	"errors"
	"net"
	"os/exec"
	"syscall"
	"testing"
)

func TestSameListenAddr(t *testing.T) {
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	unixAddr := &net.UnixAddr{Name: "/run/m.sock", Net: "unix"}
	for _, c := range []struct {
		addr string
		got  net.Addr
		want bool
	}{
		{"127.0.0.1:8080", tcp, true},
		{"localhost:8080", tcp, true},
		{"127.0.0.1:0", tcp, true},
		{"127.0.0.1:8081", tcp, false},
		{"unix:/run/m.sock", unixAddr, true},
		{"unix:/run/other.sock", unixAddr, false},
		{"unix:/run/m.sock", tcp, false},
		{"127.0.0.1:8080", unixAddr, false},
	} {
		if got := sameListenAddr(c.addr, c.got); got != c.want {
			t.Errorf("sameListenAddr(%q, %v) = %v; want %v", c.addr, c.got, got, c.want)
		}
	}
}

func TestStoppedBySignal(t *testing.T) {
	run := func(sig syscall.Signal, script string) error {
		cmd := exec.Command("sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Skipf("no sh: %v", err)
		}
		if sig != 0 {
			_ = cmd.Process.Signal(sig)
		}
		return cmd.Wait()
	}
	for _, c := range []struct {
		sig    syscall.Signal
		script string
		want   bool
	}{
		{syscall.SIGTERM, "sleep 10", true},
		{syscall.SIGINT, "sleep 10", true},
		{syscall.SIGKILL, "sleep 10", false},
		{0, "exit 1", false},
	} {
		if got := stoppedBySignal(run(c.sig, c.script)); got != c.want {
			t.Errorf("%v / %q: stoppedBySignal = %v; want %v", c.sig, c.script, got, c.want)
		}
	}
	if stoppedBySignal(nil) || stoppedBySignal(errors.New("x")) {
		t.Error("stoppedBySignal true for an error that is not an exit status")
	}
}
