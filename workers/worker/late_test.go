package worker_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
	"github.com/wxgate/wxgate/workers/reply"
)

// slowOnce is slower than the deadline on its first run only: that run
// answers once the test releases it.
type slowOnce struct {
	*reply.Replier
	runs    atomic.Int32
	release chan struct{}
}

func (d *slowOnce) Decide(ctx context.Context, m *wechat.Message) (*wechat.Reply, error) {
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

func (h *heldAfterFirst) Publish(m *wechat.Message, key string, raw []byte, received time.Time) (intake.Receipt, error) {
	if h.n.Add(1) == 1 {
		return h.Intake.Publish(m, key, raw, received)
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

	nc, ireg := natstest.Connect(t, srv), prometheus.NewRegistry()
	in, err := intake.New(intake.Options{Conn: nc, Streams: cfg.Streams(), Logger: quiet, Registerer: ireg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(context.Background()) })
	gw, err := gateway.New(gateway.Options{Token: token, Conn: nc, Intake: &heldAfterFirst{Intake: in}, ReplyTimeout: time.Second, Logger: quiet, Registerer: ireg})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw.Handler())
	t.Cleanup(hs.Close)

	msg := `<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[o_twice]]></FromUserName>` +
		`<CreateTime>` + strconv.FormatInt(time.Now().Unix(), 10) + `</CreateTime><MsgType><![CDATA[text]]></MsgType>` +
		`<Content><![CDATA[hello twice]]></Content><MsgId>7000000000000000099</MsgId></xml>`
	if err := fake.Interaction("o_twice", wechatapitest.KindMessage, time.Now()); err != nil {
		t.Fatal(err)
	}
	s := wechat.Sender{Token: token}
	if _, body, err := s.Post(http.DefaultClient, hs.URL+gateway.Path, []byte(msg), time.Now(), "n1"); err != nil || string(body) != "success" {
		t.Fatalf("first delivery = %q %v, want success at the deadline", body, err)
	}
	release() // the handler finishes after the deadline: its reply goes out late
	wait.For(t, wait.Short, wait.Every, func() error {
		if len(fake.Calls().Messages) == 0 {
			return errors.New("no late reply yet")
		}
		return nil
	})
	_, body, err := s.Post(http.DefaultClient, hs.URL+gateway.Path, []byte(msg), time.Now(), "n2")
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

// LATE_REPLY=off with the API's credentials set: no late-reply sender runs,
// and none is counted.
func TestLateReplyOff(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := config.Defaults()
	cfg.AppID, cfg.AppSecret, cfg.APIBase, cfg.LateReply = "wx_late", "late-secret", "http://127.0.0.1:1", config.LateReplyOff
	w, reg := startWorker(t, srv, cfg, nil)
	if w.Late != nil {
		t.Fatal("a late-reply sender runs with LATE_REPLY=off")
	}
	if v, _ := metricstest.Lookup(reg, "wxgate_late_replies_total", map[string]string{"outcome": "sent"}); v != 0 {
		t.Errorf("sent = %v", v)
	}
}
