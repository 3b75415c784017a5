package analytics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
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
	// HeaderPoisonTruncated, when present, is the size of an event too big
	// to copy whole; the copy holds its first 64 KiB.
	HeaderPoisonTruncated = "Wx-Poison-Truncated"
)

// Reasons an event is quarantined instead of applied (the reason label of
// wxgate_analytics_poison_total).
const (
	PoisonUndecodable = "undecodable" // not a WeChat message
	PoisonAccount     = "account"     // a subject whose account is not an account id
	PoisonTime        = "time"        // received outside 2000-2100
)

var poisonReasons = []string{PoisonUndecodable, PoisonAccount, PoisonTime}

// ensureDeadLetter creates or updates the dead-letter stream. It is bounded
// in age and size: it is for looking at, not a second archive.
func ensureDeadLetter(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "wxgate: records the analytics consumer could not apply, with the reason (Wx-Poison-* headers)",
		Subjects:    []string{"wxgate.deadletter.>"},
		Storage:     jetstream.FileStorage,
		MaxAge:      30 * 24 * time.Hour,
		MaxBytes:    256 << 20,
		Discard:     jetstream.DiscardOld,
		Duplicates:  time.Hour,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", DeadLetterStream, err)
	}
	return nil
}

// quarantine copies an event that cannot be applied to the dead-letter
// stream with its reason, and counts it; the leader then moves past it, so
// it never stops the analytics nor reaches a count. stream identifies the
// event stream (its creation time), so a copy is stored once per event even
// when a replaced stream reuses its sequences.
func (r *Role) quarantine(js jetstream.JetStream, msg jetstream.Msg, stream int64, seq uint64, reason string, cause error) {
	dl := &nats.Msg{Subject: DeadLetterSubject, Data: msg.Data(), Header: nats.Header{}}
	dl.Header.Set(HeaderPoisonReason, reason)
	dl.Header.Set(HeaderPoisonStream, events.Stream)
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
	// A copy stored before a crash is not stored twice when a new leader
	// meets the event again.
	id := jetstream.WithMsgID(fmt.Sprintf("%s.%d.%d", events.Stream, stream, seq))
	_, err := js.PublishMsg(ctx, dl, id)
	if errors.Is(err, nats.ErrMaxPayload) || (err != nil && strings.Contains(err.Error(), "maximum payload")) {
		// Too big to copy with its headers: keep the start of it, and say
		// how big it was.
		dl.Header.Set(HeaderPoisonTruncated, strconv.Itoa(len(dl.Data)))
		dl.Data = dl.Data[:min(len(dl.Data), 64<<10)]
		_, err = js.PublishMsg(ctx, dl, id)
	}
	if err != nil {
		r.o.Logger.Warn("analytics: poison event not copied to the dead-letter stream", "seq", seq, "reason", reason, "err", err)
	}
	r.m.poison.WithLabelValues(reason).Inc()
	r.o.Logger.Error("analytics: event quarantined", "seq", seq, "reason", reason, "err", cause, "dead_letter", DeadLetterStream)
}
