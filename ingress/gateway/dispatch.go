package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Intake makes an event durable before it is answered (ingress/intake).
type Intake interface {
	// Publish stores the event of account (key: m's dedup key), or holds
	// it while JetStream cannot take it; intake.ErrFull when neither.
	Publish(account string, m *wechat.Message, key string, raw []byte, received time.Time) (intake.Receipt, error)
	// Unanswered records an event answered "success" without its reply.
	Unanswered(account string, m *wechat.Message, key string, raw []byte, received time.Time, r intake.Receipt, reason string)
}

// dispatch makes the event of a (key: its dedup key) durable, then asks a
// worker for the reply; an event answered without its reply is recorded
// for a late one.
func (g *Gateway) dispatch(a *account, m *wechat.Message, key string, plain []byte, received, deadline time.Time) ([]byte, string) {
	var rc intake.Receipt
	if g.o.Intake != nil {
		var err error
		if rc, err = g.o.Intake.Publish(a.id, m, key, plain, received); err != nil {
			g.o.Logger.Error("event not accepted: the intake buffer (or the account's share of it) is full", "account", a.id, "subject", m.Subject(), "err", err)
			return nil, outcomeUnavailable
		}
	}
	reply, outcome, reason := g.request(a, m, key, plain, rc, received, deadline)
	if outcome == outcomeFallback && g.o.Intake != nil {
		g.o.Intake.Unanswered(a.id, m, key, plain, received, rc, reason)
	}
	return reply, outcome
}

// request asks a worker for the reply. It returns the reply XML (nil for
// "success"), the outcome and, for a fallback, its reason; it never waits
// past deadline.
func (g *Gateway) request(a *account, m *wechat.Message, key string, plain []byte, rc intake.Receipt, received, deadline time.Time) ([]byte, string, string) {
	subject := m.Subject()
	if g.o.Local != nil {
		reply, err := g.o.Local(a.id, plain)
		if err != nil {
			return g.fallback(a, reasonWorkerError, subject, err)
		}
		if len(reply) == 0 {
			return nil, outcomeEmpty, ""
		}
		return reply, outcomeReply, ""
	}
	if !g.o.Conn.IsConnected() {
		// Requests would sit in the reconnect buffer until the deadline;
		// answer now instead.
		return g.fallback(a, reasonBusDown, subject, nats.ErrConnectionReconnecting)
	}
	// A timeout rather than a context: a context per request, tied to the
	// HTTP request's, cost more than the request's own work here.
	wait := time.Until(deadline)
	if wait <= 0 {
		return g.fallback(a, reasonTimeout, subject, context.DeadlineExceeded)
	}
	msg := &nats.Msg{
		Subject: subject,
		Data:    plain,
		Header: nats.Header{
			bus.HeaderAccountID: []string{a.id},
			bus.HeaderAccount:   []string{bus.Account(m.ToUserName)},
			bus.HeaderDedupKey:  []string{key},
			bus.HeaderReceived:  []string{bus.FormatTime(received)},
			bus.HeaderTimeout:   []string{strconv.FormatInt(wait.Milliseconds(), 10)},
		},
	}
	if rc.Duplicate || rc.Held || rc.Refused {
		// The stream had it: a retry, whose first delivery may have run
		// (or be running) at any worker, and whose earlier delivery may
		// have been answered "success" and recorded for a late reply. Or
		// the stream could not say (the event is held, or refused): treated
		// as a possible retry all the same.
		msg.Header[bus.HeaderRetry] = []string{"1"}
	}
	resp, err := g.o.Ask(msg, wait)
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoResponders):
		return g.fallback(a, reasonNoResponders, subject, err)
	case errors.Is(err, nats.ErrTimeout):
		return g.fallback(a, reasonTimeout, subject, err)
	default:
		return g.fallback(a, reasonBusDown, subject, err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		// A reply the worker could not mark (its store out of reach) is the
		// bus's failure, not the worker's; either way a late reply carries it.
		reason := reasonWorkerError
		if code == bus.ErrorCodeNotMarked {
			reason = reasonBusDown
		}
		return g.fallback(a, reason, subject, fmt.Errorf("worker error %s: %s", code, resp.Header.Get(micro.ErrorHeader)))
	}
	if len(resp.Data) == 0 {
		return nil, outcomeEmpty, ""
	}
	return resp.Data, outcomeReply, ""
}

func (g *Gateway) fallback(a *account, reason, subject string, err error) ([]byte, string, string) {
	a.m.fallbacks[reason].Inc()
	g.o.Logger.Warn("answering success without a worker reply", "account", a.id, "reason", reason, "subject", subject, "err", err)
	return nil, outcomeFallback, reason
}
