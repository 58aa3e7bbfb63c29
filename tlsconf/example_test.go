package tlsconf_test

import (
	"fmt"
	"log"
	"os"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
)

// ExampleSet reloads an identity and a trust bundle as the runtime does on
// SIGHUP, a file change or the periodic re-read, and reports only the news:
// the broken certificate once, then the fix.
func ExampleSet() {
	dir, err := os.MkdirTemp("", "tlsconf-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ca, _ := pki.NewCA("example CA")
	first, _ := ca.Issue(pki.LeafOptions{CommonName: "app-1", Client: true})
	certFile, keyFile, _ := first.WriteFiles(dir, "tls")
	caFile, _ := ca.WriteCert(dir, "ca")

	id, err := tlsconf.LoadIdentity("app", tlsconf.IdentitySource{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		log.Fatal(err)
	}
	trust, err := tlsconf.LoadTrustBundle("internal", []string{caFile}, false)
	if err != nil {
		log.Fatal(err)
	}
	set := tlsconf.NewSet(id, trust)
	report := func(reason string) {
		for _, r := range set.Reload(reason) {
			switch {
			case r.Err != nil:
				fmt.Printf("%s (%s): reload failed, generation %d stays in use\n", r.Name, reason, r.Generation)
			case r.Changed:
				fmt.Printf("%s (%s): generation %d in use, %s\n", r.Name, reason, r.Generation, id.Leaf().Subject.CommonName)
			}
		}
	}

	report("SIGHUP") // nothing changed: no news
	_ = os.WriteFile(certFile, []byte("half-written"), 0o644)
	report("file change")
	report("periodic re-read") // the same error: no news
	second, _ := ca.Issue(pki.LeafOptions{CommonName: "app-2", Client: true})
	_, _, _ = second.WriteFiles(dir, "tls")
	report("file change")
	// Output:
	// app (file change): reload failed, generation 1 stays in use
	// app (file change): generation 2 in use, app-2
}
