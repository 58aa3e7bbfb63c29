package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is the module root, seen from this package's directory.
const repoRoot = ".."

// testVersion is the version the tests stamp into the binary.
const testVersion = "v0.0.0-deploytest"

var build struct {
	once sync.Once
	dir  string
	bin  string
	out  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// binary builds mtlsproxy once per test run with scripts/build.sh, the
// command the Dockerfile runs, and returns its path.
func binary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "mtlsproxy-deploy-test-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "mtlsproxy")
		cmd := exec.Command("sh", filepath.Join(repoRoot, "scripts", "build.sh"), build.bin)
		cmd.Env = append(os.Environ(), "VERSION="+testVersion)
		out, err := cmd.CombinedOutput()
		build.out, build.err = string(out), err
	})
	if build.err != nil {
		t.Fatalf("scripts/build.sh: %v\n%s", build.err, build.out)
	}
	return build.bin
}

// requireTool returns the path of an external tool. If it is missing, the
// test is skipped, or fails when MTLSPROXY_REQUIRE_INTEROP=1 (as in CI,
// whose .ci/run installs every tool these tests use).
func requireTool(t *testing.T, name, install string) string {
	t.Helper()
	for _, c := range []string{name, "/usr/sbin/" + name, "/usr/bin/" + name} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	msg := name + " is missing; install it with " + strconv.Quote(install)
	if v, _ := strconv.ParseBool(os.Getenv("MTLSPROXY_REQUIRE_INTEROP")); v {
		t.Fatalf("%s: MTLSPROXY_REQUIRE_INTEROP=1 requires it", msg)
	}
	t.Skipf("skipping: %s (set MTLSPROXY_REQUIRE_INTEROP=1 to fail instead)", msg)
	return ""
}

// run runs a command with a time limit and returns its combined output.
func run(t *testing.T, dir string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s %s: timed out\n%s", name, strings.Join(args, " "), out.String())
		return "", nil
	}
}

// readFile returns a file of the repository (path relative to its root).
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(path)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkConfig runs "mtlsproxy check --config" on config text after
// replacing each old path prefix with a new one, and fails the test unless
// it exits 0. Extra arguments (--dial) are passed on.
func checkConfig(t *testing.T, config string, replace map[string]string, extra ...string) string {
	t.Helper()
	for old, new := range replace {
		if !strings.Contains(config, old) {
			t.Fatalf("config does not mention %s", old)
		}
		config = strings.ReplaceAll(config, old, new)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "", binary(t), append([]string{"check", "--config", file}, extra...)...)
	if err != nil {
		t.Fatalf("mtlsproxy check --config %s %s: %v\n%s\nconfig:\n%s", file, strings.Join(extra, " "), err, out, config)
	}
	return out
}

// copyFile copies src to dst with mode perm.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, perm); err != nil {
		t.Fatal(err)
	}
}
