package analytics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The dead-letter stream keeps copies of records the consumer quarantined,
// with the reason, for an operator to read (nats stream view) or replay.
const (
	DeadLetterStream  = "WXGATE_DEADLETTER"
	DeadLetterSubject = "wxgate.deadletter.analytics"

	// Headers on a dead-letter copy.
	HeaderPoisonReason  = "Wx-Poison-Reason"
	HeaderPoisonError   = "Wx-Poison-Error"
	HeaderPoisonStream  = "Wx-Poison-Stream"
	HeaderPoisonSeq     = "Wx-Poison-Seq"
	HeaderPoisonSubject = "Wx-Poison-Subject"
)

// maxPoisonDeliveries bounds how often a valid record that fails to apply
// is tried before it is quarantined. Failures of the bus itself (timeouts,
// no responders) never count: a record waits for NATS as long as it takes.
const maxPoisonDeliveries = 5

// ensureDeadLetter creates or updates the dead-letter stream. It is bounded
// in age and size: it is for looking at, not a second archive.
func ensureDeadLetter(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	o = o.withDefaults()
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "wxgate: records the analytics consumer could not apply, with the reason (Wx-Poison-* headers)",
		Subjects:    []string{"wxgate.deadletter.>"},
		Storage:     jetstream.FileStorage,
		MaxAge:      30 * 24 * time.Hour,
		MaxBytes:    256 << 20,
		Discard:     jetstream.DiscardOld,
		Duplicates:  time.Hour,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", DeadLetterStream, err)
	}
	return nil
}

// quarantine copies msg to the dead-letter stream with its reason, then
// terminates it, so it is never delivered again and never counted. If the
// copy cannot be stored the record is handed back instead: a poison record
// is never dropped without a trace.
func (c *Consumer) quarantine(msg jetstream.Msg, seq uint64, reason string, cause error) {
	dl := &nats.Msg{Subject: DeadLetterSubject, Data: msg.Data(), Header: nats.Header{}}
	dl.Header.Set(HeaderPoisonReason, reason)
	dl.Header.Set(HeaderPoisonStream, StreamName)
	dl.Header.Set(HeaderPoisonSeq, strconv.FormatUint(seq, 10))
	dl.Header.Set(HeaderPoisonSubject, msg.Subject())
	if cause != nil {
		e := cause.Error()
		if len(e) > 512 {
			e = e[:512]
		}
		dl.Header.Set(HeaderPoisonError, e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The sequence as message ID: a copy stored before a crash is not
	// stored twice when the record comes again.
	_, err := c.js.PublishMsg(ctx, dl, jetstream.WithMsgID(StreamName+"."+strconv.FormatUint(seq, 10)))
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
		if err = ensureDeadLetter(ctx, c.js, c.o.Stream); err == nil {
			_, err = c.js.PublishMsg(ctx, dl, jetstream.WithMsgID(StreamName+"."+strconv.FormatUint(seq, 10)))
		}
	}
	if err != nil {
		c.o.Logger.Warn("analytics: poison record not copied to the dead-letter stream; will retry", "seq", seq, "reason", reason, "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	c.m.poison.WithLabelValues(reason).Inc()
	c.o.Logger.Error("analytics: record quarantined", "seq", seq, "reason", reason, "err", cause, "dead_letter", DeadLetterStream)
	_ = msg.Term()
}

// transient reports whether err is the bus failing, not the record: such a
// record is handed back for as long as it takes, never quarantined.
func transient(err error) bool {
	for _, t := range []error{
		context.DeadlineExceeded, context.Canceled,
		nats.ErrTimeout, nats.ErrNoResponders, nats.ErrConnectionClosed, nats.ErrConnectionDraining,
		nats.ErrConnectionReconnecting, nats.ErrDisconnected, nats.ErrSlowConsumer,
		jetstream.ErrNoStreamResponse, jetstream.ErrStreamNotFound, jetstream.ErrBucketNotFound,
		jetstream.ErrJetStreamNotEnabled, jetstream.ErrJetStreamNotEnabledForAccount,
	} {
		if errors.Is(err, t) {
			return true
		}
	}
	var apiErr *jetstream.APIError
	// 503s: no JetStream quorum, a leader election, a stream without leader.
	return errors.As(err, &apiErr) && apiErr.Code == 503
}
