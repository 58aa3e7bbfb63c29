package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

func TestRunFlagsEnvironmentErrors(t *testing.T) {
	s := pkitest.New(t)
	base := map[string]string{"MTLSPROXY_CERT": s.ClientCert, "MTLSPROXY_KEY": s.ClientKey, "MTLSPROXY_ALLOW": "api.internal"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			if _, ok := m[bk]; !ok {
				m[bk] = bv
			}
		}
		return m
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantAny []string // the error must name one of these
	}{
		{"bad log level", with("MTLSPROXY_LOG_LEVEL", "bogus"), []string{"MTLSPROXY_LOG_LEVEL", "--log-level"}},
		{"bad bool", with("MTLSPROXY_UNSAFE_LISTEN", "maybe"), []string{"MTLSPROXY_UNSAFE_LISTEN"}},
		{"bad allow", with("MTLSPROXY_ALLOW", "a.internal,b.*.internal"), []string{"MTLSPROXY_ALLOW", "--allow"}},
		{"public listen", with("MTLSPROXY_LISTEN", "0.0.0.0:8080"), []string{"MTLSPROXY_LISTEN", "--listen"}},
		{"bad resolve", with("MTLSPROXY_RESOLVE", "api.internal:443"), []string{"MTLSPROXY_RESOLVE", "--resolve"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runOnce(tt.env, "run")
			if err == nil {
				t.Fatal("run succeeded; want an error")
			}
			for _, w := range tt.wantAny {
				if strings.Contains(err.Error(), w) {
					return
				}
			}
			t.Errorf("error %q; want it to name one of %q", err, tt.wantAny)
		})
	}
}

func TestStringList(t *testing.T) {
	var l stringList
	for _, v := range []string{"a", "b,c", ""} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"a", "b,c", ""}; !reflect.DeepEqual([]string(l), want) {
		t.Errorf("after Set: %q; want %q", []string(l), want)
	}
	if got, want := l.String(), "a,b,c,"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
}
