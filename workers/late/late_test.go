package late

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
	"github.com/wxgate/wxgate/workers/dedup"
)

var quiet = slog.New(slog.DiscardHandler)

type fixture struct {
	t        *testing.T
	srv      *bus.Embedded
	js       jetstream.JetStream
	fake     *wechatapitest.Server
	url      string
	runs     atomic.Int32 // replies produced
	replicas atomic.Int32
	// accounts, when set, are served instead of the default alone.
	accounts *accounts.Registry
}

func newFixture(t *testing.T, o wechatapitest.Options) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.RunServer(t)}
	js, err := jetstream.New(natstest.Connect(t, f.srv))
	if err != nil {
		t.Fatal(err)
	}
	f.js = js
	if err := events.Ensure(context.Background(), js, events.Defaults()); err != nil {
		t.Fatal(err)
	}
	o.AppID, o.Secret = "wx_late", "late-secret"
	f.fake = wechatapitest.New(o)
	ts := httptest.NewServer(f.fake)
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

// replica is one worker's late sender and the replies store it marks in.
type replica struct {
	*Service
	store *dedup.Store
	reg   *prometheus.Registry
}

// start runs a late-reply service on its own connection, with its own
// store; reply answers every message with the text "re: <content>" (an
// event: "scanned").
func (f *fixture) start(windows ...time.Duration) replica {
	f.t.Helper()
	return f.startWith(func(o *Options) {
		if len(windows) == 2 {
			o.MessageWindow, o.EventWindow = windows[0], windows[1]
		}
	})
}

// startWith starts a service as start does, with mod applied to its
// options, and waits until it and its store run.
func (f *fixture) startWith(mod func(*Options)) replica {
	f.t.Helper()
	nc, reg := natstest.Connect(f.t, f.srv), prometheus.NewRegistry()
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	id := fmt.Sprint("late-", f.replicas.Add(1))
	// No test here needs another worker's memory: a short wait for the
	// lookup's silence.
	store, err := dedup.Open(js, id, dedup.Options{LookupWait: 20 * time.Millisecond, Logger: quiet, Registerer: reg})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(store.Close)
	accts := f.accounts
	if accts == nil {
		if accts, err = accounts.Start(accounts.Options{Default: accounts.Account{AppID: "wx_late", AppSecret: "late-secret"}, Logger: quiet}); err != nil {
			f.t.Fatal(err)
		}
	}
	clients, err := wechatapi.NewClients(wechatapi.Options{Base: f.url, Accounts: accts, Conn: nc, Logger: quiet, Registerer: reg})
	if err != nil {
		f.t.Fatal(err)
	}
	api := func(id string) (Sender, error) { return clients.For(id) }
	o := Options{Conn: nc, API: api, Accounts: accts, Store: store, Logger: quiet, Registerer: reg, ID: id, RetryBase: 20 * time.Millisecond, Reply: f.reply}
	if mod != nil {
		mod(&o)
	}
	s, err := Start(o)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = s.Stop(context.Background()) })
	wait.For(f.t, wait.Short, wait.Every, func() error { return errors.Join(s.Check(), store.Check()) })
	return replica{s, store, reg}
}

func (f *fixture) reply(_ context.Context, _ string, m *wechat.Message, _ []byte) ([]byte, error) {
	f.runs.Add(1)
	text := "re: " + m.Content
	if m.IsEvent() {
		text = "scanned"
	}
	return wechat.TextReply(text).ReplyTo(m, 1), nil
}

// state is what the replies store holds for m.
func (f *fixture) state(m *wechat.Message) string {
	f.t.Helper()
	kv, err := f.js.KeyValue(context.Background(), dedup.Bucket)
	if err != nil {
		f.t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), key(m))
	if err != nil {
		return err.Error()
	}
	return string(e.Value())
}

func key(m *wechat.Message) string { return m.DedupKey("default", m.AppendXML(nil)) }

// settled waits until the late-reply consumer has nothing pending and
// nothing unacknowledged: every event is done with, none will come back.
func (f *fixture) settled() {
	f.t.Helper()
	wait.For(f.t, wait.Short, wait.Every, func() error {
		c, err := f.js.Consumer(context.Background(), events.Unanswered, Consumer)
		if err != nil {
			return err
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("pending %d, unacknowledged %d", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// sentTo is how many customer-service messages the fake took for openid.
func (f *fixture) sentTo(openid string) int {
	n := 0
	for _, m := range f.fake.Calls().Messages {
		if m.ToUser == openid {
			n++
		}
	}
	return n
}

// unanswered stores an event as the ingress does when it answered
// "success" without the reply; the fake learns of the person's action, as
// WeChat would, and opens its window.
func (f *fixture) unanswered(m *wechat.Message, received time.Time) {
	f.t.Helper()
	if kind := wechatapitest.InteractionKind(m.MsgType, m.Event); kind != "" {
		if err := f.fake.Interaction(m.FromUserName, kind, received); err != nil {
			f.t.Fatal(err)
		}
	}
	f.record(m, received)
}

// record stores the unanswered event without telling the fake.
func (f *fixture) record(m *wechat.Message, received time.Time) {
	f.t.Helper()
	msg := &nats.Msg{Subject: events.UnansweredPrefix + m.Subject(), Data: m.AppendXML(nil), Header: nats.Header{}}
	msg.Header.Set(bus.HeaderReceived, bus.FormatTime(received))
	if _, err := f.js.PublishMsg(context.Background(), msg, jetstream.WithMsgID("u."+key(m))); err != nil {
		f.t.Fatal(err)
	}
}

func text(openid, content string, id int) *wechat.Message {
	return &wechat.Message{ToUserName: "gh", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "text", Content: content, MsgID: fmt.Sprint(1000 + id)}
}

func scan(openid string, at time.Time) *wechat.Message {
	return &wechat.Message{ToUserName: "gh", FromUserName: openid, CreateTime: at.Unix(), MsgType: "event", Event: "SCAN", EventKey: "poster"}
}

func outcome(t *testing.T, reg prometheus.Gatherer, o string) float64 {
	v, _ := metricstest.Lookup(reg, "wxgate_late_replies_total", map[string]string{"outcome": o})
	return v
}

// waitFinal waits until the services' outcomes add up to want and every
// event is done with, then checks want again: a count that must stay (at
// 0, or at its number) is checked once nothing more can change it.
func (f *fixture) waitFinal(want map[string]float64, regs ...prometheus.Gatherer) {
	f.t.Helper()
	waitOutcomes(f.t, want, regs...)
	f.settled()
	for o, n := range want {
		var got float64
		for _, reg := range regs {
			got += outcome(f.t, reg, o)
		}
		if got != n {
			f.t.Errorf("once settled, %s = %v, want %v", o, got, n)
		}
	}
}

// waitOutcomes waits until the services' outcomes add up to want.
func waitOutcomes(t *testing.T, want map[string]float64, regs ...prometheus.Gatherer) {
	t.Helper()
	wait.For(t, wait.Short, wait.Every, func() error {
		for o, n := range want {
			var got float64
			for _, reg := range regs {
				got += outcome(t, reg, o)
			}
			if got != n {
				return fmt.Errorf("%s = %v, want %v", o, got, n)
			}
		}
		return nil
	})
}

// Two replicas, three unanswered events: each reply reaches the fake
// exactly once, to the right person, with the right content.
func TestLateRepliesSentOnceAcrossReplicas(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	r1, r2 := f.start().reg, f.start().reg
	f.unanswered(text("o_a", "hello", 1), time.Now())
	f.unanswered(text("o_b", "你好", 2), time.Now())
	f.unanswered(scan("o_c", time.Now()), time.Now())
	f.waitFinal(map[string]float64{Sent: 3}, r1, r2)
	got := map[string]string{}
	for _, m := range f.fake.Calls().Messages {
		if _, dup := got[m.ToUser]; dup {
			t.Errorf("%s got two messages", m.ToUser)
		}
		got[m.ToUser] = m.Content
	}
	want := map[string]string{"o_a": "re: hello", "o_b": "re: 你好", "o_c": "scanned"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("message to %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if n := f.runs.Load(); n != 3 {
		t.Errorf("replies produced %d times, want 3", n)
	}
}

// A SCAN whose window closed before a worker took it: counted expired, not
// sent, and its handler never runs.
func TestExpiredWindowIsNotSent(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	reg := f.start(time.Hour, time.Minute).reg
	at := time.Now().Add(-2 * time.Minute)
	f.unanswered(scan("o_late", at), at)
	f.waitFinal(map[string]float64{Expired: 1, Sent: 0}, reg)
	if n := len(f.fake.Calls().Messages); n != 0 {
		t.Errorf("%d messages sent past the window", n)
	}
	if f.runs.Load() != 0 {
		t.Error("the handler ran for a reply that could not be sent")
	}
}

// A retry answered with the reply passively first: the late reply is not
// sent. A late reply sent first: the retry is told to answer "success".
func TestPassiveAndLateNeverBoth(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	r := f.start()
	first := text("o_p", "passive", 1)
	body, _, err := r.store.Retry(context.Background(), key(first), func(ctx context.Context) ([]byte, error) { return f.reply(ctx, accounts.DefaultID, first, nil) })
	if err != nil || len(body) == 0 {
		t.Fatalf("a retry before any late reply = %q %v, want its reply", body, err)
	}
	f.unanswered(first, time.Now())
	second := text("o_q", "late", 2)
	f.unanswered(second, time.Now())
	f.waitFinal(map[string]float64{Sent: 1}, r.reg)
	if body, out, err := r.store.Retry(context.Background(), key(second), nil); err != nil || out != dedup.Late || body != nil {
		t.Errorf("a retry after the late reply = %q %v %v, want Late: answer success", body, out, err)
	}
	msgs := f.fake.Calls().Messages
	if len(msgs) != 1 || msgs[0].ToUser != "o_q" {
		t.Errorf("messages sent = %+v, want only o_q's", msgs)
	}
}

// A worker killed after its send and before it recorded it leaves the
// "sending" mark: the event, delivered again, is not sent again.
func TestSendingMarkIsRespected(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	reg := f.start().reg
	m := text("o_k", "killed", 1)
	kv, err := f.js.KeyValue(context.Background(), dedup.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(context.Background(), key(m), []byte(dedup.MarkSending+":dead-worker")); err != nil {
		t.Fatal(err)
	}
	f.unanswered(m, time.Now())
	other := text("o_o", "other", 2)
	f.unanswered(other, time.Now())
	f.waitFinal(map[string]float64{Sent: 1}, reg)
	if msgs := f.fake.Calls().Messages; len(msgs) != 1 || msgs[0].ToUser != "o_o" {
		t.Errorf("messages = %+v, want only o_o's", msgs)
	}
}

// WeChat's answers: 45015 ends the attempt as expired, 45047 as failed;
// -1 is retried until it goes through; 40001 refreshes the shared token
// and retries once.
func TestErrcodePaths(t *testing.T) {
	cases := []struct {
		name  string
		fault wechatapitest.Fault
		want  string
	}{
		{"window closed", wechatapitest.Fault{API: wechatapitest.CustomSend, Errcode: 45015}, Expired},
		{"count used up", wechatapitest.Fault{API: wechatapitest.CustomSend, Errcode: 45047}, Failed},
		{"busy, then fine", wechatapitest.Fault{API: wechatapitest.CustomSend, Errcode: -1, Count: 2}, Sent},
		{"token invalidated", wechatapitest.Fault{InvalidateToken: true}, Sent},
		{"out of reach, then fine", wechatapitest.Fault{API: wechatapitest.StableToken, Drop: true, InvalidateToken: true}, Sent},
		{"answer lost after WeChat took it", wechatapitest.Fault{API: wechatapitest.CustomSend, Drop: true, After: true}, Failed},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, wechatapitest.Options{})
			reg := f.start().reg
			// A first send makes the token exist, so that invalidating it
			// means something.
			f.unanswered(text("o_warm", "warm", 100+i), time.Now())
			waitOutcomes(t, map[string]float64{Sent: 1}, reg)
			if err := f.fake.Inject(c.fault); err != nil {
				t.Fatal(err)
			}
			f.unanswered(text("o_x", "x", i), time.Now())
			want := map[string]float64{Sent: 1, Expired: 0, Failed: 0}
			want[c.want]++
			waitOutcomes(t, want, reg)
		})
	}
}

// Passive replies map to their customer-service form; the rest are
// unsupported.
func TestCustomMessages(t *testing.T) {
	m := &wechat.Message{FromUserName: "o", ToUserName: "gh"}
	one := []wechat.Article{{Title: "t", Description: "d", PicURL: "p", URL: "u"}}
	for _, c := range []struct {
		reply *wechat.Reply
		typ   string
		ok    bool
	}{
		{wechat.TextReply("hi"), "text", true},
		{&wechat.Reply{Type: wechat.ReplyImage, MediaID: "m"}, "image", true},
		{&wechat.Reply{Type: wechat.ReplyVoice, MediaID: "m"}, "voice", true},
		{&wechat.Reply{Type: wechat.ReplyVideo, MediaID: "m", Title: "t"}, "video", true},
		{&wechat.Reply{Type: wechat.ReplyMusic, Title: "t", MusicURL: "u"}, "music", true},
		{&wechat.Reply{Type: wechat.ReplyNews, Articles: one}, "news", true},
		{&wechat.Reply{Type: wechat.ReplyNews, Articles: append(one, one...)}, "", false},
		{&wechat.Reply{Type: wechat.ReplyTransfer}, "", false},
	} {
		cm, ok := customMessage("o", c.reply.ReplyTo(m, 1))
		if ok != c.ok || cm.MsgType != c.typ || (ok && cm.ToUser != "o") {
			t.Errorf("%s: %+v %v, want %q %v", c.reply.Type, cm, ok, c.typ, c.ok)
		}
	}
	cm, _ := customMessage("o", (&wechat.Reply{Type: wechat.ReplyImage, MediaID: "media_1"}).ReplyTo(m, 1))
	if body := cm.Body.(map[string]string); body["media_id"] != "media_1" {
		t.Errorf("image body = %v", body)
	}
}

// An unsupported reply is counted, never sent.
func TestUnsupportedIsCounted(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	reg := f.startWith(func(o *Options) {
		o.Reply = func(_ context.Context, _ string, m *wechat.Message, _ []byte) ([]byte, error) {
			return (&wechat.Reply{Type: wechat.ReplyTransfer}).ReplyTo(m, 1), nil
		}
	}).reg
	f.unanswered(text("o_u", "u", 1), time.Now())
	waitOutcomes(t, map[string]float64{Unsupported: 1, Sent: 0}, reg)
	if n := len(f.fake.Calls().Messages); n != 0 {
		t.Errorf("%d messages sent", n)
	}
}

// WeChat took the message and the answer was lost (or came too late): it
// may have reached the person, so it is never sent again. Counted failed,
// once, and the event is done with.
func TestAnswerLostAfterSendingIsNotSentAgain(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	reg := f.start().reg
	f.unanswered(text("o_warm", "warm", 1), time.Now()) // the token exists: the fault hits the send
	waitOutcomes(t, map[string]float64{Sent: 1}, reg)
	if err := f.fake.Inject(wechatapitest.Fault{API: wechatapitest.CustomSend, Drop: true, After: true}); err != nil {
		t.Fatal(err)
	}
	f.unanswered(text("o_once", "once please", 2), time.Now())
	waitOutcomes(t, map[string]float64{Sent: 1, Failed: 1}, reg)
	f.settled()
	if n := f.sentTo("o_once"); n != 1 {
		t.Errorf("o_once got the reply %d times, want 1", n)
	}
}

// A worker stopped while its handler runs lets it finish, and nothing is
// counted expired: the reply reaches the person once, from whichever
// worker ends up with the event.
func TestStopLosesNoLateReply(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	entered, release := make(chan struct{}), make(chan struct{})
	r1 := f.startWith(func(o *Options) {
		o.Reply = func(_ context.Context, _ string, m *wechat.Message, _ []byte) ([]byte, error) {
			close(entered)
			<-release
			return wechat.TextReply("re: "+m.Content).ReplyTo(m, 1), nil
		}
	})
	f.unanswered(text("o_stop", "still there?", 3), time.Now())
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if err := r1.Stop(ctx); err == nil {
		t.Error("Stop returned while a handler still ran")
	}
	cancel()
	r2 := f.start() // the replacement
	close(release)
	f.waitFinal(map[string]float64{Sent: 1, Expired: 0, Failed: 0}, r1.reg, r2.reg)
	f.settled()
	if n := f.sentTo("o_stop"); n != 1 {
		t.Errorf("o_stop got the reply %d times, want 1", n)
	}
}

// A retry whose reply the store could not mark (its bucket just lost) is
// not answered as if marked: the late reply carries the reply, once, and
// the handler ran once (the late sender finds the retry's reply in memory).
func TestUnmarkedRetryLeavesItToTheLateReply(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	r := f.start()
	if err := f.js.DeleteKeyValue(context.Background(), dedup.Bucket); err != nil {
		t.Fatal(err)
	}
	m := text("o_early", "hi", 4)
	body, _, err := r.store.Retry(context.Background(), key(m), func(ctx context.Context) ([]byte, error) { return f.reply(ctx, accounts.DefaultID, m, nil) })
	if !errors.Is(err, dedup.ErrNotMarked) || len(body) == 0 {
		t.Fatalf("retry with the bucket lost = %q %v, want its reply, unmarked", body, err)
	}
	wait.For(t, wait.Short, wait.Every, r.store.Check) // set up again
	f.unanswered(m, time.Now())                        // the ingress's fallback
	f.waitFinal(map[string]float64{Sent: 1}, r.reg)
	if n := f.sentTo("o_early"); n != 1 {
		t.Errorf("o_early got the late reply %d times, want 1", n)
	}
	if n := f.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// The replies bucket deleted, and JetStream refusing to make it again (a
// stream holds its subjects), finding N5: the late reply is not sent
// without its marks, the store's Check says why (for /readyz), and once the
// bucket can be made again the store sets it up and the late reply goes.
func TestLostBucketIsReportedAndSetUpAgain(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	r := f.start()
	ctx := context.Background()
	if err := f.js.DeleteKeyValue(ctx, dedup.Bucket); err != nil {
		t.Fatal(err)
	}
	if _, err := f.js.CreateStream(ctx, jetstream.StreamConfig{Name: "BLOCKER", Subjects: []string{"$KV." + dedup.Bucket + ".>"}}); err != nil {
		t.Fatal(err)
	}
	m := text("o_lost", "still there?", 7)
	f.unanswered(m, time.Now())
	wait.For(t, wait.Short, wait.Every, func() error {
		if r.store.Check() == nil {
			return errors.New("the store has not noticed its bucket is gone")
		}
		return nil
	})
	if n := len(f.fake.Calls().Messages); n != 0 {
		t.Fatalf("%d messages sent without a mark", n)
	}
	if err := f.js.DeleteStream(ctx, "BLOCKER"); err != nil {
		t.Fatal(err)
	}
	f.waitFinal(map[string]float64{Sent: 1}, r.reg)
	if err := r.store.Check(); err != nil {
		t.Errorf("store after the repair: %v", err)
	}
	if n := f.sentTo("o_lost"); n != 1 {
		t.Errorf("o_lost got the late reply %d times, want 1", n)
	}
}

// A retry answered passively after a late attempt WeChat did not take
// (busy) wins: the late reply is not sent.
func TestPassiveAfterABusyAttemptWins(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	r := f.startWith(func(o *Options) { o.RetryBase = time.Hour }) // the event does not come back in the test
	f.unanswered(text("o_warm", "warm", 1), time.Now())
	waitOutcomes(t, map[string]float64{Sent: 1}, r.reg)
	if err := f.fake.Inject(wechatapitest.Fault{API: wechatapitest.CustomSend, Errcode: -1}); err != nil {
		t.Fatal(err)
	}
	m := text("o_busy", "busy?", 5)
	f.unanswered(m, time.Now())
	wait.For(t, wait.Short, wait.Every, func() error {
		if s := f.state(m); !strings.HasPrefix(s, dedup.MarkRetry+":") {
			return fmt.Errorf("no retry mark yet (%s)", s)
		}
		return nil
	})
	body, _, err := r.store.Retry(context.Background(), key(m), nil)
	if err != nil || !strings.Contains(string(body), "re: busy?") {
		t.Fatalf("a retry after an attempt WeChat refused = %q %v, want the reply", body, err)
	}
	if s := f.state(m); !strings.HasPrefix(s, "passive:") {
		t.Fatalf("mark = %s, want passive", s)
	}
}

// A handler that keeps failing runs a bounded number of times, with
// back-off, and the late reply is counted failed, not expired.
func TestFailingHandlerIsCountedFailed(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	var runs atomic.Int32
	reg := f.startWith(func(o *Options) {
		o.Reply = func(context.Context, string, *wechat.Message, []byte) ([]byte, error) {
			runs.Add(1)
			return nil, errors.New("boom")
		}
	}).reg
	f.unanswered(text("o_fail", "x", 6), time.Now().Add(-time.Second)) // past Settle: every delivery runs the handler
	f.waitFinal(map[string]float64{Failed: 1, Expired: 0}, reg)
	f.settled()
	if n := runs.Load(); n != maxHandlerAttempts {
		t.Errorf("handler ran %d times, want %d", n, maxHandlerAttempts)
	}
}

// WeChat out of reach (nothing listens): sends that never left are tried
// again with back-off, without holding a worker each, so a SCAN behind
// many messages is still dealt with when its window closes, and counted
// failed (tried, never taken), not expired.
func TestUnreachableWeChatIsCountedFailed(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.url = "http://" + l.Addr().String()
	l.Close() // connections are refused from now on
	reg := f.startWith(func(o *Options) { o.EventWindow = 2 * time.Second }).reg
	for i := 0; i < 12; i++ { // more than the service's 8 senders
		f.unanswered(text(fmt.Sprint("o_m", i), "m", 10+i), time.Now())
	}
	at := time.Now()
	f.unanswered(scan("o_scan", at), at)
	waitOutcomes(t, map[string]float64{Failed: 1, Sent: 0, Expired: 0}, reg) // the messages go on retrying: never settled
}

// WeChat's own count: a window takes 5 messages; the 6th late reply is
// refused (45047) and counted failed.
func TestCountUsedUpIsFailed(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{})
	reg := f.start().reg
	if err := f.fake.Interaction("o_many", wechatapitest.KindMessage, time.Now()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		f.record(text("o_many", fmt.Sprint("m", i), 20+i), time.Now())
	}
	waitOutcomes(t, map[string]float64{Sent: 5, Failed: 1}, reg)
	if got := f.fake.Calls().Errcodes[wechatapitest.CustomSend]["45047"]; got != 1 {
		t.Errorf("45047 answered %d times, want 1", got)
	}
}

// withAccounts serves, beside the default (wx_late), the accounts of apps
// (id → AppID and AppSecret), kept in the fixture server's
// wxgate_accounts.
func (f *fixture) withAccounts(apps map[string][2]string) {
	f.t.Helper()
	r, err := accounts.Start(accounts.Options{Conn: natstest.Connect(f.t, f.srv), SecretKey: base64.StdEncoding.EncodeToString(make([]byte, 32)),
		Default: accounts.Account{AppID: "wx_late", AppSecret: "late-secret"}, Logger: quiet})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(r.Stop)
	wait.For(f.t, wait.Short, wait.Every, r.Check)
	for id, app := range apps {
		if _, err := r.Create(context.Background(), accounts.Account{ID: id, Token: "Token" + strings.TrimPrefix(app[0], "wx_"), AppID: app[0], AppSecret: app[1]}); err != nil {
			f.t.Fatal(err)
		}
	}
	wait.For(f.t, wait.Short, wait.Every, func() error {
		if r.Len() != 1+len(apps) {
			return errors.New("accounts not read yet")
		}
		return nil
	})
	f.accounts = r
}

// recordFor stores an unanswered event of account, as the ingress does.
func (f *fixture) recordFor(account string, m *wechat.Message, received time.Time) {
	f.t.Helper()
	msg := &nats.Msg{Subject: events.UnansweredSubject(account, m.Subject()), Data: m.AppendXML(nil), Header: nats.Header{}}
	msg.Header.Set(bus.HeaderAccountID, account)
	msg.Header.Set(bus.HeaderReceived, bus.FormatTime(received))
	if _, err := f.js.PublishMsg(context.Background(), msg, jetstream.WithMsgID("u."+m.DedupKey(account, m.AppendXML(nil)))); err != nil {
		f.t.Fatal(err)
	}
}

// byAccount answers with the account and the content.
func byAccount(_ context.Context, account string, m *wechat.Message, _ []byte) ([]byte, error) {
	return wechat.TextReply(account+": "+m.Content).ReplyTo(m, 1), nil
}

func outcomeOf(reg prometheus.Gatherer, account, outcome string) float64 {
	v, _ := metricstest.Lookup(reg, "wxgate_late_replies_total", map[string]string{"account": account, "outcome": outcome})
	return v
}

// Two accounts get the same message (the same ToUserName, OpenID, MsgId
// and content): each has its own reply-once record and its own late reply,
// sent through its own AppID, counted under its account.
func TestLateRepliesPerAccount(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{Apps: map[string]string{"wx_shop": "shop-secret"}})
	f.withAccounts(map[string][2]string{"shop": {"wx_shop", "shop-secret"}})
	reg := f.startWith(func(o *Options) { o.Reply = byAccount }).reg
	m := text("o_same", "hi", 1)
	for account, appid := range map[string]string{"default": "wx_late", "shop": "wx_shop"} {
		if err := f.fake.AppInteraction(appid, m.FromUserName, wechatapitest.KindMessage, time.Now()); err != nil {
			t.Fatal(err)
		}
		f.recordFor(account, m, time.Now())
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if outcomeOf(reg, "default", Sent) != 1 || outcomeOf(reg, "shop", Sent) != 1 {
			return fmt.Errorf("sent: default %v, shop %v", outcomeOf(reg, "default", Sent), outcomeOf(reg, "shop", Sent))
		}
		return nil
	})
	got := map[string]string{}
	for _, msg := range f.fake.Calls().Messages {
		got[msg.AppID] += msg.Content
	}
	if got["wx_late"] != "default: hi" || got["wx_shop"] != "shop: hi" || len(got) != 2 {
		t.Errorf("messages by AppID = %v, want each account's reply through its own", got)
	}
	kv, err := f.js.KeyValue(context.Background(), dedup.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, account := range []string{"default", "shop"} {
		if e, err := kv.Get(context.Background(), m.DedupKey(account, m.AppendXML(nil))); err != nil || !strings.HasPrefix(string(e.Value()), dedup.MarkSent) {
			t.Errorf("%s's reply-once record: %v %v, want its own, sent", account, e, err)
		}
	}
}

// One account cannot starve another's late replies: one whose WeChat
// hangs holds at most half the senders, one whose AppSecret WeChat
// refuses fails at once; the default's late reply goes meanwhile.
func TestLateRepliesOneAccountCannotStarveAnother(t *testing.T) {
	f := newFixture(t, wechatapitest.Options{Apps: map[string]string{"wx_shop": "shop-secret", "wx_bad": "the-real-secret"}})
	f.withAccounts(map[string][2]string{"shop": {"wx_shop", "shop-secret"}, "bad": {"wx_bad", "a-wrong-secret"}})
	if err := f.fake.Inject(wechatapitest.Fault{API: wechatapitest.CustomSend, AppID: "wx_shop", Delay: "5s", Count: 100}); err != nil {
		t.Fatal(err)
	}
	reg := f.startWith(func(o *Options) { o.Reply = byAccount }).reg
	now := time.Now()
	for i := 0; i < 12; i++ {
		m := text(fmt.Sprint("o_shop", i), "slow", 100+i)
		if err := f.fake.AppInteraction("wx_shop", m.FromUserName, wechatapitest.KindMessage, now); err != nil {
			t.Fatal(err)
		}
		f.recordFor("shop", m, now)
	}
	f.recordFor("bad", text("o_bad", "refused", 200), now)
	calm := text("o_calm", "calm", 300)
	if err := f.fake.Interaction(calm.FromUserName, wechatapitest.KindMessage, now); err != nil {
		t.Fatal(err)
	}
	f.recordFor("default", calm, now)
	// Well inside the 5 s a send of shop's takes: no sender was free
	// for the default's before the first of them ended, were shop's
	// events given every sender.
	wait.For(t, 3*time.Second, wait.Every, func() error {
		if outcomeOf(reg, "default", Sent) != 1 || outcomeOf(reg, "bad", Failed) != 1 {
			return fmt.Errorf("default sent %v, bad failed %v", outcomeOf(reg, "default", Sent), outcomeOf(reg, "bad", Failed))
		}
		return nil
	})
	if v := outcomeOf(reg, "shop", Sent); v != 0 {
		t.Errorf("shop sent %v while its WeChat hangs", v)
	}
}
