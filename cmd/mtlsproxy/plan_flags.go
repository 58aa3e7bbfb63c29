package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"go.uber.org/zap"
)

// validate checks the flag-only configuration and reports all problems at
// once, each naming its flag.
func (cfg *runConfig) validate() (*plan, error) {
	pl := &plan{listen: cfg.Listen, unsafeListen: cfg.UnsafeListen, format: cfg.LogFormat,
		resolve: proxy.Resolve{}, identities: map[string]*tlsconf.Identity{}, trusts: map[string]trustSource{}}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(checkListen("--listen", cfg.Listen, cfg.UnsafeListen))
	mode, err := parseSocketMode(cfg.SocketMode)
	if err != nil {
		add(fmt.Errorf("--socket-mode %w", err))
	}
	pl.socketMode = mode
	for _, h := range cfg.StripHeaders {
		if !validHeaderName(h) {
			add(fmt.Errorf("--strip-header %q: not a header name", h))
		}
	}
	if cfg.Admin != "" {
		add(checkListen("--admin", cfg.Admin, cfg.UnsafeListen))
	}
	pl.admin, pl.maxConns = cfg.Admin, cfg.MaxConnections
	if cfg.MaxConnections < 0 {
		add(fmt.Errorf("--max-connections %d: want 0 (no limit) or more", cfg.MaxConnections))
	}
	pl.workers = cfg.Workers
	if err := checkWorkers(cfg.Workers, cfg.Pprof); err != nil {
		add(fmt.Errorf("--workers %w", err))
	}
	pl.timeouts = proxy.Timeouts{Dial: cfg.DialTimeout, TLSHandshake: cfg.TLSHandshakeTimeout,
		ResponseHeader: cfg.ResponseHeaderTimeout, IdleConn: cfg.IdleConnTimeout}
	pl.readHeaderTimeout, pl.clientIdleTimeout, pl.shutdownTimeout = cfg.ReadHeaderTimeout, cfg.ClientIdleTimeout, cfg.ShutdownTimeout
	for name, d := range map[string]time.Duration{"--dial-timeout": cfg.DialTimeout, "--tls-handshake-timeout": cfg.TLSHandshakeTimeout,
		"--response-header-timeout": cfg.ResponseHeaderTimeout, "--idle-conn-timeout": cfg.IdleConnTimeout,
		"--read-header-timeout": cfg.ReadHeaderTimeout, "--client-idle-timeout": cfg.ClientIdleTimeout, "--shutdown-timeout": cfg.ShutdownTimeout} {
		if d <= 0 {
			add(fmt.Errorf("%s %s: want a positive duration", name, d))
		}
	}
	var id *tlsconf.Identity
	src := tlsconf.IdentitySource{CertFile: cfg.Cert, KeyFile: cfg.Key, KeyPassFile: cfg.KeyPassFile,
		PKCS12File: cfg.PKCS12, PKCS12PassFile: cfg.PKCS12PassFile}
	pemGiven := cfg.Cert != "" || cfg.Key != "" || cfg.KeyPassFile != ""
	switch {
	case pemGiven && (cfg.PKCS12 != "" || cfg.PKCS12PassFile != ""):
		add(errors.New("give --cert/--key or --pkcs12, not both"))
	case cfg.PKCS12PassFile != "" && cfg.PKCS12 == "":
		add(errors.New("--pkcs12-pass-file given without --pkcs12"))
	case cfg.PKCS12 != "":
	case cfg.Cert == "" && cfg.Key == "":
		add(errors.New("no client identity: give --cert FILE and --key FILE, or --pkcs12 FILE (or --config FILE)"))
	case cfg.Cert == "":
		add(errors.New("--key given without --cert"))
	case cfg.Key == "":
		add(errors.New("--cert given without --key"))
	}
	p12Given := cfg.PKCS12 != "" || cfg.PKCS12PassFile != ""
	if (cfg.PKCS12 != "" && !pemGiven) || (cfg.Cert != "" && cfg.Key != "" && !p12Given) {
		var err error
		if id, err = tlsconf.LoadIdentity("default", src); err != nil {
			flags := "--cert/--key"
			if cfg.PKCS12 != "" {
				flags = "--pkcs12"
			}
			add(fmt.Errorf("%s: %w", flags, err))
		} else {
			pl.identities["default"] = id
		}
	}
	pl.reloadInterval, pl.expiryWarning = cfg.ReloadInterval, cfg.ExpiryWarning
	if cfg.ReloadInterval < 0 {
		add(fmt.Errorf("--reload-interval %s: want 0 (off) or a positive duration", cfg.ReloadInterval))
	}
	if len(cfg.CACerts) > 0 {
		pl.trusts["default"] = trustSource{files: cfg.CACerts}
	}
	var allow []proxy.HostPattern
	for _, a := range cfg.Allow {
		p, err := proxy.ParseHostPattern(a)
		if err != nil {
			add(fmt.Errorf("--allow: %w", err))
			continue
		}
		allow = append(allow, p)
	}
	if cfg.Upstream != "" {
		u, err := parseUpstream(cfg.Upstream)
		add(err)
		pl.upstream = u
	}
	if len(cfg.Allow) == 0 && cfg.Upstream == "" {
		add(errNothingAllowed)
	}
	if cfg.ServerName != "" && !validServerName(cfg.ServerName) {
		add(fmt.Errorf("--server-name %q: not a host name", cfg.ServerName))
	}
	for _, r := range cfg.Resolve {
		k, v, err := parseResolve(r)
		if err != nil {
			add(err)
			continue
		}
		pl.resolve[k] = v
	}
	level, err := parseLevel(cfg.LogLevel)
	if err != nil {
		add(fmt.Errorf("--log-level %w", err))
	}
	pl.level = level
	if err := checkFormat(cfg.LogFormat); err != nil {
		add(fmt.Errorf("--log-format %w", err))
	}
	roots, err := tlsconf.LoadCAFiles(cfg.CACerts)
	if err != nil {
		add(fmt.Errorf("--cacert: %w", err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	trust, trustKey := "system roots", ""
	if len(cfg.CACerts) > 0 {
		trust, trustKey = strings.Join(cfg.CACerts, ","), "default"
	}
	pl.via, pl.stripHeaders, pl.pprof = cfg.Via, cfg.StripHeaders, cfg.Pprof
	base := proxy.RouteOptions{Identity: id, RootCAs: roots, ServerName: cfg.ServerName, Resolve: pl.resolve, HTTP2: cfg.HTTP2}
	if len(allow) > 0 {
		ro := base
		ro.Name, ro.Hosts = "forward", allow
		pl.routes = append(pl.routes, &routePlan{opts: ro, identity: "default", trust: trust, trustKey: trustKey, hosts: cfg.Allow})
	}
	if pl.upstream != nil {
		p, err := upstreamPattern(pl.upstream)
		if err != nil {
			return nil, fmt.Errorf("--upstream: %w", err)
		}
		ro := base
		ro.Name, ro.Hosts = "gateway", []proxy.HostPattern{p}
		pl.upstreamRoute = &routePlan{opts: ro, identity: "default", trust: trust, trustKey: trustKey, hosts: []string{p.String()}}
	}
	return pl, nil
}

func parseLevel(s string) (zap.AtomicLevel, error) {
	level, err := zap.ParseAtomicLevel(s)
	if err != nil || s == "" {
		return level, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return level, nil
}

func checkFormat(s string) error {
	if s != "json" && s != "console" {
		return fmt.Errorf("%q: want json or console", s)
	}
	return nil
}

func validServerName(s string) bool {
	_, err := proxy.ParseHostPattern(s)
	return err == nil && !strings.ContainsAny(s, "*:[")
}
