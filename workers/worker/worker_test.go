package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
	"github.com/wxgate/wxgate/workers/late"
	"github.com/wxgate/wxgate/workers/worker"
)

var quiet = slog.New(slog.DiscardHandler)

// start starts a worker on its own connection to srv, stopped with the
// test, and waits until every part of it is ready.
func start(t *testing.T, srv *bus.Embedded, cfg config.Config) (*worker.Worker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	hc, err := health.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.Start(worker.Options{Conn: natstest.Connect(t, srv), Config: cfg, Logger: quiet, Registerer: reg, Health: hc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop(w) })
	wait.For(t, wait.Short, wait.Every, hc.Ready)
	return w, reg
}

func stop(w *worker.Worker) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return w.Stop(ctx)
}

// LATE_REPLY=off with the API's credentials set: no late-reply sender runs,
// and none is counted.
func TestLateReplyOff(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := config.Defaults()
	cfg.AppID, cfg.AppSecret, cfg.APIBase, cfg.LateReply = "wx_late", "late-secret", "http://127.0.0.1:1", config.LateReplyOff
	w, reg := start(t, srv, cfg)
	if w.Late != nil {
		t.Fatal("a late-reply sender runs with LATE_REPLY=off")
	}
	if v, _ := metricstest.Lookup(reg, "wxgate_late_replies_total", map[string]string{"outcome": "sent"}); v != 0 {
		t.Errorf("sent = %v", v)
	}
}

// Late replies without the replies store (DEDUP_TTL=0) could go twice: a
// worker so configured does not start.
func TestLateRepliesNeedTheStore(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := config.Defaults()
	cfg.AppID, cfg.AppSecret, cfg.APIBase, cfg.DedupTTL = "wx_late", "late-secret", "http://127.0.0.1:1", 0
	reg := prometheus.NewRegistry()
	hc, err := health.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.Start(worker.Options{Conn: natstest.Connect(t, srv), Config: cfg, Logger: quiet, Registerer: reg, Health: hc})
	if err == nil {
		_ = stop(w)
		t.Fatal("a worker with late replies and DEDUP_TTL=0 started")
	}
	if !strings.Contains(err.Error(), "DEDUP_TTL") {
		t.Errorf("error %v does not name DEDUP_TTL", err)
	}
}

// With the replies store off (DEDUP_TTL=0) and no JetStream at all, the
// replies need nothing of it: more scans than the service has slots (1024)
// are each answered, and a text message after them too.
func TestRepliesWithoutJetStreamAndDedupOff(t *testing.T) {
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", Name: "nojs"}) // no StoreDir: no JetStream
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cfg := config.Defaults()
	cfg.DedupTTL, cfg.WorkerRoles = 0, []string{"replies"}
	start(t, srv, cfg)
	nc := natstest.Connect(t, srv)
	ask := func(m *wechat.Message) (string, error) {
		resp, err := nc.Request(m.Subject(), m.AppendXML(nil), 5*time.Second)
		if err != nil {
			return "", err
		}
		return string(resp.Data), nil
	}
	const scans = 1100
	errs := make(chan error, scans)
	sem := make(chan struct{}, 64)
	for i := 0; i < scans; i++ {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			m := &wechat.Message{ToUserName: "gh", FromUserName: fmt.Sprint("o", i), CreateTime: int64(1000 + i), MsgType: "event", Event: "SCAN", EventKey: "poster"}
			body, err := ask(m)
			if err == nil && !strings.Contains(body, "poster") {
				err = fmt.Errorf("scan %d answered %q", i, body)
			}
			errs <- err
		}()
	}
	for i := 0; i < scans; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	body, err := ask(&wechat.Message{ToUserName: "gh", FromUserName: "o_text", CreateTime: 5000, MsgType: "text", Content: "hi", MsgID: "77"})
	if err != nil || !strings.Contains(body, "hi") {
		t.Fatalf("text after the scans = %q %v, want its reply", body, err)
	}
}

// Workers that disagree on LATE_REPLY (one with late replies on, one off,
// as while WECHAT_APPSECRET is rolled out) never reply twice (finding N8):
// the late-off worker marks the replies it answers retries with, and
// respects the late sender's marks, as every worker does.
func TestWorkersThatDisagreeOnLateReplyReplyOnce(t *testing.T) {
	srv := natstest.RunServer(t)
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_late", Secret: "late-secret"})
	api := httptest.NewServer(fake)
	t.Cleanup(api.Close)
	lateOn := config.Defaults()
	lateOn.WorkerRoles = []string{"replies"}
	lateOn.AppID, lateOn.AppSecret, lateOn.APIBase = "wx_late", "late-secret", api.URL
	lateOff := lateOn
	lateOff.LateReply = config.LateReplyOff
	nc := natstest.Connect(t, srv)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := events.Ensure(context.Background(), js, events.Defaults()); err != nil {
		t.Fatal(err)
	}
	// retry asks the workers for m as the ingress asks for a retry.
	retry := func(m *wechat.Message) string {
		t.Helper()
		req := &nats.Msg{Subject: m.Subject(), Data: m.AppendXML(nil), Header: nats.Header{bus.HeaderRetry: []string{"1"}, bus.HeaderTimeout: []string{"4000"}}}
		resp, err := nc.RequestMsg(req, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return string(resp.Data)
	}
	// unanswered records m as the ingress does when it answered "success"
	// without the reply (an earlier delivery WeChat did not get).
	unanswered := func(m *wechat.Message) {
		t.Helper()
		if err := fake.Interaction(m.FromUserName, wechatapitest.KindMessage, time.Now()); err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: events.UnansweredPrefix + m.Subject(), Data: m.AppendXML(nil), Header: nats.Header{}}
		msg.Header.Set(bus.HeaderReceived, bus.FormatTime(time.Now().Add(-config.LateSettle)))
		if _, err := js.PublishMsg(context.Background(), msg, jetstream.WithMsgID("u."+m.DedupKey("default", m.AppendXML(nil)))); err != nil {
			t.Fatal(err)
		}
	}
	// settled waits until the late sender is done with every event.
	settled := func() {
		t.Helper()
		wait.For(t, wait.Short, wait.Every, func() error {
			c, err := js.Consumer(context.Background(), events.Unanswered, late.Consumer)
			if err != nil {
				return err
			}
			info, err := c.Info(context.Background())
			if err == nil && (info.NumPending != 0 || info.NumAckPending != 0) {
				err = fmt.Errorf("pending %d, unacknowledged %d", info.NumPending, info.NumAckPending)
			}
			return err
		})
	}
	text := func(openid string, id int) *wechat.Message {
		return &wechat.Message{ToUserName: "gh", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "text", Content: "hello " + openid, MsgID: fmt.Sprint(8000 + id)}
	}

	// The late-off worker answers a retry with the reply; the late-on
	// worker's sender then finds it answered, and sends nothing.
	start(t, srv, lateOff)
	m1 := text("o_passive", 1)
	if body := retry(m1); !strings.Contains(body, "hello o_passive") {
		t.Fatalf("retry at the late-off worker = %q, want the reply", body)
	}
	on, reg := start(t, srv, lateOn)
	unanswered(m1)
	settled()
	if n := len(fake.Calls().Messages); n != 0 {
		t.Errorf("%d late replies after the retry was answered, want none", n)
	}

	// The late-on worker sends a reply late; a retry that then reaches
	// the late-off worker is answered "success".
	m2 := text("o_late", 2)
	unanswered(m2)
	settled()
	if v, _ := metricstest.Lookup(reg, "wxgate_late_replies_total", map[string]string{"outcome": "sent"}); v != 1 {
		t.Fatalf("late replies sent = %v, want 1", v)
	}
	if err := stop(on); err != nil { // the retry reaches the late-off worker
		t.Fatal(err)
	}
	if body := retry(m2); body != "" {
		t.Errorf("retry at the late-off worker after the late reply = %q, want nothing (success)", body)
	}
	if msgs := fake.Calls().Messages; len(msgs) != 1 || msgs[0].ToUser != "o_late" {
		t.Errorf("messages = %+v, want o_late's late reply only", msgs)
	}
}

// A worker with the replies role runs the tagger, ready with the rest, on
// the process's WeChat clients: a tag asked for is given; one with the
// analytics role only runs none.
func TestTagger(t *testing.T) {
	srv := natstest.RunServer(t)
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_tags", Secret: "tags-secret"})
	api := httptest.NewServer(fake)
	t.Cleanup(api.Close)
	cfg := config.Defaults()
	cfg.AppID, cfg.AppSecret, cfg.APIBase = "wx_tags", "tags-secret", api.URL
	w, reg := start(t, srv, cfg)
	if v, _ := metricstest.Lookup(reg, "wxgate_component_ready", map[string]string{"component": "tags"}); v != 1 {
		t.Errorf("the tagger's readiness: %v", v)
	}
	if err := w.Tags.Enqueue(context.Background(), "default", "o1", "门店"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if got := fake.TagsOf("wx_tags", "o1"); len(got) != 1 {
			return fmt.Errorf("o1 has tags %v", got)
		}
		return nil
	})
	cfg.WorkerRoles = []string{"analytics"}
	if w, _ := start(t, srv, cfg); w.Tags != nil {
		t.Error("a tagger without the replies role")
	}
}
