// Package deploy_test checks the shipped Prometheus and Grafana files: with
// promtool, and against a real Prometheus scraping a real wxgate.
package deploy_test

import (
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/child"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
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

// The rule tests (promtool test rules): the alerts fire by account where a
// sum over the accounts would hide one account's trouble.
func TestPromtoolRuleTests(t *testing.T) {
	files, _ := filepath.Glob("prometheus/tests/*.yml")
	if len(files) == 0 {
		t.Fatal("no rule tests")
	}
	out, err := exec.Command(requireBinary(t, "promtool"), append([]string{"test", "rules"}, files...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
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
	// The per-scene series exist once a scene has a scan.
	s.post(t, "<xml><ToUserName>gh</ToUserName><FromUserName>p1</FromUserName><CreateTime>1700000000</CreateTime>"+
		"<MsgType>event</MsgType><Event>SCAN</Event><EventKey>poster</EventKey></xml>")
	var exported map[string]bool
	wait.For(t, wait.Short, wait.Every, func() error {
		if exported = metricstest.Names(t, "http://"+s.admin+"/metrics"); !exported["wechat_scene_scans_total"] {
			return errors.New("no per-scene series yet")
		}
		return nil
	})
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
	if testing.Short() {
		t.Skip("runs a real Prometheus")
	}
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
	wait.For(t, wait.Short, wait.Every, func() error {
		n, err := s.apiScans()
		if err == nil && n != 6 {
			err = fmt.Errorf("the API counts %d scans, want 6", n)
		}
		return err
	})

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
	addr := "127.0.0.1:" + nettest.FreePort(t)
	p, err := child.Start("prometheus", prom, nil, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", p.Output())
		}
	})
	base := "http://" + addr
	wait.For(t, wait.Long, wait.Every, func() error {
		select {
		case <-p.Exited():
			t.Fatalf("prometheus exited (code %d)", p.ExitCode())
		default:
		}
		return nettest.CheckStatus(base+"/-/ready", 200)
	})

	total := `sum(max without (instance, job) (wechat_scene_scans_total))`
	wait.For(t, wait.Long, wait.Every, func() error {
		if v, ok := queryScalar(t, base, total); !ok || v != 6 {
			return fmt.Errorf("prometheus shows %v scans (a result: %v), want 6", v, ok)
		}
		return nil
	})

	// Every expression in the dashboard evaluates.
	d := loadDashboard(t)
	byTitle := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			// $account is every account, as the variable's "All" sends it.
			expr := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h", "$account", ".*").Replace(tg.Expr)
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
		{"Total scans (all time)", map[string]float64{"": 6}},
		{"Scans by kind (all time)", map[string]float64{"subscribe": 2, "scan": 4}},
		{"Top scenes by scans", map[string]float64{"poster": 3, "counter": 2, "ad": 1}},
		{"New followers (all time)", map[string]float64{"": 2}},
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
	wait.For(t, wait.Long, wait.Every, func() error {
		var r struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name, Health, LastError string
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if err := nettest.FetchJSON(base+"/api/v1/rules", &r); err != nil {
			return err
		}
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
		if n < 4 {
			return fmt.Errorf("%d rules evaluated, want at least 4", n)
		}
		return nil
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
	cfg.Token, cfg.TimestampSkew = "deploy-token", 0
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})
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

func (s *standalone) apiScans() (int64, error) {
	var page struct {
		Scenes []struct {
			Scans int64 `json:"scans"`
		} `json:"scenes"`
	}
	if err := nettest.FetchJSON("http://"+s.admin+"/api/scenes", &page); err != nil {
		return 0, err
	}
	var n int64
	for _, sc := range page.Scenes {
		n += sc.Scans
	}
	return n, nil
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
