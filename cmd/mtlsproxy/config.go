package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// fileConfig is the YAML config file (run --config). Unknown keys are
// errors; zero values take the defaults named in each comment.
type fileConfig struct {
	// Listen is the forward-proxy listener; default 127.0.0.1:8080.
	Listen string `yaml:"listen"`
	// UnsafeListen allows non-loopback listeners.
	UnsafeListen bool `yaml:"unsafe_listen"`
	// Via adds "Via: 1.1 mtlsproxy" to requests and responses.
	Via bool `yaml:"via"`
	// SocketMode is the file mode of unix:PATH listeners, in octal
	// (default "0660").
	SocketMode string `yaml:"socket_mode"`
	// StripHeaders are removed from requests before they go upstream, on
	// top of X-Forwarded-Client-Cert.
	StripHeaders []string `yaml:"strip_headers"`
	// Clients, if any, must authenticate with Proxy-Authorization Basic.
	Clients map[string]clientConfig `yaml:"clients"`
	// Admin is the admin listener; off if empty.
	Admin string `yaml:"admin"`
	// Pprof serves Go's profiler at /debug/pprof/ on the admin listener.
	Pprof bool `yaml:"pprof"`
	// MaxConnections caps open client connections per listener; 0 means
	// no cap.
	MaxConnections int `yaml:"max_connections"`
	// Workers is the number of serving processes (default 1).
	Workers int `yaml:"workers"`
	// ReloadInterval re-reads identities and trust bundles periodically
	// (default 1m; 0 turns it off). File changes are also watched.
	ReloadInterval *time.Duration `yaml:"reload_interval"`
	// ExpiryWarning is how long before a certificate expires a warning is
	// logged (default 168h).
	ExpiryWarning *time.Duration `yaml:"expiry_warning"`
	// Timeouts; zero fields take the defaults of the matching flags.
	Timeouts timeoutsConfig `yaml:"timeouts"`
	// Log sets level (default info) and format (default json).
	Log logConfig `yaml:"log"`
	// MitmCA is the local CA for connect: mitm routes (make one with
	// "mtlsproxy ca init").
	MitmCA *mitmCAConfig `yaml:"mitm_ca"`
	// Resolve entries are HOST:PORT:ADDR, as --resolve.
	Resolve []string `yaml:"resolve"`
	// Identities are client certificates by name.
	Identities map[string]identityConfig `yaml:"identities"`
	// Trust are CA bundles by name.
	Trust map[string]trustConfig `yaml:"trust"`
	// Routes are tried in order for forward-proxy requests; first match
	// wins.
	Routes []routeConfig `yaml:"routes"`
	// Gateways are extra listeners, each bound to one upstream.
	Gateways []gatewayConfig `yaml:"gateways"`
}

type timeoutsConfig struct {
	Dial             time.Duration `yaml:"dial"`
	TLSHandshake     time.Duration `yaml:"tls_handshake"`
	ResponseHeader   time.Duration `yaml:"response_header"`
	IdleConn         time.Duration `yaml:"idle_conn"`
	TunnelIdle       time.Duration `yaml:"tunnel_idle"`
	ClientReadHeader time.Duration `yaml:"client_read_header"`
	ClientIdle       time.Duration `yaml:"client_idle"`
	Shutdown         time.Duration `yaml:"shutdown"`
}

type logConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type mitmCAConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

type clientConfig struct {
	PasswordFile string `yaml:"password_file"`
}

type identityConfig struct {
	Cert         string `yaml:"cert"`
	Key          string `yaml:"key"`
	PKCS12       string `yaml:"pkcs12"`
	PasswordFile string `yaml:"password_file"`
}

type trustConfig struct {
	CAFiles []string `yaml:"ca_files"`
	System  bool     `yaml:"system"`
}

type verifyConfig struct {
	SAN  []string `yaml:"san"`
	Pins []string `yaml:"pins"`
}

// upstreamConfig are the settings routes and gateways share.
type upstreamConfig struct {
	Identity   string       `yaml:"identity"`
	Trust      string       `yaml:"trust"`
	ServerName string       `yaml:"server_name"`
	Address    string       `yaml:"address"`
	Verify     verifyConfig `yaml:"verify"`
	MinTLS     string       `yaml:"min_tls"`
	// HTTP2 offers HTTP/2 by ALPN (default true).
	HTTP2 *bool `yaml:"http2"`
}

type routeConfig struct {
	Name           string   `yaml:"name"`
	Host           string   `yaml:"host"`
	Hosts          []string `yaml:"hosts"`
	upstreamConfig `yaml:",inline"`
	Connect        string `yaml:"connect"`
	// Clients limits the route to these callers (see the top-level
	// clients); others go on to the next route.
	Clients []string `yaml:"clients"`
}

type gatewayConfig struct {
	Name           string `yaml:"name"`
	Listen         string `yaml:"listen"`
	Upstream       string `yaml:"upstream"`
	upstreamConfig `yaml:",inline"`
	Clients        []string `yaml:"clients"`
}

// configProblems collects validation problems, each with its field path
// and, from the file, its line.
type configProblems struct {
	file  string
	lines map[string]int
	list  []problem
}

type problem struct {
	line int
	msg  string
}

func (p *configProblems) add(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	line := p.lineOf(path)
	if line > 0 {
		msg = fmt.Sprintf("%s:%d: %s", p.file, line, msg)
	} else if p.file != "" {
		msg = p.file + ": " + msg
	}
	p.list = append(p.list, problem{line, msg})
}

// lineOf finds the line of path, or of its nearest parent in the file.
func (p *configProblems) lineOf(path string) int {
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// err returns the problems in file order, or nil.
func (p *configProblems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	sort.SliceStable(p.list, func(i, j int) bool { return p.list[i].line < p.list[j].line })
	msgs := make([]string, len(p.list))
	for i, pr := range p.list {
		msgs[i] = pr.msg
	}
	return &problemsError{msgs}
}

// problemsError lists every problem found, one per line.
type problemsError struct{ list []string }

func (e *problemsError) Error() string {
	if len(e.list) == 1 {
		return e.list[0]
	}
	return fmt.Sprintf("%d problems:\n  %s", len(e.list), strings.Join(e.list, "\n  "))
}

// readConfigFile decodes a config file strictly. Unknown keys and wrong
// types are recorded in the returned problems, and decoding goes on so
// that validation can report everything else too; err is set only when
// the file cannot be read or is not YAML at all.
func readConfigFile(path string) (*fileConfig, *configProblems, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--config: %w", err)
	}
	cfg, lines, err := decodeConfig(data)
	probs := &configProblems{file: path, lines: lines}
	var te *yaml.TypeError
	switch {
	case errors.As(err, &te):
		for _, e := range te.Errors {
			line, msg := readableYAMLError(e)
			if key, ok := unknownKey(e); ok {
				if p := pathAt(lines, line, key); p != "" {
					msg = p + ": " + msg
				}
			}
			probs.list = append(probs.list, problem{line, fmt.Sprintf("%s:%d: %s", path, line, msg)})
		}
	case err != nil:
		return nil, nil, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return cfg, probs, nil
}

func decodeConfig(data []byte) (*fileConfig, map[string]int, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, nil, err
	}
	if len(root.Content) == 0 {
		return nil, nil, errors.New("the file is empty")
	}
	lines := map[string]int{}
	indexLines(root.Content[0], "", lines)
	cfg := &fileConfig{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && err != io.EOF {
		return cfg, lines, err
	}
	return cfg, lines, nil
}

// indexLines records the line of every mapping key and sequence item,
// keyed by field path: routes[1].identity.
func indexLines(n *yaml.Node, path string, lines map[string]int) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			lines[p] = k.Line
			indexLines(n.Content[i+1], p, lines)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			lines[p] = c.Line
			indexLines(c, p, lines)
		}
	}
}

var (
	yamlFieldNotFound = regexp.MustCompile(`^line (\d+): field (\S+) not found in type main\.(\w+)$`)
	yamlSection       = map[string]string{
		"fileConfig": "the top level", "logConfig": "log", "timeoutsConfig": "timeouts", "clientConfig": "a client", "mitmCAConfig": "mitm_ca",
		"identityConfig": "an identity", "trustConfig": "a trust bundle", "verifyConfig": "verify",
		"routeConfig": "a route", "gatewayConfig": "a gateway",
	}
	yamlTypeName = regexp.MustCompile(`main\.(\w+)`)
)

// readableYAMLError rewrites "line 3: field hots not found in type
// main.routeConfig" as "3: unknown key "hots" in a route (known keys: ...)".
// unknownKey returns the key of an unknown-field decoding error.
func unknownKey(e string) (string, bool) {
	m := yamlFieldNotFound.FindStringSubmatch(e)
	if m == nil {
		return "", false
	}
	return m[2], true
}

// pathAt finds the field path of key on line.
func pathAt(lines map[string]int, line int, key string) string {
	for p, l := range lines {
		if l == line && (p == key || strings.HasSuffix(p, "."+key)) {
			return p
		}
	}
	return ""
}

func readableYAMLError(e string) (line int, msg string) {
	if m := yamlFieldNotFound.FindStringSubmatch(e); m != nil {
		line, _ = strconv.Atoi(m[1])
		return line, fmt.Sprintf("unknown key %q in %s (known keys: %s)", m[2], yamlSection[m[3]], strings.Join(knownKeys(m[3]), ", "))
	}
	if rest, ok := strings.CutPrefix(e, "line "); ok {
		if n, tail, ok := strings.Cut(rest, ": "); ok {
			line, _ = strconv.Atoi(n)
			e = tail
		}
	}
	return line, yamlTypeName.ReplaceAllStringFunc(e, func(s string) string { return yamlSection[strings.TrimPrefix(s, "main.")] })
}

var configTypes = map[string]reflect.Type{
	"fileConfig": reflect.TypeFor[fileConfig](), "logConfig": reflect.TypeFor[logConfig](),
	"timeoutsConfig": reflect.TypeFor[timeoutsConfig](), "clientConfig": reflect.TypeFor[clientConfig](),
	"mitmCAConfig": reflect.TypeFor[mitmCAConfig](), "identityConfig": reflect.TypeFor[identityConfig](),
	"trustConfig": reflect.TypeFor[trustConfig](), "verifyConfig": reflect.TypeFor[verifyConfig](),
	"routeConfig": reflect.TypeFor[routeConfig](), "gatewayConfig": reflect.TypeFor[gatewayConfig](),
}

func knownKeys(typeName string) []string {
	t, ok := configTypes[typeName]
	if !ok {
		return nil
	}
	keys := yamlKeys(t)
	sort.Strings(keys)
	return keys
}

func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		name, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if opts == "inline" {
			keys = append(keys, yamlKeys(t.Field(i).Type)...)
		} else if name != "" {
			keys = append(keys, name)
		}
	}
	return keys
}
