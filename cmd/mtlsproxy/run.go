package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/app"
	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
)

const runUsageHead = `Usage: mtlsproxy run [flags]

Run the proxy. Local clients send plain HTTP; each request goes upstream
over HTTPS with the client certificate, and the server is verified.

Forward mode: clients set HTTP_PROXY=http://127.0.0.1:8080 and request
http://api.internal/x, which is sent to https://api.internal/x (port 80
becomes 443; any other port is kept). Only hosts matched by --allow are
reached; any other host gets 403 and is never dialed.

Gateway mode: with --upstream, requests for a path (GET /x) go to that one
upstream, for apps that take a base URL but cannot use a proxy.

Config file: --config FILE describes several identities, trust bundles,
routes and gateway listeners (see the README). A setting means the same
from a flag, its variable or the file.
`

const runUsageTail = `  There is no write timeout: a long download or stream is never cut.

Examples:
  mtlsproxy run --cert client.crt --key client.key --cacert ca.crt --allow api.internal
  mtlsproxy run --cert client.crt --key client.key --upstream https://api.internal:8443
  mtlsproxy run --config /etc/mtlsproxy/config.yaml

Signals: SIGTERM or SIGINT drains and exits 0; SIGHUP reloads identities
and CA bundles from their files (as a file change does). A file that fails
to load is logged and the previous certificate stays in use.

  -h, --help                   show this help
`

// runUsage is run's help; its list of flags comes from the settings table.
func runUsage() string { return runUsageHead + "\n" + config.FlagUsage() + runUsageTail }

func (c *cli) runCmd(ctx context.Context, args []string) error {
	// SIGHUP's default action ends the process. Until the runtime listens
	// for it, a SIGHUP is taken and dropped: what it would reload is being
	// loaded anyway. A worker's supervisor forwards SIGHUP as soon as the
	// worker has started.
	early := make(chan os.Signal, 1)
	signal.Notify(early, syscall.SIGHUP)
	defer signal.Stop(early)
	flags := config.NewRun()
	if err := c.parseFlags(flags.FlagSet(), args, runUsage()); err != nil {
		return ignoreHelp(err)
	}
	cfg, err := flags.Config(c.getenv)
	if err != nil {
		return err
	}
	worker, err := app.WorkerFromEnv(c.getenv)
	if err != nil {
		return err
	}
	index := -1
	var inherited []*os.File
	if worker != nil {
		// A worker serves what its supervisor opened, its admin endpoints
		// for the supervisor only, and stops when the supervisor is gone.
		cfg.Workers, cfg.Admin = 1, worker.Admin
		index, inherited = worker.Index, worker.Listeners
		var stop context.CancelFunc
		ctx, stop = worker.WatchParent(ctx)
		defer stop()
	}
	pl, err := app.Load(cfg)
	if err != nil {
		return err
	}
	// The proxy's live heap is small, so Go's default (GOGC=100) collects
	// very often; 400 cut its CPU per request by about a tenth in the
	// benchmark harness at the price of ~12 MiB more peak RSS under load.
	// GOGC in the environment still decides.
	if c.getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	logger, access, stopLogs := app.NewLoggers(c.stderr, cfg.Log.Format, pl.Level(), index)
	defer func() { stopLogs(); _ = logger.Sync() }()
	if cfg.Workers > 1 {
		return app.Supervise(ctx, pl, app.SupervisorOptions{Args: args, Logger: logger, Stdout: c.stdout, Stderr: c.stderr, Getenv: c.getenv})
	}
	return app.Serve(ctx, pl, app.Options{Logger: logger, Access: access, OnListen: c.onListen, Inherited: inherited})
}
