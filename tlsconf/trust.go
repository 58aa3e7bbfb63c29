package tlsconf

import (
	"crypto/x509"
	"fmt"
	"os"
)

// LoadCAFiles builds a certificate pool from PEM bundle files. With no files
// it returns the system roots. A file that holds no certificate is an error,
// never an empty pool: an empty pool would make every handshake fail with a
// misleading "unknown authority".
func LoadCAFiles(files []string) (*x509.CertPool, error) {
	return LoadTrust(files, len(files) == 0)
}

// LoadTrust builds a pool from PEM bundle files, starting from the system
// roots when system is set. Unlike LoadCAFiles, no files and no system
// roots is an error.
func LoadTrust(files []string, system bool) (*x509.CertPool, error) {
	if len(files) == 0 && !system {
		return nil, fmt.Errorf("no CA files and no system roots: nothing would be trusted")
	}
	pool := x509.NewCertPool()
	if system {
		sys, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("load system roots: %w", err)
		}
		pool = sys
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
		certs, err := parseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("CA bundle %s: %w", f, err)
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	return pool, nil
}
