package main

// The real binary under real signals: main.go's signal.NotifyContext,
// draining on SIGTERM with a stream in flight, and SIGHUP reloads. The
// in-process tests cannot cover these, since they cancel a context instead
// of signalling a process.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// opstBinary is a started mtlsproxy process.
type opstBinary struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	listen string // proxy listener, from the start-up log line
	admin  string
	exited chan struct{} // closed when the process has been waited for
	err    error         // cmd.Wait's result, once exited is closed
}

// opstBuild builds the mtlsproxy binary into a temporary directory.
func opstBuild(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: builds and runs the binary (not in -short mode)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("skipping: no go command on $PATH to build the binary (%v)", err)
	}
	bin := filepath.Join(t.TempDir(), "mtlsproxy")
	build := exec.Command(goBin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// opstExec starts bin run args... with an admin listener on a free port
// and waits until it is ready. The process is killed when the test ends
// if it is still running.
func opstExec(t *testing.T, bin string, args ...string) *opstBinary {
	t.Helper()
	b := &opstBinary{stderr: &syncBuffer{}, admin: "127.0.0.1:" + opstFreePort(t), exited: make(chan struct{})}
	b.cmd = exec.Command(bin, append([]string{"run", "--listen", "127.0.0.1:0", "--admin", b.admin}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MTLSPROXY_") {
			b.cmd.Env = append(b.cmd.Env, kv)
		}
	}
	b.cmd.Stdout = io.Discard
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-b.exited:
		default:
			_ = b.cmd.Process.Kill()
			<-b.exited
		}
	})
	for deadline := time.Now().Add(15 * time.Second); b.listen == "" || !b.ready(); time.Sleep(20 * time.Millisecond) {
		select {
		case <-b.exited:
			t.Fatalf("mtlsproxy exited before it was ready: %v\nstderr:\n%s", b.err, b.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mtlsproxy not ready after 15s\nstderr:\n%s", b.stderr)
		}
		if b.listen == "" {
			if line := opstLogLine(b.stderr.String(), "mtlsproxy started"); line != nil {
				b.listen, _ = line["listen"].(string)
			}
		}
	}
	return b
}

// ready reports whether /readyz answers 200.
func (b *opstBinary) ready() bool {
	status, _ := opstReadyz(b.admin)
	return status == http.StatusOK
}

// opstReadyz returns the status of GET /readyz, or 0 and the error if the
// admin listener does not answer.
func opstReadyz(admin string) (int, error) {
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: time.Second}
	resp, err := c.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// opstLogLine is the first JSON log line of log whose msg starts with msg.
func opstLogLine(log, msg string) map[string]any {
	for _, l := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if s, _ := m["msg"].(string); strings.HasPrefix(s, msg) {
			return m
		}
	}
	return nil
}

func opstFreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// waitExit waits up to d for the process to exit and returns its exit
// status, or fails the test.
func (b *opstBinary) waitExit(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-b.exited:
	case <-time.After(d):
		t.Fatalf("mtlsproxy still running %v after the signal\nstderr:\n%s", d, b.stderr)
	}
	var ee *exec.ExitError
	if b.err != nil && !errors.As(b.err, &ee) {
		t.Fatalf("waiting for mtlsproxy: %v", b.err)
	}
	return b.cmd.ProcessState.ExitCode()
}

func TestOpsBinary(t *testing.T) {
	bin := opstBuild(t)
	t.Run("SIGTERM drains a stream in flight", func(t *testing.T) { opstDrain(t, bin) })
	t.Run("SIGHUP reloads the identity", func(t *testing.T) { opstBinaryHUP(t, bin) })
}

const opstChunks = 10

func opstDrain(t *testing.T, bin string) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		for i := range opstChunks {
			if i > 0 {
				select {
				case <-time.After(200 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "chunk %d\n", i)
			f.Flush()
		}
	})
	b := opstExec(t, bin, "--cert", set.ClientCert, "--key", set.ClientKey, "--cacert", set.CAFile,
		"--allow", "api.internal", "--resolve", "api.internal:"+up.port+":127.0.0.1", "--shutdown-timeout", "10s")

	resp, err := opstClient(b.listen).Get("http://api.internal:" + up.port + "/stream")
	if err != nil {
		t.Fatalf("streaming request: %v\nstderr:\n%s", err, b.stderr)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("streaming request = %d; want 200", resp.StatusCode)
	}
	lines := make(chan string, opstChunks+1)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		readErr <- sc.Err()
		close(lines)
	}()
	var got []string
	select {
	case l := <-lines:
		got = append(got, l)
	case <-time.After(5 * time.Second):
		t.Fatalf("no first chunk after 5s\nstderr:\n%s", b.stderr)
	}

	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()

	// Readiness drops at once: 503, or no answer at all, but never 200
	// half a second later.
	var status int
	var statusErr error
	for {
		status, statusErr = opstReadyz(b.admin)
		if status != http.StatusOK || time.Since(signalled) > 500*time.Millisecond {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status == http.StatusOK {
		t.Errorf("GET /readyz still 200 %v after SIGTERM; want 503 or no answer", time.Since(signalled))
	} else if status != http.StatusServiceUnavailable {
		t.Logf("GET /readyz after SIGTERM: %d %v (admin listener gone: accepted)", status, statusErr)
	}
	// The proxy listener takes no new connections while the stream drains.
	refused := false
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", b.listen, time.Second)
		if err != nil {
			refused = true
			break
		}
		conn.Close()
	}
	if !refused {
		t.Errorf("the proxy listener %s still accepts connections 1s after SIGTERM", b.listen)
	}

	timeout := time.After(5 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				done = true
				break
			}
			got = append(got, l)
		case <-timeout:
			t.Fatalf("stream incomplete 5s after SIGTERM: got %q\nstderr:\n%s", got, b.stderr)
		}
	}
	if err := <-readErr; err != nil {
		t.Errorf("reading the stream: %v (after %q)", err, got)
	}
	var want []string
	for i := range opstChunks {
		want = append(want, fmt.Sprintf("chunk %d", i))
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("stream through a draining proxy = %q; want %q", got, want)
	}

	if code := b.waitExit(t, 5*time.Second-time.Since(signalled)); code != 0 {
		t.Errorf("exit status after SIGTERM = %d; want 0\nstderr:\n%s", code, b.stderr)
	}
	log := b.stderr.String()
	if opstLogLine(log, "draining") == nil {
		t.Errorf("log lacks the draining line:\n%s", log)
	}
	if opstLogLine(log, "shutdown timeout reached") != nil {
		t.Errorf("the stream needed less than --shutdown-timeout, yet connections were cut:\n%s", log)
	}
	if opstLogLine(log, "stopped") == nil {
		t.Errorf("log lacks the stopped line:\n%s", log)
	}
}

// opstBinaryHUP swaps the identity files behind symlinks (so the directory
// watch sees nothing, and --reload-interval 0 turns the timer off), then
// sends SIGHUP to the process.
func opstBinaryHUP(t *testing.T, bin string) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	id := opstLinkIdentity(t, set)
	cert, key := id.cert, id.key
	b := opstExec(t, bin, "--cert", cert, "--key", key, "--cacert", set.CAFile, "--allow", "api.internal",
		"--resolve", "api.internal:"+up.port+":127.0.0.1", "--reload-interval", "0")
	c := opstClient(b.listen)
	target := "http://api.internal:" + up.port + "/"
	if r := opstGet(t, c, target); r.status != http.StatusOK || r.body != "test-client" {
		t.Fatalf("before reload: %d %q; want 200 test-client\nstderr:\n%s", r.status, r.body, b.stderr)
	}

	id.renew(t, set, "renewed-client")
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if !opstWaitFor(func() bool { line = opstLogLine(b.stderr.String(), "identity reloaded"); return line != nil }) {
		t.Fatalf("no reload logged 2s after SIGHUP\nstderr:\n%s", b.stderr)
	}
	if line["reason"] != "SIGHUP" || !strings.Contains(fmt.Sprint(line["subject"]), "renewed-client") {
		t.Errorf("reload log line %v; want reason SIGHUP and the renewed subject", line)
	}
	opstWaitSubject(t, c, target, "renewed-client")
	if s, _ := opstReadyz(b.admin); s != http.StatusOK {
		t.Errorf("GET /readyz after the reload = %d; want 200", s)
	}

	// SIGHUP must not stop the process: it still serves, and SIGTERM ends it.
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.waitExit(t, 5*time.Second); code != 0 {
		t.Errorf("exit status after SIGTERM = %d; want 0\nstderr:\n%s", code, b.stderr)
	}
}
