package deploy_test

import (
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestBuildScriptStatic builds mtlsproxy with scripts/build.sh, the command
// the Dockerfile's build stage runs, and checks that the result is a static
// executable built without cgo, with -trimpath and the version stamped.
func TestBuildScriptStatic(t *testing.T) {
	bin := binary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("%s is not an ELF executable: %v", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_INTERP:
			t.Error("the binary has a program interpreter (PT_INTERP): it is dynamically linked")
		case elf.PT_DYNAMIC:
			t.Error("the binary has a dynamic section (PT_DYNAMIC): it is dynamically linked")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v)", libs, err)
	}

	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for k, want := range map[string]string{"CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[k] != want {
			t.Errorf("build setting %s = %q; want %q", k, settings[k], want)
		}
	}
	if bi.Path != "github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy" {
		t.Errorf("main package %q; want github.com/mtlsproxy/mtlsproxy/cmd/mtlsproxy", bi.Path)
	}

	// -trimpath keeps -ldflags out of the build info: the version
	// command shows whether main.version was stamped.
	out, err := run(t, "", bin, "version")
	if err != nil || !strings.HasPrefix(out, "mtlsproxy "+testVersion+" ") {
		t.Errorf("mtlsproxy version: %v: %q; want it to start with %q", err, out, "mtlsproxy "+testVersion)
	}
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
	line int
}

// parseDockerfile splits a Dockerfile into instructions. It knows comments
// and line continuations, which is all this repository's Dockerfile uses.
func parseDockerfile(text string) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			continue
		}
		cmd, args, _ := strings.Cut(s, " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start})
	}
	return out
}

// jsonArgs decodes an exec-form argument list: ["a", "b"].
func jsonArgs(t *testing.T, in instruction) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.args), &v); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s: want the exec (JSON) form: %v", in.line, in.cmd, in.args, err)
	}
	return v
}

// dockerfile is what the tests need to know of the Dockerfile.
type dockerfile struct {
	stages     [][]instruction // instructions of each stage, FROM first
	entrypoint []string
	cmd        []string
	healthArgs []string
	healthOpts string
}

func readDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	d := &dockerfile{}
	args := map[string]string{} // ARG defaults before the first FROM
	for _, in := range parseDockerfile(readFile(t, "Dockerfile")) {
		switch {
		case in.cmd == "FROM":
			d.stages = append(d.stages, nil)
		case len(d.stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
			continue
		case len(d.stages) == 0:
			t.Fatalf("Dockerfile:%d: %s before the first FROM", in.line, in.cmd)
		}
		if in.cmd == "FROM" {
			for k, v := range args {
				in.args = strings.ReplaceAll(in.args, "${"+k+"}", v)
			}
		}
		last := len(d.stages) - 1
		d.stages[last] = append(d.stages[last], in)
	}
	if len(d.stages) < 2 {
		t.Fatalf("Dockerfile has %d stages; want a build stage and a final stage", len(d.stages))
	}
	for _, in := range d.stages[len(d.stages)-1] {
		switch in.cmd {
		case "ENTRYPOINT":
			d.entrypoint = jsonArgs(t, in)
		case "CMD":
			d.cmd = jsonArgs(t, in)
		case "HEALTHCHECK":
			opts, cmd, ok := strings.Cut(in.args, "CMD ")
			if !ok {
				t.Fatalf("Dockerfile:%d: HEALTHCHECK without CMD", in.line)
			}
			d.healthOpts = opts
			d.healthArgs = jsonArgs(t, instruction{cmd: "HEALTHCHECK CMD", args: strings.TrimSpace(cmd), line: in.line})
		}
	}
	return d
}

// fromImage is the image of a stage's FROM, without flags or "AS name".
func fromImage(from instruction) (image, name string) {
	var rest []string
	for _, f := range strings.Fields(from.args) {
		if !strings.HasPrefix(f, "--") {
			rest = append(rest, f)
		}
	}
	if len(rest) == 3 && strings.EqualFold(rest[1], "AS") {
		name = rest[2]
	}
	if len(rest) > 0 {
		image = rest[0]
	}
	return image, name
}

// TestDockerfile reads the Dockerfile the way docker would and checks the
// promises of deploy/README.md: a multi-stage build whose build stage runs
// exactly scripts/build.sh with module and build caches, and a distroless
// final stage that runs non-root with a health check.
func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)

	build := d.stages[0]
	image, stageName := fromImage(build[0])
	if image != "golang:1.26" {
		t.Errorf("build stage FROM %s; want golang:1.26", image)
	}
	var buildRuns []instruction
	for _, stage := range d.stages {
		for _, in := range stage {
			if in.cmd == "RUN" && regexp.MustCompile(`\bgo\s+build\b`).MatchString(in.args) {
				t.Errorf("Dockerfile:%d: RUN %s: build with scripts/build.sh, which CI checks, not go build", in.line, in.args)
			}
		}
	}
	for _, in := range build {
		if in.cmd == "RUN" && strings.Contains(in.args, "scripts/build.sh") {
			buildRuns = append(buildRuns, in)
		}
	}
	if len(buildRuns) != 1 {
		t.Fatalf("build stage runs scripts/build.sh %d times; want once", len(buildRuns))
	}
	br := buildRuns[0].args
	for _, want := range []string{"--mount=type=cache,target=/go/pkg/mod", "--mount=type=cache,target=/root/.cache/go-build", "./scripts/build.sh /out/mtlsproxy"} {
		if !strings.Contains(br, want) {
			t.Errorf("Dockerfile:%d: RUN %s: want %s", buildRuns[0].line, br, want)
		}
	}
	if !strings.Contains(br, "VERSION=${VERSION}") {
		t.Errorf("Dockerfile:%d: the build does not pass the VERSION build argument to scripts/build.sh", buildRuns[0].line)
	}

	final := d.stages[len(d.stages)-1]
	if image, _ := fromImage(final[0]); image != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final stage FROM %s; want gcr.io/distroless/static-debian12:nonroot", image)
	}
	var user, copied string
	var exposed []string
	labels := map[string]bool{}
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "COPY":
			if strings.Contains(in.args, "--from="+stageName+" ") {
				f := strings.Fields(in.args)
				copied = f[len(f)-1]
			}
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		case "LABEL":
			for _, m := range regexp.MustCompile(`([a-z0-9.-]+)=`).FindAllStringSubmatch(in.args, -1) {
				labels[m[1]] = true
			}
		case "RUN":
			t.Errorf("Dockerfile:%d: RUN in the final stage: distroless has no shell", in.line)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final stage USER %q; want a numeric non-root user (65532)", user)
	} else if n != 65532 {
		t.Errorf("final stage USER %d; want 65532, the user deploy/kubernetes runs as", n)
	}
	if copied != "/mtlsproxy" {
		t.Errorf("final stage copies the binary from stage %q to %q; want /mtlsproxy", stageName, copied)
	}
	if !slices.Contains(exposed, "8080") {
		t.Errorf("EXPOSE %v; want 8080", exposed)
	}
	for _, l := range []string{"org.opencontainers.image.title", "org.opencontainers.image.source", "org.opencontainers.image.version", "org.opencontainers.image.description"} {
		if !labels[l] {
			t.Errorf("final stage has no LABEL %s", l)
		}
	}
	if want := []string{"/mtlsproxy"}; !slices.Equal(d.entrypoint, want) {
		t.Errorf("ENTRYPOINT %q; want %q", d.entrypoint, want)
	}
	if want := []string{"run", "--config", "/etc/mtlsproxy/config.yaml"}; !slices.Equal(d.cmd, want) {
		t.Errorf("CMD %q; want %q", d.cmd, want)
	}
	if want := []string{"/mtlsproxy", "health", "--admin", "127.0.0.1:9901"}; !slices.Equal(d.healthArgs, want) {
		t.Errorf("HEALTHCHECK CMD %q; want %q", d.healthArgs, want)
	}
}

// TestDockerignore checks that the build context keeps what
// scripts/build.sh needs and leaves out .git.
func TestDockerignore(t *testing.T) {
	var patterns []string
	for _, l := range strings.Split(readFile(t, ".dockerignore"), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore: exception %q: this test does not know exceptions", l)
		}
		patterns = append(patterns, strings.TrimPrefix(l, "/"))
	}
	ignored := func(p string) bool {
		for _, pat := range patterns {
			for q := p; q != "." && q != "/"; q = path.Dir(q) {
				if ok, _ := path.Match(pat, q); ok {
					return true
				}
				if sub, ok := strings.CutPrefix(pat, "**/"); ok {
					if ok, _ := path.Match(sub, path.Base(q)); ok {
						return true
					}
				}
			}
		}
		return false
	}
	if !ignored(".git/HEAD") {
		t.Error(".dockerignore does not leave out .git")
	}
	// The build needs go.mod, go.sum, the script, and every source and
	// embedded file of the module's packages that the command imports.
	need := []string{"go.mod", "go.sum", "scripts/build.sh"}
	const module = "github.com/mtlsproxy/mtlsproxy"
	out, err := run(t, repoRoot, "go", "list", "-deps",
		"-f", `{{if .Module}}{{if .Module.Main}}{{.ImportPath}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}{{end}}`,
		"./cmd/mtlsproxy")
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		dir := strings.TrimPrefix(strings.TrimPrefix(f[0], module), "/")
		for _, file := range f[1:] {
			need = append(need, path.Join(dir, file))
		}
	}
	if !slices.Contains(need, "cmd/mtlsproxy/main.go") {
		t.Fatalf("go list found %v; want cmd/mtlsproxy/main.go among them", need)
	}
	for _, p := range need {
		if ignored(p) {
			t.Errorf(".dockerignore leaves out %s, which the build needs", p)
		}
	}
}

// TestCIRunsBuildScript checks that .ci/run builds with the Dockerfile's
// script and asserts static linking, and installs the tools these tests
// require.
func TestCIRunsBuildScript(t *testing.T) {
	ci := readFile(t, ".ci/run")
	for _, want := range []string{"scripts/build.sh", "statically linked", "CGO_ENABLED=0", "MTLSPROXY_REQUIRE_INTEROP=1"} {
		if !strings.Contains(ci, want) {
			t.Errorf(".ci/run does not mention %q", want)
		}
	}
	install := regexp.MustCompile(`(?s)apt-get install ((?:\\\n|[^\n])*)`).FindStringSubmatch(ci)
	if install == nil {
		t.Fatal(".ci/run has no apt-get install line")
	}
	pkgs := strings.Fields(strings.ReplaceAll(install[1], "\\\n", " "))
	for _, p := range []string{"file", "openssl", "nginx-light", "systemd", "docker-compose"} {
		if !slices.Contains(pkgs, p) {
			t.Errorf(".ci/run does not apt-get install %s (installs %v)", p, pkgs)
		}
	}
	script := readFile(t, "scripts/build.sh")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version="} {
		if !strings.Contains(script, want) {
			t.Errorf("scripts/build.sh does not mention %q", want)
		}
	}
}
