package tlsconf_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

// watchDebounce is short so the tests are quick; watchQuiet is how long
// "no call" is waited for: many debounce periods.
const (
	watchDebounce = 50 * time.Millisecond
	watchQuiet    = 500 * time.Millisecond
)

// watchRunner is a running Watch whose OnChange reasons arrive on calls.
type watchRunner struct {
	calls  chan string
	errs   chan error
	cancel context.CancelFunc
	// busy and overlap check that OnChange is never called concurrently.
	busy, overlap atomic.Int32
}

func watchStart(t *testing.T, o tlsconf.WatchOptions) *watchRunner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &watchRunner{calls: make(chan string, 1000), errs: make(chan error, 100), cancel: cancel}
	if o.Debounce == 0 {
		o.Debounce = watchDebounce
	}
	o.OnChange = func(reason string) {
		if w.busy.Add(1) > 1 {
			w.overlap.Add(1)
		}
		w.calls <- reason
		time.Sleep(time.Millisecond)
		w.busy.Add(-1)
	}
	o.OnError = func(err error) { w.errs <- err }
	if err := tlsconf.Watch(ctx, o); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	t.Cleanup(func() {
		if n := w.overlap.Load(); n > 0 {
			t.Errorf("OnChange ran concurrently with itself %d times", n)
		}
		for len(w.errs) > 0 {
			t.Errorf("watcher error: %v", <-w.errs)
		}
	})
	return w
}

// next waits up to 2s for a call and returns its reason.
func (w *watchRunner) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case r := <-w.calls:
		return r
	case <-time.After(2 * time.Second):
		t.Fatalf("%s: OnChange not called within 2s", what)
		return ""
	}
}

// quiet fails the test if OnChange is called within watchQuiet.
func (w *watchRunner) quiet(t *testing.T, what string) {
	t.Helper()
	select {
	case r := <-w.calls:
		t.Errorf("%s: OnChange(%q) called; want no call", what, r)
	case <-time.After(watchQuiet):
	}
}

func watchWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// watchPair writes tls.crt and tls.key into a new directory.
func watchPair(t *testing.T) (dir, cert, key string) {
	t.Helper()
	dir = t.TempDir()
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	watchWrite(t, cert, "cert 1")
	watchWrite(t, key, "key 1")
	return dir, cert, key
}

func TestWatchRewrite(t *testing.T) {
	_, cert, key := watchPair(t)
	w := watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}})
	watchWrite(t, cert, "cert 2")
	if r := w.next(t, "after rewriting the certificate"); !strings.HasPrefix(r, "file change: ") || !strings.HasSuffix(r, "tls.crt") {
		t.Errorf("reason = %q; want file change: .../tls.crt", r)
	}
	// A new file renamed over the key, as editors and most tools write.
	tmp := key + ".tmp"
	watchWrite(t, tmp, "key 2")
	if err := os.Rename(tmp, key); err != nil {
		t.Fatal(err)
	}
	w.next(t, "after renaming a new key over the old one")
	w.quiet(t, "after the rename")
}

// watchK8sSecret is a directory laid out as the kubelet's atomic writer lays
// out a mounted secret: the data in a timestamped directory, "..data" a
// symlink to it, and each file a symlink through "..data".
type watchK8sSecret struct {
	dir string
	gen int
}

func watchNewK8sSecret(t *testing.T, files map[string]string) *watchK8sSecret {
	t.Helper()
	s := &watchK8sSecret{dir: t.TempDir()}
	s.swap(t, files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(s.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// swap publishes a new version as the kubelet does: write a new data
// directory, point "..data_tmp" at it, rename that over "..data", and
// remove the old directory.
func (s *watchK8sSecret) swap(t *testing.T, files map[string]string) {
	t.Helper()
	s.gen++
	data := "..2026_01_02_15_04_05." + strings.Repeat("x", s.gen)
	if err := os.Mkdir(filepath.Join(s.dir, data), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		watchWrite(t, filepath.Join(s.dir, data, name), content)
	}
	old, _ := os.Readlink(filepath.Join(s.dir, "..data"))
	tmp := filepath.Join(s.dir, "..data_tmp")
	if err := os.Symlink(data, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(s.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWatchKubernetesSwap(t *testing.T) {
	s := watchNewK8sSecret(t, map[string]string{"tls.crt": "cert 1", "tls.key": "key 1"})
	cert, key := filepath.Join(s.dir, "tls.crt"), filepath.Join(s.dir, "tls.key")
	w := watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}})
	for i := 2; i <= 4; i++ {
		s.swap(t, map[string]string{"tls.crt": "cert " + string(rune('0'+i)), "tls.key": "key"})
		r := w.next(t, "after a ..data symlink swap")
		if !strings.HasPrefix(r, "file change: ") {
			t.Errorf("reason = %q; want a file change", r)
		}
		// The swap is several events (create, rename, remove); they are
		// one reload.
		w.quiet(t, "after one swap was reported")
		if b, err := os.ReadFile(cert); err != nil || string(b) != "cert "+string(rune('0'+i)) {
			t.Fatalf("after the swap %s reads %q, %v; want the new version", cert, b, err)
		}
	}
}

func TestWatchDebounce(t *testing.T) {
	_, cert, key := watchPair(t)
	w := watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}, Debounce: 200 * time.Millisecond})
	start := time.Now()
	for i := range 20 {
		watchWrite(t, cert, strings.Repeat("c", i))
		watchWrite(t, key, strings.Repeat("k", i))
		time.Sleep(5 * time.Millisecond)
	}
	burst := time.Since(start)
	w.next(t, "after a burst of writes")
	if waited := time.Since(start); waited < burst+150*time.Millisecond {
		t.Errorf("OnChange came %v after the burst began (burst lasted %v); want it at least a debounce period after the last event", waited, burst)
	}
	w.quiet(t, "after the burst was reported once")
}

func TestWatchPeriodic(t *testing.T) {
	_, cert, key := watchPair(t)
	w := watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}, Interval: 100 * time.Millisecond})
	for i := range 3 {
		if r := w.next(t, "periodic re-read"); r != "periodic re-read" {
			t.Errorf("call %d: reason = %q; want periodic re-read", i, r)
		}
	}

	// Without an interval there is no periodic call.
	_, cert, key = watchPair(t)
	w = watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}})
	w.quiet(t, "no interval, no change")
}

func TestWatchIgnoresUnrelatedFiles(t *testing.T) {
	dir, cert, key := watchPair(t)
	w := watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}})
	other := filepath.Join(dir, "other.txt")
	for i := range 5 {
		watchWrite(t, other, strings.Repeat("x", i))
	}
	watchWrite(t, filepath.Join(dir, ".tls.crt.swp"), "editor swap file")
	watchWrite(t, filepath.Join(dir, "tls.crt~"), "editor backup")
	if err := os.Remove(other); err != nil {
		t.Fatal(err)
	}
	w.quiet(t, "after writing unrelated files in the watched directory")
	// The watcher is alive: the certificate itself still counts.
	watchWrite(t, cert, "cert 2")
	w.next(t, "after rewriting the certificate")
}

func TestWatchStopsWhenCancelled(t *testing.T) {
	_, cert, key := watchPair(t)
	w := watchStart(t, tlsconf.WatchOptions{Files: []string{cert, key}, Interval: 50 * time.Millisecond})
	w.next(t, "periodic re-read before cancel")
	w.cancel()
	// A tick racing with the cancel may still be delivered.
	time.Sleep(100 * time.Millisecond)
	for len(w.calls) > 0 {
		<-w.calls
	}
	watchWrite(t, cert, "cert 2")
	w.quiet(t, "after the context was cancelled")
}

func TestWatchMissingDirectory(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope", "tls.crt")
	err := tlsconf.Watch(context.Background(), tlsconf.WatchOptions{Files: []string{missing}, OnChange: func(string) {}})
	if err == nil || !strings.Contains(err.Error(), filepath.Dir(missing)) {
		t.Errorf("Watch of a file in a missing directory: %v; want an error naming %s", err, filepath.Dir(missing))
	}
}
