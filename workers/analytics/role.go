package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// RoleOptions configure the analytics role of a worker process.
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
}

// Role is the analytics side of a worker process: the record publisher,
// and (with Consume) the consumer and the metrics exporter. The consumer
// starts in the background and keeps retrying while JetStream is out of
// reach, so a worker serves replies from its first second.
type Role struct {
	*Publisher
	o      RoleOptions
	ready  chan struct{}
	mu     sync.Mutex
	cons   *Consumer
	exp    *Exporter
	cancel context.CancelFunc
	done   chan struct{}
}

// StartRole starts the analytics role.
func StartRole(o RoleOptions) (*Role, error) {
	if o.MaxScenes <= 0 {
		o.MaxScenes = 100
	}
	pub, err := NewPublisher(PublisherOptions{Conn: o.Conn, Logger: o.Logger, Registerer: o.Registerer, Stream: o.Stream})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Role{Publisher: pub, o: o, ready: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	if !o.Consume {
		close(r.done)
		return r, nil
	}
	go r.startConsumer(ctx)
	return r, nil
}

func (r *Role) startConsumer(ctx context.Context) {
	defer close(r.done)
	metrics := newConsumerMetrics(r.o.Registerer)
	for attempt := 0; ; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := StartConsumer(sctx, ConsumerOptions{Conn: r.o.Conn, Logger: r.o.Logger, Stream: r.o.Stream, metrics: metrics})
		var exp *Exporter
		if err == nil {
			if exp, err = NewExporter(sctx, cons.Store(), r.o.MaxScenes, r.o.Logger); err != nil {
				cons.Stop()
			}
		}
		cancel()
		if err == nil {
			if err := r.o.Registerer.Register(exp); err != nil {
				r.o.Logger.Error("register scene metrics", "err", err)
			}
			r.mu.Lock()
			r.cons, r.exp = cons, exp
			r.mu.Unlock()
			close(r.ready)
			r.o.Logger.Info("analytics consumer started", "consumer", ConsumerName, "stream", StreamName)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if attempt == 0 || attempt%30 == 0 {
			r.o.Logger.Warn("analytics consumer not started; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second): // retry pace while JetStream is away
		}
	}
}

// Ready is closed once the consumer runs.
func (r *Role) Ready() <-chan struct{} { return r.ready }

// Consumer returns the running consumer, or nil before it started.
func (r *Role) Consumer() *Consumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cons
}

// Store is a StoreFunc for the API: the consumer's store once it runs.
func (r *Role) Store(context.Context) (*Store, error) {
	if c := r.Consumer(); c != nil {
		return c.Store(), nil
	}
	return nil, errors.New("analytics consumer not started")
}

// Stop stops the consumer; records in hand are applied first, unless ctx
// ends before (NATS gone): then Stop returns and the batch is redelivered
// to whichever consumer comes next.
func (r *Role) Stop(ctx context.Context) error {
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		r.cancel()
		<-r.done
		r.mu.Lock()
		cons, exp := r.cons, r.exp
		r.mu.Unlock()
		if exp != nil {
			exp.Stop()
		}
		if cons != nil {
			cons.Stop()
		}
	}()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("analytics stop: %w", ctx.Err())
	}
}
