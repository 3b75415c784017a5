// Package events defines the event stream: every verified callback, stored
// once by the ingress before WeChat is answered, for the analytics, for
// late replies and for any other consumer that attaches to it.
//
// Each event is the raw decrypted message XML, on
// wxgate.events.<account>.<request subject> (wxgate.events.default.msg.text,
// wxgate.events.shop.event.scan, ...), so that a consumer can take one
// account, with Nats-Msg-Id set to the message's dedup key: WeChat's
// retries of one message, at any ingress replica, are stored once, and the
// PubAck says which delivery was a retry. What a version before accounts
// stored, on wxgate.events.<request subject>, is the default account's. The subjects are apart from msg.> and event.>:
// a stream that captured the request subjects would answer requests with
// its own PubAck.
//
// Scene events (subscribe, SCAN, unsubscribe) are kept MaxAge, so the scene
// analytics can be rebuilt from them; messages and other events carry
// people's words and whereabouts, and are kept MessagesMaxAge, by a
// per-message TTL.
package events

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechat"
)

// The event stream and the stream of events answered without their reply.
const (
	Stream         = "WXGATE_EVENTS"
	SubjectPrefix  = "wxgate.events."
	StreamSubjects = SubjectPrefix + ">"

	// Unanswered holds a copy of each event the ingress answered "success"
	// without a worker's reply (no worker, too slow, the bus down): the
	// work a late reply picks up.
	Unanswered              = "WXGATE_UNANSWERED"
	UnansweredPrefix        = "wxgate.unanswered."
	UnansweredSubjects      = UnansweredPrefix + ">"
	unansweredDefaultMaxAge = 72 * time.Hour
)

// Headers on a stored event, besides Nats-Msg-Id (the dedup key) and the
// request's bus.HeaderAccountID, bus.HeaderAccount and bus.HeaderReceived.
const (
	// HeaderReason, on an unanswered copy, is why no reply was given (the
	// fallback reason), and HeaderEventSeq the event's sequence in Stream
	// (absent when the event was buffered).
	HeaderReason   = "Wx-Reason"
	HeaderEventSeq = "Wx-Event-Seq"
)

// Defaults.
const (
	// DefaultMaxAge keeps scene events 400 days: a year and a month, so a
	// campaign compares with last year's, and the analytics rebuild from it.
	DefaultMaxAge = 400 * 24 * time.Hour
	// DefaultMessagesMaxAge keeps messages 72 hours: past WeChat's 48-hour
	// window for a late reply, no longer.
	DefaultMessagesMaxAge = 72 * time.Hour
	// Duplicates is the window in which a repeated dedup key is dropped: it
	// covers WeChat's retries (about 15 s) and a replay inside the
	// timestamp window (5 minutes), twice over.
	Duplicates = 10 * time.Minute
)

// Options configure the streams.
type Options struct {
	Replicas       int           // JETSTREAM_REPLICAS; default 1
	MaxAge         time.Duration // EVENTS_MAX_AGE: scene events; default DefaultMaxAge, 0 keeps them
	MessagesMaxAge time.Duration // MESSAGES_MAX_AGE: the rest; default DefaultMessagesMaxAge
}

func (o Options) withDefaults() Options {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MessagesMaxAge <= 0 {
		o.MessagesMaxAge = DefaultMessagesMaxAge
	}
	return o
}

// Defaults are the options with every default: what a process uses when
// the configuration leaves them.
func Defaults() Options {
	return Options{MaxAge: DefaultMaxAge}.withDefaults()
}

// MessagesTTL is the Nats-TTL header of a message (not a scene event):
// MessagesMaxAge in whole seconds.
func (o Options) MessagesTTL() string {
	return strconv.FormatInt(int64(o.withDefaults().MessagesMaxAge/time.Second), 10)
}

// Received is when the ingress received a stored event: its
// bus.HeaderReceived, or the message's own CreateTime (whole seconds) for one
// stored without it.
func Received(h nats.Header, m *wechat.Message) time.Time {
	if t, ok := bus.ParseTime(h.Get(bus.HeaderReceived)); ok {
		return t
	}
	return time.Unix(m.CreateTime, 0)
}

// Subject is where an event of account with request subject
// requestSubject is stored.
func Subject(account, requestSubject string) string {
	return SubjectPrefix + account + "." + requestSubject
}

// UnansweredSubject is where the copy of such an event goes when it was
// answered without its reply.
func UnansweredSubject(account, requestSubject string) string {
	return UnansweredPrefix + account + "." + requestSubject
}

// AccountOf is the account of an event stored on subject, under prefix
// (SubjectPrefix or UnansweredPrefix): <prefix><account>.<request
// subject>; what an older version stored, <prefix><request subject>, is
// the default account's. ok is false when the token is no account id.
func AccountOf(prefix, subject string) (account string, ok bool) {
	rest, found := strings.CutPrefix(subject, prefix)
	if !found {
		return "", false
	}
	if strings.Count(rest, ".") == 1 { // msg.<type>, event.<type>
		return accounts.DefaultID, true
	}
	id, _, _ := strings.Cut(rest, ".")
	return id, accounts.ValidID(id)
}

// sceneEvents are the request subjects of the events the scene analytics
// read.
var sceneEvents = []string{
	wechat.SubjectFor(wechat.MsgEvent, wechat.EventSubscribe),
	wechat.SubjectFor(wechat.MsgEvent, wechat.EventScan),
	wechat.SubjectFor(wechat.MsgEvent, wechat.EventUnsubscribe),
}

// SceneSubjects are the subjects of the scene events of every account, and
// of those a version before accounts stored (the default's).
var SceneSubjects = func() []string {
	var out []string
	for _, s := range sceneEvents {
		out = append(out, Subject("*", s), SubjectPrefix+s)
	}
	return out
}()

// IsSceneEvent reports whether a request subject is one the analytics keep
// for MaxAge; the rest are kept MessagesMaxAge.
func IsSceneEvent(requestSubject string) bool {
	for _, s := range sceneEvents {
		if s == requestSubject {
			return true
		}
	}
	return false
}

// Config is the event stream's configuration.
func Config(o Options) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        Stream,
		Description: "wxgate: every verified WeChat callback, once (Nats-Msg-Id is the dedup key); scene events kept MaxAge, the rest by a per-message TTL",
		Subjects:    []string{StreamSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Duplicates:  Duplicates,
		Replicas:    o.Replicas,
		AllowMsgTTL: true,
	}
}

// UnansweredConfig is the configuration of the stream of events answered
// without their reply. They matter while a late reply can still reach the
// person (48 hours at most), and hold messages: 72 hours, or
// MessagesMaxAge if shorter.
func UnansweredConfig(o Options) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        Unanswered,
		Description: "wxgate: events answered \"success\" without their reply, for late replies",
		Subjects:    []string{UnansweredSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      min(o.MessagesMaxAge, unansweredDefaultMaxAge),
		Duplicates:  Duplicates,
		Replicas:    o.Replicas,
	}
}

// Create creates the streams that are missing and leaves existing ones as
// they are: for processes that only write to them (the ingress), so that
// their settings never change what the owner set (replicas, ages).
func Create(ctx context.Context, js jetstream.JetStream, o Options) error {
	for _, cfg := range []jetstream.StreamConfig{Config(o), UnansweredConfig(o)} {
		if _, err := js.Stream(ctx, cfg.Name); err == nil {
			continue
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
		if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// Ensure creates or updates the streams: for their owner (the workers'
// analytics), so that a changed EVENTS_MAX_AGE or replica count takes
// effect at the next start.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) error {
	for _, cfg := range []jetstream.StreamConfig{Config(o), UnansweredConfig(o)} {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
