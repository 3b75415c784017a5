// Package dedup runs each WeChat message's handler once across every worker
// replica, and answers WeChat's retries with the first run's reply.
//
// The ingress stores every event in the event stream before it asks a
// worker, and the stream says which delivery is a retry (Wx-Retry). A first
// delivery runs its handler at once, with no lookup, and keeps its reply
// in the worker's own memory for the TTL: the common case costs NATS
// nothing. A handler still running after ClaimAfter (1 s, long before
// WeChat retries at 5 s) claims the key with an atomic create in a
// JetStream KV bucket, keeps the claim alive while it runs, and stores its
// reply there. A retry at any worker looks the key up in the bucket (a
// claim: it waits for the reply within its own deadline; a stored reply:
// it answers with it), then asks every worker for a reply kept in memory
// (LookupSubject). A claim nobody refreshes for a lease (its worker
// crashed) is taken over with a compare-and-set, so no message stays
// stuck.
//
// Because the handler keeps running after the ingress has given up, a
// handler slower than one deadline still reaches the person: WeChat's next
// retry is answered with its reply.
package dedup

import (
	"bytes"
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

	"github.com/wxgate/wxgate/shared/bus"
)

// Bucket is the KV bucket holding claims and replies.
const Bucket = "wxgate_replies"

// Defaults: WeChat retries about every 5 s, three times, so a key must live
// past about 20 s from its last write; 30 s leaves room. The bucket holds
// rate × TTL entries in memory, so the TTL is kept no longer than that.
const (
	DefaultTTL            = 30 * time.Second
	DefaultLease          = 3 * time.Second
	DefaultClaimAfter     = time.Second
	DefaultHandlerTimeout = 20 * time.Second
)

// ErrPending means the request's deadline passed before a reply existed.
// The handler may still be running; a later retry gets its reply.
var ErrPending = errors.New("reply not ready before the deadline")

// Outcome says how Do produced a reply.
type Outcome int

const (
	Ran       Outcome = iota // this call claimed the key and ran the handler
	Stored                   // another run's reply, stored or awaited
	TookOver                 // a stale claim was taken over and the handler ran
	Unguarded                // the store was unavailable; the handler ran without a claim
)

func (o Outcome) String() string {
	return [...]string{"ran", "stored", "took_over", "unguarded"}[o]
}

// HandlerRan reports whether the outcome ran the handler in this call.
func (o Outcome) HandlerRan() bool { return o != Stored }

// Options configure a Store.
type Options struct {
	TTL   time.Duration // how long a key and its reply are kept
	Lease time.Duration // a claim not refreshed for this long is stale
	// ClaimAfter is how long a handler runs before its key is claimed;
	// well under WeChat's 5 s, so every retry finds the claim or the reply.
	ClaimAfter time.Duration
	Replicas   int // bucket replicas (JETSTREAM_REPLICAS)
	// HandlerTimeout bounds a handler that outlives its request.
	HandlerTimeout time.Duration
	// Memory bounds the replies kept in this worker's memory for retries
	// (DEDUP_MEMORY), in bytes. Default DefaultMemory.
	Memory     int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (o *Options) defaults() {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.ClaimAfter <= 0 {
		o.ClaimAfter = DefaultClaimAfter
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.HandlerTimeout <= 0 {
		o.HandlerTimeout = DefaultHandlerTimeout
	}
	if o.Memory <= 0 {
		o.Memory = DefaultMemory
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
}

// Store is the shared claim-and-reply store.
type Store struct {
	kv        jetstream.KeyValue
	js        jetstream.JetStream
	nc        *nats.Conn
	recent    *recent // the replies this worker answered lately
	lookupSub *nats.Subscription
	cfg       jetstream.KeyValueConfig
	o         Options
	claim     []byte
	running   sync.WaitGroup // handlers still running

	recreating   sync.Mutex
	lastRecreate time.Time
	metrics      metrics

	mu        sync.Mutex
	inflight  map[*inflight]struct{} // first deliveries' handlers running
	done      chan struct{}
	closeOnce sync.Once
}

type metrics struct {
	duplicates, stored, expired, unavailable prometheus.Counter
}

// Open creates or opens the bucket. Claims and replies live in memory: they
// matter for a minute, and replicas (not disk) keep them through a node loss.
func Open(ctx context.Context, js jetstream.JetStream, owner string, o Options) (*Store, error) {
	o.defaults()
	cfg := jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "wxgate: claims and replies by dedup key, for WeChat's retries",
		History:     1,
		TTL:         o.TTL,
		Storage:     jetstream.MemoryStorage,
		// Bounded: past it a reply is not stored (a retry runs its
		// handler again) rather than NATS's memory growing with the rate.
		MaxBytes: 256 << 20,
		Replicas: o.Replicas,
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	f := promauto.With(o.Registerer)
	s := &Store{
		kv:     kv,
		js:     js,
		nc:     js.Conn(),
		recent: newRecent(o.TTL, o.Memory, min(1<<20, o.Memory)),
		cfg:    cfg,
		o:      o,
		claim:  append([]byte(claimPrefix), owner...),
		metrics: metrics{
			duplicates: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_duplicates_total",
				Help: "Requests whose dedup key another request had already claimed (WeChat retries reaching a worker).",
			}),
			stored: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_replies_from_store_total",
				Help: "Duplicates answered with the first run's stored reply, at once or after waiting for it.",
			}),
			expired: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_claims_expired_total",
				Help: "Claims left unrefreshed for a lease (their worker died) and taken over.",
			}),
			unavailable: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_dedup_unavailable_total",
				Help: "Requests handled without a claim because the store did not answer.",
			}),
		},
	}
	evicted := f.NewCounter(prometheus.CounterOpts{
		Name: "wxgate_worker_replies_evicted_total",
		Help: "Replies dropped from this worker's memory before DEDUP_TTL to stay within DEDUP_MEMORY; a retry of one runs its handler again.",
	})
	s.recent.evicted = func(n int) { evicted.Add(float64(n)) }
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wxgate_worker_replies_memory_bytes",
		Help: "Memory holding the replies this worker answered in the last DEDUP_TTL, for retries.",
	}, func() float64 { return float64(s.recent.held()) })
	s.inflight, s.done = map[*inflight]struct{}{}, make(chan struct{})
	if err := s.serveLookups(); err != nil {
		return nil, fmt.Errorf("dedup lookups: %w", err)
	}
	go s.watch()
	return s, nil
}

// Values: a claim is "c" and its owner; a reply is "r" and the reply body
// (empty: no reply).
const (
	claimPrefix = "c"
	replyPrefix = "r"
)

// Handler produces a reply; ctx ends at the handler timeout, not at the
// request's deadline.
type Handler func(ctx context.Context) ([]byte, error)

// Do returns the reply for a retry of key (First is a first delivery's),
// running run at most once across replicas while the key lives. ctx
// carries the request's deadline: past it, Do returns ErrPending and a
// running handler carries on to store its reply.
//
// A retry looks the key up first: a stored reply answers it, a claim makes
// it wait for the reply. A retry that finds nothing (its first delivery
// never reached a worker, or the store lost its reply) runs the handler.
func (s *Store) Do(ctx context.Context, key string, run Handler) ([]byte, Outcome, error) {
	// A store slower than a quarter of the budget is treated as down:
	// answering matters more than deduplicating.
	gctx, cancel := context.WithTimeout(ctx, s.claimBudget(ctx))
	e, err := s.kv.Get(gctx, key)
	cancel()
	switch {
	case err == nil:
		s.metrics.duplicates.Inc()
		if v := e.Value(); bytes.HasPrefix(v, []byte(replyPrefix)) {
			s.metrics.stored.Inc()
			return v[len(replyPrefix):], Stored, nil
		}
		return s.await(ctx, key, run)
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if body, ok := s.lookup(ctx, key); ok {
			return body, Stored, nil
		}
		// A retry that runs the handler claims the key first: another
		// retry, or a late reply, arriving meanwhile waits for this run.
		cctx, cancel := context.WithTimeout(ctx, s.claimBudget(ctx))
		rev, cerr := s.kv.Create(cctx, key, s.claim)
		cancel()
		switch {
		case cerr == nil:
			return s.own(ctx, key, rev, run, Ran)
		case errors.Is(cerr, jetstream.ErrKeyExists):
			s.metrics.duplicates.Inc()
			return s.await(ctx, key, run)
		}
		return s.own(ctx, key, 0, run, Ran)
	default:
		if body, ok := s.lookup(ctx, key); ok {
			return body, Stored, nil
		}
		s.metrics.unavailable.Inc()
		s.o.Logger.Warn("dedup store unavailable, handling without a claim", "err", err)
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) ||
			errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, nats.ErrNoResponders) {
			go s.recreate()
		}
		body, err := s.runBounded(ctx, run, nil)
		return body, Unguarded, err
	}
}

// First is Do for a first delivery whose event was received at since (by
// this worker's clock) and whose ingress waits until deadline. The claim
// a slow handler makes is timed from since, not from when the handler
// starts: a delivery that waited behind busy handlers claims the key
// before it runs, and one whose key a retry or a late reply claimed (or
// answered) meanwhile takes the retry's path instead of running the
// handler a second time.
func (s *Store) First(key string, since, deadline time.Time, run Handler) ([]byte, Outcome, error) {
	if time.Since(since) < s.o.ClaimAfter {
		return s.first(key, since, run)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cctx, ccancel := context.WithTimeout(ctx, s.claimBudget(ctx))
	rev, err := s.kv.Create(cctx, key, s.claim)
	ccancel()
	switch {
	case err == nil:
		return s.own(ctx, key, rev, run, Ran)
	case errors.Is(err, jetstream.ErrKeyExists):
		return s.Do(ctx, key, run)
	}
	return s.first(key, since, run) // the store does not answer: run, as a first delivery does
}

// recreate brings the bucket back after the server lost it: it lives in
// memory, so a restarted single server starts without it.
func (s *Store) recreate() {
	if !s.recreating.TryLock() {
		return
	}
	defer s.recreating.Unlock()
	if time.Since(s.lastRecreate) < time.Second {
		return
	}
	s.lastRecreate = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.js.CreateOrUpdateKeyValue(ctx, s.cfg); err != nil {
		s.o.Logger.Warn("dedup bucket not recreated yet", "err", err)
		return
	}
	s.o.Logger.Info("dedup bucket recreated", "bucket", Bucket)
}

func (s *Store) claimBudget(ctx context.Context) time.Duration {
	budget := time.Second
	if d, ok := ctx.Deadline(); ok {
		if q := time.Until(d) / 4; q < budget {
			budget = q
		}
	}
	return budget
}

type result struct {
	body []byte
	err  error
}

// own runs the handler, under the claim at rev, or (rev 0) claiming the
// key only if the handler outlasts ClaimAfter; the claim is refreshed until
// the reply is stored. The handler outlives ctx.
func (s *Store) own(ctx context.Context, key string, rev uint64, run Handler, outcome Outcome) ([]byte, Outcome, error) {
	var last uint64 // the claim's last revision, for finish
	body, err := s.runBounded(ctx, func(hctx context.Context) ([]byte, error) {
		stop := s.hold(key, rev)
		defer func() { last = stop() }()
		return run(hctx)
	}, func(body []byte, err error) { s.finish(key, last, body, err) })
	return body, outcome, err
}

// first runs a first delivery's handler, in this goroutine: the common
// case, so it costs no goroutine, channel or lookup of its own. A timer
// claims the key only if the handler is still running after ClaimAfter.
// The handler outlives the request's deadline (up to HandlerTimeout): a
// reply that comes too late for this delivery is stored for the retry.
func (s *Store) first(key string, since time.Time, run Handler) ([]byte, Outcome, error) {
	hctx, cancel := context.WithTimeout(context.Background(), s.o.HandlerTimeout)
	r := s.started(key, since)
	body, err := run(hctx)
	cancel()
	s.finish(key, s.ended(r), body, err)
	return body, Ran, err
}

// inflight is a first delivery's handler while it runs; the watcher claims
// its key once it has run for ClaimAfter.
type inflight struct {
	key   string
	start time.Time
	stop  func() uint64 // set by the watcher with the claim; guarded by Store.mu
}

// started registers a running handler: a map entry, no timer or
// goroutine, which is what most handlers (done in microseconds) cost.
func (s *Store) started(key string, since time.Time) *inflight {
	r := &inflight{key: key, start: since}
	s.mu.Lock()
	s.inflight[r] = struct{}{}
	s.mu.Unlock()
	return r
}

// ended unregisters it and releases its claim, if the watcher made one; it
// returns the claim's last revision, 0 when none.
func (s *Store) ended(r *inflight) uint64 {
	s.mu.Lock()
	delete(s.inflight, r)
	stop := r.stop
	s.mu.Unlock()
	if stop == nil {
		return 0
	}
	return stop()
}

// watch claims the keys of handlers running longer than ClaimAfter, long
// before WeChat could retry them (5 s).
func (s *Store) watch() {
	t := time.NewTicker(max(s.o.ClaimAfter/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.recent.tick(now)
			s.mu.Lock()
			for r := range s.inflight {
				if r.stop == nil && now.Sub(r.start) >= s.o.ClaimAfter {
					r.stop = s.keep(r.key, 0)
				}
			}
			s.mu.Unlock()
		}
	}
}

// Close stops the watcher and the lookups, and gives the replies' memory
// back.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		if s.lookupSub != nil {
			_ = s.lookupSub.Unsubscribe()
		}
		s.recent.close()
	})
}

// runBounded runs the handler past ctx (up to HandlerTimeout) and returns
// its result if it comes by ctx's deadline, ErrPending otherwise. after,
// when set, sees the result once it has been handed back: answer first,
// the store is for retries.
func (s *Store) runBounded(ctx context.Context, run Handler, after func([]byte, error)) ([]byte, error) {
	done := make(chan result, 1)
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		hctx, cancel := context.WithTimeout(context.Background(), s.o.HandlerTimeout)
		defer cancel()
		body, err := run(hctx)
		done <- result{body, err}
		if after != nil {
			after(body, err)
		}
	}()
	select {
	case r := <-done:
		return r.body, r.err
	case <-ctx.Done():
		return nil, ErrPending
	}
}

// hold keeps a claim on key while the handler runs: from rev, or from a
// claim created after ClaimAfter when rev is 0. stop returns the claim's
// last revision, 0 when none is held.
func (s *Store) hold(key string, rev uint64) (stop func() uint64) {
	if rev != 0 {
		return s.keep(key, rev)
	}
	// Most handlers finish long before ClaimAfter: a timer that never
	// fires costs them nothing more.
	var (
		mu      sync.Mutex
		stopped bool
		inner   func() uint64
	)
	t := time.AfterFunc(s.o.ClaimAfter, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			inner = s.keep(key, 0)
		}
	})
	return func() uint64 {
		if t.Stop() {
			return 0
		}
		mu.Lock()
		stopped = true
		in := inner
		mu.Unlock()
		if in == nil {
			return 0
		}
		return in()
	}
}

// keep holds a claim: from rev, or creating it at once when rev is 0.
func (s *Store) keep(key string, rev uint64) (stop func() uint64) {
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		if rev == 0 {
			ctx, cancel := context.WithTimeout(context.Background(), s.o.Lease/3)
			r, err := s.kv.Create(ctx, key, s.claim)
			cancel()
			if err != nil {
				// Another delivery holds it (a duplicate faster than WeChat
				// sends them), or the store is down: run on regardless.
				s.o.Logger.Warn("dedup claim for a slow handler", "dedup_key", key, "err", err)
				return
			}
			rev = r
		}
		t := time.NewTicker(s.o.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), s.o.Lease/3)
				r, err := s.kv.Update(ctx, key, s.claim, rev)
				cancel()
				switch {
				case err == nil:
					rev = r
				case bus.IsKVConflict(err):
					s.o.Logger.Warn("dedup claim taken over while the handler ran", "dedup_key", key)
					rev = 0
					return
				default:
					s.o.Logger.Warn("dedup claim refresh", "dedup_key", key, "err", err)
				}
			}
		}
	}()
	return func() uint64 { close(quit); <-finished; return rev }
}

// finish stores the reply over the claim at rev, or on error releases the
// claim so that a retry runs the handler again. A handler that finished
// before it claimed (rev 0, the common case) keeps its reply in this
// worker's memory, where a retry's lookup finds it.
func (s *Store) finish(key string, rev uint64, body []byte, err error) {
	if rev == 0 {
		if err == nil {
			s.recent.put(key, body, time.Now())
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err != nil {
		s.o.Logger.Warn("handler failed; claim released for a retry", "dedup_key", key, "err", err)
		if derr := s.kv.Delete(ctx, key, jetstream.LastRevision(rev)); derr != nil {
			s.o.Logger.Warn("dedup release claim", "dedup_key", key, "err", derr)
		}
		return
	}
	v := make([]byte, 0, len(replyPrefix)+len(body))
	v = append(append(v, replyPrefix...), body...)
	if _, err = s.kv.Put(ctx, key, v); err != nil {
		s.o.Logger.Warn("dedup store reply", "dedup_key", key, "err", err)
	}
}

// await waits for the key's reply. Staleness is judged by this process's
// clock alone: a claim whose revision does not move for a lease is dead.
func (s *Store) await(ctx context.Context, key string, run Handler) ([]byte, Outcome, error) {
	w, err := s.kv.Watch(ctx, key)
	if err != nil {
		if ctx.Err() != nil {
			return nil, Stored, ErrPending
		}
		s.metrics.unavailable.Inc()
		body, err := s.runBounded(ctx, run, nil)
		return body, Unguarded, err
	}
	defer func() { _ = w.Stop() }()
	stale := time.NewTimer(s.o.Lease)
	defer stale.Stop()
	var rev uint64 // the last claim's revision; 0: no entry
	seen := false
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, Stored, ErrPending
			}
			if e == nil { // initial value delivered, or none: the key just expired
				if !seen {
					if body, out, ok, err := s.tryCreate(ctx, key, run); ok {
						return body, out, err
					}
				}
				continue
			}
			seen = true
			if e.Operation() != jetstream.KeyValuePut {
				rev = 0 // released or expired: free to claim
				if body, out, ok, err := s.tryCreate(ctx, key, run); ok {
					return body, out, err
				}
				continue
			}
			if v := e.Value(); bytes.HasPrefix(v, []byte(replyPrefix)) {
				s.metrics.stored.Inc()
				return v[len(replyPrefix):], Stored, nil
			}
			rev = e.Revision()
			stale.Reset(s.o.Lease)
		case <-stale.C:
			if rev != 0 {
				if r, err := s.kv.Update(ctx, key, s.claim, rev); err == nil {
					s.metrics.expired.Inc()
					s.o.Logger.Info("dedup claim expired, taken over", "dedup_key", key)
					return s.own(ctx, key, r, run, TookOver)
				}
			}
			// The key may have aged out of the bucket without a marker.
			if body, out, ok, err := s.tryCreate(ctx, key, run); ok {
				return body, out, err
			}
			stale.Reset(s.o.Lease)
		case <-ctx.Done():
			return nil, Stored, ErrPending
		}
	}
}

// tryCreate claims a key found free; ok is false when another got it first.
func (s *Store) tryCreate(ctx context.Context, key string, run Handler) (body []byte, out Outcome, ok bool, err error) {
	r, err := s.kv.Create(ctx, key, s.claim)
	if err != nil {
		return nil, 0, false, nil
	}
	body, out, err = s.own(ctx, key, r, run, Ran)
	return body, out, true, err
}

// Wait blocks until every handler still running has finished (and stored
// its reply), or ctx ends: a stopping worker lets slow handlers finish.
func (s *Store) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.running.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dedup: handlers still running: %w", ctx.Err())
	}
}
