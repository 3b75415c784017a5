package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads docker-compose.yml with the loader docker compose itself
// uses, in an empty environment (every variable must have a default).
func loadCompose(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	var pairs []string
	for k, v := range env {
		pairs = append(pairs, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"},
		cli.WithName("wxgate"), cli.WithWorkingDirectory(".."), cli.WithEnv(pairs))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

var pinnedImage = regexp.MustCompile(`^[a-z0-9./_-]+:v?[0-9]+\.[0-9]+(\.[0-9]+)?(-[a-z0-9]+)?$`)

func TestComposeFile(t *testing.T) {
	p := loadCompose(t, nil)
	for _, name := range []string{"nats", "ingress", "workers", "prometheus", "grafana"} {
		if _, err := p.GetService(name); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
	}
	for name, s := range p.Services {
		if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
		if s.Restart == "" {
			t.Errorf("%s has no restart policy", name)
		}
		if s.ContainerName != "" {
			t.Errorf("%s has container_name %q: fixed names break scaling and parallel stacks", name, s.ContainerName)
		}
		if s.Build != nil {
			df := filepath.Join(s.Build.Context, s.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				t.Errorf("%s builds from %s: %v", name, df, err)
			}
			if s.HealthCheck != nil && !slices.Equal(s.HealthCheck.Test, []string{"CMD", "/app", "-healthcheck"}) {
				t.Errorf("%s: healthcheck %v, want the binary's own -healthcheck (distroless has no wget)", name, s.HealthCheck.Test)
			}
		} else if !pinnedImage.MatchString(s.Image) {
			t.Errorf("%s image %q is not pinned to a version", name, s.Image)
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s, which does not exist: %v", name, v.Source, err)
				}
			}
		}
	}

	workers, _ := p.GetService("workers")
	if len(workers.Ports) != 0 {
		t.Errorf("workers publish host ports %v: --scale workers=N would clash", workers.Ports)
	}
	if workers.Environment["ADMIN_ADDR"] == nil || *workers.Environment["ADMIN_ADDR"] != ":8082" {
		t.Errorf("workers ADMIN_ADDR = %v, want :8082 (the contract and the Prometheus config)", workers.Environment["ADMIN_ADDR"])
	}
	ingress, _ := p.GetService("ingress")
	published := map[uint32]bool{}
	for _, port := range ingress.Ports {
		published[port.Target] = true
	}
	if !published[8080] || !published[8081] {
		t.Errorf("ingress publishes %v, want 8080 (WeChat) and 8081 (admin)", ingress.Ports)
	}
	env := func(s types.ServiceConfig, k string) string {
		if v := s.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	if env(ingress, "HTTP_ADDR") != ":8080" || env(ingress, "ADMIN_ADDR") != ":8081" || env(ingress, "NATS_URL") != "nats://nats:4222" {
		t.Errorf("ingress environment = %v", ingress.Environment)
	}
	if env(ingress, "WECHAT_TOKEN") == "" {
		t.Error("ingress has no WECHAT_TOKEN default: docker compose up would fail the first time")
	}

	for svc, deps := range map[string][]string{"ingress": {"nats"}, "workers": {"nats"}, "prometheus": {"ingress", "workers"}, "grafana": {"prometheus"}} {
		s, _ := p.GetService(svc)
		for _, d := range deps {
			if s.DependsOn[d].Condition != types.ServiceConditionHealthy {
				t.Errorf("%s depends on %s with condition %q, want service_healthy", svc, d, s.DependsOn[d].Condition)
			}
		}
	}

	nats, _ := p.GetService("nats")
	cmd := strings.Join(nats.Command, " ")
	if !strings.Contains(cmd, "-js") || !strings.Contains(cmd, "-m 8222") || !strings.Contains(cmd, "-sd /data") {
		t.Errorf("nats command %q: want JetStream on a volume and monitoring on 8222", cmd)
	}
	if !strings.HasSuffix(nats.Image, strings.TrimPrefix(natsServerVersion(t), "v")+"-alpine") {
		t.Errorf("nats image %s is not the nats-server version go.mod pins (%s)", nats.Image, natsServerVersion(t))
	}

	// Prometheus scrapes what compose runs, on the contract's ports.
	prom, _ := os.ReadFile("prometheus/prometheus.yml")
	for _, want := range []string{`"ingress:8081"`, `names: ["workers"]`, "port: 8082", "rules/*.yml"} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("prometheus.yml lacks %s", want)
		}
	}
}

// .env.example names every variable the compose file reads.
func TestEnvExampleCoversCompose(t *testing.T) {
	compose, _ := os.ReadFile("../docker-compose.yml")
	example, err := os.ReadFile("../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\$\{([A-Z_]+)`).FindAllStringSubmatch(string(compose), -1) {
		if !regexp.MustCompile(`(?m)^` + m[1] + `=`).Match(example) {
			t.Errorf(".env.example lacks %s", m[1])
		}
	}
	// And the compose file loads with it.
	env := map[string]string{}
	for _, line := range strings.Split(string(example), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(k, "#") {
			env[k] = v
		}
	}
	loadCompose(t, env)
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"CGO_ENABLED=0", "USER nonroot", "AS build"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Index(df, "go mod download") > strings.Index(df, "COPY . .") {
		t.Error("Dockerfile copies the source before downloading modules: every change would refetch them")
	}
}

func natsServerVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`github.com/nats-io/nats-server/v2 (v\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod does not pin nats-server")
	}
	return string(m[1])
}
