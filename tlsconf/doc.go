// Package tlsconf is the TLS side of mtlsproxy: it loads client identities
// and trust bundles, keeps them reloadable, and builds the one client
// *tls.Config used for every upstream connection. It knows nothing about
// HTTP routing.
//
// # Reloadable material
//
// Every piece of TLS material that can change while the proxy runs is a
// Source: Identity (a client certificate and key), TrustBundle (the CAs
// that verify servers) and LeafCache (the MITM CA and the leaves it mints).
// Files are one kind of source; SPIFFE and PKCS#11 will be others, so
// nothing outside this package needs to know where material comes from.
// A Source reloads by pointer swap: a failed reload keeps the old material
// and returns the error, and a reload that changed the material bumps its
// Generation.
//
// A Set reloads all sources together and returns only the news, so the
// caller logs and counts each Result it gets; a broken file is reported
// once, however many re-reads find it still broken. Watch drives the set
// from file changes (including a Kubernetes "..data" symlink swap) and a
// periodic re-read; SIGHUP calls Reload directly. A consumer that built
// state from sources (a route's transports and session cache) keeps a
// Tracker and refreshes when it reports a change.
//
// Wiring, in the runtime:
//
//	id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: crt, KeyFile: key})
//	trust, err := tlsconf.LoadTrustBundle("internal", caFiles, false)
//	set := tlsconf.NewSet(id, trust, leaves) // leaves: *LeafCache, or nil without connect: mitm
//	report := func(reason string) {
//		for _, r := range set.Reload(reason) { // only the news
//			_, isID := r.Source.(*tlsconf.Identity)
//			switch {
//			case r.Err != nil: // a new error; the old material stays in use
//				logger.Error("reload failed", zap.String("source", r.Name), zap.Error(r.Err))
//				if isID {
//					reloads.WithLabelValues(r.Name, "error").Inc()
//				}
//			case r.Changed: // new material published, r.Generation
//				if isID {
//					reloads.WithLabelValues(r.Name, "ok").Inc()
//				}
//				refreshRoutesUsing(r.Source) // or let each route's Tracker notice
//			}
//		}
//	}
//	err = tlsconf.Watch(ctx, tlsconf.WatchOptions{Files: set.Files(), Interval: every, OnChange: report})
//	// on SIGHUP: report("SIGHUP")
//
// And in a route, either keep a LiveClientConfig, which builds the config
// again after a change and says so once:
//
//	live := tlsconf.NewLiveClientConfig(tlsconf.ClientOptions{Identity: id, Trust: trust, ServerName: name})
//	cfg, rebuilt := live.Config() // per dial
//	if rebuilt {
//		// retire connections and transports made with the previous config
//	}
//
// or build with ClientConfig and keep a Tracker of the same sources:
//
//	tracker := tlsconf.NewTracker(id, trust) // nil sources are skipped
//	if tracker.Changed() { // after set.Reload, or before a dial
//		cfg = tlsconf.ClientConfig(opts) // new pool, new session cache
//	}
package tlsconf
