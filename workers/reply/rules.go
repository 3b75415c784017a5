package reply

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Outcomes of a handler rule's call, the outcome label of
// wxgate_handler_calls_total.
var handlerOutcomes = []string{"ok", "none", "timeout", "no_responders", "error", "bad_answer"}

// RulesOptions wire a Rules decider. Set, Conn, Accounts, Logger and
// Registerer are required.
type RulesOptions struct {
	Set  *rules.Set
	Conn *nats.Conn // handler rules' requests
	// Labels tells an account's code label and group for a scene
	// ({label}, {group}); nil: none.
	Labels func(account, scene string) (label, group string)
	// Tag asks for a person to get a tag (the tagger's Enqueue); nil: tag
	// actions are logged and dropped.
	Tag        func(ctx context.Context, account, openid, tag string) error
	Accounts   *accounts.Registry
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Rules is the Decider that answers with each account's rules. The
// reply-once machinery runs it once per message, so its tag actions and
// handler calls happen once too; a handler slower than the request's
// deadline has its answer sent as a late reply.
type Rules struct {
	o      RulesOptions
	calls  *prometheus.CounterVec
	waited atomic.Bool
}

// NewRules returns the rules' Decider.
func NewRules(o RulesOptions) (*Rules, error) {
	if o.Set == nil || o.Conn == nil || o.Accounts == nil || o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("reply: RulesOptions.Set, Conn, Accounts, Logger and Registerer are required")
	}
	d := &Rules{o: o, calls: promauto.With(o.Registerer).NewCounterVec(prometheus.CounterOpts{
		Name: "wxgate_handler_calls_total",
		Help: "Calls of handler rules' NATS services, by account and outcome (ok, none, timeout, no_responders, error, bad_answer).",
	}, []string{"account", "outcome"})}
	o.Accounts.Series(func(id string) {
		for _, out := range handlerOutcomes {
			d.calls.WithLabelValues(id, out)
		}
	}, d.calls)
	return d, nil
}

// Decide answers m with the first of the account's rules that matches it:
// its actions are asked for, then its reply rendered, or its handler
// asked. A handler that fails or answers nothing usable gives no reply
// ("success"), counted; it never fails the request.
func (d *Rules) Decide(ctx context.Context, account string, m *wechat.Message, raw []byte) (*wechat.Reply, error) {
	if !d.waited.Load() {
		d.awaitRules(ctx)
	}
	e := d.o.Set.Engine(account)
	in := rules.InputOf(m)
	i := e.Match(in)
	if i < 0 {
		return nil, nil
	}
	rule := e.Rule(i)
	for _, a := range rule.Actions {
		d.tag(ctx, account, m.FromUserName, a.Tag)
	}
	reply := &rule.Reply
	if reply.Type == rules.ReplyHandler {
		if reply = d.call(ctx, account, reply, m, raw); reply == nil {
			return nil, nil
		}
		if reply.Type == rules.ReplyText {
			return wechat.TextReply(reply.Content), nil // as the handler wrote it: no placeholders
		}
	}
	var labels rules.Labels
	if d.o.Labels != nil && reply.Type == rules.ReplyText { // only a text quotes them
		labels = func(scene string) (string, string) { return d.o.Labels(account, scene) }
	}
	return rules.Render(reply, in, labels), nil
}

// awaitRules holds a worker's first messages until it has read the stored
// rules, 2 s at most, once: an account with rules is not answered by the
// defaults meanwhile. Without the bucket, the defaults answer after that.
func (d *Rules) awaitRules(ctx context.Context) {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-d.o.Set.Ready():
	case <-t.C:
	case <-ctx.Done():
	}
	d.waited.Store(true)
}

// tag asks for the tag, waiting for JetStream a moment at most: the reply
// does not wait on it. A request that is not stored is counted failed by
// the tagger.
func (d *Rules) tag(ctx context.Context, account, openid, tag string) {
	if d.o.Tag == nil {
		d.o.Logger.Warn("a rule's tag action, with no tagger in this process", "account", account, "tag", tag)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := d.o.Tag(ctx, account, openid, tag); err != nil {
		d.o.Logger.Warn("a rule's tag action not taken", "account", account, "tag", tag, "err", err)
	}
}

// call asks the handler's service for the reply, within its timeout_ms.
func (d *Rules) call(ctx context.Context, account string, h *rules.Reply, m *wechat.Message, raw []byte) *rules.Reply {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(cmp.Or(h.TimeoutMS, rules.DefaultTimeout))*time.Millisecond)
	defer cancel()
	r, err := rules.CallHandler(ctx, d.o.Conn, h.Subject, rules.NewHandlerRequest(account, m, raw))
	outcome := "ok"
	switch {
	case err == nil && r == nil:
		outcome = "none"
	case err == nil:
	case errors.Is(err, rules.ErrNoHandler):
		outcome = "no_responders"
	case errors.Is(err, rules.ErrBadAnswer):
		outcome = "bad_answer"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		outcome = "timeout"
	default:
		outcome = "error"
	}
	d.calls.WithLabelValues(d.o.Accounts.Label(account), outcome).Inc()
	if err != nil {
		d.o.Logger.Warn("handler rule answered success", "account", account, "subject", h.Subject, "outcome", outcome, "err", err)
	}
	return r
}
