package deploy_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sjson "sigs.k8s.io/json"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/mtlsproxy/mtlsproxy/tlsconf/pki/pkitest"
)

// certificate is a cert-manager.io/v1 Certificate, reduced to the fields
// the example may use: decoding is strict, so any other field is an error.
type certificate struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		SecretName  string   `json:"secretName"`
		CommonName  string   `json:"commonName,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		URIs        []string `json:"uris,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		Subject     *struct {
			Organizations       []string `json:"organizations,omitempty"`
			OrganizationalUnits []string `json:"organizationalUnits,omitempty"`
		} `json:"subject,omitempty"`
		PrivateKey *struct {
			Algorithm      string `json:"algorithm,omitempty"`
			Encoding       string `json:"encoding,omitempty"`
			Size           int    `json:"size,omitempty"`
			RotationPolicy string `json:"rotationPolicy,omitempty"`
		} `json:"privateKey,omitempty"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// k8s is every object in deploy/kubernetes.
type k8s struct {
	deployment *appsv1.Deployment
	configMap  *corev1.ConfigMap
	cert       *certificate
	config     proxyConfig // the ConfigMap's config.yaml
}

// proxyConfig is the part of an mtlsproxy config file the tests compare
// with the manifests; mtlsproxy check validates the whole file.
type proxyConfig struct {
	Listen     string `yaml:"listen"`
	Admin      string `yaml:"admin"`
	Identities map[string]struct {
		Cert string `yaml:"cert"`
		Key  string `yaml:"key"`
	} `yaml:"identities"`
	Trust map[string]struct {
		CAFiles []string `yaml:"ca_files"`
	} `yaml:"trust"`
}

// files are the paths of the certificate files the config reads.
func (c proxyConfig) files() []string {
	var out []string
	for _, id := range c.Identities {
		out = append(out, id.Cert, id.Key)
	}
	for _, tr := range c.Trust {
		out = append(out, tr.CAFiles...)
	}
	return out
}

func parseProxyConfig(t *testing.T, text string) proxyConfig {
	t.Helper()
	var c proxyConfig
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatalf("config.yaml: %v", err)
	}
	return c
}

// decodeStrict decodes a YAML document the way the API server does with
// strict field validation: keys are case-sensitive, and an unknown or
// duplicate field is an error. (sigs.k8s.io/yaml.UnmarshalStrict matches
// keys case-insensitively, as encoding/json does, so it would accept
// "readOnlyRootFileSystem".)
func decodeStrict(doc string, obj any) error {
	j, err := k8syaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return err
	}
	strict, err := k8sjson.UnmarshalStrict(j, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// loadKubernetes decodes every document of every YAML file under
// deploy/kubernetes strictly into its Kubernetes type: an unknown or
// misspelt field, a duplicate key or a wrong type fails the test.
func loadKubernetes(t *testing.T) *k8s {
	t.Helper()
	out := &k8s{}
	err := filepath.WalkDir("kubernetes", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range docSeparator.Split(string(b), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := k8syaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Errorf("%s, document %d: %v", path, i+1, err)
				continue
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				if out.deployment != nil {
					t.Errorf("%s: a second Deployment", path)
				}
				out.deployment = &appsv1.Deployment{}
				obj = out.deployment
			case "v1 ConfigMap":
				if out.configMap != nil {
					t.Errorf("%s: a second ConfigMap", path)
				}
				out.configMap = &corev1.ConfigMap{}
				obj = out.configMap
			case "cert-manager.io/v1 Certificate":
				if out.cert != nil {
					t.Errorf("%s: a second Certificate", path)
				}
				out.cert = &certificate{}
				obj = out.cert
			default:
				t.Errorf("%s, document %d: apiVersion %q kind %q: unknown to this test; decode it strictly here", path, i+1, tm.APIVersion, tm.Kind)
				continue
			}
			if err := decodeStrict(doc, obj); err != nil {
				t.Errorf("%s, document %d (%s): %v", path, i+1, tm.Kind, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	if out.deployment == nil || out.configMap == nil || out.cert == nil {
		t.Fatalf("deploy/kubernetes: want a Deployment, a ConfigMap and a Certificate; have %v, %v, %v",
			out.deployment != nil, out.configMap != nil, out.cert != nil)
	}
	text, ok := out.configMap.Data["config.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no config.yaml", out.configMap.Name)
	}
	out.config = parseProxyConfig(t, text)
	return out
}

// sidecar returns the mtlsproxy container of the Deployment's pod.
func (k *k8s) sidecar(t *testing.T) *corev1.Container {
	t.Helper()
	spec := &k.deployment.Spec.Template.Spec
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == "mtlsproxy" {
			return &spec.InitContainers[i]
		}
	}
	t.Fatal("the Deployment has no initContainers entry named mtlsproxy")
	return nil
}

func (k *k8s) volume(t *testing.T, name string) *corev1.Volume {
	t.Helper()
	for i, v := range k.deployment.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &k.deployment.Spec.Template.Spec.Volumes[i]
		}
	}
	t.Fatalf("the pod has no volume %q", name)
	return nil
}

// TestKubernetesSidecar checks that mtlsproxy is a native sidecar that
// starts before the app, runs the image's default command, is probed with
// "mtlsproxy health" and gets its config and certificate from the ConfigMap
// and the whole Secret; and that the app's HTTP_PROXY points at it.
func TestKubernetesSidecar(t *testing.T) {
	k := loadKubernetes(t)
	spec := k.deployment.Spec.Template.Spec
	side := k.sidecar(t)
	if side.RestartPolicy == nil || *side.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		got := "unset"
		if side.RestartPolicy != nil {
			got = string(*side.RestartPolicy)
		}
		t.Errorf("initContainers[mtlsproxy].restartPolicy %s; want Always (a native sidecar)", got)
	}
	for _, c := range spec.Containers {
		if c.Name == "mtlsproxy" || strings.Contains(c.Image, "mtlsproxy") {
			t.Errorf("containers[%s] runs mtlsproxy; it belongs in initContainers as a native sidecar", c.Name)
		}
	}
	if len(spec.Containers) == 0 {
		t.Fatal("the pod has no app container")
	}
	if !regexp.MustCompile(`(^|/)mtlsproxy:[^/]+$`).MatchString(side.Image) {
		t.Errorf("sidecar image %q; want an mtlsproxy image with a tag", side.Image)
	}

	df := readDockerfile(t)
	if len(side.Command) != 0 {
		t.Errorf("sidecar command %q: leave it to the image's ENTRYPOINT %q", side.Command, df.entrypoint)
	}
	if !slices.Equal(side.Args, df.cmd) {
		t.Errorf("sidecar args %q; want the image's CMD %q (config at /etc/mtlsproxy/config.yaml)", side.Args, df.cmd)
	}

	// Probes: the admin listener is on loopback, where the kubelet's
	// httpGet and tcpSocket probes cannot reach; "mtlsproxy health" runs
	// inside the container.
	if !strings.HasPrefix(k.config.Admin, "127.0.0.1:") {
		t.Errorf("config admin %q; want a loopback address", k.config.Admin)
	}
	for name, p := range map[string]*corev1.Probe{"startupProbe": side.StartupProbe, "readinessProbe": side.ReadinessProbe} {
		if p == nil {
			t.Errorf("sidecar has no %s", name)
			continue
		}
		if p.Exec == nil {
			t.Errorf("sidecar %s is not an exec probe", name)
			continue
		}
		want := []string{df.entrypoint[0], "health", "--admin", k.config.Admin}
		if !slices.Equal(p.Exec.Command, want) {
			t.Errorf("sidecar %s runs %q; want %q", name, p.Exec.Command, want)
		}
		// "mtlsproxy health" waits up to 2 s for /readyz.
		if p.TimeoutSeconds <= 2 {
			t.Errorf("sidecar %s timeoutSeconds %d; want more than health's own 2 s", name, p.TimeoutSeconds)
		}
	}
	if p := side.LivenessProbe; p != nil && (p.HTTPGet != nil || p.TCPSocket != nil || p.GRPC != nil) {
		t.Errorf("sidecar livenessProbe probes the network from the kubelet; the admin listener is on loopback")
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= 30 {
		t.Errorf("terminationGracePeriodSeconds %v; want more than mtlsproxy's 30 s drain", g)
	}

	// Config from the ConfigMap, mounted as a directory at /etc/mtlsproxy.
	var cfgMount, secretMount *corev1.VolumeMount
	for _, m := range side.VolumeMounts {
		v := k.volume(t, m.Name)
		switch {
		case v.ConfigMap != nil:
			cfgMount = &m
			if v.ConfigMap.Name != k.configMap.Name {
				t.Errorf("volume %s uses ConfigMap %q; the manifest defines %q", v.Name, v.ConfigMap.Name, k.configMap.Name)
			}
		case v.Secret != nil:
			secretMount = &m
			if v.Secret.SecretName != k.cert.Spec.SecretName {
				t.Errorf("volume %s uses Secret %q; the Certificate makes %q", v.Name, v.Secret.SecretName, k.cert.Spec.SecretName)
			}
			if len(v.Secret.Items) != 0 {
				t.Errorf("volume %s selects items of the Secret; mount it whole", v.Name)
			}
			mode := int32(0o644)
			if v.Secret.DefaultMode != nil {
				mode = *v.Secret.DefaultMode
			}
			fsGroup := spec.SecurityContext.FSGroup
			if fsGroup == nil || *fsGroup != 65532 || mode&0o040 == 0 || mode&0o007 != 0 {
				t.Errorf("Secret volume %s: defaultMode %#o with fsGroup %v: want fsGroup 65532 and a mode its group can read and others cannot (0440), so that user 65532 can read the root-owned key", v.Name, mode, fsGroup)
			}
		}
	}
	if cfgMount == nil || cfgMount.MountPath != "/etc/mtlsproxy" || cfgMount.SubPath != "" || !cfgMount.ReadOnly {
		t.Errorf("config mount %+v; want the ConfigMap mounted read-only at /etc/mtlsproxy", cfgMount)
	}
	if secretMount == nil {
		t.Fatal("the sidecar mounts no Secret")
	}
	if secretMount.SubPath != "" || secretMount.SubPathExpr != "" {
		t.Errorf("Secret mount %s uses subPath: a renewed certificate would never reach the proxy", secretMount.Name)
	}
	if !secretMount.ReadOnly {
		t.Errorf("Secret mount %s is not read-only", secretMount.Name)
	}
	for _, f := range k.config.files() {
		if filepath.Dir(f) != secretMount.MountPath {
			t.Errorf("config reads %s, outside the Secret mount %s", f, secretMount.MountPath)
		}
		if b := filepath.Base(f); b != "tls.crt" && b != "tls.key" && b != "ca.crt" {
			t.Errorf("config reads %s; a cert-manager Secret holds tls.crt, tls.key and ca.crt", f)
		}
	}
	for _, c := range spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == secretMount.Name {
				t.Errorf("app container %s mounts the client key too", c.Name)
			}
		}
	}

	// The app sends its requests to the sidecar.
	if !strings.HasPrefix(k.config.Listen, "127.0.0.1:") {
		t.Errorf("config listen %q; want loopback: the app shares the pod's network", k.config.Listen)
	}
	app := spec.Containers[0]
	env := map[string]string{}
	for _, e := range app.Env {
		env[e.Name] = e.Value
	}
	for _, name := range []string{"HTTP_PROXY", "http_proxy"} {
		if want := "http://" + k.config.Listen; env[name] != want {
			t.Errorf("app container %s %s=%q; want %q", app.Name, name, env[name], want)
		}
	}
}

// TestKubernetesSecurity checks the hardening of every container: non-root
// (the sidecar as 65532), read-only root file system, no privilege
// escalation, all capabilities dropped, seccomp RuntimeDefault; and that
// each has resource requests and a memory limit.
func TestKubernetesSecurity(t *testing.T) {
	k := loadKubernetes(t)
	spec := k.deployment.Spec.Template.Spec
	pod := spec.SecurityContext
	if pod == nil || pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if pod == nil || pod.SeccompProfile == nil || pod.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext.seccompProfile is not RuntimeDefault")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken is not false: neither container needs the API")
	}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s has no securityContext", c.Name)
			continue
		}
		nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && pod != nil && pod.RunAsNonRoot != nil && *pod.RunAsNonRoot)
		if !nonRoot {
			t.Errorf("container %s: runAsNonRoot is not true", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", c.Name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) != 0 {
			t.Errorf("container %s: capabilities %+v; want drop [ALL] and no add", c.Name, sc.Capabilities)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil && pod != nil {
			seccomp = pod.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("container %s: seccompProfile is not RuntimeDefault", c.Name)
		}
		r := c.Resources
		if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
			t.Errorf("container %s: resources %v; want cpu and memory requests and a memory limit", c.Name, r)
		}
		if r.Limits.Memory().Cmp(*r.Requests.Memory()) < 0 {
			t.Errorf("container %s: memory limit below its request", c.Name)
		}
	}
	side := k.sidecar(t)
	uid := side.SecurityContext.RunAsUser
	if uid == nil && pod != nil {
		uid = pod.RunAsUser
	}
	if uid == nil || *uid != 65532 {
		t.Errorf("sidecar runAsUser %v; want 65532, the image's user", uid)
	}
	if side.Resources.Limits.Cpu().IsZero() {
		t.Error("sidecar has no CPU limit")
	}
}

// TestKubernetesCertificate checks the cert-manager example: a client
// certificate ("client auth"), renewed before it expires, with a new key on
// each renewal.
func TestKubernetesCertificate(t *testing.T) {
	c := loadKubernetes(t).cert
	s := c.Spec
	if s.SecretName == "" || s.IssuerRef.Name == "" {
		t.Errorf("Certificate: secretName %q, issuerRef.name %q: both are required", s.SecretName, s.IssuerRef.Name)
	}
	if !slices.Contains(s.Usages, "client auth") {
		t.Errorf("Certificate usages %q: want \"client auth\"", s.Usages)
	}
	known := []string{"signing", "digital signature", "content commitment", "key encipherment", "key agreement",
		"data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
		"client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
		"ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}
	for _, u := range s.Usages {
		if !slices.Contains(known, u) {
			t.Errorf("Certificate usage %q is not one cert-manager knows", u)
		}
	}
	if k := s.IssuerRef.Kind; k != "" && k != "Issuer" && k != "ClusterIssuer" {
		t.Errorf("issuerRef.kind %q", k)
	}
	if pk := s.PrivateKey; pk != nil {
		if !slices.Contains([]string{"", "RSA", "ECDSA", "Ed25519"}, pk.Algorithm) ||
			!slices.Contains([]string{"", "PKCS1", "PKCS8"}, pk.Encoding) ||
			!slices.Contains([]string{"", "Never", "Always"}, pk.RotationPolicy) {
			t.Errorf("privateKey %+v: unknown algorithm, encoding or rotationPolicy", *pk)
		}
	}
	d, err1 := time.ParseDuration(s.Duration)
	r, err2 := time.ParseDuration(s.RenewBefore)
	if err1 != nil || err2 != nil || r >= d {
		t.Errorf("duration %q, renewBefore %q: want durations with renewBefore shorter", s.Duration, s.RenewBefore)
	}
}

// TestKubernetesConfigPassesCheck runs "mtlsproxy check" on the ConfigMap's
// config.yaml, its Secret paths pointed at a freshly made PKI laid out as
// cert-manager lays out the Secret.
func TestKubernetesConfigPassesCheck(t *testing.T) {
	k := loadKubernetes(t)
	var mountPath string
	for _, m := range k.sidecar(t).VolumeMounts {
		if k.volume(t, m.Name).Secret != nil {
			mountPath = m.MountPath
		}
	}
	p := pkitest.New(t)
	dir := t.TempDir()
	copyFile(t, p.ClientCert, filepath.Join(dir, "tls.crt"), 0o644)
	copyFile(t, p.ClientKey, filepath.Join(dir, "tls.key"), 0o600)
	copyFile(t, p.CAFile, filepath.Join(dir, "ca.crt"), 0o644)
	out := checkConfig(t, k.configMap.Data["config.yaml"], map[string]string{mountPath + "/": dir + "/"})
	if !strings.Contains(out, ": ok: ") {
		t.Errorf("mtlsproxy check: %q; want ok", out)
	}
}
