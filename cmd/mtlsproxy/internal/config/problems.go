package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// source records where a Config's values came from: the file and the line
// of each field path, and the flag or variable that set a path.
type source struct {
	file  string
	lines map[string]int
	// origin maps a field path to "--flag" or "MTLSPROXY_NAME".
	origin map[string]string
	// decode are the problems found while decoding the file; Validate
	// reports them with its own.
	decode []Problem
	// flagsOnly is set when the run flags describe everything (no file):
	// the identity and the allowed hosts are then named as flags.
	flagsOnly bool
}

func (s *source) setOrigin(path, name string) {
	if s.origin == nil {
		s.origin = map[string]string{}
	}
	s.origin[path] = name
}

// Problem is one thing wrong with a Config.
type Problem struct {
	// Path is the field path, such as routes[1].identity; "" for a
	// problem of the whole.
	Path string
	// Msg says what is wrong, without the path.
	Msg string
	// Where is "FILE:LINE", "FILE", "--flag" or "MTLSPROXY_NAME": where
	// the value came from, if known.
	Where string
	line  int
}

// String is the problem as a user reads it: "FILE:LINE: PATH: MSG", or
// "--flag: MSG" when the value came from a flag.
func (p Problem) String() string {
	switch {
	case strings.HasPrefix(p.Where, "-") || strings.HasPrefix(p.Where, "MTLSPROXY_"):
		return p.Where + ": " + p.Msg
	case p.Where != "" && p.Path != "":
		return p.Where + ": " + p.Path + ": " + p.Msg
	case p.Where != "":
		return p.Where + ": " + p.Msg
	case p.Path != "":
		return p.Path + ": " + p.Msg
	}
	return p.Msg
}

// Error lists every problem found, in file order.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0].String()
	}
	return fmt.Sprintf("%d problems:\n  %s", len(e.Problems), strings.Join(e.Lines(), "\n  "))
}

// Lines are the problems, one line each.
func (e *Error) Lines() []string {
	out := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p.String()
	}
	return out
}

// Problems collects problems of one Config, placing each at its line or
// flag. The runtime uses it to report the files it cannot load the way
// Validate reports the rest.
type Problems struct {
	src  *source
	list []Problem
}

// Problems starts an empty collection for c.
func (c *Config) Problems() *Problems { return &Problems{src: &c.src} }

// Add records a problem at path.
func (p *Problems) Add(path, format string, args ...any) {
	pr := Problem{Path: path, Msg: fmt.Sprintf(format, args...)}
	pr.Where, pr.line = p.src.where(path)
	p.list = append(p.list, pr)
}

// Include adds the problems of err (an *Error, or any other error as a
// problem of the whole).
func (p *Problems) Include(err error) {
	var e *Error
	switch {
	case err == nil:
	case errors.As(err, &e):
		p.list = append(p.list, e.Problems...)
	default:
		p.list = append(p.list, Problem{Msg: err.Error()})
	}
}

// Err returns the problems in file order as an *Error, or nil.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	list := append([]Problem(nil), p.list...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].line < list[j].line })
	return &Error{Problems: list}
}

// where finds where path, or its nearest parent, came from: a flag or
// variable that set it, or its line in the file.
func (s *source) where(path string) (string, int) {
	for p := path; ; {
		if o, ok := s.origin[p]; ok {
			return o, 0
		}
		if l, ok := s.lines[p]; ok {
			return fmt.Sprintf("%s:%d", s.file, l), l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return s.file, 0
}
