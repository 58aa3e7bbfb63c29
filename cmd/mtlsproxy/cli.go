package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

// errUsage means the usage text has been printed already.
var errUsage = errors.New("usage")

// cli carries what every subcommand needs. Tests build one directly to
// learn the listener addresses.
type cli struct {
	stdout, stderr io.Writer
	// getenv reads the environment; tests replace it.
	getenv func(string) string
	// onListen, if set, is called with each listener's address once it
	// accepts connections.
	onListen func(name string, addr net.Addr)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c := &cli{stdout: stdout, stderr: stderr, getenv: os.Getenv}
	return c.main(ctx, args)
}

const mainUsage = `mtlsproxy is a local forward proxy that adds mutual TLS.

Legacy clients send plain HTTP to a listener on localhost; mtlsproxy sends
each request upstream over HTTPS, presenting a client certificate and
verifying the server.

Usage:
  mtlsproxy <command> [flags]

Commands:
  run       run the proxy
  check     validate a config file; with --dial, handshake with every upstream
  demo      run a throwaway mTLS server and the proxy, and show a request
  health    exit 0 if a running proxy is ready (asks its admin listener)
  ca init   make the local CA for connect: mitm routes
  version   print the version

Run "mtlsproxy <command> --help" for the flags of a command.
`

func (c *cli) main(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, mainUsage)
		return errUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		return c.runCmd(ctx, rest)
	case "check":
		return c.checkCmd(ctx, rest)
	case "demo":
		return c.demoCmd(ctx, rest)
	case "health":
		return c.healthCmd(ctx, rest)
	case "ca":
		return c.caCmd(ctx, rest)
	case "version":
		return c.versionCmd(rest)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(c.stdout, mainUsage)
		return nil
	default:
		fmt.Fprintf(c.stderr, "mtlsproxy: unknown command %q\n\n%s", cmd, mainUsage)
		return errUsage
	}
}

// parseFlags parses args with fs. --help prints the usage to stdout and
// returns flag.ErrHelp; other errors print the usage to stderr.
func (c *cli) parseFlags(fs *flag.FlagSet, args []string, usage string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(c.stdout, usage)
		return flag.ErrHelp
	case err != nil:
		fmt.Fprintf(c.stderr, "mtlsproxy %s: %v\n\n%s", fs.Name(), err, usage)
		return errUsage
	case fs.NArg() > 0:
		fmt.Fprintf(c.stderr, "mtlsproxy %s: unexpected argument %q\n\n%s", fs.Name(), fs.Arg(0), usage)
		return errUsage
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// exitCode prints err (unless it is already shown) and returns the process
// exit status: 2 for usage errors, the code of an *exitError, else 1.
func exitCode(err error, stderr io.Writer) int {
	if err == errUsage {
		return 2
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(stderr, "mtlsproxy:", msg)
	}
	return code
}
