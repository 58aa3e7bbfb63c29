package config

import (
	"fmt"
	"strings"
)

// FlagUsage is the flags part of run --help, from Settings: one entry per
// flag, grouped, with how each acts on a config file.
func FlagUsage() string {
	settings := Settings()
	width := 0
	for _, s := range settings {
		width = max(width, len(flagSpelling(s)))
	}
	var b strings.Builder
	var override, extend, single []string
	for _, s := range settings {
		switch {
		case s.Flag == "config":
		case s.Single:
			single = append(single, "--"+s.Flag)
		case s.Repeatable:
			extend = append(extend, "--"+s.Flag)
		default:
			override = append(override, "--"+s.Flag)
		}
	}
	b.WriteString("With --config, these flags override the file: ")
	b.WriteString(strings.Join(override, ", "))
	b.WriteString("; these add to its lists: ")
	b.WriteString(strings.Join(extend, ", "))
	b.WriteString("; and the single-identity flags ")
	b.WriteString(strings.Join(single, ", "))
	b.WriteString(" cannot be combined with it.")
	out := wrap(b.String(), 0, 76) + "\n"
	b.Reset()
	b.WriteString(out)
	b.WriteString("\nFlags (each can also be set as MTLSPROXY_<NAME>, e.g. MTLSPROXY_CACERT;\nrepeatable flags take a comma-separated list there):\n")
	group := ""
	for _, s := range settings {
		if s.Group != group {
			group = s.Group
			b.WriteString("\nTimeouts (durations such as 500ms, 10s, 2m; 0 takes the default):\n")
		}
		name := flagSpelling(s)
		text := wrap(s.Usage, 2+width+2, 78)
		fmt.Fprintf(&b, "  %-*s  %s\n", width, name, strings.TrimLeft(text, " "))
	}
	return b.String()
}

func flagSpelling(s Setting) string {
	if s.Arg == "" {
		return "--" + s.Flag
	}
	return "--" + s.Flag + " " + s.Arg
}

// wrap fills text into lines of at most width columns, every line after
// the first indented by indent spaces.
func wrap(text string, indent, width int) string {
	var b strings.Builder
	col := indent
	for i, w := range strings.Fields(text) {
		switch {
		case i == 0:
		case col+1+len(w) > width:
			b.WriteString("\n" + strings.Repeat(" ", indent))
			col = indent
		default:
			b.WriteByte(' ')
			col++
		}
		b.WriteString(w)
		col += len(w)
	}
	return b.String()
}

// FlagTable is the docs' Markdown table of the run settings, from
// Settings: flag, variable, config key, meaning.
func FlagTable() string {
	var b strings.Builder
	b.WriteString("| flag | environment | config key | meaning |\n|---|---|---|---|\n")
	for _, s := range Settings() {
		key := "—"
		switch {
		case s.Single && s.Key != "":
			key = "`" + s.Key + "` (what the flag builds; not with `--config`)"
		case s.Single:
			key = "— (not with `--config`; files use `gateways`)"
		case s.Key != "":
			key = "`" + s.Key + "`"
		}
		usage := strings.NewReplacer("|", `\|`, "*", `\*`).Replace(s.Usage)
		if s.docs != "" {
			usage += "; " + s.docs
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | %s | %s |\n", flagSpelling(s), s.Env(), key, usage)
	}
	return b.String()
}
