// Package bus holds what the ingress and the workers agree on about NATS:
// the request subjects and headers, how to connect, and the embedded server
// used by standalone mode and tests.
package bus

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Request subjects. The ingress publishes one request per callback on
// msg.<MsgType> or event.<Event>; workers serve both trees in one queue group.
const (
	MessagesSubject = "msg.>"
	EventsSubject   = "event.>"

	// ServiceName is the micro service name of the workers ($SRV.PING.wxgate-worker).
	ServiceName = "wxgate-worker"
	// QueueGroup is the queue group every worker joins, so any number of
	// worker processes share the requests.
	QueueGroup = "wxgate-workers"
)

// Request headers set by the ingress. HeaderAccount and HeaderReceived are
// on every stored event too (shared/events).
const (
	// HeaderAccount is the account (ToUserName) the message was sent to.
	HeaderAccount = "Wx-Account"
	// HeaderAccountID is the id of the account whose URL (/wechat/{id})
	// the callback came to: an accounts.ValidID. Absent (an older
	// ingress, a tool of one's own): the account default.
	HeaderAccountID = "Wx-Account-Id"
	// HeaderDedupKey is what WeChat's retries of the message share.
	HeaderDedupKey = "Wx-Dedup-Key"
	// HeaderReceived is when the ingress received the request (Unix nanoseconds).
	HeaderReceived = "Wx-Received"
	// HeaderTimeout is how long the ingress still waits for the answer, in
	// milliseconds, from when it sent the request: a worker's deadline is
	// its own arrival time plus that, so that no two clocks are compared.
	HeaderTimeout = "Wx-Timeout"
	// HeaderRetry is "1" when the event stream already held the message: a
	// retry (or a replay), which a worker answers with the first reply, and
	// only once marked (docs/reply-once.md); also when the stream could not
	// say (the event is held while JetStream is away). Its absence means a
	// first delivery, which runs the handler at once, with no lookup.
	HeaderRetry = "Wx-Retry"
)

// ErrorCodeNotMarked is the micro error code of a reply a worker could not
// mark as answered (the replies store out of reach): the ingress falls back
// as when the bus is down, and records the event for a late reply.
const ErrorCodeNotMarked = "503"

// ErrorCodeBusy is the micro error code of a request a worker did not take:
// its account held its share of the worker. The ingress falls back
// (worker_error) and records the event for a late reply.
const ErrorCodeBusy = "429"

// maxAccount bounds the account header: an account is "gh_" and 12 hex
// digits, but ToUserName comes from the sender.
const maxAccount = 64

// InstanceID names one part of this process among all that share a bucket
// or a lease: the connection's name and a random suffix.
func InstanceID(nc *nats.Conn) string { return nc.Opts.Name + "/" + rand.Text()[:8] }

// Account is the value of HeaderAccount for a ToUserName: the name itself,
// or "invalid" for one longer than any account, so that no header grows
// with what a sender writes.
func Account(toUserName string) string {
	if len(toUserName) > maxAccount {
		return "invalid"
	}
	return toUserName
}

// FormatTime and ParseTime encode the time headers.
func FormatTime(t time.Time) string { return strconv.FormatInt(t.UnixNano(), 10) }

// ParseTime decodes a time header; ok is false when it is absent or invalid.
func ParseTime(s string) (t time.Time, ok bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// Connect dials NATS for a long-running process: it keeps retrying the
// first connection and every reconnect forever, logging each change of
// state, because a callback server must come back by itself when NATS does.
// It returns at once; the connection may still be establishing.
//
// A connection can still close for good by itself: nats.go closes it on a
// protocol error the server sends (-ERR), or an authorization error it
// repeats, and never reconnects a closed connection. onClosed, when not nil,
// is then called with the reason, so that the process can end rather than
// stay alive and deaf; a close of our own (Close, Drain) does not call it.
func Connect(url, name string, logger *slog.Logger, onClosed func(error), extra ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.ConnectHandler(func(nc *nats.Conn) {
			logger.Info("nats connected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close or Drain
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			err := nc.LastError()
			if err == nil {
				logger.Info("nats connection closed")
				return
			}
			logger.Error("nats connection closed for good", "err", err)
			if onClosed != nil {
				onClosed(fmt.Errorf("nats connection %s closed: %w", name, err))
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Error("nats async error", "subject", subject, "err", err)
		}),
	}, extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	return nc, nil
}

// Ready reports whether nc can carry requests now, for readiness probes.
func Ready(nc *nats.Conn) error {
	if nc == nil {
		return fmt.Errorf("nats: no connection")
	}
	if s := nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("nats: %s", s)
	}
	return nil
}

// Drain drains nc, waiting at most until ctx is done, so that in-flight
// replies and published messages are flushed before the process exits.
func Drain(ctx context.Context, nc *nats.Conn) error {
	if nc == nil || nc.IsClosed() {
		return nil
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return fmt.Errorf("nats drain: %w", err)
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		nc.Close()
		return fmt.Errorf("nats drain: %w", ctx.Err())
	}
}
