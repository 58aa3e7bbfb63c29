package deploy_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// composeFile is compose.yaml, reduced to the keys the demo uses: decoding
// is strict, so a misspelt key fails (docker-compose config checks the
// full schema where it is installed).
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	ReadOnly    bool              `yaml:"read_only"`
	CapDrop     []string          `yaml:"cap_drop"`
	SecurityOpt []string          `yaml:"security_opt"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	Environment map[string]string `yaml:"environment"`
	Command     []string          `yaml:"command"`
	DependsOn   yaml.Node         `yaml:"depends_on"`
}

// mounts maps each bind mount's target to its source.
func (s composeService) mounts(t *testing.T, name string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, v := range s.Volumes {
		f := strings.Split(v, ":")
		if len(f) != 3 || f[2] != "ro" {
			t.Errorf("service %s: volume %q: want SOURCE:TARGET:ro", name, v)
			continue
		}
		m[f[1]] = f[0]
	}
	return m
}

// demoPKIFiles are the files make-pki.sh writes.
var demoPKIFiles = []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, "deploy/compose/compose.yaml")))
	dec.KnownFields(true)
	var c composeFile
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return c
}

// TestComposeFile checks that compose.yaml wires the three services
// together: the client's proxy is the mtlsproxy service, mtlsproxy is built
// from the repository's Dockerfile and hardened, and every file that its
// config and nginx.conf read is mounted where they read it.
func TestComposeFile(t *testing.T) {
	c := loadCompose(t)
	var names []string
	for n := range c.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	if want := []string{"client", "mtlsproxy", "upstream"}; !slices.Equal(names, want) {
		t.Fatalf("compose services %v; want %v", names, want)
	}
	proxy, upstream, client := c.Services["mtlsproxy"], c.Services["upstream"], c.Services["client"]
	config := readFile(t, "deploy/compose/config.yaml")
	pc := parseProxyConfig(t, config)

	// mtlsproxy: the repository's image, hardened.
	if proxy.Build == nil {
		t.Fatal("service mtlsproxy has no build section")
	}
	if ctx := filepath.Join("compose", proxy.Build.Context); filepath.Clean(ctx) != filepath.Clean(repoRoot) {
		t.Errorf("service mtlsproxy builds in %s; want the repository root", proxy.Build.Context)
	}
	if proxy.Build.Dockerfile != "Dockerfile" {
		t.Errorf("service mtlsproxy builds %q; want Dockerfile", proxy.Build.Dockerfile)
	}
	if !proxy.ReadOnly || !slices.Equal(proxy.CapDrop, []string{"ALL"}) || !slices.Contains(proxy.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("service mtlsproxy: read_only %v, cap_drop %v, security_opt %v; want true, [ALL], no-new-privileges:true",
			proxy.ReadOnly, proxy.CapDrop, proxy.SecurityOpt)
	}
	for _, p := range proxy.Ports {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("service mtlsproxy publishes %q beyond the host's loopback", p)
		}
	}

	// Every bind mount's source exists, or is made by make-pki.sh.
	for name, s := range c.Services {
		for target, src := range s.mounts(t, name) {
			if f, ok := strings.CutPrefix(src, "./pki/"); ok {
				if !slices.Contains(demoPKIFiles, f) {
					t.Errorf("service %s mounts %s, which make-pki.sh does not make", name, src)
				}
				if f == "ca.key" {
					t.Errorf("service %s mounts the demo CA's key", name)
				}
				continue
			}
			if _, err := os.Stat(filepath.Join("compose", src)); err != nil {
				t.Errorf("service %s mounts %s at %s: %v", name, src, target, err)
			}
		}
	}
	pm := proxy.mounts(t, "mtlsproxy")
	if pm["/etc/mtlsproxy/config.yaml"] != "./config.yaml" {
		t.Errorf("service mtlsproxy mounts %q at /etc/mtlsproxy/config.yaml (the image's default); want ./config.yaml", pm["/etc/mtlsproxy/config.yaml"])
	}
	for _, f := range pc.files() {
		if src, ok := pm[f]; !ok || filepath.Base(src) != filepath.Base(f) {
			t.Errorf("config.yaml reads %s; service mtlsproxy mounts %q there", f, src)
		}
	}
	um := upstream.mounts(t, "upstream")
	if um["/etc/nginx/nginx.conf"] != "./nginx.conf" {
		t.Errorf("service upstream does not mount ./nginx.conf at /etc/nginx/nginx.conf")
	}
	for _, f := range nginxFiles(readFile(t, "deploy/compose/nginx.conf")) {
		if src, ok := um[f]; !ok || filepath.Base(src) != filepath.Base(f) {
			t.Errorf("nginx.conf reads %s; service upstream mounts %q there", f, src)
		}
	}

	// The client goes through mtlsproxy to the upstream service.
	_, port, err := net.SplitHostPort(pc.Listen)
	if err != nil {
		t.Fatalf("config.yaml listen %q: %v", pc.Listen, err)
	}
	for _, k := range []string{"HTTP_PROXY", "http_proxy"} {
		if want := "http://mtlsproxy:" + port; client.Environment[k] != want {
			t.Errorf("service client %s=%q; want %q", k, client.Environment[k], want)
		}
	}
	if len(client.Command) == 0 {
		t.Fatal("service client has no command")
	}
	u, err := url.Parse(client.Command[len(client.Command)-1])
	if err != nil || u.Scheme != "http" || u.Hostname() != "upstream" {
		t.Errorf("service client asks for %q; want an http:// URL of the upstream service", client.Command[len(client.Command)-1])
	}
	var deps map[string]struct {
		Condition string `yaml:"condition"`
	}
	if err := client.DependsOn.Decode(&deps); err != nil || deps["mtlsproxy"].Condition != "service_healthy" {
		t.Errorf("service client depends_on %v (%v); want mtlsproxy with condition service_healthy (the image's HEALTHCHECK)", deps, err)
	}

	// docker-compose checks the whole file against the Compose schema,
	// offline.
	dc := requireTool(t, "docker-compose", "apt-get install docker-compose")
	if out, err := run(t, "compose", dc, "-f", "compose.yaml", "config", "-q"); err != nil || out != "" {
		t.Errorf("docker-compose config -q: %v\n%s", err, out)
	}
}

// nginxFiles lists the files an nginx.conf reads for TLS.
func nginxFiles(conf string) []string {
	var out []string
	for _, l := range strings.Split(conf, "\n") {
		f := strings.Fields(strings.TrimSuffix(strings.TrimSpace(l), ";"))
		if len(f) == 2 && slices.Contains([]string{"ssl_certificate", "ssl_certificate_key", "ssl_client_certificate", "ssl_trusted_certificate"}, f[0]) {
			out = append(out, f[1])
		}
	}
	return out
}

// makeDemoPKI runs make-pki.sh into a temporary directory.
func makeDemoPKI(t *testing.T) string {
	t.Helper()
	requireTool(t, "openssl", "apt-get install openssl")
	dir := filepath.Join(t.TempDir(), "pki")
	if out, err := run(t, "", "sh", filepath.Join("compose", "make-pki.sh"), dir); err != nil {
		t.Fatalf("make-pki.sh: %v\n%s", err, out)
	}
	for _, f := range demoPKIFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("make-pki.sh: %v", err)
		}
	}
	return dir
}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// TestComposePKI runs make-pki.sh and checks its certificates with openssl
// and with Go's verifier: the server certificate is valid for "upstream"
// and for server auth, the client certificate for client auth, each key
// matches its certificate, and mtlsproxy check accepts config.yaml with
// these files.
func TestComposePKI(t *testing.T) {
	dir := makeDemoPKI(t)
	for _, args := range [][]string{
		{"verify", "-CAfile", "ca.crt", "-purpose", "sslserver", "-verify_hostname", "upstream", "server.crt"},
		{"verify", "-CAfile", "ca.crt", "-purpose", "sslclient", "client.crt"},
	} {
		if out, err := run(t, dir, "openssl", args...); err != nil || !strings.Contains(out, ": OK") {
			t.Errorf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	if _, err := readCert(t, filepath.Join(dir, "server.crt")).Verify(x509.VerifyOptions{
		Roots: roots, DNSName: "upstream", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("server.crt: %v", err)
	}
	if _, err := readCert(t, filepath.Join(dir, "client.crt")).Verify(x509.VerifyOptions{
		Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client.crt: %v", err)
	}
	for _, n := range []string{"server", "client"} {
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, n+".crt"), filepath.Join(dir, n+".key")); err != nil {
			t.Errorf("%s.crt and %s.key: %v", n, n, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: mode %v (%v); want 0600", fi.Mode().Perm(), err)
	}

	out := checkConfig(t, readFile(t, "deploy/compose/config.yaml"), map[string]string{"/etc/mtlsproxy/pki/": dir + "/"})
	if !strings.Contains(out, ": ok: ") {
		t.Errorf("mtlsproxy check: %q; want ok", out)
	}
}

// freePort returns a TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a long-lived process until the test ends.
func start(t *testing.T, name string, args ...string) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return out
}

// TestComposeDemoWithNginx runs the Compose demo without Docker: nginx with
// the demo's nginx.conf and mtlsproxy with the demo's config.yaml, both
// with the certificates make-pki.sh made, on loopback ports. nginx -t must
// accept the config, mtlsproxy check --dial must complete the mutual TLS
// handshake, and the client's request must come back with nginx's answer
// naming the client certificate.
func TestComposeDemoWithNginx(t *testing.T) {
	nginx := requireTool(t, "nginx", "apt-get install nginx-light")
	bin := binary(t)
	pki := makeDemoPKI(t)
	dir := t.TempDir()

	upstreamPort := freePort(t)
	conf := readFile(t, "deploy/compose/nginx.conf")
	temp := fmt.Sprintf("http {\n    client_body_temp_path %s;\n    proxy_temp_path %s;\n", filepath.Join(dir, "body"), filepath.Join(dir, "proxy"))
	// Paths of modules this nginx lacks would be unknown directives.
	v, _ := exec.Command(nginx, "-V").CombinedOutput()
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !bytes.Contains(v, []byte("--without-http_"+m+"_module")) {
			temp += fmt.Sprintf("    %s_temp_path %s;\n", m, filepath.Join(dir, m))
		}
	}
	for old, new := range map[string]string{
		"/etc/nginx/pki/":     pki + "/",
		"pid /tmp/nginx.pid;": "pid " + filepath.Join(dir, "nginx.pid") + ";",
		"listen 443 ssl;":     "listen 127.0.0.1:" + upstreamPort + " ssl;",
		"http {\n":            temp,
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("nginx.conf does not contain %q", old)
		}
		conf = strings.ReplaceAll(conf, old, new)
	}
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "", nginx, "-t", "-p", dir, "-c", confFile, "-e", "stderr"); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n%s", err, out, conf)
	}
	nginxLog := start(t, nginx, "-p", dir, "-c", confFile, "-e", "stderr", "-g", "daemon off;")

	// The proxy's config, pointed at the files and ports of this test.
	listen, admin := "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	config := readFile(t, "deploy/compose/config.yaml")
	pc := parseProxyConfig(t, config)
	config = strings.ReplaceAll(config, "listen: "+pc.Listen, "listen: "+listen)
	config = strings.ReplaceAll(config, "admin: "+pc.Admin, "admin: "+admin)
	config += "resolve: [\"upstream:443:127.0.0.1:" + upstreamPort + "\"]\n"
	replace := map[string]string{"/etc/mtlsproxy/pki/": pki + "/"}

	// check --dial: a real handshake and a HEAD request, retried while
	// nginx starts.
	for deadline := time.Now().Add(20 * time.Second); ; {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+upstreamPort, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not listen on %s: %v\n%s", upstreamPort, err, nginxLog)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := checkConfig(t, config, replace, "--dial")
	if !strings.Contains(out, "ok") {
		t.Errorf("mtlsproxy check --dial: %s", out)
	}

	// The client container's request, through a running proxy.
	for old, new := range replace {
		config = strings.ReplaceAll(config, old, new)
	}
	cfgFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	proxyLog := start(t, bin, "run", "--config", cfgFile)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if o, err := run(t, "", bin, "health", "--admin", admin); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("mtlsproxy health: %v: %s\nproxy log:\n%s", err, o, proxyLog)
		}
		time.Sleep(100 * time.Millisecond)
	}
	proxyURL, _ := url.Parse("http://" + listen)
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	c := loadCompose(t).Services["client"]
	target := c.Command[len(c.Command)-1]
	resp, err := hc.Get(target)
	if err != nil {
		t.Fatalf("GET %s through the proxy: %v\nproxy log:\n%s", target, err, proxyLog)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	u, _ := url.Parse(target)
	t.Logf("GET %s through mtlsproxy: %s %s", target, resp.Status, body)
	want := `client certificate "CN=legacy-client,O=mtlsproxy demo"`
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) || !strings.Contains(string(body), "asked for "+u.Path) {
		t.Errorf("GET %s: %s %q; want 200 and nginx's answer with %s\nproxy log:\n%s\nnginx log:\n%s",
			target, resp.Status, body, want, proxyLog, nginxLog)
	}
}
