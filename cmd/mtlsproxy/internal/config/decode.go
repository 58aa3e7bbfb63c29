package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads and decodes a config file strictly. Unknown keys and values
// of the wrong kind are kept as problems that Validate reports, each at
// its line, along with everything else, so that one run shows all of
// them; the error is set only when the file cannot be read or is not YAML.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	return Decode(path, data)
}

// Decode is Load of data read from the file name.
func Decode(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%s: the file is empty", name)
	}
	c := &Config{src: source{file: name, lines: map[string]int{}}}
	w := &walker{src: &c.src}
	w.walk(root.Content[0], reflect.TypeFor[Config](), "", "the top level")
	// The walk found what is wrong and where; the decoder, strict too,
	// fills the struct. Its errors are the walk's, less precisely placed,
	// unless the two disagree: then they are reported as they are.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) && len(c.src.decode) == 0 {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, e := range te.Errors {
			c.src.decode = append(c.src.decode, Problem{Msg: e, Where: name})
		}
	}
	return c, nil
}

// walker walks the YAML tree beside the Config type: it records the line
// of every field path, and checks each key against the struct's fields
// and each scalar against its field's type.
type walker struct {
	src *source
}

func (w *walker) problem(n *yaml.Node, path, format string, args ...any) {
	w.src.decode = append(w.src.decode, Problem{Path: path, Msg: fmt.Sprintf(format, args...),
		Where: fmt.Sprintf("%s:%d", w.src.file, n.Line), line: n.Line})
}

var durationType = reflect.TypeFor[time.Duration]()

// walk checks n against t. section names the struct for messages about
// its keys ("a route").
func (w *walker) walk(n *yaml.Node, t reflect.Type, path, section string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && t != durationType:
		if n.Kind != yaml.MappingNode {
			w.problem(n, path, "want a mapping of keys (%s)", strings.Join(structKeys(t), ", "))
			return
		}
		fields := structFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			w.src.lines[p] = k.Line
			f, ok := fields[k.Value]
			if !ok {
				w.problem(k, p, "unknown key %q in %s (known keys: %s)", k.Value, section, strings.Join(structKeys(t), ", "))
				continue
			}
			w.walk(v, f.Type, p, sectionOf(f, k.Value))
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.problem(n, path, "want a mapping of names to settings")
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			w.src.lines[p] = k.Line
			w.walk(v, t.Elem(), p, section)
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.problem(n, path, "want a list")
			return
		}
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			w.src.lines[p] = item.Line
			w.walk(item, t.Elem(), p, section)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			w.problem(n, path, "want %s", kindName(t))
			return
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			w.problem(n, path, "%q: want %s", n.Value, kindName(t))
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// kindName says what a scalar of type t looks like.
func kindName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration such as 500ms, 10s or 2m"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Int:
		return "a whole number"
	}
	return "a string"
}

// structFields maps the YAML keys of t, inline fields included, to their
// fields.
func structFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch {
		case opts == "inline":
			for k, v := range structFields(f.Type) {
				out[k] = v
			}
		case name != "" && name != "-":
			out[name] = f
		}
	}
	return out
}

func structKeys(t reflect.Type) []string {
	var keys []string
	for k := range structFields(t) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// sectionOf names what a field holds, from its section tag, for messages
// about unknown keys inside it.
func sectionOf(f reflect.StructField, key string) string {
	if s := f.Tag.Get("section"); s != "" {
		return s
	}
	return key
}
