package reply_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/reply"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func start(t *testing.T, nc *nats.Conn, reg prometheus.Registerer) *reply.Service {
	t.Helper()
	svc, err := reply.Start(reply.Options{
		Conn: nc, Decider: reply.NewReplier(config.Defaults().Replies), Logger: quiet, Registerer: reg,
		Now: func() time.Time { return time.Unix(1700000000, 0) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestServiceScalesInOneQueueGroup(t *testing.T) {
	srv := natstest.RunServer(t)
	regs := make([]*prometheus.Registry, 3)
	for i := range regs {
		regs[i] = prometheus.NewRegistry()
		start(t, natstest.Connect(t, srv), regs[i])
	}
	client := natstest.Connect(t, srv)

	// Discovery: every instance answers PING.
	inbox := nats.NewInbox()
	sub, err := client.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	ping, _ := micro.ControlSubject(micro.PingVerb, bus.ServiceName, "")
	if err := client.PublishRequest(ping, inbox, nil); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for len(ids) < 3 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("%d PING replies, want 3: %v", len(ids), err)
		}
		var p micro.Ping
		if err := json.Unmarshal(m.Data, &p); err != nil {
			t.Fatal(err)
		}
		ids[p.ID] = true
	}

	// Each request is handled exactly once, by one instance.
	const n = 60
	for i := 0; i < n; i++ {
		msg := fmt.Sprintf("<xml><ToUserName>gh</ToUserName><FromUserName>o%d</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>m%d</Content><MsgId>%d</MsgId></xml>", i, i, i+1)
		resp, err := client.Request("msg.text", []byte(msg), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var d struct{ ToUserName, FromUserName, Content string }
		if err := xml.Unmarshal(resp.Data, &d); err != nil || d.Content != fmt.Sprintf("m%d", i) || d.ToUserName != fmt.Sprintf("o%d", i) {
			t.Fatalf("reply %q: %+v %v", resp.Data, d, err)
		}
	}
	var total float64
	busy := 0
	for _, reg := range regs {
		c, err := testutil.GatherAndCount(reg, "wxgate_worker_handled_total")
		if err != nil || c == 0 {
			t.Fatalf("handled series missing: %v", err)
		}
		v := counterValue(t, reg, "msg.text")
		total += v
		if v > 0 {
			busy++
		}
	}
	if total != n {
		t.Errorf("handled %v requests in all, want %d (each once)", total, n)
	}
	if busy < 2 {
		t.Errorf("only %d of 3 instances handled requests", busy)
	}
}

func TestServiceRejectsMalformedAndBoundsLabels(t *testing.T) {
	srv := natstest.RunServer(t)
	reg := prometheus.NewRegistry()
	svc := start(t, natstest.Connect(t, srv), reg)
	client := natstest.Connect(t, srv)

	resp, err := client.Request("msg.text", []byte("<nope"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get(micro.ErrorCodeHeader) != "400" {
		t.Errorf("malformed payload: headers %v, want error code 400", resp.Header)
	}
	if _, err := svc.Handle("default", []byte("<nope")); !errors.Is(err, reply.ErrMalformed) {
		t.Errorf("Handle error = %v", err)
	}
	// An invented event type is served, but counted under event.other.
	ev := "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>brand_new</Event></xml>"
	if resp, err = client.Request("event.brand_new", []byte(ev), 5*time.Second); err != nil || len(resp.Data) != 0 {
		t.Fatalf("event.brand_new = %q, %v; want an empty reply", resp.Data, err)
	}
	if got := counterValue(t, reg, "event.other"); got != 1 {
		t.Errorf("handled{subject=event.other} = %v, want 1", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, subject string) float64 {
	t.Helper()
	return metricstest.Value(t, reg, "wxgate_worker_handled_total", "subject", subject)
}

// A retry whose reply cannot be marked (the replies store out of reach:
// here, a server without JetStream) is never answered as if it were
// (finding N1): with a late sender running, the worker answers the error
// the ingress turns into a fallback and a late reply; without one, where a
// fallback would be silence, it answers with the reply.
func TestUnmarkedRetry(t *testing.T) {
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", Name: "nojs"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	msg := "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>unmarked</Content><MsgId>42</MsgId></xml>"
	for _, late := range []bool{true, false} {
		t.Run(fmt.Sprint("late replies ", late), func(t *testing.T) {
			nc := natstest.Connect(t, srv)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			store, err := dedup.Open(js, "w", dedup.Options{Logger: quiet, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			svc, err := reply.Start(reply.Options{Conn: nc, Dedup: store, LateReplies: late, Decider: reply.NewReplier(config.Defaults().Replies),
				Logger: quiet, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = svc.Stop(context.Background()) }()
			req := &nats.Msg{Subject: "msg.text", Data: []byte(msg), Header: nats.Header{bus.HeaderRetry: []string{"1"}, bus.HeaderTimeout: []string{"3000"}}}
			resp, err := natstest.Connect(t, srv).RequestMsg(req, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			code := resp.Header.Get(micro.ErrorCodeHeader)
			switch {
			case late && (code != bus.ErrorCodeNotMarked || !strings.Contains(resp.Header.Get(micro.ErrorHeader), "reply not marked")):
				t.Errorf("answer %q, error %q %q; want error %s, reply not marked", resp.Data, code, resp.Header.Get(micro.ErrorHeader), bus.ErrorCodeNotMarked)
			case !late && (code != "" || !strings.Contains(string(resp.Data), "unmarked")):
				t.Errorf("answer %q, error %q; want the reply", resp.Data, code)
			}
		})
	}
}

// accountEcho answers with the account it was asked for, and what it read.
type accountEcho struct{}

func (accountEcho) Decide(_ context.Context, account string, m *wechat.Message, raw []byte) (*wechat.Reply, error) {
	return wechat.TextReply(account + ":" + m.Content + ":" + fmt.Sprint(len(raw))), nil
}

// The Decider is told the account of each request, its Wx-Account-Id (the
// default without one: an older ingress), and the raw XML; an id that is
// no account id is refused 400 before any handler runs.
func TestDeciderGetsTheAccount(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv)
	svc, err := reply.Start(reply.Options{Conn: nc, Decider: accountEcho{}, Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	msg := "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>"
	client := natstest.Connect(t, srv)
	for _, c := range []struct{ header, want, code string }{
		{"", "default:hi:" + fmt.Sprint(len(msg)), ""},
		{"shop-2", "shop-2:hi:" + fmt.Sprint(len(msg)), ""},
		{"../x", "", "400"},
		{strings.Repeat("a", 33), "", "400"},
	} {
		req := &nats.Msg{Subject: "msg.text", Data: []byte(msg), Header: nats.Header{}}
		if c.header != "" {
			req.Header.Set(bus.HeaderAccountID, c.header)
		}
		resp, err := client.RequestMsg(req, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		code := resp.Header.Get(micro.ErrorCodeHeader)
		if code != c.code || (c.want != "" && !strings.Contains(string(resp.Data), "<![CDATA["+c.want+"]]>")) {
			t.Errorf("Wx-Account-Id %q: answer %q, error code %q; want %q, code %q", c.header, resp.Data, code, c.want, c.code)
		}
	}
}

// twoAccounts is a registry of the default and "burst", kept in srv's
// wxgate_accounts.
func twoAccounts(t *testing.T, srv *bus.Embedded) *accounts.Registry {
	t.Helper()
	r, err := accounts.Start(accounts.Options{Conn: natstest.Connect(t, srv), SecretKey: base64.StdEncoding.EncodeToString(make([]byte, 32)),
		Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	wait.For(t, wait.Short, wait.Every, r.Check)
	if _, err := r.Create(context.Background(), accounts.Account{ID: "burst", Token: "BurstToken"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if r.Len() != 2 {
			return errors.New("burst not read yet")
		}
		return nil
	})
	return r
}

// blockAccount holds every request of one account until released.
type blockAccount struct {
	account string
	release chan struct{}
}

func (b blockAccount) Decide(ctx context.Context, account string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	if account == b.account {
		select {
		case <-b.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return wechat.TextReply(account + ":" + m.Content), nil
}

// One account cannot starve another: a burst of requests whose handler
// hangs takes at most half the worker's slots, the rest of it is answered
// busy at once (the ingress's fallback, then a late reply), and another
// account's request is answered at once meanwhile. The metrics carry each
// request's account, "unknown" for an id the worker does not serve.
func TestOneAccountCannotStarveAnother(t *testing.T) {
	srv := natstest.RunServer(t)
	accts := twoAccounts(t, srv)
	block := blockAccount{account: "burst", release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	svc, err := reply.Start(reply.Options{Conn: natstest.Connect(t, srv), Accounts: accts, Decider: block, Concurrency: 4, Logger: quiet, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	t.Cleanup(func() { close(block.release) })
	client := natstest.Connect(t, srv)
	ask := func(account, content string, timeout time.Duration) (*nats.Msg, error) {
		msg := "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>" + content + "</Content></xml>"
		return client.RequestMsg(&nats.Msg{Subject: "msg.text", Data: []byte(msg), Header: nats.Header{bus.HeaderAccountID: []string{account}}}, timeout)
	}
	const burst = 10
	busy := make(chan string, burst)
	for i := 0; i < burst; i++ {
		go func() {
			resp, err := ask("burst", fmt.Sprint("b", i), 30*time.Second)
			if err != nil {
				busy <- err.Error()
				return
			}
			busy <- resp.Header.Get(micro.ErrorCodeHeader)
		}()
	}
	for i := 0; i < burst-2; i++ { // two in hand (half of 4), the rest answered busy
		if code := <-busy; code != bus.ErrorCodeBusy {
			t.Fatalf("a burst request past the account's share answered %q, want error %s", code, bus.ErrorCodeBusy)
		}
	}
	start := time.Now()
	resp, err := ask("default", "calm", 2*time.Second)
	if err != nil || !strings.Contains(string(resp.Data), "default:calm") {
		t.Fatalf("another account's request during the burst = %v, %v; want its reply at once", resp, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("another account's request took %v during the burst", d)
	}
	if _, err := ask("stranger", "s", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	for account, want := range map[string]float64{"default": 1, "unknown": 1} {
		if v, _ := metricstest.Lookup(reg, "wxgate_worker_handled_total", map[string]string{"account": account, "subject": "msg.text"}); v != want {
			t.Errorf("handled{%s,msg.text} = %v, want %v", account, v, want)
		}
	}
	if _, ok := metricstest.Lookup(reg, "wxgate_worker_handled_total", map[string]string{"account": "burst", "subject": "event.scan"}); !ok {
		t.Error("burst's series were not made when it appeared")
	}
}
