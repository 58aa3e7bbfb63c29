package app

import (
	"fmt"
	"os"
	"strings"

	"github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy/internal/config"
	"github.com/mtlsproxy/mtlsproxy/proxy"
	"github.com/mtlsproxy/mtlsproxy/tlsconf"
)

// loadIdentity loads identities.NAME, or adds why it cannot be loaded to
// probs. An identity whose keys are wrong is Validate's to report.
func loadIdentity(name string, ic config.Identity, probs *config.Problems) *tlsconf.Identity {
	path := "identities." + name
	if name == config.IdentityNone {
		return nil
	}
	src := tlsconf.IdentitySource{CertFile: ic.Cert, KeyFile: ic.Key, KeyPassFile: ic.PasswordFile}
	files := []struct{ key, file string }{{"cert", ic.Cert}, {"key", ic.Key}}
	if ic.PKCS12 != "" {
		if ic.Cert != "" || ic.Key != "" {
			return nil
		}
		src = tlsconf.IdentitySource{PKCS12File: ic.PKCS12, PKCS12PassFile: ic.PasswordFile}
		files = files[:0]
		files = append(files, struct{ key, file string }{"pkcs12", ic.PKCS12})
	} else if ic.Cert == "" || ic.Key == "" {
		return nil
	}
	if ic.PasswordFile != "" {
		files = append(files, struct{ key, file string }{"password_file", ic.PasswordFile})
	}
	// Each file is opened first, so that a missing one is reported at its
	// own key.
	ok := true
	for _, f := range files {
		if fh, err := os.Open(f.file); err != nil {
			probs.Add(path+"."+f.key, "%v", err)
			ok = false
		} else {
			_ = fh.Close()
		}
	}
	if !ok {
		return nil
	}
	id, err := tlsconf.LoadIdentity(name, src)
	if err != nil {
		probs.Add(path, "%v", err)
		return nil
	}
	return id
}

func loadTrust(name string, tc config.Trust, probs *config.Problems) *tlsconf.TrustBundle {
	path := "trust." + name
	if len(tc.CAFiles) == 0 && !tc.System {
		return nil
	}
	ok := true
	for i, f := range tc.CAFiles {
		if _, err := tlsconf.LoadTrust([]string{f}, false); err != nil {
			probs.Add(fmt.Sprintf("%s.ca_files[%d]", path, i), "%v", err)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	b, err := tlsconf.LoadTrustBundle(name, tc.CAFiles, tc.System)
	if err != nil {
		probs.Add(path, "%v", err)
		return nil
	}
	return b
}

// loadClients reads the callers' password files.
func loadClients(clients map[string]config.Client, probs *config.Problems) proxy.Clients {
	if len(clients) == 0 {
		return nil
	}
	passwords := map[string]string{}
	for _, name := range sortedKeys(clients) {
		pf := clients[name].PasswordFile
		if pf == "" || strings.Contains(name, ":") {
			continue
		}
		path := "clients." + name + ".password_file"
		b, err := os.ReadFile(pf)
		if err != nil {
			probs.Add(path, "%v", err)
			continue
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			probs.Add(path, "%s is empty", pf)
			continue
		}
		passwords[name] = pw
	}
	return proxy.NewClients(passwords)
}

// loadMitmCA loads the local CA of connect: mitm routes, if configured.
func loadMitmCA(m *config.MitmCA, probs *config.Problems) *tlsconf.MitmCA {
	if m == nil || m.Cert == "" || m.Key == "" {
		return nil
	}
	ca, err := tlsconf.LoadMitmCA(m.Cert, m.Key)
	if err != nil {
		probs.Add("mitm_ca", "%v", err)
		return nil
	}
	return ca
}
