package tlsconf

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchOptions configure Watch.
type WatchOptions struct {
	// Files are the certificate, key, password and CA files to watch.
	Files []string
	// Interval re-reads everything periodically, as a backstop for file
	// systems without change events. If zero, no periodic re-read.
	Interval time.Duration
	// Debounce waits this long after the last change event before calling
	// OnChange, so a burst (a Kubernetes secret update is several events)
	// gives one reload. If zero, 250ms.
	Debounce time.Duration
	// OnChange is called, never concurrently, after a change or tick.
	OnChange func(reason string)
	// OnError receives watcher errors. If nil, they are dropped.
	OnError func(error)
}

// Watch calls o.OnChange after files change, and every o.Interval, until
// ctx ends. It watches the directories that hold the files, not the files:
// a Kubernetes secret update atomically swaps the "..data" symlink, which a
// watch on the file itself never sees.
//
// For a Set, watch set.Files() and reload the set in OnChange; see the
// package documentation.
func Watch(ctx context.Context, o WatchOptions) error {
	if o.Debounce <= 0 {
		o.Debounce = 250 * time.Millisecond
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch files: %w", err)
	}
	names := map[string]map[string]bool{} // dir -> base names
	for _, f := range o.Files {
		abs, err := filepath.Abs(f)
		if err != nil {
			_ = w.Close()
			return fmt.Errorf("watch %s: %w", f, err)
		}
		dir := filepath.Dir(abs)
		if names[dir] == nil {
			names[dir] = map[string]bool{}
			if err := w.Add(dir); err != nil {
				_ = w.Close()
				return fmt.Errorf("watch directory %s: %w", dir, err)
			}
		}
		names[dir][filepath.Base(abs)] = true
	}
	relevant := func(ev fsnotify.Event) bool {
		base := filepath.Base(ev.Name)
		// "..data" and "..2026_..." are the Kubernetes atomic writer's.
		return names[filepath.Dir(ev.Name)][base] || strings.HasPrefix(base, "..")
	}
	go func() {
		defer w.Close()
		var tick <-chan time.Time
		if o.Interval > 0 {
			t := time.NewTicker(o.Interval)
			defer t.Stop()
			tick = t.C
		}
		debounce := time.NewTimer(time.Hour)
		debounce.Stop()
		pending := ""
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if relevant(ev) {
					pending = "file change: " + ev.Name
					debounce.Reset(o.Debounce)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				if o.OnError != nil {
					o.OnError(err)
				}
			case <-debounce.C:
				o.OnChange(pending)
			case <-tick:
				o.OnChange("periodic re-read")
			}
		}
	}()
	return nil
}
