package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	// Queue is how many records may wait for JetStream; past it they are
	// dropped (and counted) rather than delaying replies. Default 10000.
	Queue int
	// Workers publishing concurrently, each with its own pipeline of
	// unacknowledged publishes. Default 1.
	Workers int
}

// StreamOptions configure the scans stream and the totals bucket.
type StreamOptions struct {
	Replicas int           // default 1
	MaxAge   time.Duration // how long records are kept; 0 keeps them forever
	// Duplicates is the window in which a repeated Nats-Msg-Id is dropped;
	// it must cover WeChat's retries (about 15s) with room for delays.
	Duplicates time.Duration // default 10m
}

// Publisher sends records to the stream in the background, so that a
// reply to WeChat never waits for JetStream.
type Publisher struct {
	js      jetstream.JetStream
	stream  StreamOptions
	logger  *slog.Logger
	queue   chan Record
	wg      sync.WaitGroup
	stop    chan struct{}
	metrics *publisherMetrics
}

type publisherMetrics struct {
	published  prometheus.Counter
	duplicates prometheus.Counter
	failed     prometheus.Counter
	dropped    prometheus.Counter
}

// NewPublisher starts a Publisher. The stream is created if it is missing,
// now or when a publish finds it missing (NATS may come up after us).
func NewPublisher(o PublisherOptions) (*Publisher, error) {
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if o.Queue <= 0 {
		o.Queue = 10000
	}
	if o.Workers <= 0 {
		o.Workers = 1
	}
	f := promauto.With(o.Registerer)
	p := &Publisher{
		js: js, stream: o.Stream.withDefaults(), logger: o.Logger,
		queue: make(chan Record, o.Queue), stop: make(chan struct{}),
		metrics: &publisherMetrics{
			published: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_published_total",
				Help: "Scan records stored in the stream."}),
			duplicates: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_publish_duplicates_total",
				Help: "Scan records the stream dropped as repeats of a stored dedup key (WeChat retries)."}),
			failed: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_publish_failures_total",
				Help: "Scan records that could not be stored after retries."}),
			dropped: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_publish_dropped_total",
				Help: "Scan records dropped because the publish queue was full."}),
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := EnsureStream(ctx, js, p.stream); err != nil {
		o.Logger.Warn("scans stream not ready yet; will retry on publish", "err", err)
	}
	for i := 0; i < o.Workers; i++ {
		p.wg.Add(1)
		go p.run()
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

// Publish queues r without blocking.
func (p *Publisher) Publish(r Record) {
	select {
	case p.queue <- r:
	default:
		p.metrics.dropped.Inc()
		p.logger.Error("scan record dropped: publish queue full", "kind", r.Kind, "dedup_key", r.DedupKey)
	}
}

// run publishes queued records without waiting for each ack: JetStream
// acks in order, so a second goroutine collects them, and a record whose
// publish failed goes through the retrying path.
func (p *Publisher) run() {
	defer p.wg.Done()
	type inflight struct {
		r Record
		f jetstream.PubAckFuture
	}
	acks := make(chan inflight, 4096)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for in := range acks {
			select {
			case ack := <-in.f.Ok():
				p.count(ack)
			case <-in.f.Err():
				p.publish(in.r)
			}
		}
	}()
	send := func(r Record) {
		msg := &nats.Msg{Subject: r.Subject(), Data: r.marshal(), Header: nats.Header{}}
		f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(r.DedupKey))
		if err != nil {
			p.publish(r)
			return
		}
		acks <- inflight{r, f}
	}
	defer func() {
		close(acks)
		<-collected
	}()
	for {
		select {
		case r := <-p.queue:
			send(r)
		case <-p.stop:
			// Flush what is queued, then go.
			for {
				select {
				case r := <-p.queue:
					send(r)
				default:
					return
				}
			}
		}
	}
}

func (p *Publisher) count(ack *jetstream.PubAck) {
	if ack.Duplicate {
		p.metrics.duplicates.Inc()
	} else {
		p.metrics.published.Inc()
	}
}

// publish stores r synchronously, retrying with backoff for about 30s: long enough to
// ride out a NATS restart or a JetStream leader election.
func (p *Publisher) publish(r Record) {
	msg := &nats.Msg{Subject: r.Subject(), Data: r.marshal(), Header: nats.Header{}}
	backoff := 100 * time.Millisecond
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(r.DedupKey))
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
			if serr := EnsureStream(ctx, p.js, p.stream); serr == nil {
				ack, err = p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(r.DedupKey))
			}
		}
		cancel()
		if err == nil {
			p.count(ack)
			return
		}
		if time.Now().Add(backoff).After(deadline) {
			p.metrics.failed.Inc()
			p.logger.Error("scan record lost: JetStream unavailable", "kind", r.Kind, "dedup_key", r.DedupKey, "attempts", attempt, "err", err)
			return
		}
		time.Sleep(backoff) // backoff between retries of a failed publish
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Close publishes what is queued, waiting until ctx is done at most.
func (p *Publisher) Close(ctx context.Context) error {
	close(p.stop)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("scan publisher: %d records unpublished: %w", len(p.queue), ctx.Err())
	}
}
