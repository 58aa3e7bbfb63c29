package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

const caUsage = `Usage: mtlsproxy ca init --out DIR [--permit DOMAIN ...] [--config FILE]

Make the local CA for connect: mitm routes: an ECDSA P-256 certificate
DIR/ca.crt and its key DIR/ca.key (mode 0600), valid for one year. The CA
carries X.509 name constraints that permit only the given domains (each
with its subdomains) and no IP address, so a leaked key cannot
impersonate other sites. Without --permit, the domains are taken from the
hosts of the mitm routes in --config. Existing files are never
overwritten.

Then add to the config file:

  mitm_ca: {cert: DIR/ca.crt, key: DIR/ca.key}

and make the tools trust DIR/ca.crt (see the README).

Flags:
  --out DIR         directory for ca.crt and ca.key (required)
  --permit DOMAIN   a domain the CA may sign for (repeatable)
  --config FILE     take the domains from this config's mitm routes
  --name NAME       the CA's common name (default "mtlsproxy local MITM CA")
  -h, --help        show this help
`

func (c *cli) caCmd(_ context.Context, args []string) error {
	if len(args) == 0 || args[0] != "init" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(c.stdout, caUsage)
			return nil
		}
		fmt.Fprintf(c.stderr, "mtlsproxy ca: want the subcommand init\n\n%s", caUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("ca init", flag.ContinueOnError)
	out := fs.String("out", "", "")
	config := fs.String("config", "", "")
	name := fs.String("name", "mtlsproxy local MITM CA", "")
	var permit stringList
	fs.Var(&permit, "permit", "")
	if err := c.parseFlags(fs, args[1:], caUsage); err != nil {
		return ignoreHelp(err)
	}
	if *out == "" {
		fmt.Fprintf(c.stderr, "mtlsproxy ca init: --out DIR is required\n\n%s", caUsage)
		return errUsage
	}
	domains := []string(permit)
	if len(domains) == 0 && *config != "" {
		var err error
		if domains, err = mitmDomains(*config); err != nil {
			return err
		}
	}
	if len(domains) == 0 {
		return errors.New("ca init: no domains to permit: give --permit DOMAIN, or --config with connect: mitm routes")
	}
	for i, d := range domains {
		p, err := proxy.ParseHostPattern(d)
		host, port, exact := p.Exact()
		if err != nil || !exact || port != "" || p.Domain() != host { // Domain is "" for IP addresses
			return fmt.Errorf("ca init: --permit %q: want a domain name such as corp.example", d)
		}
		domains[i] = host
	}
	dir, err := filepath.Abs(*out)
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	certFile, keyFile, err := tlsconf.InitMitmCA(dir, domains, *name)
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	fmt.Fprintf(c.stdout, "wrote %s and %s (key mode 0600)\npermitted domains: %s\n\nadd to the config file:\n\n  mitm_ca: {cert: %s, key: %s}\n",
		certFile, keyFile, strings.Join(domains, ", "), certFile, keyFile)
	return nil
}

// mitmDomains lists the domains of a config file's mitm routes: the host of
// an exact pattern, the suffix of a wildcard.
func mitmDomains(file string) ([]string, error) {
	cfg, err := config.Load(file)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range cfg.Routes {
		if r.Connect != "mitm" {
			continue
		}
		for _, h := range r.RouteHosts() {
			p, err := proxy.ParseHostPattern(h)
			if err != nil {
				continue
			}
			d := p.Domain()
			if d != "" && !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out, nil
}
