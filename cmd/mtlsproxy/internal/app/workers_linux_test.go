package app

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nonBlocking reports whether c's descriptor has O_NONBLOCK, without
// calling Fd (which may change it).
func nonBlocking(t *testing.T, c syscall.Conn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		t.Fatal(err)
	}
	if ferr != nil {
		t.Fatal(ferr)
	}
	return flags&unix.O_NONBLOCK != 0
}

// startWith starts and waits for a process that inherits files, as a
// worker does: os/exec calls Fd on every ExtraFiles entry.
func startWith(t *testing.T, files []*os.File) {
	t.Helper()
	cmd := exec.Command("true")
	cmd.ExtraFiles = files
	if err := cmd.Run(); err != nil {
		t.Fatalf("start a process with the listening sockets: %v", err)
	}
}

// TestWorkerSocketsStayNonBlocking checks that handing a listening socket
// to a worker leaves it non-blocking for this process and every other
// sharer: a blocking accept would hold a thread in the kernel.
func TestWorkerSocketsStayNonBlocking(t *testing.T) {
	dir := t.TempDir()
	for _, addr := range []string{"127.0.0.1:0", "unix:" + filepath.Join(dir, "l.sock")} {
		t.Run(addr, func(t *testing.T) {
			ln, err := listen(addr, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			f, err := listenerFile(ln.(syscall.Conn))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			startWith(t, []*os.File{f})
			if !nonBlocking(t, ln.(syscall.Conn)) {
				t.Errorf("after starting a worker, the listening socket is blocking")
			}
		})
	}
	t.Run("openShared", func(t *testing.T) {
		addrs := []namedAddr{{"listen", "127.0.0.1:0"}, {"gw", "unix:" + filepath.Join(dir, "shared.sock")}}
		files, main, sockets, err := openShared(addrs, 2, 0o600)
		defer files.close()
		for _, s := range sockets {
			defer os.Remove(s)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range files.perWorker {
			startWith(t, w)
		}
		for i, f := range files.all {
			if !nonBlocking(t, f) {
				t.Errorf("socket %d is blocking after the workers started", i)
			}
		}
		// The sockets still accept: a client of the first one connects.
		c, err := net.Dial("tcp", main.String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
}
