package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/cli/ and the generated part of docs/configuration.md")

// goldenDir holds the command's goldens, in the repository's testdata.
var goldenDir = filepath.Join("..", "..", "testdata", "cli")

// golden compares got with testdata/cli/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/mtlsproxy -run Help -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update if the change is intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestHelp(t *testing.T) {
	tests := []struct {
		golden string
		args   [][]string // every spelling must print the same text
	}{
		{"help-main.golden", [][]string{{"--help"}, {"-h"}, {"-help"}, {"help"}}},
		{"help-run.golden", [][]string{{"run", "--help"}, {"run", "-h"}, {"run", "--cert", "x", "--help"}}},
		{"help-check.golden", [][]string{{"check", "--help"}, {"check", "-h"}, {"check", "--dial", "--help"}}},
		{"help-demo.golden", [][]string{{"demo", "--help"}, {"demo", "-h"}}},
		{"help-version.golden", [][]string{{"version", "--help"}, {"version", "-h"}}},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.golden, ".golden"), func(t *testing.T) {
			var first string
			for i, args := range tt.args {
				stdout, stderr, err := runOnce(nil, args...)
				if err != nil {
					t.Errorf("%v: error %v; want nil", args, err)
				}
				if stderr != "" {
					t.Errorf("%v: stderr %q; want help on stdout only", args, stderr)
				}
				if i == 0 {
					first = stdout
					golden(t, tt.golden, stdout)
				} else if stdout != first {
					t.Errorf("%v: help differs from %v:\n%s", args, tt.args[0], stdout)
				}
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string // in stderr
	}{
		{"no command", nil, []string{"Usage:", "Commands:"}},
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"`, "Usage:", "Commands:"}},
		{"unknown run flag", []string{"run", "--no-such-flag"}, []string{"mtlsproxy run:", "no-such-flag", "Usage: mtlsproxy run"}},
		{"run argument", []string{"run", "extra"}, []string{`unexpected argument "extra"`, "Usage: mtlsproxy run"}},
		{"flag without value", []string{"run", "--cert"}, []string{"flag needs an argument", "-cert"}},
		{"version argument", []string{"version", "now"}, []string{`unexpected argument "now"`, "Usage: mtlsproxy version"}},
		{"demo bad flag", []string{"demo", "--port", "1"}, []string{"port", "Usage: mtlsproxy demo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(nil, tt.args...)
			if !errors.Is(err, errUsage) {
				t.Errorf("error %v; want errUsage", err)
			}
			if stdout != "" {
				t.Errorf("stdout %q; want nothing", stdout)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	stdout, stderr, err := runOnce(nil, "version")
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	if stderr != "" {
		t.Errorf("stderr %q; want nothing", stderr)
	}
	if !strings.HasPrefix(stdout, "mtlsproxy ") || !strings.HasSuffix(stdout, "\n") || strings.Count(stdout, "\n") != 1 {
		t.Errorf("version printed %q; want one line starting %q", stdout, "mtlsproxy ")
	}
	if !strings.Contains(stdout, runtime.Version()) {
		t.Errorf("version printed %q; want it to contain %q", stdout, runtime.Version())
	}
	if !strings.Contains(stdout, runtime.GOOS+"/"+runtime.GOARCH) {
		t.Errorf("version printed %q; want it to contain %q", stdout, runtime.GOOS+"/"+runtime.GOARCH)
	}
}

// TestRunValidation checks that run refuses bad settings before it listens,
// naming every problem with its flag.
func TestRunValidation(t *testing.T) {
	s := pkitest.New(t)
	id := []string{"--cert", s.ClientCert, "--key", s.ClientKey}
	with := func(extra ...string) []string { return append(append([]string{"run"}, id...), extra...) }
	missing := filepath.Join(s.Dir, "missing.pem")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"nothing allowed", with(), []string{"nothing is allowed", "--allow", "--upstream"}},
		{"no identity", []string{"run", "--allow", "api.internal"}, []string{"no client identity", "--cert", "--key"}},
		{"key without cert", []string{"run", "--key", s.ClientKey, "--allow", "api.internal"}, []string{"--key given without --cert"}},
		{"cert without key", []string{"run", "--cert", s.ClientCert, "--allow", "api.internal"}, []string{"--cert given without --key"}},
		{"cert file missing", []string{"run", "--cert", missing, "--key", s.ClientKey, "--allow", "a"}, []string{"--cert", "missing.pem"}},
		{"key does not match", []string{"run", "--cert", s.ClientCert, "--key", s.ServerKey, "--allow", "a"}, []string{"--cert/--key", "does not match certificate"}},
		{"bad allow wildcard", with("--allow", "api.*.internal"), []string{"--allow", "api.*.internal", "wildcard"}},
		{"bad allow port", with("--allow", "api.internal:0"), []string{"--allow", `bad port "0"`}},
		{"empty allow", with("--allow", ""), []string{"--allow", "empty host"}},
		{"bad resolve", with("--allow", "a", "--resolve", "api.internal:443"), []string{"--resolve", "HOST:PORT:ADDR"}},
		{"resolve to name", with("--allow", "a", "--resolve", "api.internal:443:localhost"), []string{"--resolve", "not an IP address"}},
		{"bad log level", with("--allow", "a", "--log-level", "loud"), []string{"--log-level", "loud"}},
		{"bad log format", with("--allow", "a", "--log-format", "xml"), []string{"--log-format", "xml"}},
		{"upstream http", with("--upstream", "http://api.internal"), []string{"--upstream", "https://"}},
		{"upstream no host", with("--upstream", "https://"), []string{"--upstream", "no host"}},
		{"upstream user info", with("--upstream", "https://u:p@api.internal"), []string{"--upstream", "user info"}},
		{"upstream bad port", with("--upstream", "https://api.internal:99999"), []string{"--upstream", "bad port"}},
		{"bad server name", with("--allow", "a", "--server-name", "*.internal"), []string{"--server-name"}},
		{"listen all interfaces", with("--allow", "a", "--listen", "0.0.0.0:8080"), []string{"--listen", "0.0.0.0", "--unsafe-listen"}},
		{"listen empty host", with("--allow", "a", "--listen", ":8080"), []string{"--listen", "every interface", "--unsafe-listen"}},
		{"listen not an address", with("--allow", "a", "--listen", "8080"), []string{"--listen", "HOST:PORT"}},
		{"cacert missing", with("--allow", "a", "--listen", "127.0.0.1:0", "--cacert", missing), []string{"--cacert", "missing.pem"}},
		{"cacert not PEM", with("--allow", "a", "--listen", "127.0.0.1:0", "--cacert", s.ClientKey), []string{"--cacert", "no PEM CERTIFICATE block"}},
		{"every problem at once", []string{"run", "--key", s.ClientKey, "--listen", "0.0.0.0:1", "--resolve", "x", "--log-level", "loud", "--log-format", "xml", "--upstream", "http://a"},
			[]string{"--key given without --cert", "--unsafe-listen", "--resolve", "--log-level", "--log-format", "--upstream"}},
		{"nothing at all", []string{"run"}, []string{"no client identity", "nothing is allowed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runOnce(nil, tt.args...)
			if err == nil {
				t.Fatalf("run %v succeeded; want an error", tt.args[1:])
			}
			if errors.Is(err, errUsage) {
				t.Errorf("error is errUsage; want a message naming the problem")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q; want it to contain %q", err, w)
				}
			}
			if stdout != "" {
				t.Errorf("stdout %q; want nothing", stdout)
			}
			// The error is the caller's to print; run itself logs nothing
			// before it fails.
			if stderr != "" {
				t.Errorf("stderr %q; want nothing", stderr)
			}
		})
	}
}

// TestRunStarts checks that a valid command line starts the proxy, so the
// error cases above fail for the reason they claim.
func TestRunStarts(t *testing.T) {
	s := pkitest.New(t)
	rp := startRun(t, "--listen", "127.0.0.1:0", "--cert", s.ClientCert, "--key", s.ClientKey,
		"--cacert", s.CAFile, "--allow", "api.internal", "--resolve", "api.internal:443:127.0.0.1:1", "--log-level", "debug")
	if !strings.Contains(rp.Stderr.String(), "mtlsproxy started") {
		t.Errorf("stderr lacks the start-up line:\n%s", rp.Stderr)
	}
	if !strings.Contains(rp.Stderr.String(), s.ClientSubject) {
		t.Errorf("start-up line does not name the identity %q:\n%s", s.ClientSubject, rp.Stderr)
	}
}

func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	c := &cli{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
	done := make(chan error, 1)
	go func() { done <- c.main(ctx, []string{"demo", "--listen", "127.0.0.1:0"}) }()

	curlLine := regexp.MustCompile(`(?m)^\s*curl -x (\S+) (\S+)\s*$`)
	handLine := regexp.MustCompile(`(?m)^\s*mtlsproxy run .*--cert (\S+)`)
	var m []string
	deadline := time.After(30 * time.Second)
	for m == nil || !handLine.MatchString(stdout.String()) {
		select {
		case err := <-done:
			t.Fatalf("demo exited early: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
		case <-deadline:
			cancel()
			t.Fatalf("no curl line after 30s\nstdout:\n%s\nstderr:\n%s", &stdout, &stderr)
		case <-time.After(20 * time.Millisecond):
		}
		m = curlLine.FindStringSubmatch(stdout.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "200 OK") || !strings.Contains(out, "demo-client") {
		t.Errorf("demo's own request did not report 200 and the client subject:\n%s", out)
	}

	proxyURL, err := url.Parse(m[1])
	if err != nil {
		t.Fatalf("proxy URL %q: %v", m[1], err)
	}
	if h := proxyURL.Hostname(); h != "127.0.0.1" {
		t.Errorf("proxy listens on %q; want 127.0.0.1", h)
	}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL)}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get(m[2])
	if err != nil {
		t.Fatalf("GET %s via %s: %v", m[2], m[1], err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %s; want 200 OK\n%s", resp.Status, body)
	}
	if !strings.Contains(string(body), "demo-client") {
		t.Errorf("body %q; want it to name the client certificate demo-client", body)
	}
	tr.CloseIdleConnections()

	certFile := handLine.FindStringSubmatch(stdout.String())[1]
	if _, err := os.Stat(certFile); err != nil {
		t.Errorf("while the demo runs, %s: %v", certFile, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo returned %v after cancel; want nil", err)
		}
	case <-time.After(35 * time.Second):
		t.Fatal("demo did not return after cancel")
	}
	if _, err := os.Stat(certFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the demo, stat %s = %v; want the temporary directory removed", certFile, err)
	}
}

// TestDocsFlagTable checks that the flag table in docs/configuration.md is
// the one the settings table makes (regenerate it with -update).
func TestDocsFlagTable(t *testing.T) {
	const begin, end = "<!-- BEGIN GENERATED FLAG TABLE -->\n", "<!-- END GENERATED FLAG TABLE -->"
	path := filepath.Join("..", "..", "docs", "configuration.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok := strings.Cut(string(doc), begin)
	_, tail, ok2 := strings.Cut(rest, end)
	if !ok || !ok2 {
		t.Fatalf("%s lacks the lines %q and %q around the flag table", path, strings.TrimSpace(begin), end)
	}
	want := head + begin + config.FlagTable() + end + tail
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if string(doc) != want {
		t.Errorf("the flag table in %s is not the one the settings make; run go test ./cmd/mtlsproxy -run TestDocsFlagTable -update", path)
	}
}
