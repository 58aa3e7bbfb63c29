package main

import (
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is stamped by the release build: -ldflags "-X main.version=v1.2.3".
var version = ""

const versionUsage = `Usage: mtlsproxy version

Print the version, the source revision and the Go toolchain.
`

func (c *cli) versionCmd(args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := c.parseFlags(fs, args, versionUsage); err != nil {
		return ignoreHelp(err)
	}
	fmt.Fprintln(c.stdout, versionString())
	return nil
}

func versionString() string {
	v := version
	var extra []string
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		var rev, when string
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if modified {
				rev += "+dirty"
			}
			extra = append(extra, "revision "+rev)
		}
		if when != "" {
			extra = append(extra, when)
		}
	}
	if v == "" {
		v = "(devel)"
	}
	extra = append(extra, runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
	return "mtlsproxy " + v + " (" + strings.Join(extra, ", ") + ")"
}

func ignoreHelp(err error) error {
	if err == flag.ErrHelp {
		return nil
	}
	return err
}
