package inproc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
	"github.com/wxgate/wxgate/workers/reply"
	"github.com/wxgate/wxgate/workers/worker"
)

// slowOnce is slower than the deadline on its first run only: that run
// answers once the test releases it.
type slowOnce struct {
	*reply.Replier
	runs    atomic.Int32
	release chan struct{}
}

func (d *slowOnce) Decide(ctx context.Context, _ string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	if d.runs.Add(1) == 1 {
		select {
		case <-d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return d.Reply(m), nil
}

// heldAfterFirst is the real intake, except that after the first event it
// answers as it does while JetStream is away: held, and no word on
// whether the event is a duplicate.
type heldAfterFirst struct {
	*intake.Intake
	n atomic.Int32
}

func (h *heldAfterFirst) Publish(account string, m *wechat.Message, key string, raw []byte, received time.Time) (intake.Receipt, error) {
	if h.n.Add(1) == 1 {
		return h.Intake.Publish(account, m, key, raw, received)
	}
	return intake.Receipt{Held: true}, nil
}

// A slow first delivery is answered "success" and its reply sent late.
// WeChat's retry comes while the ingress holds events (the stream cannot
// say it is a retry): it is still treated as one, the handler does not run
// again, and the person does not get the reply a second time.
func TestRetryWhileHeldAfterALateReply(t *testing.T) {
	srv := natstest.RunServer(t)
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_late", Secret: "late-secret"})
	fs := httptest.NewServer(fake)
	t.Cleanup(fs.Close)
	cfg := config.Defaults()
	cfg.AppID, cfg.AppSecret, cfg.APIBase = "wx_late", "late-secret", fs.URL
	d := &slowOnce{Replier: reply.NewReplier(cfg.Replies), release: make(chan struct{})}
	var released sync.Once
	release := func() { released.Do(func() { close(d.release) }) }
	t.Cleanup(release)
	w, _ := startWorker(t, srv, cfg, d)
	wait.For(t, wait.Short, wait.Every, w.Late.Check)
	url, _ := startIngress(t, natstest.Connect(t, srv), cfg, time.Second, func(in *intake.Intake) gateway.Intake { return &heldAfterFirst{Intake: in} })

	msg := `<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[o_twice]]></FromUserName>` +
		`<CreateTime>` + strconv.FormatInt(time.Now().Unix(), 10) + `</CreateTime><MsgType><![CDATA[text]]></MsgType>` +
		`<Content><![CDATA[hello twice]]></Content><MsgId>7000000000000000099</MsgId></xml>`
	if err := fake.Interaction("o_twice", wechatapitest.KindMessage, time.Now()); err != nil {
		t.Fatal(err)
	}
	s := wechat.Sender{Token: token}
	if _, body, err := s.Post(http.DefaultClient, url, []byte(msg), time.Now(), "n1"); err != nil || string(body) != "success" {
		t.Fatalf("first delivery = %q %v, want success at the deadline", body, err)
	}
	release() // the handler finishes after the deadline: its reply goes out late
	wait.For(t, wait.Short, wait.Every, func() error {
		if len(fake.Calls().Messages) == 0 {
			return errors.New("no late reply yet")
		}
		return nil
	})
	_, body, err := s.Post(http.DefaultClient, url, []byte(msg), time.Now(), "n2")
	if err != nil || string(body) != "success" {
		t.Errorf("the retry = %q %v, want success: the reply went out late already", body, err)
	}
	if n := len(fake.Calls().Messages); n != 1 {
		t.Errorf("%d late replies, want 1", n)
	}
	if n := d.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// JetStream away while core NATS is up (finding N1; here the server is
// started again without JetStream, then with it and its data): the
// ingress holds the event and asks as for a possible retry; the worker's
// reply cannot be marked, so it is neither answered (a late reply could
// repeat it) nor dropped: the ingress falls back (bus_down), records the
// event as unanswered, and once JetStream is back the late sender sends the
// reply, once, from the worker's memory: the handler ran once.
func TestJetStreamAwayLeavesTheReplyToTheLateReply(t *testing.T) {
	addr := "127.0.0.1:" + nettest.FreePort(t)
	dir := t.TempDir()
	srv := serveAt(t, addr, dir)
	connect := func() *nats.Conn {
		nc, err := nats.Connect("nats://"+addr, nats.Token(natsToken), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_late", Secret: "late-secret"})
	fs := httptest.NewServer(fake)
	t.Cleanup(fs.Close)
	cfg := config.Defaults()
	cfg.AppID, cfg.AppSecret, cfg.APIBase, cfg.WorkerRoles = "wx_late", "late-secret", fs.URL, []string{"replies"}
	d := &slowDecider{Replier: reply.NewReplier(cfg.Replies)}
	wnc, wreg := connect(), prometheus.NewRegistry()
	hc, err := health.New(wreg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.Start(worker.Options{Conn: wnc, Config: cfg, Logger: quiet, Registerer: wreg, Health: hc, Decider: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	})
	inc := connect()
	url, ireg := startIngress(t, inc, cfg, 2*time.Second, nil) // it makes the streams
	wait.For(t, wait.Short, wait.Every, hc.Ready)

	srv.Close()
	srv = serveAt(t, addr, "")                  // core NATS back, JetStream not
	for _, nc := range []*nats.Conn{wnc, inc} { // reconnected, subscriptions in place
		wait.For(t, wait.Short, wait.Every, func() error { return errors.Join(bus.Ready(nc), nc.FlushTimeout(time.Second)) })
	}
	if err := fake.Interaction("o_away", wechatapitest.KindMessage, time.Now()); err != nil {
		t.Fatal(err)
	}
	msg := `<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[o_away]]></FromUserName>` +
		`<CreateTime>` + strconv.FormatInt(time.Now().Unix(), 10) + `</CreateTime><MsgType><![CDATA[text]]></MsgType>` +
		`<Content><![CDATA[while JetStream is away]]></Content><MsgId>7000000000000000077</MsgId></xml>`
	s := wechat.Sender{Token: token}
	if _, body, err := s.Post(http.DefaultClient, url, []byte(msg), time.Now(), "n1"); err != nil || string(body) != "success" {
		t.Fatalf("delivery with JetStream away = %q %v, want success (the reply cannot be marked)", body, err)
	}
	if v := metricstest.Value(t, ireg, "wxgate_ingress_fallbacks_total", "reason", "bus_down"); v != 1 {
		t.Errorf("fallbacks{bus_down} = %v, want 1", v)
	}
	if d.runs.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1 (the worker answered the request)", d.runs.Load())
	}

	srv.Close()
	serveAt(t, addr, dir) // JetStream back, with its data
	wait.For(t, wait.Short, wait.Every, func() error {
		if v, _ := metricstest.Lookup(wreg, "wxgate_late_replies_total", map[string]string{"outcome": "sent"}); v != 1 {
			return fmt.Errorf("late replies sent = %v, want 1", v)
		}
		return nil
	})
	if v := metricstest.Value(t, ireg, "wxgate_intake_unanswered_total", "", ""); v != 1 {
		t.Errorf("events recorded as unanswered = %v, want 1", v)
	}
	if msgs := fake.Calls().Messages; len(msgs) != 1 || msgs[0].ToUser != "o_away" || msgs[0].Content != "while JetStream is away" {
		t.Errorf("customer-service messages = %+v, want the reply once", msgs)
	}
	if n := d.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

const natsToken = "inproc"

// serveAt runs a NATS server on addr, with JetStream in dir ("": without),
// stopped with the test.
func serveAt(t *testing.T, addr, dir string) *bus.Embedded {
	t.Helper()
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: addr, StoreDir: dir, Name: "inproc", Token: natsToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}
