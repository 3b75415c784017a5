package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	Conn       *nats.Conn
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Stream     StreamOptions
}

// StreamOptions configure the scans stream and the totals bucket.
type StreamOptions struct {
	Replicas int           // default 1
	MaxAge   time.Duration // how long records are kept; 0 keeps them forever
	// Duplicates is the window in which a repeated Nats-Msg-Id is dropped;
	// it must cover WeChat's retries (about 15s) with room for delays.
	Duplicates time.Duration // default 10m
}

// Publisher stores records in the stream. A worker stores a message's
// record before it answers, so every answered scan is durable.
type Publisher struct {
	js      jetstream.JetStream
	stream  StreamOptions
	logger  *slog.Logger
	metrics *publisherMetrics
}

type publisherMetrics struct {
	published  prometheus.Counter
	duplicates prometheus.Counter
	failed     prometheus.Counter
}

// NewPublisher returns a Publisher. The stream is created if it is missing,
// now or when a publish finds it missing (NATS may come up after us).
func NewPublisher(o PublisherOptions) (*Publisher, error) {
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	f := promauto.With(o.Registerer)
	p := &Publisher{
		js: js, stream: o.Stream.withDefaults(), logger: o.Logger,
		metrics: &publisherMetrics{
			published: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_published_total",
				Help: "Scan records stored in the stream."}),
			duplicates: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_publish_duplicates_total",
				Help: "Scan records the stream dropped as repeats of a stored dedup key (WeChat retries)."}),
			failed: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_publish_failures_total",
				Help: "Scan records that could not be stored before their handler's deadline (the message is not answered; WeChat retries it)."}),
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := EnsureStream(ctx, js, p.stream); err != nil {
		o.Logger.Warn("scans stream not ready yet; will retry on publish", "err", err)
	}
	return p, nil
}

func (s StreamOptions) withDefaults() StreamOptions {
	if s.Replicas <= 0 {
		s.Replicas = 1
	}
	if s.Duplicates <= 0 {
		s.Duplicates = 10 * time.Minute
	}
	return s
}

// EnsureStream creates or updates the scans stream.
func EnsureStream(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	o = o.withDefaults()
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "wxgate scene scans and unfollows; one record per WeChat message (dedup by Nats-Msg-Id)",
		Subjects:    []string{StreamSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      o.MaxAge,
		Duplicates:  o.Duplicates,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", StreamName, err)
	}
	return nil
}

func (p *Publisher) count(ack *jetstream.PubAck) {
	if ack.Duplicate {
		p.metrics.duplicates.Inc()
	} else {
		p.metrics.published.Inc()
	}
}

// PublishSync stores r in the stream and returns once JetStream has acknowledged
// it (a repeat of a stored dedup key counts as stored), retrying with
// backoff until ctx ends.
func (p *Publisher) PublishSync(ctx context.Context, r Record) error {
	msg := &nats.Msg{Subject: r.Subject(), Data: r.marshal(), Header: nats.Header{}}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// An ack normally takes a millisecond; a request lost in a reconnect
		// should not hold the handler for long.
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err := p.js.PublishMsg(actx, msg, jetstream.WithMsgID(r.DedupKey))
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
			if serr := EnsureStream(actx, p.js, p.stream); serr == nil {
				ack, err = p.js.PublishMsg(actx, msg, jetstream.WithMsgID(r.DedupKey))
			}
		}
		cancel()
		if err == nil {
			p.count(ack)
			return nil
		}
		select {
		case <-ctx.Done():
			p.metrics.failed.Inc()
			return fmt.Errorf("store scan record after %d attempts: %w", attempt, err)
		case <-time.After(backoff): // backoff between retries of a failed publish
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
