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
	if len(files) == 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("load system roots: %w", err)
		}
		return pool, nil
	}
	pool := x509.NewCertPool()
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
