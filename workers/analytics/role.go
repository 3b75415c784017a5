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

	"github.com/wxgate/wxgate/shared/wechat"
)

// RoleOptions configure the analytics role of a worker process. Conn,
// Logger and Registerer are required.
type RoleOptions struct {
	Conn       *nats.Conn
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Stream     StreamOptions
	// MaxScenes bounds the scene label values in the metrics. Default 100.
	MaxScenes int
	// Consume runs the aggregating consumer and the exporter; a process
	// with it off only publishes records.
	Consume bool
	// Fatal is told when the consumer cannot be rebuilt for GiveUp while
	// NATS is connected: the process should end, so that a fresh one is
	// started. Default: log only.
	Fatal func(error)
	// GiveUp is how long rebuilding may fail before Fatal. Default 1m.
	GiveUp time.Duration
}

func (o *RoleOptions) setDefaults() {
	if o.MaxScenes <= 0 {
		o.MaxScenes = 100
	}
	if o.GiveUp <= 0 {
		o.GiveUp = time.Minute
	}
	if o.Fatal == nil {
		o.Fatal = func(error) {}
	}
}

func (o *RoleOptions) validate() error {
	if o.Conn == nil || o.Logger == nil || o.Registerer == nil {
		return errors.New("analytics: RoleOptions.Conn, Logger and Registerer are required")
	}
	return nil
}

// Role is the analytics side of a worker process: the record publisher,
// and (with Consume) the consumer and the metrics exporter. The consumer
// starts in the background and keeps retrying while JetStream is out of
// reach, so a worker serves replies from its first second. It is
// supervised: a consumer deleted on the server, a totals bucket lost or
// replaced, or a watch that ended is rebuilt.
type Role struct {
	*Publisher
	o         RoleOptions
	ready     chan struct{}
	readyOnce sync.Once
	rejected  *prometheus.CounterVec
	rebuilds  prometheus.Counter

	mu   sync.Mutex
	cons *Consumer
	exp  *Exporter
	down error // why no consumer runs; nil while one does

	cancel context.CancelFunc
	done   chan struct{}
}

// StartRole starts the analytics role.
func StartRole(o RoleOptions) (*Role, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	pub, err := NewPublisher(PublisherOptions{Conn: o.Conn, Logger: o.Logger, Registerer: o.Registerer, Stream: o.Stream})
	if err != nil {
		return nil, err
	}
	r := &Role{
		Publisher: pub, o: o, ready: make(chan struct{}), done: make(chan struct{}),
		down: errors.New("not started yet"),
		rejected: promauto.With(o.Registerer).NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_scene_rejected_total",
			Help: "Scans answered but not counted, because their scene is empty, longer than 64 characters or not UTF-8, by reason.",
		}, []string{"reason"}),
	}
	r.rebuilds = promauto.With(o.Registerer).NewCounter(prometheus.CounterOpts{
		Name: "wxgate_analytics_consumer_rebuilds_total",
		Help: "Times the analytics consumer was lost (deleted, its bucket or stream gone, its watch ended) and rebuilt.",
	})
	for _, reason := range wechat.SceneReasons {
		r.rejected.WithLabelValues(reason)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	if !o.Consume {
		r.down = nil
		close(r.done)
		return r, nil
	}
	// The scene metrics go through the role, which hands them to whichever
	// exporter runs now: a rebuilt one replaces the old without a gap in
	// registration.
	if err := o.Registerer.Register(r); err != nil {
		cancel()
		return nil, fmt.Errorf("register scene metrics: %w", err)
	}
	go r.supervise(ctx)
	return r, nil
}

// Record stores the analytics record of m, if it has one: a scene scan or
// an unsubscribe. A scan whose scene is not valid is answered by the
// worker but not counted; it is counted here, by reason.
func (r *Role) Record(ctx context.Context, m *wechat.Message, dedupKey string, received time.Time) error {
	rec, ok, rejected := RecordFrom(m, dedupKey, received)
	if rejected != "" {
		r.rejected.WithLabelValues(rejected).Inc()
	}
	if !ok {
		return nil
	}
	return r.PublishSync(ctx, rec)
}

// supervise runs the consumer and the exporter, and rebuilds them when
// they are lost, until ctx ends.
func (r *Role) supervise(ctx context.Context) {
	defer close(r.done)
	metrics := newConsumerMetrics(r.o.Registerer)
	var failingSince time.Time
	for attempt := 0; ; attempt++ {
		cons, exp, err := r.start(ctx, metrics)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.setDown(err)
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if attempt == 0 || attempt%30 == 0 {
				r.o.Logger.Warn("analytics consumer not started; retrying", "err", err)
			}
			// NATS away is waited for; NATS here but the consumer
			// impossible to build is a process for the orchestrator to
			// replace.
			if r.o.Conn.IsConnected() && time.Since(failingSince) > r.o.GiveUp {
				r.o.Fatal(fmt.Errorf("analytics consumer not rebuilt within %s: %w", r.o.GiveUp, err))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // retry pace while JetStream is away
			}
			continue
		}
		failingSince, attempt = time.Time{}, 0
		r.mu.Lock()
		r.cons, r.exp, r.down = cons, exp, nil
		r.mu.Unlock()
		r.readyOnce.Do(func() { close(r.ready) })
		r.o.Logger.Info("analytics consumer started", "consumer", ConsumerName, "stream", StreamName)

		lost := r.watch(ctx, cons, exp)
		r.setDown(lost)
		exp.Stop()
		cons.Stop()
		r.mu.Lock()
		r.cons, r.exp = nil, nil
		r.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		r.rebuilds.Inc()
		r.o.Logger.Warn("analytics consumer lost; rebuilding", "err", lost)
	}
}

func (r *Role) start(ctx context.Context, metrics *consumerMetrics) (*Consumer, *Exporter, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, err := StartConsumer(sctx, ConsumerOptions{Conn: r.o.Conn, Logger: r.o.Logger, Stream: r.o.Stream, metrics: metrics})
	if err != nil {
		return nil, nil, err
	}
	// Reading every scene's totals takes longer than creating a consumer
	// when there are many; it gets its own, longer, bound.
	ectx, ecancel := context.WithTimeout(ctx, 2*time.Minute)
	defer ecancel()
	exp, err := NewExporter(ectx, cons.Store(), r.o.MaxScenes, r.o.Logger)
	if err != nil {
		cons.Stop()
		return nil, nil, err
	}
	return cons, exp, nil
}

// watch waits until the consumer or the exporter is lost, or the totals
// bucket is gone or was replaced (the exporter's watch would be stale).
func (r *Role) watch(ctx context.Context, cons *Consumer, exp *Exporter) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return errors.New("stopping")
		case <-cons.Lost():
			return cons.LostErr()
		case <-exp.Lost():
			return errors.New("scene totals watch ended")
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := cons.Store().checkBucket(cctx)
			cancel()
			if errors.Is(err, errBucketReplaced) || errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
				return err
			}
		}
	}
}

func (r *Role) setDown(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = err
}

// Check reports whether the role works: for a consuming role, a consumer
// runs and the server reported on it lately.
func (r *Role) Check() error {
	r.mu.Lock()
	cons, down := r.cons, r.down
	r.mu.Unlock()
	if down != nil {
		return fmt.Errorf("analytics consumer not running: %w", down)
	}
	if cons != nil {
		return cons.Check()
	}
	return nil
}

// Ready is closed once the consumer first runs.
func (r *Role) Ready() <-chan struct{} { return r.ready }

// Consumer returns the running consumer, or nil while none runs.
func (r *Role) Consumer() *Consumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cons
}

// Store is a StoreFunc for the API: the consumer's store while it runs.
func (r *Role) Store(context.Context) (*Store, error) {
	if c := r.Consumer(); c != nil {
		return c.Store(), nil
	}
	return nil, errors.New("analytics consumer not running")
}

// Describe implements prometheus.Collector: the scene metrics.
func (r *Role) Describe(ch chan<- *prometheus.Desc) { describeScenes(ch) }

// Collect implements prometheus.Collector: the running exporter's values.
func (r *Role) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	exp := r.exp
	r.mu.Unlock()
	if exp != nil {
		exp.Collect(ch)
	}
}

// Stop stops the consumer; records in hand are applied first, unless ctx
// ends before (NATS gone): then Stop returns and the batch is redelivered
// to whichever consumer comes next.
func (r *Role) Stop(ctx context.Context) error {
	r.cancel()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("analytics stop: %w", ctx.Err())
	}
}
