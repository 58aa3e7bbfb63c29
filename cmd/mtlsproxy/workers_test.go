//go:build linux

package main

// --workers under the real binary: the supervisor and its workers share
// the listener, metrics carry a worker label, /loglevel and SIGHUP reach
// every worker, SIGTERM stops them all, and a worker that dies stops the
// rest.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

func TestWorkersBinary(t *testing.T) {
	bin := opstBuild(t)
	t.Run("serve, metrics, log level, SIGHUP, SIGTERM", func(t *testing.T) { workersServe(t, bin) })
	t.Run("a worker that dies stops the rest", func(t *testing.T) { workersOneDies(t, bin) })
	t.Run("a worker told to stop stops the rest cleanly", func(t *testing.T) { workersOneStopped(t, bin) })
	t.Run("workers drain when the supervisor is killed", func(t *testing.T) { workersOrphaned(t, bin) })
}

// workerPIDs are the pids of the "worker started" log lines, by index.
func workerPIDs(t *testing.T, log string, n int) []int {
	t.Helper()
	pids := make([]int, n)
	found := 0
	for _, l := range strings.Split(log, "\n") {
		m := opstLogLine(l, "worker started")
		if m == nil {
			continue
		}
		i, _ := m["worker"].(float64)
		pid, _ := m["pid"].(float64)
		if int(i) < n && pid > 0 {
			pids[int(i)] = int(pid)
			found++
		}
	}
	if found != n {
		t.Fatalf("%d \"worker started\" lines; want %d\n%s", found, n, log)
	}
	return pids
}

// metricValues sums each worker's samples of the series that start with
// prefix, from /metrics in the text format.
func metricValues(t *testing.T, admin, prefix string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics = %s: %s", resp.Status, b)
	}
	worker := regexp.MustCompile(`worker="(\d+)"`)
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		m := worker.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("series without a worker label: %s", l)
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		out[m[1]] += v
	}
	return out
}

func workersServe(t *testing.T, bin string) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	// The identity sits behind symlinks, so that only SIGHUP reloads it
	// (as in opstBinaryHUP).
	id := opstLinkIdentity(t, set)
	cert, key := id.cert, id.key
	b := opstExec(t, bin, "--workers", "2", "--cert", cert, "--key", key, "--cacert", set.CAFile,
		"--allow", "api.internal", "--resolve", "api.internal:"+up.port+":127.0.0.1", "--reload-interval", "0")
	pids := workerPIDs(t, b.stderr.String(), 2)

	// A connection per request, so that both workers are likely to take
	// some.
	c := opstClient(b.listen)
	c.Transport.(*http.Transport).DisableKeepAlives = true
	target := "http://api.internal:" + up.port + "/"
	const n = 40
	for range n {
		if r := opstGet(t, c, target); r.status != http.StatusOK || r.body != "test-client" {
			t.Fatalf("GET through the workers: %d %q; want 200 test-client\nstderr:\n%s", r.status, r.body, b.stderr)
		}
	}
	// Which worker takes a connection is up to the kernel (whichever
	// accepts first), so only the total is certain.
	reqs := metricValues(t, b.admin, "mtlsproxy_requests_total{")
	if total := reqs["0"] + reqs["1"]; total != n {
		t.Errorf("mtlsproxy_requests_total by worker = %v; want %d in all", reqs, n)
	}
	if g := metricValues(t, b.admin, "go_goroutines"); len(g) != 2 || g["0"] == 0 || g["1"] == 0 {
		t.Errorf("go_goroutines by worker = %v; want a series from each of 2 workers", g)
	}
	if !opstWaitFor(func() bool { return strings.Count(b.stderr.String(), `"msg":"request"`) == n }) {
		t.Errorf("%d access lines after %d requests\n%s", strings.Count(b.stderr.String(), `"msg":"request"`), n, b.stderr)
	}
	for _, l := range strings.Split(b.stderr.String(), "\n") {
		if m := opstLogLine(l, "request"); m != nil && m["worker"] == nil {
			t.Errorf("access line without a worker field: %s", l)
		}
	}

	// /loglevel reaches every worker: a bad level is refused as a single
	// process refuses it, debug makes the serving worker log "forwarding".
	put := func(body, contentType string) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, "http://"+b.admin+"/loglevel", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	if status, body := put(`{"level":"loud"}`, "application/json"); status != http.StatusBadRequest {
		t.Errorf("PUT /loglevel loud = %d %q; want 400", status, body)
	}
	if status, body := put(`{"level":"debug"}`, "application/json"); status != http.StatusOK || !strings.Contains(body, "debug") {
		t.Fatalf("PUT /loglevel debug = %d %q; want 200", status, body)
	}
	for range 4 {
		opstGet(t, c, target)
	}
	forwarding := func() int { return strings.Count(b.stderr.String(), `"msg":"forwarding"`) }
	if !opstWaitFor(func() bool { return forwarding() == 4 }) {
		t.Errorf("%d debug \"forwarding\" lines after 4 requests at level debug; want 4", forwarding())
	}
	if status, _ := put(`{"level":"info"}`, "application/json"); status != http.StatusOK {
		t.Fatalf("PUT /loglevel info = %d", status)
	}

	// SIGHUP to the supervisor reloads the identity in every worker.
	id.renew(t, set, "renewed-client")
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloaded := func() map[string]bool {
		seen := map[string]bool{}
		for _, l := range strings.Split(b.stderr.String(), "\n") {
			if m := opstLogLine(l, "identity reloaded"); m != nil && m["reason"] == "SIGHUP" {
				seen[fmt.Sprint(m["worker"])] = true
			}
		}
		return seen
	}
	if !opstWaitFor(func() bool { return len(reloaded()) == 2 }) {
		t.Fatalf("SIGHUP reloaded the identity in workers %v; want both\nstderr:\n%s", reloaded(), b.stderr)
	}
	for range 6 {
		opstWaitSubject(t, c, target, "renewed-client")
	}

	// SIGTERM stops the workers and the supervisor, with status 0.
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit status after SIGTERM = %d; want 0\nstderr:\n%s", code, b.stderr)
	}
	workersGone(t, pids)
	if opstLogLine(b.stderr.String(), "stopped") == nil {
		t.Errorf("log lacks the stopped line:\n%s", b.stderr)
	}
}

// workersStart runs the binary with two workers in front of a test
// upstream, and returns it with the workers' pids.
func workersStart(t *testing.T, bin string) (*opstBinary, []int) {
	set := pkitest.New(t)
	up := opstNewUpstream(t, set, nil)
	b := opstExec(t, bin, "--workers", "2", "--cert", set.ClientCert, "--key", set.ClientKey, "--cacert", set.CAFile,
		"--allow", "api.internal", "--resolve", "api.internal:"+up.port+":127.0.0.1")
	return b, workerPIDs(t, b.stderr.String(), 2)
}

// workersGone checks that no worker outlived its supervisor.
func workersGone(t *testing.T, pids []int) {
	t.Helper()
	for i, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("worker %d (pid %d) still there after the supervisor exited: %v", i, pid, err)
		}
	}
}

func workersOneDies(t *testing.T, bin string) {
	b, pids := workersStart(t, bin)
	if err := syscall.Kill(pids[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := b.waitExit(t, 10*time.Second); code != 1 {
		t.Errorf("exit status after a worker was killed = %d; want 1\nstderr:\n%s", code, b.stderr)
	}
	if !strings.Contains(b.stderr.String(), "worker 1 exited on its own: signal: killed") {
		t.Errorf("stderr does not say which worker died:\n%s", b.stderr)
	}
	workersGone(t, pids)
}

// SIGTERM to one worker (or to the process group, where a worker may
// finish draining first) is a clean stop of the whole.
func workersOneStopped(t *testing.T, bin string) {
	b, pids := workersStart(t, bin)
	if err := syscall.Kill(pids[0], syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := b.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit status after SIGTERM to worker 0 = %d; want 0\nstderr:\n%s", code, b.stderr)
	}
	workersGone(t, pids)
}

// A supervisor killed outright (SIGKILL, the OOM killer) cannot stop its
// workers; they learn of it from the pipe they inherited, and drain.
func workersOrphaned(t *testing.T, bin string) {
	b, _ := workersStart(t, bin)
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait returns once the supervisor is gone and nothing holds its
	// stderr any more: the workers too.
	select {
	case <-b.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the workers still hold stderr 15s after the supervisor was killed\nstderr:\n%s", b.stderr)
	}
	stopped := 0
	for _, l := range strings.Split(b.stderr.String(), "\n") {
		if m := opstLogLine(l, "stopped"); m != nil && m["worker"] != nil {
			stopped++
		}
	}
	if stopped != 2 {
		t.Errorf("%d workers logged that they stopped; want 2\nstderr:\n%s", stopped, b.stderr)
	}
}
