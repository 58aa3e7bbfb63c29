package config

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestValidateIsPure checks that Validate reads no file and changes
// nothing: the files a config names are the runtime's to load.
func TestValidateIsPure(t *testing.T) {
	c, err := Decode("pure.yaml", []byte(`identities:
  app: {cert: /nonexistent/c.crt, key: /nonexistent/c.key}
trust:
  t: {ca_files: [/nonexistent/ca.crt]}
mitm_ca: {cert: /nonexistent/ca.crt, key: /nonexistent/ca.key}
clients:
  ci: {password_file: /nonexistent/ci.pass}
routes:
  - {host: a.internal, identity: app, trust: t, connect: mitm, clients: [ci]}
`))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := json.Marshal(c)
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v; want nil (it does not look at files)", err)
	}
	if after, _ := json.Marshal(c); string(after) != string(before) {
		t.Errorf("Validate changed the config:\n%s\nwas\n%s", after, before)
	}
}

// FuzzDecodeValidate checks that no input makes decoding or validation
// panic, and that every problem of a file says where it is.
func FuzzDecodeValidate(f *testing.F) {
	for _, s := range []string{
		"", "routes: 5\n", "listen: [a]\nlog: info\n", "a: &a [*a, *a]\nb: *a\n",
		"routes:\n  - {host: '*.a', hosts: [b], identity: none, connect: mitm, verify: {pins: [x], san: ['']}, min_tls: 1}\n",
		"gateways:\n  - listen: 0.0.0.0:1\n    upstream: http://x\n    verify: 3\n",
		"timeouts: {dial: fast, shutdown: -1s}\nworkers: -1\nreload_interval: x\n",
		"identities: {none: {pkcs12: x, cert: y}}\ntrust: {t: {}}\nclients: {'a:b': {}}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml: ") {
				t.Errorf("error %q does not start with the file name", err)
			}
			return
		}
		var ce *Error
		if err := c.Validate(); err != nil && !errors.As(err, &ce) {
			t.Fatalf("Validate returned %T", err)
		} else if err != nil {
			for _, p := range ce.Problems {
				if !strings.HasPrefix(p.String(), "fuzz.yaml") {
					t.Errorf("problem %q does not name the file", p)
				}
			}
		}
	})
}
