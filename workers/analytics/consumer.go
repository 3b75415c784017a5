package analytics

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// ConsumerOptions configure the analytics consumer.
type ConsumerOptions struct {
	Conn       *nats.Conn
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Stream     StreamOptions
	// Concurrency is how many batches are applied at once. Default 1: one
	// pipelined batch at a time already keeps JetStream busy.
	Concurrency int

	metrics *consumerMetrics // made once by a Role that retries starts
}

// Consumer applies scan records from the durable consumer to the totals.
// Any number of processes can run one: they share the durable consumer.
type Consumer struct {
	o        ConsumerOptions
	js       jetstream.JetStream
	store    *Store
	cons     jetstream.Consumer
	cc       jetstream.ConsumeContext
	work     chan jetstream.Msg
	wg       sync.WaitGroup
	ackFloor atomic.Uint64
	stopInfo context.CancelFunc
	m        *consumerMetrics

	lastInfo atomic.Int64 // unix nanos of the last consumer info the server gave
	lost     chan struct{}
	lostOnce sync.Once
	lostErr  atomic.Pointer[error]
	stopping atomic.Bool
}

type consumerMetrics struct {
	applied      *prometheus.CounterVec
	poison       *prometheus.CounterVec
	infoTime     prometheus.Gauge
	redelivered  prometheus.Counter
	errors       prometheus.Counter
	pending      prometheus.Gauge
	ackPending   prometheus.Gauge
	unattributed prometheus.Counter
}

func newConsumerMetrics(reg prometheus.Registerer) *consumerMetrics {
	f := promauto.With(reg)
	m := &consumerMetrics{
		applied: f.NewCounterVec(prometheus.CounterOpts{Name: "wxgate_analytics_records_total",
			Help: "Records taken from the scans stream and applied (or found applied) by this process, by kind."},
			[]string{"kind"}),
		redelivered: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_redeliveries_total",
			Help: "Records delivered more than once (a consumer died or was slow before acking)."}),
		errors: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_apply_errors_total",
			Help: "Records that could not be applied and were handed back for redelivery."}),
		pending: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_consumer_pending",
			Help: "Records in the stream not yet delivered to the analytics consumer (its lag)."}),
		ackPending: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_consumer_ack_pending",
			Help: "Records delivered to the analytics consumer and not yet acknowledged."}),
		unattributed: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_unattributed_unfollows_total",
			Help: "Unfollows of people with no recorded scene (followed another way, or before wxgate)."}),
		poison: f.NewCounterVec(prometheus.CounterOpts{Name: "wxgate_analytics_poison_total",
			Help: "Records that could not be applied, copied to the dead-letter stream and terminated, by reason."},
			[]string{"reason"}),
		infoTime: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_consumer_last_info_timestamp_seconds",
			Help: "When the server last reported the analytics consumer's state (Unix time). Old: the lag gauges are stale and the consumer may be lost."}),
	}
	for _, k := range []string{KindSubscribe, KindScan, KindUnsubscribe} {
		m.applied.WithLabelValues(k)
	}
	for _, r := range poisonReasons {
		m.poison.WithLabelValues(r)
	}
	return m
}

// StartConsumer creates the stream, the bucket, the dead-letter stream and
// the durable consumer if they are missing and starts applying records.
func StartConsumer(ctx context.Context, o ConsumerOptions) (*Consumer, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := EnsureStream(ctx, js, o.Stream); err != nil {
		return nil, err
	}
	if err := ensureDeadLetter(ctx, js, o.Stream); err != nil {
		return nil, err
	}
	store, err := OpenStore(ctx, js, o.Stream)
	if err != nil {
		return nil, err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:     ConsumerName,
		Description: "wxgate per-scene totals",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     30 * time.Second,
		// Unbounded: a record waits for NATS as long as NATS is away. A
		// record that fails by itself is quarantined by the consumer after
		// maxPoisonDeliveries, so none is retried forever.
		MaxDeliver:    -1,
		MaxAckPending: 4 * maxBatch * o.Concurrency,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", ConsumerName, err)
	}
	if o.metrics == nil {
		o.metrics = newConsumerMetrics(o.Registerer)
	}
	c := &Consumer{o: o, js: js, store: store, cons: cons, work: make(chan jetstream.Msg, maxBatch), m: o.metrics, lost: make(chan struct{})}
	if err := c.refreshInfo(ctx); err != nil {
		return nil, err
	}
	infoCtx, cancel := context.WithCancel(context.Background())
	c.stopInfo = cancel
	go c.watchInfo(infoCtx)
	for i := 0; i < o.Concurrency; i++ {
		c.wg.Add(1)
		go c.run()
	}
	c.cc, err = cons.Consume(func(msg jetstream.Msg) { c.work <- msg },
		jetstream.PullMaxMessages(2*maxBatch),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				c.markLost(err)
				return
			}
			o.Logger.Warn("analytics consume", "err", err)
		}))
	if err != nil {
		c.stopWorkers()
		return nil, fmt.Errorf("consume: %w", err)
	}
	go func() {
		<-c.cc.Closed()
		if !c.stopping.Load() {
			c.markLost(errors.New("consume ended"))
		}
	}()
	return c, nil
}

// Store is the totals store the consumer writes.
func (c *Consumer) Store() *Store { return c.store }

// Lost is closed when the consumer stopped working by itself: deleted on
// the server (an operator, a stream recreated, NATS restarted without its
// data), or its consume loop ended. The role then builds a new one.
func (c *Consumer) Lost() <-chan struct{} { return c.lost }

// LostErr is why the consumer was lost.
func (c *Consumer) LostErr() error {
	if p := c.lostErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *Consumer) markLost(err error) {
	c.lostOnce.Do(func() {
		c.lostErr.Store(&err)
		close(c.lost)
	})
}

// Check reports whether the consumer works: not lost, and the server
// reported its state recently.
func (c *Consumer) Check() error {
	if err := c.LostErr(); err != nil {
		return fmt.Errorf("consumer lost: %w", err)
	}
	if age := time.Since(time.Unix(0, c.lastInfo.Load())); age > infoStale {
		return fmt.Errorf("no consumer info from the server for %s", age.Round(time.Second))
	}
	return nil
}

// infoStale is how long without consumer info makes the consumer not ready.
const infoStale = 10 * time.Second

// maxBatch bounds the records applied together: enough to pipeline the KV
// writes, few enough that a scene's list of recent sequences stays short.
const maxBatch = 500

func (c *Consumer) run() {
	defer c.wg.Done()
	cache := &sceneCache{}
	for msg := range c.work {
		batch := []jetstream.Msg{msg}
	more:
		for len(batch) < maxBatch {
			select {
			case m, ok := <-c.work:
				if !ok {
					break more
				}
				batch = append(batch, m)
			default:
				break more
			}
		}
		c.handleBatch(batch, cache)
	}
}

// entry is one record of a batch with its message.
type entry struct {
	it  item
	msg jetstream.Msg
}

func (c *Consumer) handleBatch(msgs []jetstream.Msg, cache *sceneCache) {
	entries := make([]entry, 0, len(msgs))
	for _, msg := range msgs {
		meta, err := msg.Metadata()
		if err != nil {
			c.o.Logger.Error("analytics: record without metadata", "err", err)
			_ = msg.Term()
			continue
		}
		seq := meta.Sequence.Stream
		var r Record
		if err := json.Unmarshal(msg.Data(), &r); err != nil {
			c.quarantine(msg, seq, PoisonUndecodable, err)
			continue
		}
		if p := r.problem(); p != "" {
			c.quarantine(msg, seq, p, nil)
			continue
		}
		if meta.NumDelivered > 1 {
			c.m.redelivered.Inc()
		}
		entries = append(entries, entry{item{seq: seq, delivered: meta.NumDelivered, rec: r}, msg})
	}
	if len(entries) == 0 {
		return
	}
	// Redeliveries can arrive out of order; apply in stream order.
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.it.seq, b.it.seq) })
	items := make([]item, len(entries))
	for i, e := range entries {
		items[i] = e.it
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unattributed, err := c.store.applyBatch(ctx, items, c.ackFloor.Load(), cache)
	if err == nil {
		c.m.unattributed.Add(float64(unattributed))
		for _, e := range entries {
			c.acked(e)
		}
		return
	}
	if transient(err) {
		c.retryLater(entries, err)
		return
	}
	if len(entries) == 1 {
		c.poisonAfterRetries(entries[0], err)
		return
	}
	// Something in the batch fails by itself: apply the records one by one,
	// so the rest are counted and only the record at fault is retried (and
	// in the end quarantined).
	c.o.Logger.Warn("analytics: batch failed; applying its records one by one", "records", len(entries), "err", err)
	for i, e := range entries {
		applied, err := c.store.Apply(ctx, e.it.seq, e.it.rec, c.ackFloor.Load())
		switch {
		case err == nil:
			if e.it.rec.Kind == KindUnsubscribe && !applied && e.it.delivered == 1 {
				c.m.unattributed.Inc()
			}
			c.acked(e)
		case transient(err):
			c.retryLater(entries[i:], err)
			return
		default:
			c.poisonAfterRetries(e, err)
		}
	}
}

// acked acknowledges an applied record. A lost ack only means a redelivery,
// which the applied lists absorb; sequences are forgotten only below the
// server's own ack floor.
func (c *Consumer) acked(e entry) {
	c.m.applied.WithLabelValues(e.it.rec.Kind).Inc()
	_ = e.msg.Ack()
}

func (c *Consumer) retryLater(entries []entry, err error) {
	c.m.errors.Add(float64(len(entries)))
	c.o.Logger.Warn("analytics: records not applied; will retry", "records", len(entries), "err", err)
	for _, e := range entries {
		_ = e.msg.NakWithDelay(time.Second)
	}
}

// poisonAfterRetries hands a record that failed by itself back for another
// try, and quarantines it once it has failed maxPoisonDeliveries times.
func (c *Consumer) poisonAfterRetries(e entry, err error) {
	if e.it.delivered < maxPoisonDeliveries {
		c.m.errors.Inc()
		c.o.Logger.Warn("analytics: record not applied; will retry", "seq", e.it.seq, "deliveries", e.it.delivered, "err", err)
		_ = e.msg.NakWithDelay(time.Second)
		return
	}
	c.quarantine(e.msg, e.it.seq, PoisonApplyFailed, err)
}

// watchInfo keeps the ack floor and the lag gauges fresh, and notices a
// consumer deleted on the server.
func (c *Consumer) watchInfo(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := c.refreshInfo(ictx)
			cancel()
			switch {
			case err == nil, errors.Is(err, context.Canceled):
			case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
				c.markLost(err)
			default:
				c.o.Logger.Debug("analytics consumer info", "err", err)
			}
		}
	}
}

func (c *Consumer) refreshInfo(ctx context.Context) error {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	now := time.Now()
	c.lastInfo.Store(now.UnixNano())
	c.m.infoTime.Set(float64(now.UnixNano()) / 1e9)
	c.ackFloor.Store(info.AckFloor.Stream)
	c.m.pending.Set(float64(info.NumPending))
	c.m.ackPending.Set(float64(info.NumAckPending))
	return nil
}

// Stop stops taking records and waits for those in hand to be applied.
func (c *Consumer) Stop() {
	c.stopping.Store(true)
	c.cc.Stop()
	<-c.cc.Closed()
	c.stopWorkers()
}

func (c *Consumer) stopWorkers() {
	close(c.work)
	c.wg.Wait()
	c.stopInfo()
}

// Lag returns the consumer's pending and unacknowledged counts, fresh from
// the server.
func (c *Consumer) Lag(ctx context.Context) (pending uint64, ackPending int, err error) {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.NumPending, info.NumAckPending, nil
}
