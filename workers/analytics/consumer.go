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
	store    *Store
	cons     jetstream.Consumer
	cc       jetstream.ConsumeContext
	work     chan jetstream.Msg
	wg       sync.WaitGroup
	ackFloor atomic.Uint64
	stopInfo context.CancelFunc
	m        *consumerMetrics
}

type consumerMetrics struct {
	applied      *prometheus.CounterVec
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
	}
	for _, k := range []string{KindSubscribe, KindScan, KindUnsubscribe} {
		m.applied.WithLabelValues(k)
	}
	return m
}

// StartConsumer creates the stream, the bucket and the durable consumer if
// they are missing and starts applying records.
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
	store, err := OpenStore(ctx, js, o.Stream)
	if err != nil {
		return nil, err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "wxgate per-scene totals",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
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
	c := &Consumer{o: o, store: store, cons: cons, work: make(chan jetstream.Msg, maxBatch), m: o.metrics}
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
			o.Logger.Warn("analytics consume", "err", err)
		}))
	if err != nil {
		c.stopWorkers()
		return nil, fmt.Errorf("consume: %w", err)
	}
	return c, nil
}

// Store is the totals store the consumer writes.
func (c *Consumer) Store() *Store { return c.store }

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

func (c *Consumer) handleBatch(msgs []jetstream.Msg, cache *sceneCache) {
	type entry struct {
		it  item
		msg jetstream.Msg
	}
	entries := make([]entry, 0, len(msgs))
	for _, msg := range msgs {
		meta, err := msg.Metadata()
		if err != nil {
			c.o.Logger.Error("analytics: record without metadata", "err", err)
			_ = msg.Term()
			continue
		}
		var r Record
		if err := json.Unmarshal(msg.Data(), &r); err != nil {
			// Not ours to count; it stays in the stream for whoever wrote it.
			c.o.Logger.Error("analytics: undecodable record", "seq", meta.Sequence.Stream, "err", err)
			_ = msg.Term()
			continue
		}
		if meta.NumDelivered > 1 {
			c.m.redelivered.Inc()
		}
		entries = append(entries, entry{item{seq: meta.Sequence.Stream, delivered: meta.NumDelivered, rec: r}, msg})
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
	if err != nil {
		c.m.errors.Add(float64(len(entries)))
		c.o.Logger.Warn("analytics: batch failed; will retry", "records", len(entries), "err", err)
		for _, e := range entries {
			_ = e.msg.NakWithDelay(time.Second)
		}
		return
	}
	c.m.unattributed.Add(float64(unattributed))
	for _, e := range entries {
		c.m.applied.WithLabelValues(e.it.rec.Kind).Inc()
		// A lost ack only means a redelivery, which the applied lists absorb;
		// sequences are forgotten only below the server's own ack floor.
		_ = e.msg.Ack()
	}
}

// watchInfo keeps the ack floor and the lag gauges fresh.
func (c *Consumer) watchInfo(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := c.refreshInfo(ictx); err != nil && !errors.Is(err, context.Canceled) {
				c.o.Logger.Debug("analytics consumer info", "err", err)
			}
			cancel()
		}
	}
}

func (c *Consumer) refreshInfo(ctx context.Context) error {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	c.ackFloor.Store(info.AckFloor.Stream)
	c.m.pending.Set(float64(info.NumPending))
	c.m.ackPending.Set(float64(info.NumAckPending))
	return nil
}

// Stop stops taking records and waits for those in hand to be applied.
func (c *Consumer) Stop() {
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
