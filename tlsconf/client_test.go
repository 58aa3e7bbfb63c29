package tlsconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mtlsproxy/mtlsproxy/tlsconf"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki"
	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// exchange runs one TLS connection over a loopback listener: handshake,
// then the client writes "ping" and reads it back. The read matters: under
// TLS 1.3 the client only learns that the server rejected its certificate,
// and only receives session tickets, when it reads.
func exchange(t *testing.T, serverCfg, clientCfg *tls.Config) (client, server tls.ConnectionState, clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, serverCfg)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil {
			done <- result{state: tc.ConnectionState(), err: err}
			return
		}
		_, err = tc.Write(buf)
		done <- result{state: tc.ConnectionState(), err: err}
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, clientCfg)
	clientErr = func() error {
		if err := tc.Handshake(); err != nil {
			return err
		}
		if _, err := tc.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil {
			return err
		}
		if string(buf) != "ping" {
			return errors.New("echo: got " + string(buf))
		}
		return nil
	}()
	client = tc.ConnectionState()
	tc.Close()
	r := <-done
	return client, r.state, clientErr, r.err
}

func loadClient(t *testing.T, s *pkitest.Set) *tlsconf.Identity {
	t.Helper()
	id, err := tlsconf.LoadPEMIdentity("app", s.ClientCert, s.ClientKey)
	if err != nil {
		t.Fatalf("LoadPEMIdentity: %v", err)
	}
	return id
}

func TestClientConfigFields(t *testing.T) {
	s := pkitest.New(t)
	id := loadClient(t, s)
	pool := s.CA.Pool()
	tests := []struct {
		name        string
		opts        tlsconf.ClientOptions
		wantVersion uint16
	}{
		{"zero", tlsconf.ClientOptions{}, tls.VersionTLS12},
		{"tls10 raised", tlsconf.ClientOptions{MinVersion: tls.VersionTLS10}, tls.VersionTLS12},
		{"tls11 raised", tlsconf.ClientOptions{MinVersion: tls.VersionTLS11}, tls.VersionTLS12},
		{"tls12 kept", tlsconf.ClientOptions{MinVersion: tls.VersionTLS12}, tls.VersionTLS12},
		{"tls13 kept", tlsconf.ClientOptions{MinVersion: tls.VersionTLS13}, tls.VersionTLS13},
		{"full", tlsconf.ClientOptions{Identity: id, RootCAs: pool, ServerName: "api.internal", SessionCacheSize: 3}, tls.VersionTLS12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tlsconf.ClientConfig(tt.opts)
			if cfg.MinVersion != tt.wantVersion {
				t.Errorf("MinVersion = %s; want %s", tls.VersionName(cfg.MinVersion), tls.VersionName(tt.wantVersion))
			}
			if cfg.InsecureSkipVerify {
				t.Error("InsecureSkipVerify = true; want false")
			}
			if cfg.ClientSessionCache == nil {
				t.Error("ClientSessionCache = nil; want a cache")
			}
			if cfg.RootCAs != tt.opts.RootCAs {
				t.Errorf("RootCAs = %p; want %p", cfg.RootCAs, tt.opts.RootCAs)
			}
			if cfg.ServerName != tt.opts.ServerName {
				t.Errorf("ServerName = %q; want %q", cfg.ServerName, tt.opts.ServerName)
			}
			switch {
			case tt.opts.Identity == nil && cfg.GetClientCertificate != nil:
				t.Error("GetClientCertificate set without an identity; want nil")
			case tt.opts.Identity != nil && cfg.GetClientCertificate == nil:
				t.Error("GetClientCertificate = nil with an identity")
			case tt.opts.Identity != nil:
				got, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{})
				if err != nil || got != tt.opts.Identity.Certificate() {
					t.Errorf("GetClientCertificate = %p, %v; want the identity's certificate %p", got, err, tt.opts.Identity.Certificate())
				}
			}
		})
	}
}

func TestClientConfigHandshake(t *testing.T) {
	s := pkitest.New(t)
	other, err := pki.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	id := loadClient(t, s)

	t.Run("mutual TLS", func(t *testing.T) {
		cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: s.CA.Pool(), ServerName: "api.internal"})
		_, server, clientErr, serverErr := exchange(t, s.ServerTLS(), cfg)
		if clientErr != nil || serverErr != nil {
			t.Fatalf("exchange: client %v, server %v; want no errors", clientErr, serverErr)
		}
		if len(server.PeerCertificates) == 0 {
			t.Fatal("server saw no client certificate")
		}
		if got := server.PeerCertificates[0].Subject.String(); got != s.ClientSubject {
			t.Errorf("server saw client %q; want %q", got, s.ClientSubject)
		}
	})

	t.Run("no identity is refused by server", func(t *testing.T) {
		cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{RootCAs: s.CA.Pool(), ServerName: "api.internal"})
		_, _, clientErr, serverErr := exchange(t, s.ServerTLS(), cfg)
		if clientErr == nil || serverErr == nil {
			t.Errorf("exchange: client %v, server %v; want both to fail", clientErr, serverErr)
		}
	})

	t.Run("server from another CA", func(t *testing.T) {
		cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: other.Pool(), ServerName: "api.internal"})
		_, _, clientErr, _ := exchange(t, s.ServerTLS(), cfg)
		var unknown x509.UnknownAuthorityError
		if !errors.As(clientErr, &unknown) {
			t.Errorf("client error = %v (%T); want x509.UnknownAuthorityError", clientErr, clientErr)
		}
	})

	t.Run("wrong server name", func(t *testing.T) {
		cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: s.CA.Pool(), ServerName: "evil.internal"})
		_, _, clientErr, _ := exchange(t, s.ServerTLS(), cfg)
		var hostErr x509.HostnameError
		if !errors.As(clientErr, &hostErr) {
			t.Errorf("client error = %v (%T); want x509.HostnameError", clientErr, clientErr)
		}
	})

	t.Run("server caps at TLS 1.1", func(t *testing.T) {
		srv := s.ServerTLS()
		srv.MinVersion, srv.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: s.CA.Pool(), ServerName: "api.internal", MinVersion: tls.VersionTLS10})
		client, _, clientErr, _ := exchange(t, srv, cfg)
		if clientErr == nil {
			t.Errorf("handshake succeeded with %s; want failure below TLS 1.2", tls.VersionName(client.Version))
		}
	})
}

func TestClientConfigResumption(t *testing.T) {
	s := pkitest.New(t)
	id := loadClient(t, s)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			srv := s.ServerTLS()
			srv.MaxVersion = version
			cfg := tlsconf.ClientConfig(tlsconf.ClientOptions{Identity: id, RootCAs: s.CA.Pool(), ServerName: "api.internal"})
			for i, wantResume := range []bool{false, true} {
				client, server, clientErr, serverErr := exchange(t, srv, cfg)
				if clientErr != nil || serverErr != nil {
					t.Fatalf("connection %d: client %v, server %v; want no errors", i+1, clientErr, serverErr)
				}
				if client.Version != version {
					t.Errorf("connection %d: version %s; want %s", i+1, tls.VersionName(client.Version), tls.VersionName(version))
				}
				if client.DidResume != wantResume {
					t.Errorf("connection %d: DidResume = %v; want %v", i+1, client.DidResume, wantResume)
				}
				// A resumed session must still carry the client identity, or
				// the upstream would see an anonymous client.
				if len(server.PeerCertificates) == 0 || server.PeerCertificates[0].Subject.String() != s.ClientSubject {
					t.Errorf("connection %d: server did not see client %q", i+1, s.ClientSubject)
				}
			}
		})
	}
}
