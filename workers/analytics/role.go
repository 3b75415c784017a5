package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
)

// RoleOptions configure the analytics role of a worker process. Conn,
// Logger and Registerer are required.
type RoleOptions struct {
	Conn       *nats.Conn
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Streams    events.Options
	// MaxScenes bounds the scene label values in the metrics, per account.
	// Default 100.
	MaxScenes int
	// Zone is ANALYTICS_TIME_ZONE, whose days and hours are counted.
	// Default Asia/Shanghai.
	Zone *time.Location
	// Labels gives the scenes' groups (shared/qrcodes); nil: every scene
	// in the group "".
	Labels stats.Labeler
	// Fatal is told when the role cannot be set up for GiveUp while NATS is
	// connected and JetStream answers: something a fresh process may get
	// past, so the process should end. JetStream away (disabled, no quorum)
	// is waited for instead, with the role not ready: the replies of the
	// same process need no JetStream, and no restart brings it back.
	// Default: log only.
	Fatal func(error)
	// GiveUp is how long setting up may fail so before Fatal. Default 1m.
	GiveUp time.Duration
	// Lease is how long a leader may go without renewing its lease before
	// a standby takes over. Default 6s.
	Lease time.Duration
	// FlushEvery is how often the leader writes what changed; default
	// 2s (each write is a message in the file store). SnapshotEvery
	// is how often it snapshots its state; default 30s: what a new leader
	// replays. CheckEvery is how often the leader looks at what no event
	// tells (its stream replaced, its consumer stalled) and writes its
	// status, every process checks its bucket (at twice that), and how
	// soon a failed set-up is tried again; default 1s.
	FlushEvery, SnapshotEvery, CheckEvery time.Duration
	// ID names this process in the lease; default the connection's name
	// and a random suffix.
	ID string
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
	if o.Lease <= 0 {
		o.Lease = 6 * time.Second
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = 2 * time.Second
	}
	if o.Zone == nil {
		o.Zone, _ = time.LoadLocation(stats.DefaultZone) // nil without tzdata: validate says so
	}
	if o.SnapshotEvery <= 0 {
		o.SnapshotEvery = 30 * time.Second
	}
	if o.CheckEvery <= 0 {
		o.CheckEvery = time.Second
	}
	if o.ID == "" {
		o.ID = bus.InstanceID(o.Conn)
	}
}

func (o *RoleOptions) validate() error {
	if o.Conn == nil || o.Logger == nil || o.Registerer == nil {
		return errors.New("analytics: RoleOptions.Conn, Logger and Registerer are required")
	}
	if o.Zone == nil {
		return errors.New("analytics: no time zone (the default, " + stats.DefaultZone + ", does not load)")
	}
	return nil
}

// Role is the analytics side of a worker process: it stands by for the
// lease, applies the event stream while it holds it, and exports the
// totals (every process exports the same values, from the bucket). It
// starts in the background and keeps trying while JetStream is out of
// reach, so a worker serves replies from its first second. Everything it
// uses is supervised: a bucket lost or replaced, a watch that ended, a
// consumer lost, is set up again.
type Role struct {
	o       RoleOptions
	m       *roleMetrics
	ready   chan struct{}
	readyAt sync.Once

	mu      sync.Mutex
	store   *stats.Store
	exp     *Exporter
	down    error // why the role cannot work now; nil while it can
	alive   atomic.Int64
	leading atomic.Bool
	// dropped is the epoch whose stale values were deleted.
	dropped atomic.Uint64
	// last is the state this process held when it last led: kept across a
	// NATS that lost its data (and the snapshot with it), so the totals
	// carry on rather than start again.
	last *state

	cancel context.CancelFunc
	done   chan struct{}
}

// StartRole starts the analytics role.
func StartRole(o RoleOptions) (*Role, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	r := &Role{o: o, m: newRoleMetrics(o.Registerer), ready: make(chan struct{}), done: make(chan struct{}),
		down: errors.New("not started yet")}
	// The scene metrics go through the role, which hands them to whichever
	// exporter runs now: a rebuilt one replaces the old without a gap.
	if err := o.Registerer.Register(r); err != nil {
		return nil, fmt.Errorf("register scene metrics: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.supervise(ctx)
	return r, nil
}

// supervise sets the role up, runs it, and sets it up again when
// something it stands on is lost, until ctx ends.
func (r *Role) supervise(ctx context.Context) {
	defer close(r.done)
	var failingSince, logged time.Time
	for {
		js, store, kv, exp, err := r.setup(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.setDown(err)
			if time.Since(logged) >= time.Minute {
				r.o.Logger.Warn("analytics not started; retrying", "err", err)
				logged = time.Now()
			}
			// NATS or JetStream away is waited for, however long, and so is
			// an operator; NATS and JetStream here but the analytics
			// impossible to set up is a process for the orchestrator to
			// replace.
			switch {
			case !r.o.Conn.IsConnected() || jetStreamAway(err) || errors.Is(err, errScansStream):
				failingSince = time.Time{}
			case failingSince.IsZero():
				failingSince = time.Now()
			case time.Since(failingSince) > r.o.GiveUp:
				r.o.Fatal(fmt.Errorf("analytics not set up within %s: %w", r.o.GiveUp, err))
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(r.o.CheckEvery): // retry pace while JetStream is away
			}
			continue
		}
		failingSince, logged = time.Time{}, time.Time{}
		r.mu.Lock()
		r.store, r.exp, r.down = store, exp, nil
		r.mu.Unlock()
		r.readyAt.Do(func() { close(r.ready) })
		r.o.Logger.Info("analytics started", "id", r.o.ID)

		lost := r.work(ctx, js, store, kv, exp)
		r.setDown(lost)
		exp.Stop()
		store.Close()
		r.mu.Lock()
		r.store, r.exp = nil, nil
		r.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		r.m.rebuilds.Inc()
		r.o.Logger.Warn("analytics lost what it stands on; setting up again", "err", lost)
	}
}

// jetStreamAway reports an error of JetStream not answering (disabled, no
// quorum, a leader election, a timeout), as opposed to refusing.
func jetStreamAway(err error) bool {
	for _, away := range []error{
		context.DeadlineExceeded, nats.ErrTimeout, nats.ErrNoResponders, nats.ErrConnectionClosed,
		nats.ErrConnectionReconnecting, nats.ErrDisconnected, jetstream.ErrNoStreamResponse,
		jetstream.ErrJetStreamNotEnabled, jetstream.ErrJetStreamNotEnabledForAccount,
	} {
		if errors.Is(err, away) {
			return true
		}
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}

// scansStream is the stream of a build that never shipped, which counted
// into the same totals bucket from its own stream: totals it wrote cannot
// be told from these, so the analytics do not run beside them.
const scansStream = "WXGATE_SCANS"

var errScansStream = errors.New("the stream " + scansStream + " of an earlier build exists, and the totals that build wrote cannot be counted on: " +
	"stop every process of that build, delete the stream (nats stream rm " + scansStream + "), then rebuild the totals (POST /api/analytics/rebuild)")

// setup makes sure the streams and buckets exist (the analytics own them)
// and starts the exporter.
func (r *Role) setup(ctx context.Context) (jetstream.JetStream, *stats.Store, jetstream.KeyValue, *Exporter, error) {
	// A write of the totals not acknowledged within a lease is given up,
	// and the leader starts again: in a cluster, one lost with the node
	// leading the bucket is never answered, and nats.go fails it only when
	// this connection drops. Waiting on it would stall the leader for ever
	// while its lease is renewed, no standby taking over.
	js, err := jetstream.New(r.o.Conn, jetstream.WithPublishAsyncTimeout(r.o.Lease))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	// Short: in a cluster, of several processes creating the same stream at
	// once only one is answered (nats-io/nats-server#3677); the others wait
	// out this bound, then find it made.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := js.Stream(sctx, scansStream); err == nil {
		return nil, nil, nil, nil, errScansStream
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil, nil, nil, fmt.Errorf("stream %s: %w", scansStream, err)
	}
	if err := events.Ensure(sctx, js, r.o.Streams); err != nil {
		return nil, nil, nil, nil, err
	}
	if err := ensureDeadLetter(sctx, js, r.o.Streams.Replicas); err != nil {
		return nil, nil, nil, nil, err
	}
	store, err := stats.OpenStore(sctx, js, r.o.Streams.Replicas)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(sctx, jetstream.KeyValueConfig{
		Bucket:      stats.AnalyticsName,
		Description: "wxgate analytics: the leader's lease, rebuild requests and status",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(r.o.Streams.Replicas, 1),
	})
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("kv %s: %w", stats.AnalyticsName, err)
	}
	// Reading every scene's totals takes longer than the rest when there
	// are many; it gets its own, longer, bound.
	ectx, ecancel := context.WithTimeout(ctx, 2*time.Minute)
	defer ecancel()
	exp, err := NewExporter(ectx, store, r.o.MaxScenes, r.o.Logger)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return js, store, kv, exp, nil
}

// work stands by for the lease and leads while it holds it, until what it
// stands on is lost (the totals bucket gone or replaced, the exporter's
// watch ended) or ctx ends; it returns why.
func (r *Role) work(ctx context.Context, js jetstream.JetStream, store *stats.Store, kv jetstream.KeyValue, exp *Exporter) error {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(2 * r.o.CheckEvery)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-exp.Lost():
				cancel(errors.New("scene totals watch ended"))
				return
			case <-t.C:
				cctx, ccancel := context.WithTimeout(wctx, 2*time.Second)
				err := store.CheckBucket(cctx)
				ccancel()
				if errors.Is(err, stats.ErrBucketReplaced) || errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
					cancel(fmt.Errorf("analytics buckets: %w", err))
					return
				}
			}
		}
	}()
	// The right to apply the stream.
	l := bus.Lease{KV: kv, Key: stats.LeaseKey, TTL: r.o.Lease}
	for {
		h, err := l.Acquire(wctx, []byte(r.o.ID))
		if err != nil {
			return context.Cause(wctx)
		}
		r.o.Logger.Info("analytics: leading", "id", r.o.ID)
		r.markAlive()
		r.leading.Store(true)
		held, cancelHeld := h.Context(wctx)
		go r.watch(held, h, cancelHeld)
		err = r.lead(held, js, store, kv)
		cancelHeld()
		// Let a standby take over now rather than after a whole lease.
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_ = h.Release(rctx)
		rcancel()
		r.leading.Store(false)
		if wctx.Err() != nil {
			return context.Cause(wctx)
		}
		r.o.Logger.Warn("analytics: stopped leading", "err", err)
		select {
		case <-wctx.Done():
			return context.Cause(wctx)
		case <-time.After(r.o.CheckEvery): // let the next leader, or this one, start afresh
		}
	}
}

func (r *Role) markAlive() { r.alive.Store(time.Now().UnixNano()) }

// watch gives up the lease of a leader whose loop has not turned for
// stuckAfter: one blocked in a call that never returns (a JetStream
// answer lost with a cluster node) would otherwise keep renewing it, and
// no standby would take over while the counts stood still.
func (r *Role) watch(held context.Context, h *bus.Held, cancel context.CancelFunc) {
	// Past the 30 s a new leader may take to load its snapshot.
	stuckAfter := max(4*r.o.Lease, 45*time.Second)
	t := time.NewTicker(r.o.CheckEvery)
	defer t.Stop()
	for {
		select {
		case <-held.Done():
			return
		case <-t.C:
		}
		if age := time.Since(time.Unix(0, r.alive.Load())); age > stuckAfter {
			r.o.Logger.Error("analytics: the leader has not applied or written for too long; giving up the lease to a standby", "age", age.Round(time.Second))
			cancel()
			ctx, c := context.WithTimeout(context.Background(), time.Second)
			_ = h.Release(ctx)
			c()
			return
		}
	}
}

func (r *Role) setDown(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = err
}

// Check reports whether the role works: set up, and, while leading,
// applying (its loop turned within the last 10 seconds).
func (r *Role) Check() error {
	r.mu.Lock()
	down := r.down
	r.mu.Unlock()
	if down != nil {
		return fmt.Errorf("analytics not running: %w", down)
	}
	if r.leading.Load() {
		if age := time.Since(time.Unix(0, r.alive.Load())); age > 10*time.Second {
			return fmt.Errorf("analytics leader has not applied or written for %s", age.Round(time.Second))
		}
	}
	return nil
}

// Leading reports whether this process applies the stream now.
func (r *Role) Leading() bool { return r.leading.Load() }

// Ready is closed once the role is first set up.
func (r *Role) Ready() <-chan struct{} { return r.ready }

// Store is a StoreFunc for the API: the totals store while the role runs.
func (r *Role) Store(context.Context) (*stats.Store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.store == nil {
		return nil, errors.New("analytics not running")
	}
	return r.store, nil
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

// Stop stops the role; a leader writes its totals and a snapshot first,
// unless ctx ends before (NATS gone): a new leader replays from the last
// snapshot anyway.
func (r *Role) Stop(ctx context.Context) error {
	r.cancel()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("analytics stop: %w", ctx.Err())
	}
}
