package deploy_test

import (
	"context"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/testutil/wait"
)

// secrets are the variables compose requires: no default, so that nobody
// runs the stack with a published token or password.
var secrets = map[string]string{"WECHAT_TOKEN": "t0kenFromTheConsole", "NATS_TOKEN": "nats-secret", "GRAFANA_ADMIN_PASSWORD": "grafana-secret"}

// loadCompose loads docker-compose.yml with the loader docker compose itself
// uses, in the environment env (every other variable must have a default).
func loadCompose(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	p, err := tryLoadCompose(env)
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func tryLoadCompose(env map[string]string) (*types.Project, error) {
	var pairs []string
	for k, v := range env {
		pairs = append(pairs, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"},
		cli.WithName("wxgate"), cli.WithWorkingDirectory(".."), cli.WithEnv(pairs))
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// Compose refuses to start without each secret, naming it.
func TestComposeRequiresSecrets(t *testing.T) {
	for name := range secrets {
		env := maps.Clone(secrets)
		delete(env, name)
		if _, err := tryLoadCompose(env); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("without %s: %v, want a refusal naming it", name, err)
		}
		env[name] = ""
		if _, err := tryLoadCompose(env); err == nil {
			t.Errorf("with %s empty: compose loads", name)
		}
	}
}

var pinnedImage = regexp.MustCompile(`^[a-z0-9./_-]+:v?[0-9]+\.[0-9]+(\.[0-9]+)?(-[a-z0-9]+)?$`)

func TestComposeFile(t *testing.T) {
	p := loadCompose(t, secrets)
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
	// Only WeChat's listener faces the network: every other published
	// port (admin APIs, NATS monitoring, Prometheus, Grafana, the fake
	// API) is bound to the host's loopback.
	for name, s := range p.Services {
		for _, port := range s.Ports {
			if name == "ingress" && port.Target == 8080 {
				continue
			}
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %d on %q, want 127.0.0.1", name, port.Target, port.HostIP)
			}
		}
	}
	env := func(s types.ServiceConfig, k string) string {
		if v := s.Environment[k]; v != nil {
			return *v
		}
		return ""
	}
	if env(ingress, "HTTP_ADDR") != ":8080" || env(ingress, "ADMIN_ADDR") != ":8081" {
		t.Errorf("ingress environment = %v", ingress.Environment)
	}
	// Every wxgate service reaches NATS with the token the server requires.
	nats, _ := p.GetService("nats")
	if env(nats, "NATS_TOKEN") != secrets["NATS_TOKEN"] {
		t.Errorf("nats NATS_TOKEN = %q", env(nats, "NATS_TOKEN"))
	}
	for _, s := range []types.ServiceConfig{ingress, workers} {
		if want := "nats://" + secrets["NATS_TOKEN"] + "@nats:4222"; env(s, "NATS_URL") != want {
			t.Errorf("%s NATS_URL = %q, want %q", s.Name, env(s, "NATS_URL"), want)
		}
		if env(s, "WECHAT_TOKEN") != secrets["WECHAT_TOKEN"] {
			t.Errorf("%s WECHAT_TOKEN = %q", s.Name, env(s, "WECHAT_TOKEN"))
		}
	}
	conf, err := os.ReadFile("nats/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\s*token:\s*\$NATS_TOKEN\s*$`).Match(conf) {
		t.Errorf("nats.conf does not require the NATS_TOKEN token:\n%s", conf)
	}
	prometheus, _ := p.GetService("prometheus")
	if slices.Contains(prometheus.Command, "--web.enable-lifecycle") {
		t.Error("prometheus serves its unauthenticated lifecycle API (/-/quit, /-/reload)")
	}

	for svc, deps := range map[string][]string{"ingress": {"nats"}, "workers": {"nats"}, "prometheus": {"ingress", "workers"}, "grafana": {"prometheus"}} {
		s, _ := p.GetService(svc)
		for _, d := range deps {
			if s.DependsOn[d].Condition != types.ServiceConditionHealthy {
				t.Errorf("%s depends on %s with condition %q, want service_healthy", svc, d, s.DependsOn[d].Condition)
			}
		}
	}

	if cmd := strings.Join(nats.Command, " "); cmd != "-c /etc/nats/nats.conf" {
		t.Errorf("nats command %q: want the config file", cmd)
	}
	for _, want := range []string{"store_dir: /data", "http_port: 8222"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("nats.conf lacks %q: want JetStream on the volume and monitoring on 8222", want)
		}
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
	// And the compose file loads with it once the secrets are filled in,
	// which the example leaves empty.
	env := map[string]string{}
	for _, line := range strings.Split(string(example), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(k, "#") {
			env[k] = v
		}
	}
	for k := range secrets {
		if env[k] != "" {
			t.Errorf(".env.example sets %s: a secret in an example is a published secret", k)
		}
	}
	maps.Copy(env, secrets)
	loadCompose(t, env)
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	// The font is where qrcodes looks for one (captions in Chinese).
	for _, want := range []string{"CGO_ENABLED=0", "USER nonroot", "AS build", "fonts-wqy-microhei", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"} {
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

// The compose stack's nats.conf, run by the real nats-server (the version
// go.mod pins) on loopback: a client without NATS_TOKEN is refused, one
// with it gets JetStream.
func TestNATSConfigRequiresToken(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs nats-server")
	}
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("build nats-server: %v\n%s", err, out)
	}
	port := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		return p
	}
	// The file as compose mounts it, on this host's loopback ports and a
	// temporary store (a flag may not repeat what the file sets).
	conf, err := os.ReadFile("nats/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	client := port()
	local := strings.NewReplacer("port: 4222", "port: "+client, "http_port: 8222", "http_port: "+port(),
		"store_dir: /data", "store_dir: "+strconv.Quote(t.TempDir())).Replace(string(conf))
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(local), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", path, "-a", "127.0.0.1")
	cmd.Env = append(os.Environ(), "NATS_TOKEN="+secrets["NATS_TOKEN"])
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	url := "nats://127.0.0.1:" + client
	var nc *nats.Conn
	// The server process is starting: nothing to wait on but its port.
	wait.For(t, wait.Long, 50*time.Millisecond, func() (err error) {
		nc, err = nats.Connect(url, nats.Token(secrets["NATS_TOKEN"]))
		return err
	})
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(context.Background()); err != nil {
		t.Errorf("JetStream with the token: %v", err)
	}
	for _, opt := range []nats.Option{nats.Token("wrong"), nats.Name("no token")} {
		if c, err := nats.Connect(url, opt); err == nil {
			c.Close()
			t.Error("connected to the compose NATS without its token")
		}
	}
}

// The fake WeChat API runs only with its profile, so it never runs beside
// a real account; ingress and workers get the API settings.
func TestComposeFakeWeChatProfile(t *testing.T) {
	p := loadCompose(t, secrets)
	if _, err := p.GetService("wechat-api"); err == nil {
		t.Error("wechat-api runs without its profile")
	}
	env := maps.Clone(secrets)
	env["WECHAT_APPSECRET"], env["WECHAT_API_BASE"], env["WECHAT_APPID"] = "s3cret", "http://wechat-api:8090", "wx_fake"
	var pairs []string
	for k, v := range env {
		pairs = append(pairs, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"},
		cli.WithName("wxgate"), cli.WithWorkingDirectory(".."), cli.WithEnv(pairs), cli.WithProfiles([]string{"fake-wechat"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err = opts.LoadProject(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fake, err := p.GetService("wechat-api")
	if err != nil {
		t.Fatalf("with --profile fake-wechat: %v", err)
	}
	if !slices.Equal(fake.Command, []string{"api", "-addr", ":8090"}) || fake.Build == nil || fake.Build.Args["TARGET"] == nil || *fake.Build.Args["TARGET"] != "wxsim" {
		t.Errorf("wechat-api runs %v from %+v", fake.Command, fake.Build)
	}
	if hc := fake.HealthCheck; hc == nil || len(hc.Test) < 3 || hc.Test[1] != "/app" || hc.Test[len(hc.Test)-1] != "-healthcheck" {
		t.Errorf("wechat-api healthcheck %v: want the binary's own", fake.HealthCheck)
	}
	for _, port := range fake.Ports {
		if port.HostIP != "127.0.0.1" {
			t.Errorf("wechat-api publishes %v beyond loopback", port)
		}
	}
	if v := fake.Environment["WECHAT_APPSECRET"]; v == nil || *v != "s3cret" {
		t.Errorf("wechat-api does not get the AppSecret it must accept: %v", v)
	}
	for _, name := range []string{"ingress", "workers"} {
		s, _ := p.GetService(name)
		for k, want := range map[string]string{"WECHAT_APPSECRET": "s3cret", "WECHAT_API_BASE": "http://wechat-api:8090", "LATE_REPLY": ""} {
			if v := s.Environment[k]; v == nil || *v != want {
				t.Errorf("%s %s = %v, want %q", name, k, v, want)
			}
		}
	}
}
