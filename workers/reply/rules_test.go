package reply_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
)

type tagged struct {
	mu   sync.Mutex
	asks []string
}

func (g *tagged) tag(_ context.Context, account, openid, tag string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asks = append(g.asks, account+"/"+openid+"/"+tag)
	return nil
}

func startRules(t *testing.T, srv *bus.Embedded, ready bool) (*reply.Rules, *rules.Set, *tagged, *prometheus.Registry) {
	t.Helper()
	nc := natstest.Connect(t, srv)
	tx := config.Defaults().Replies
	set, err := rules.Start(rules.Options{Conn: nc, Logger: quiet, Defaults: rules.Defaults(rules.Texts{Subscribe: tx.Subscribe,
		SubscribeScene: tx.SubscribeScene, Scan: tx.Scan, VoiceUnrecognised: tx.VoiceUnrecognised, Default: tx.Default})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Stop)
	if ready {
		wait.For(t, wait.Short, wait.Every, set.Check)
	}
	accts, err := accounts.Start(accounts.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(accts.Stop)
	reg, g := prometheus.NewRegistry(), &tagged{}
	d, err := reply.NewRules(reply.RulesOptions{Set: set, Conn: nc, Tag: g.tag, Accounts: accts, Logger: quiet, Registerer: reg,
		Labels: func(account, scene string) (string, string) { return "朝阳店", "北京" }})
	if err != nil {
		t.Fatal(err)
	}
	// A handler whose text has placeholders in it.
	svc, err := micro.AddService(natstest.Connect(t, srv), micro.Config{Name: "bots", Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	if err := svc.AddEndpoint("echo", micro.HandlerFunc(func(r micro.Request) {
		_ = r.RespondJSON(map[string]any{"reply": map[string]any{"type": "text", "content": "echo {label} {content}"}})
	}), micro.WithEndpointSubject("bots.echo")); err != nil {
		t.Fatal(err)
	}
	return d, set, g, reg
}

func decide(t *testing.T, d reply.Decider, m *wechat.Message) string {
	t.Helper()
	r, err := d.Decide(context.Background(), accounts.DefaultID, m, m.AppendXML(nil))
	if err != nil {
		t.Fatal(err)
	}
	if r == nil {
		return ""
	}
	return r.Type + ":" + r.Content + r.MediaID
}

// With no rules stored, the rules' Decider answers every message exactly as
// the seed's Replier.
func TestRulesWithNoneStoredAreTheSeed(t *testing.T) {
	d, _, g, _ := startRules(t, natstest.RunServer(t), true)
	seed := reply.NewReplier(config.Defaults().Replies)
	for _, m := range []wechat.Message{
		{MsgType: "text", Content: "hi"}, {MsgType: "text", Content: "{scene} {label}"}, {MsgType: "text"},
		{MsgType: "voice", Recognition: "识别"}, {MsgType: "voice", Recognition: " "}, {MsgType: "image"}, {MsgType: "newkind"},
		{MsgType: "event", Event: "subscribe"}, {MsgType: "event", Event: "subscribe", EventKey: "qrscene_42"},
		{MsgType: "event", Event: "subscribe", EventKey: "qrscene_" + strings.Repeat("z", 65)},
		{MsgType: "event", Event: "SCAN", EventKey: "42"}, {MsgType: "event", Event: "scan", EventKey: " a b "},
		{MsgType: "event", Event: "SCAN"}, {MsgType: "event", Event: "SCAN", EventKey: "a\xffb"},
		{MsgType: "event", Event: "CLICK", EventKey: "k"}, {MsgType: "event", Event: "unsubscribe"}, {MsgType: "event", Event: "LOCATION"},
	} {
		want := ""
		if r := seed.Reply(&m); r != nil {
			want = r.Type + ":" + r.Content
		}
		if got := decide(t, d, &m); got != want {
			t.Errorf("%s/%s %q: %q, want the seed's %q", m.MsgType, m.Event, m.EventKey+m.Content+m.Recognition, got, want)
		}
	}
	if len(g.asks) != 0 {
		t.Errorf("tags asked for: %v", g.asks)
	}
}

// Stored rules decide: a scene rule's text with the code's label, its tag
// asked for once per run; a handler's text as it wrote it (no
// placeholders); a handler nobody serves gives no reply, counted.
func TestRulesDecide(t *testing.T) {
	srv := natstest.RunServer(t)
	d, set, g, reg := startRules(t, srv, true)
	stored := []rules.Rule{
		{Name: "store", When: rules.When{Scene: ptr("store_bj")}, Reply: rules.Reply{Type: rules.ReplyText, Content: "欢迎光临{label}"}, Actions: []rules.Action{{Tag: "门店客户"}}},
		{Name: "bot", When: rules.When{Keyword: ptr("bot"), Match: rules.MatchContains}, Reply: rules.Reply{Type: rules.ReplyHandler, Subject: "bots.echo"}},
		{Name: "gone", When: rules.When{Keyword: ptr("gone")}, Reply: rules.Reply{Type: rules.ReplyHandler, Subject: "bots.gone"}},
	}
	if _, err := set.Put(context.Background(), accounts.DefaultID, stored, 0); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if len(set.Engine(accounts.DefaultID).Rules()) != len(stored) {
			return errors.New("not applied yet")
		}
		return nil
	})
	scan := &wechat.Message{FromUserName: "o1", MsgType: "event", Event: "SCAN", EventKey: "store_bj"}
	if got := decide(t, d, scan); got != "text:欢迎光临朝阳店" {
		t.Errorf("scan = %q", got)
	}
	if len(g.asks) != 1 || g.asks[0] != "default/o1/门店客户" {
		t.Errorf("tags asked for: %v", g.asks)
	}
	if got := decide(t, d, &wechat.Message{FromUserName: "o1", MsgType: "text", Content: "hi bot"}); got != "text:echo {label} {content}" {
		t.Errorf("handler = %q", got)
	}
	if got := decide(t, d, &wechat.Message{FromUserName: "o1", MsgType: "text", Content: "gone"}); got != "" {
		t.Errorf("no handler = %q, want no reply", got)
	}
	if got := decide(t, d, &wechat.Message{FromUserName: "o1", MsgType: "image"}); got != "" {
		t.Errorf("a message no stored rule matches = %q, want no reply", got)
	}
	for outcome, want := range map[string]float64{"ok": 1, "no_responders": 1, "timeout": 0} {
		if v, _ := metricstest.Lookup(reg, "wxgate_handler_calls_total", map[string]string{"account": "default", "outcome": outcome}); v != want {
			t.Errorf("%s = %v, want %v", outcome, v, want)
		}
	}
	// A worker just started answers its first message by the stored
	// rules, not by the defaults while it reads them.
	fresh, _, _, _ := startRules(t, srv, false)
	if got := decide(t, fresh, &wechat.Message{FromUserName: "o2", MsgType: "image"}); got != "" {
		t.Errorf("a fresh worker's first message = %q, want the stored rules' (no reply)", got)
	}
}

func ptr(s string) *string { return &s }
