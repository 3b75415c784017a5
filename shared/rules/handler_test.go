package rules_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/wechat"
)

func TestCallHandler(t *testing.T) {
	nc := natstest.Connect(t, natstest.RunServer(t))
	svc, err := micro.AddService(nc, micro.Config{Name: "bots", Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	answers := map[string]func(micro.Request){
		"bots.echo": func(r micro.Request) {
			var req rules.HandlerRequest
			_ = json.Unmarshal(r.Data(), &req)
			_ = r.RespondJSON(map[string]any{"reply": map[string]any{"type": "text", "content": req.Account + ":" + req.OpenID + ":" + req.Content}})
		},
		"bots.garbage": func(r micro.Request) { _ = r.Respond([]byte("not json")) },
		"bots.nested": func(r micro.Request) {
			_ = r.RespondJSON(map[string]any{"reply": map[string]any{"type": "handler", "subject": "x.y"}})
		},
		"bots.fail": func(r micro.Request) { _ = r.Error("500", "boom", nil) },
		"bots.none": func(r micro.Request) { _ = r.RespondJSON(map[string]any{"reply": map[string]any{"type": "none"}}) },
		"bots.slow": func(r micro.Request) { time.Sleep(time.Second); _ = r.Respond([]byte("{}")) }, // the slowness under test
	}
	for subject, h := range answers {
		if err := svc.AddEndpoint(strings.ReplaceAll(subject, ".", "_"), micro.HandlerFunc(h), micro.WithEndpointSubject(subject)); err != nil {
			t.Fatal(err)
		}
	}
	m := &wechat.Message{ToUserName: "gh", FromUserName: "o1", MsgType: "text", Content: "你好"}
	req := rules.NewHandlerRequest("shop", m, m.AppendXML(nil))
	call := func(subject string, d time.Duration) (*rules.Reply, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return rules.CallHandler(ctx, nc, subject, req)
	}
	if r, err := call("bots.echo", 5*time.Second); err != nil || r.Type != "text" || r.Content != "shop:o1:你好" {
		t.Errorf("echo = %+v, %v", r, err)
	}
	if r, err := call("bots.none", 5*time.Second); err != nil || r != nil {
		t.Errorf("none = %+v, %v; want no reply", r, err)
	}
	for subject, want := range map[string]error{"bots.garbage": rules.ErrBadAnswer, "bots.nested": rules.ErrBadAnswer,
		"bots.fail": rules.ErrHandlerFailed, "bots.missing": rules.ErrNoHandler} {
		if _, err := call(subject, 5*time.Second); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", subject, err, want)
		}
	}
	if _, err := call("bots.slow", 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("slow: %v, want a timeout", err)
	}
}
