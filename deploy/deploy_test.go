// Package deploy_test checks the shipped Prometheus and Grafana files: with
// promtool, and against a real Prometheus scraping a real wxgate.
package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

// requireBinary finds a tool the test needs. Missing, it skips, unless CI
// said E2E_REQUIRE=1, where a skip would hide a broken setup.
func requireBinary(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("E2E_REQUIRE") == "1" {
			t.Fatalf("%s is not installed (E2E_REQUIRE=1): apt-get install prometheus", name)
		}
		t.Skipf("%s is not installed; apt-get install prometheus to run this test", name)
	}
	return path
}

func TestPromtoolConfig(t *testing.T) {
	out, err := exec.Command(requireBinary(t, "promtool"), "check", "config", "prometheus/prometheus.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "1 rule files found") {
		t.Errorf("the config does not load the rules file:\n%s", out)
	}
}

func TestPromtoolRules(t *testing.T) {
	files, _ := filepath.Glob("prometheus/rules/*.yml")
	if len(files) == 0 {
		t.Fatal("no rule files")
	}
	out, err := exec.Command(requireBinary(t, "promtool"), append([]string{"check", "rules"}, files...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

type dashboard struct {
	UID    string `json:"uid"`
	Panels []struct {
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("grafana/dashboards/wxgate.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	return d
}

var metricNameRE = regexp.MustCompile(`\b(wxgate|wechat)_[a-z0-9_]+`)

// The dashboard is valid JSON, bound to the provisioned datasource, and
// every metric it names exists on a running wxgate.
func TestDashboardReferencesExistingMetrics(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" {
		t.Error("dashboard has no fixed uid")
	}
	ds, _ := os.ReadFile("grafana/provisioning/datasources/prometheus.yml")
	s := startStandalone(t)
	exported := metricNames(t, s.admin)
	for _, p := range d.Panels {
		if !strings.Contains(string(ds), "uid: "+p.Datasource.UID) {
			t.Errorf("panel %q uses datasource %q, not the provisioned one", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, name := range metricNameRE.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if !exported[base] {
					t.Errorf("panel %q uses %s, which wxgate does not export", p.Title, name)
				}
			}
		}
	}
}

// A real Prometheus scrapes a real wxgate after scans: every dashboard
// query and every alert rule evaluates, and the scan-count panels show the
// numbers sent.
func TestPrometheusScrape(t *testing.T) {
	prom := requireBinary(t, "prometheus")
	s := startStandalone(t)
	// 3 scenes, 6 distinct scans (2 follows, 4 follower scans), each sent
	// twice as WeChat retries would: 6 counted.
	scans := []struct{ ev, key, openid string }{
		{"subscribe", "qrscene_poster", "p1"}, {"SCAN", "poster", "p2"}, {"SCAN", "poster", "p3"},
		{"subscribe", "qrscene_counter", "p4"}, {"SCAN", "counter", "p5"}, {"SCAN", "ad", "p6"},
	}
	for i, sc := range scans {
		msg := fmt.Sprintf("<xml><ToUserName>gh</ToUserName><FromUserName>%s</FromUserName><CreateTime>%d</CreateTime>"+
			"<MsgType>event</MsgType><Event>%s</Event><EventKey>%s</EventKey></xml>", sc.openid, 1700000000+i, sc.ev, sc.key)
		for retry := 0; retry < 2; retry++ {
			s.post(t, msg)
		}
	}
	eventually(t, "API to count 6 scans", func() bool { return s.apiScans(t) == 6 })

	dir := t.TempDir()
	rules, _ := filepath.Abs("prometheus/rules/wxgate.yml")
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: wxgate-workers
    static_configs: [{targets: [%q]}]
`, rules, s.admin)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", out.String())
		}
	})
	base := "http://" + addr
	eventually(t, "prometheus ready", func() bool { return httpStatus(base+"/-/ready") == 200 })

	total := `sum(max without (instance, job) (wechat_scene_scans_total))`
	eventually(t, "prometheus to scrape the scans", func() bool {
		v, ok := queryScalar(t, base, total)
		return ok && v == 6
	})

	// Every expression in the dashboard evaluates.
	d := loadDashboard(t)
	byTitle := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			expr := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h").Replace(tg.Expr)
			if _, err := query(base, expr); err != nil {
				t.Errorf("panel %q: %s: %v", p.Title, expr, err)
			}
			byTitle[p.Title] = expr
		}
	}
	// The scan-count panels show what was sent.
	checks := []struct {
		panel string
		want  map[string]float64 // by the series' scene or kind label; "" for a single value
	}{
		{"Total scans", map[string]float64{"": 6}},
		{"Scans by kind", map[string]float64{"subscribe": 2, "scan": 4}},
		{"Top scenes by scans", map[string]float64{"poster": 3, "counter": 2, "ad": 1, "_other": 0}},
		{"New followers", map[string]float64{"": 2}},
	}
	for _, c := range checks {
		res, err := query(base, byTitle[c.panel])
		if err != nil {
			t.Fatalf("%s: %v", c.panel, err)
		}
		got := map[string]float64{}
		for _, r := range res {
			got[r.Metric["scene"]+r.Metric["kind"]] = r.value()
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("panel %q: %q = %v, want %v (all: %v)", c.panel, k, got[k], v, got)
			}
		}
	}

	// Every alert rule evaluates without error.
	eventually(t, "rules evaluated", func() bool {
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name, Health, LastError string
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		getJSON(t, base+"/api/v1/rules", &r)
		n := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				if rule.Health == "err" {
					t.Fatalf("rule %s: %s", rule.Name, rule.LastError)
				}
				if rule.Health == "ok" {
					n++
				}
			}
		}
		return n >= 4
	})
}

type standalone struct {
	http, admin string
	sender      wechat.Sender
	n           int
}

func startStandalone(t *testing.T) *standalone {
	t.Helper()
	cfg := config.Defaults()
	cfg.HTTPAddr, cfg.AdminAddr, cfg.DataDir, cfg.Token = "127.0.0.1:0", "127.0.0.1:0", t.TempDir(), "deploy-token"
	cfg.TimestampSkew = 0
	a, err := app.Start(app.Options{Config: cfg, Standalone: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	})
	return &standalone{http: "http://" + a.HTTPAddr() + "/wechat", admin: a.AdminAddr(), sender: wechat.Sender{Token: cfg.Token}}
}

func (s *standalone) post(t *testing.T, msg string) {
	t.Helper()
	s.n++
	code, _, err := s.sender.Post(http.DefaultClient, s.http, []byte(msg), time.Now(), "n"+strconv.Itoa(s.n))
	if err != nil || code != 200 {
		t.Fatalf("POST = %d: %v", code, err)
	}
}

func (s *standalone) apiScans(t *testing.T) int64 {
	var page struct {
		Scenes []struct {
			Scans int64 `json:"scans"`
		} `json:"scenes"`
	}
	getJSON(t, "http://"+s.admin+"/api/scenes", &page)
	var n int64
	for _, sc := range page.Scenes {
		n += sc.Scans
	}
	return n
}

func metricNames(t *testing.T, admin string) map[string]bool {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	names := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
	}
	return names
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) value() float64 {
	v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
	return v
}

func query(base, expr string) ([]sample, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string   `json:"resultType"`
			Result     []sample `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s", r.Error)
	}
	return r.Data.Result, nil
}

func queryScalar(t *testing.T, base, expr string) (float64, bool) {
	res, err := query(base, expr)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	if len(res) != 1 {
		return 0, false
	}
	return res[0].value(), true
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", u, err)
	}
}

func httpStatus(u string) int {
	resp, err := http.Get(u)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// eventually polls state that offers no event to wait on (another
// process's view: Prometheus's scrapes, the consumer's progress).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
