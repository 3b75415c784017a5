package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechat"
)

// flight is one worker request that retries of the same message join
// instead of publishing again.
type flight struct {
	done    chan struct{}
	reply   []byte
	outcome string
}

// once runs request for the message, unless the same message (a WeChat
// retry, by dedup key) is already in flight here: then it waits for that
// one's result, within its own deadline, so the handler runs once.
func (g *Gateway) once(ctx context.Context, m *wechat.Message, plain []byte, received, deadline time.Time) ([]byte, string) {
	key := m.DedupKey()
	g.mu.Lock()
	if f, ok := g.flights[key]; ok {
		g.mu.Unlock()
		g.metrics.duplicates.Inc()
		wait, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		select {
		case <-f.done:
			return f.reply, f.outcome
		case <-wait.Done():
			return nil, g.fallback(reasonTimeout, m.Subject(), fmt.Errorf("waiting for the first delivery: %w", wait.Err()))
		}
	}
	f := &flight{done: make(chan struct{})}
	g.flights[key] = f
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.flights, key)
		g.mu.Unlock()
		close(f.done)
	}()
	f.reply, f.outcome = g.request(ctx, m, plain, received, deadline)
	return f.reply, f.outcome
}

// request asks a worker for the reply. It returns the reply XML (nil for
// "success") and the outcome; it never waits past deadline.
func (g *Gateway) request(ctx context.Context, m *wechat.Message, plain []byte, received, deadline time.Time) ([]byte, string) {
	subject := m.Subject()
	if g.o.Local != nil {
		reply, err := g.o.Local(plain)
		if err != nil {
			return nil, g.fallback(reasonWorkerError, subject, err)
		}
		if len(reply) == 0 {
			return nil, outcomeEmpty
		}
		return reply, outcomeReply
	}
	if !g.o.Conn.IsConnected() {
		// Requests would sit in the reconnect buffer until the deadline;
		// answer now instead.
		return nil, g.fallback(reasonBusDown, subject, nats.ErrConnectionReconnecting)
	}
	msg := &nats.Msg{
		Subject: subject,
		Data:    plain,
		Header: nats.Header{
			bus.HeaderAccount:  []string{bus.Account(m.ToUserName)},
			bus.HeaderDedupKey: []string{m.DedupKey()},
			bus.HeaderReceived: []string{bus.FormatTime(received)},
			bus.HeaderDeadline: []string{bus.FormatTime(deadline)},
		},
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	resp, err := g.o.Conn.RequestMsgWithContext(ctx, msg)
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoResponders):
		return nil, g.fallback(reasonNoResponders, subject, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.Canceled):
		return nil, g.fallback(reasonTimeout, subject, err)
	default:
		return nil, g.fallback(reasonBusDown, subject, err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, g.fallback(reasonWorkerError, subject, fmt.Errorf("worker error %s: %s", code, resp.Header.Get(micro.ErrorHeader)))
	}
	if len(resp.Data) == 0 {
		return nil, outcomeEmpty
	}
	return resp.Data, outcomeReply
}

func (g *Gateway) fallback(reason, subject string, err error) string {
	g.metrics.fallbacks.WithLabelValues(reason).Inc()
	g.o.Logger.Warn("answering success without a worker reply", "reason", reason, "subject", subject, "err", err)
	return outcomeFallback
}
