package inproc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
	"github.com/wxgate/wxgate/workers/worker"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

const token = "analytics-token"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type cluster struct {
	t        *testing.T
	srv      *bus.Embedded
	ingress  []string // callback URLs
	workers  []*worker.Worker
	regs     []*prometheus.Registry
	apiURL   string
	sender   wechat.Sender
	js       jetstream.JetStream
	received int
}

// newCluster runs, on one real NATS server, two ingress gateways behind
// real HTTP listeners (each answering within replyTimeout) and two workers,
// each on its own connection.
func newCluster(t *testing.T, maxScenes int, replyTimeout time.Duration, decider ...reply.Decider) *cluster {
	t.Helper()
	c := &cluster{t: t, srv: natstest.RunServer(t), sender: wechat.Sender{Token: token}}
	cfg := config.Defaults()
	cfg.AnalyticsMaxScenes = maxScenes
	var d reply.Decider
	if len(decider) > 0 {
		d = decider[0]
	}
	for i := 0; i < 2; i++ {
		w, reg := startWorker(t, c.srv, cfg, d)
		select {
		case <-w.Analytics.Ready():
		case <-time.After(30 * time.Second):
			t.Fatal("analytics consumer did not start")
		}
		c.workers, c.regs = append(c.workers, w), append(c.regs, reg)
	}
	for i := 0; i < 2; i++ {
		url, _ := startIngress(t, natstest.Connect(t, c.srv), cfg, replyTimeout, nil)
		c.ingress = append(c.ingress, url)
	}
	api := httptest.NewServer(c.workers[0].API())
	t.Cleanup(api.Close)
	c.apiURL = api.URL
	js, err := jetstream.New(natstest.Connect(t, c.srv))
	if err != nil {
		t.Fatal(err)
	}
	c.js = js
	return c
}

// startWorker starts a worker on its own connection to srv (d nil: the
// built-in replies), stopped with the test.
func startWorker(t *testing.T, srv *bus.Embedded, cfg config.Config, d reply.Decider) (*worker.Worker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	hc, err := health.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.Start(worker.Options{Conn: natstest.Connect(t, srv), Config: cfg, Logger: quiet, Registerer: reg, Health: hc, Decider: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	})
	return w, reg
}

// startIngress runs an ingress gateway on nc behind a real HTTP listener,
// storing events with the real intake (wrapped by wrap, when set), and
// returns its callback URL and registry.
func startIngress(t *testing.T, nc *nats.Conn, cfg config.Config, replyTimeout time.Duration, wrap func(*intake.Intake) gateway.Intake) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	in, err := intake.New(intake.Options{Conn: nc, Streams: cfg.Streams(), Logger: quiet, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // what is held with JetStream away is lost
		defer cancel()
		_ = in.Close(ctx)
	})
	var gi gateway.Intake = in
	if wrap != nil {
		gi = wrap(in)
	}
	accts, err := accounts.Start(accounts.Options{Conn: nc, Default: accounts.Account{Token: token}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(accts.Stop)
	gw, err := gateway.New(gateway.Options{Accounts: accts, Conn: nc, Intake: gi, ReplyTimeout: replyTimeout, Logger: quiet, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw.Handler())
	t.Cleanup(hs.Close)
	return hs.URL + gateway.Path, reg
}

// send posts msg to a random ingress, then repeats it retries more times,
// as WeChat does when it gets no answer: identical body, fresh query.
func (c *cluster) send(rng *rand.Rand, msg string, copies int) {
	c.t.Helper()
	for i := 0; i < copies; i++ {
		url := c.ingress[rng.IntN(len(c.ingress))]
		code, _, err := c.sender.Post(http.DefaultClient, url, []byte(msg), time.Now(), "n"+strconv.Itoa(rng.Int()))
		if err != nil || code != 200 {
			c.t.Fatalf("status %d: %v", code, err)
		}
	}
}

// settle waits until the event stream holds want scene events (a retry
// stored twice fails the test) and the analytics leader has applied them
// all and written the totals.
func (c *cluster) settle(want uint64) {
	c.t.Helper()
	// Polling the server's view: there is no event for "all applied".
	wait.For(c.t, wait.Short, wait.Every, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := c.js.Stream(ctx, events.Stream)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(events.StreamSubjects))
		if err != nil {
			return err
		}
		var msgs, last uint64
		for subj, n := range info.State.Subjects {
			if _, rest, _ := strings.Cut(strings.TrimPrefix(subj, events.SubjectPrefix), "."); !events.IsSceneEvent(rest) {
				continue
			}
			msgs += n
			if m, err := s.GetLastMsgForSubject(ctx, subj); err == nil {
				last = max(last, m.Sequence)
			}
		}
		if msgs > want {
			c.t.Fatalf("stream holds %d scene events, want %d: a retry was stored twice", msgs, want)
		}
		store, err := c.workers[0].Analytics.Store(ctx)
		if err != nil {
			return err
		}
		st, _, err := store.Status(ctx)
		if msgs != want || err != nil || st.AppliedSeq < last {
			return fmt.Errorf("not settled: stream %d/%d scene events, last %d, applied %d (%v)", msgs, want, last, st.AppliedSeq, err)
		}
		return nil
	})
}

func (c *cluster) scenes() map[string]stats.Totals {
	c.t.Helper()
	resp, err := http.Get(c.apiURL + "/api/scenes?limit=1000")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var page stats.ScenesPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]stats.Totals{}
	for _, s := range page.Scenes {
		out[s.Scene] = s
	}
	return out
}

func event(openid, ev, key string, createTime int64) string {
	return fmt.Sprintf("<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName>"+
		"<CreateTime>%d</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[%s]]></Event>"+
		"<EventKey><![CDATA[%s]]></EventKey><Ticket><![CDATA[T]]></Ticket></xml>", openid, createTime, ev, key)
}

type want struct{ subscribe, scan, followers, unique, unfollows int64 }

// N distinct scans and follows across several scenes, each sent 1-4 times
// through two ingress instances to two workers: the API and the metrics of
// every worker show each exactly once.
func TestExactCountsThroughRetries(t *testing.T) {
	c := newCluster(t, 100, 4*time.Second)
	rng := rand.New(rand.NewPCG(1, 2))
	scenes := []string{"poster_a", "counter_b", "123", "ad 4/中文"}
	expect := map[string]*want{}
	seen := map[string]bool{}
	followedVia := map[string]string{}
	ct := int64(1700000000)
	records := uint64(0)
	for i := 0; i < 60; i++ {
		scene := scenes[rng.IntN(len(scenes))]
		openid := "person_" + strconv.Itoa(rng.IntN(12))
		w := expect[scene]
		if w == nil {
			w = &want{}
			expect[scene] = w
		}
		ct++
		if _, follows := followedVia[openid]; follows {
			c.send(rng, event(openid, "SCAN", scene, ct), 1+rng.IntN(4))
			w.scan++
		} else {
			c.send(rng, event(openid, "subscribe", "qrscene_"+scene, ct), 1+rng.IntN(4))
			w.subscribe++
			w.followers++
			followedVia[openid] = scene
		}
		if !seen[scene+"|"+openid] {
			seen[scene+"|"+openid] = true
			w.unique++
		}
		records++
	}
	// Unfollows go after their follows were counted: the stream does not
	// order one person's records across concurrent publishers.
	c.settle(records)
	n := 0
	for openid, scene := range followedVia {
		if n++; n%2 == 0 {
			continue
		}
		ct++
		c.send(rng, event(openid, "unsubscribe", "", ct), 1+rng.IntN(3))
		expect[scene].unfollows++
		records++
	}
	// Events that are not scans add nothing (a plain follow is still a
	// scene event in the stream, for unfollow attribution).
	c.send(rng, event("person_x", "subscribe", "", ct+1), 2)
	c.send(rng, event("person_x", "CLICK", "menu", ct+2), 1)
	records++
	c.settle(records)

	wait.For(t, wait.Short, wait.Every, func() error {
		got := c.scenes()
		if len(got) != len(expect) {
			return fmt.Errorf("API lists %d scenes, want %d", len(got), len(expect))
		}
		for scene, w := range expect {
			g := got[scene]
			if g.SubscribeScans != w.subscribe || g.ScanScans != w.scan || g.Scans != w.subscribe+w.scan ||
				g.NewFollowers != w.followers || g.UniquePeople != w.unique || g.Unfollows != w.unfollows {
				return fmt.Errorf("scene %q: API %+v, want %+v", scene, g, *w)
			}
		}
		return nil
	})
	for scene, w := range expect {
		for i, reg := range c.regs {
			waitMetric(t, reg, "wechat_scene_scans_total", map[string]string{"scene": scene, "kind": "subscribe"}, float64(w.subscribe), i)
			waitMetric(t, reg, "wechat_scene_scans_total", map[string]string{"scene": scene, "kind": "scan"}, float64(w.scan), i)
			waitMetric(t, reg, "wechat_scene_unique_people_total", map[string]string{"scene": scene}, float64(w.unique), i)
			waitMetric(t, reg, "wechat_scene_unfollows_total", map[string]string{"scene": scene}, float64(w.unfollows), i)
			waitMetric(t, reg, "wechat_scene_new_followers_total", map[string]string{"scene": scene}, float64(w.followers), i)
		}
	}
	// One scene through the single-scene route, with a path-escaped name.
	resp, err := http.Get(c.apiURL + "/api/scenes/" + "ad%204%2F%E4%B8%AD%E6%96%87")
	if err != nil {
		t.Fatal(err)
	}
	var one stats.Totals
	_ = json.NewDecoder(resp.Body).Decode(&one)
	resp.Body.Close()
	if w := expect["ad 4/中文"]; w != nil && (resp.StatusCode != 200 || one.Scans != w.subscribe+w.scan) {
		t.Errorf("GET /api/scenes/{scene} = %d %+v", resp.StatusCode, one)
	}
}

// With the label bound at 3 and 5 scenes scanned, the 3 busiest get
// labels (not the first seen: the scenes come least busy first) and the
// other two are summed in the account's overflow series; the totals still
// add up. A real scene named _other (the old overflow label) is a scene
// like any other, and /metrics stays well-formed.
func TestSceneLabelBound(t *testing.T) {
	c := newCluster(t, 3, 4*time.Second)
	rng := rand.New(rand.NewPCG(3, 4))
	ct := int64(1700000000)
	perScene := map[string]int{"s1": 1, "_other": 2, "s3": 4, "s4": 8, "s5": 16}
	total := 0
	for _, scene := range []string{"s1", "_other", "s3", "s4", "s5"} {
		for i := 0; i < perScene[scene]; i++ {
			ct++
			c.send(rng, event("p"+strconv.Itoa(i), "SCAN", scene, ct), 1)
			total++
		}
		c.settle(uint64(total))
	}
	account := map[string]string{"account": "default"}
	for i, reg := range c.regs {
		waitMetric(t, reg, "wechat_scene_label_overflow_scenes", account, 2, i)
		for _, s := range []string{"s3", "s4", "s5"} {
			waitMetric(t, reg, "wechat_scene_scans_total", map[string]string{"account": "default", "scene": s, "kind": "scan"}, float64(perScene[s]), i)
		}
		waitMetric(t, reg, "wechat_scene_scans_overflow_total", map[string]string{"account": "default", "kind": "scan"}, 3, i)
		series := metricstest.Series(t, reg, "wechat_scene_scans_total")
		if len(series) != 6 { // 3 scenes x 2 kinds
			t.Errorf("worker %d exports %d scan series, want 6: %v", i, len(series), series)
		}
		if _, err := reg.Gather(); err != nil {
			t.Errorf("worker %d: gather: %v", i, err)
		}
		sum := 0.0
		for _, v := range series {
			sum += v
		}
		for _, v := range metricstest.Series(t, reg, "wechat_scene_scans_overflow_total") {
			sum += v
		}
		if sum != float64(total) {
			t.Errorf("worker %d: scan series add up to %v, want %d", i, sum, total)
		}
	}
}

func waitMetric(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string, want float64, worker int) {
	t.Helper()
	// The exporter mirrors the store through a watch.
	err := wait.ForErr(wait.Short, wait.Every, func() error {
		if got, ok := metricstest.Lookup(reg, name, labels); !ok || got != want {
			return fmt.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
		}
		return nil
	})
	if err != nil {
		t.Errorf("worker %d: %v", worker, err)
	}
}
