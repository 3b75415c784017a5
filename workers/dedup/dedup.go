// Package dedup makes a reply reach a WeChat user once: it runs each
// message's handler once across worker replicas, answers WeChat's retries
// with the first run's reply, and keeps, per message, the one record the
// replies and the late sender share, so that a reply goes either as an
// answer to a retry or as a late reply, never both. The states and who
// moves a key between them are the table in docs/reply-once.md; the code in
// once.go follows it.
//
// The common case costs NATS nothing: a first delivery runs its handler at
// once and keeps its reply in this worker's memory for TTL, where a retry's
// lookup finds it. Only a handler still running after ClaimAfter, a retry,
// and a late reply write to the bucket.
package dedup

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

	"github.com/wxgate/wxgate/shared/bus"
)

// Bucket is the KV bucket of the replies' states, by dedup key. BucketTTL is
// how long a key lives after its last write: past WeChat's retries and the
// acknowledgement of the unanswered event it settles.
const (
	Bucket    = "wxgate_replies"
	BucketTTL = time.Hour
)

// Defaults: WeChat retries about every 5 s, three times, so a reply kept in
// memory must live past about 20 s; 30 s leaves room.
const (
	DefaultTTL            = 30 * time.Second
	DefaultLease          = 3 * time.Second
	DefaultClaimAfter     = time.Second
	DefaultHandlerTimeout = 20 * time.Second
)

var (
	// ErrPending means the deadline passed before a reply existed. The
	// handler may still be running; it stores its reply for what comes next.
	ErrPending = errors.New("reply not ready before the deadline")
	// ErrNotMarked comes with a reply a retry may not answer with as is: it
	// could not be marked passive, so a late reply may still send it.
	ErrNotMarked = errors.New("reply not marked")
	// ErrUnavailable means the bucket could not be read or written.
	ErrUnavailable = errors.New("replies store unavailable")
	// ErrSettled means another got to the key first: a retry answered with
	// the reply, or a late send has it.
	ErrSettled = errors.New("reply already settled")
)

// Outcome says how a reply was produced.
type Outcome int

const (
	Ran       Outcome = iota // this call ran the handler
	Stored                   // another run's reply, found or awaited
	TookOver                 // a stale lease was taken over and the handler ran
	Unguarded                // the bucket was out of reach; the handler ran without a lease
	Late                     // a late reply has it: answer "success"
)

func (o Outcome) String() string {
	return [...]string{"ran", "stored", "took_over", "unguarded", "late"}[o]
}

// Options configure a Store. Logger and Registerer are required.
type Options struct {
	TTL   time.Duration // how long a reply is kept in this worker's memory (DEDUP_TTL)
	Lease time.Duration // a lease not renewed for this long is stale
	// ClaimAfter is how long a first delivery is in hand before its key is
	// claimed; well under WeChat's 5 s, so every retry finds the claim.
	ClaimAfter time.Duration
	Replicas   int // bucket replicas (JETSTREAM_REPLICAS)
	// HandlerTimeout bounds a handler that outlives its request.
	HandlerTimeout time.Duration
	// Memory bounds the replies kept in this worker's memory, in bytes
	// (DEDUP_MEMORY_MB). Default DefaultMemory.
	Memory int
	// LookupWait is how long a lookup waits for a worker that has the
	// message: one answers in a millisecond, so silence past it means none
	// has. Default 250ms.
	LookupWait time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (o *Options) setDefaults() {
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
	if o.LookupWait <= 0 {
		o.LookupWait = 250 * time.Millisecond
	}
}

func (o *Options) validate() error {
	if o.Logger == nil || o.Registerer == nil {
		return errors.New("dedup: Options.Logger and Registerer are required")
	}
	return nil
}

// Store is one worker's side of the replies' states.
type Store struct {
	o       Options
	js      jetstream.JetStream
	nc      *nats.Conn
	holder  []byte // this worker's name in leases
	metrics metrics
	running sync.WaitGroup // handlers still running
	lookups *nats.Subscription
	kick    chan struct{} // an operation found the bucket gone
	ctx     context.Context
	stop    context.CancelFunc
	bg      sync.WaitGroup
	close   sync.Once

	mu     sync.Mutex
	kv     jetstream.KeyValue // nil until set up
	down   error              // why the bucket cannot be used; nil when it can
	recent *recent            // replies this worker answered lately
	inHand map[string]*InHand // first deliveries in this worker's hands
}

type metrics struct {
	duplicates, stored, expired, unavailable prometheus.Counter
}

// Open starts a Store. The bucket is set up in the background, and again
// whenever it is found gone; Check says why it cannot be used meanwhile.
func Open(js jetstream.JetStream, owner string, o Options) (*Store, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	f := promauto.With(o.Registerer)
	s := &Store{
		o: o, js: js, nc: js.Conn(), holder: []byte(owner),
		kick:   make(chan struct{}, 1),
		down:   errors.New("not set up yet"),
		recent: newRecent(o.TTL, o.Memory, min(1<<20, o.Memory)),
		inHand: map[string]*InHand{},
		metrics: metrics{
			duplicates: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_duplicates_total",
				Help: "Retries that found their message's reply, or its handler, already at work (answered with it, waited for it, or left to its late reply).",
			}),
			stored: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_replies_from_store_total",
				Help: "Retries answered with the reply another run produced, at once or after waiting for it.",
			}),
			expired: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_claims_expired_total",
				Help: "Leases left unrenewed (their worker died) and taken over.",
			}),
			unavailable: f.NewCounter(prometheus.CounterOpts{
				Name: "wxgate_worker_dedup_unavailable_total",
				Help: "Retries answered while the replies store was out of reach: their reply could not be marked.",
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
	}, func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(s.recent.bytes) })
	sub, err := s.nc.Subscribe(LookupSubject, s.answerLookup)
	if err != nil {
		return nil, fmt.Errorf("dedup lookups: %w", err)
	}
	s.lookups = sub
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.bg.Add(2)
	go s.supervise()
	go s.watch()
	return s, nil
}

// Check reports whether the bucket can be used.
func (s *Store) Check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down != nil {
		return fmt.Errorf("replies store %s: %w", Bucket, s.down)
	}
	return nil
}

// supervise sets the bucket up, and again when an operation finds it gone
// (deleted, JetStream restarted without it, or away): a second after a
// failed try, a tenth of one after a kick that follows a good one.
func (s *Store) supervise() {
	defer s.bg.Done()
	for first := true; ; first = false {
		kv, err := s.setup()
		s.mu.Lock()
		if err == nil {
			s.kv = kv
		}
		was := s.down
		s.down = err
		s.mu.Unlock()
		switch {
		case err != nil && (was == nil || first):
			s.o.Logger.Warn("replies store cannot be set up", "bucket", Bucket, "err", err)
		case err == nil && was != nil:
			s.o.Logger.Info("replies store set up", "bucket", Bucket)
		}
		next := time.After(time.Second)
		if err == nil {
			next = time.After(100 * time.Millisecond)
			select { // wait for a reason to look again
			case <-s.ctx.Done():
				return
			case <-s.kick:
			}
		}
		select {
		case <-s.ctx.Done():
			return
		case <-next:
		}
	}
}

func (s *Store) setup() (jetstream.KeyValue, error) {
	// Short: with JetStream switched off the request is not refused, it
	// goes unanswered, and the next try should come soon after it is back.
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	cfg := jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "wxgate: what became of each reply (docs/reply-once.md), by dedup key",
		History:     1,
		TTL:         BucketTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    s.o.Replicas,
	}
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, cfg)
	if err == nil {
		return kv, nil
	}
	// The version before this one kept the bucket in memory, which cannot
	// be changed in place: its contents (claims and replies for 30 s) go.
	if old, oerr := s.js.KeyValue(ctx, Bucket); oerr == nil {
		if st, serr := old.Status(ctx); serr == nil && st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage == jetstream.MemoryStorage {
			s.o.Logger.Warn("replies store: the memory bucket of an earlier version is replaced", "bucket", Bucket)
			if err = s.js.DeleteKeyValue(ctx, Bucket); err == nil {
				kv, err = s.js.CreateKeyValue(ctx, cfg)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	return kv, nil
}

// bucket is the bucket, or ErrUnavailable while it is not set up.
func (s *Store) bucket() (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv == nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, s.down)
	}
	return s.kv, nil
}

// failed turns an error of the bucket into ErrUnavailable. One that says
// the bucket, or JetStream, is gone marks the store down and has it set up
// again; a slow answer does not.
func (s *Store) failed(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		s.mu.Lock()
		first := s.down == nil
		s.down = err
		s.mu.Unlock()
		if first {
			s.o.Logger.Warn("replies store lost; setting it up again", "bucket", Bucket, "err", err)
		}
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// budget is how long one read may take within ctx: a store slower than a
// quarter of the request's time is treated as down, since answering
// matters more than deduplicating.
func budget(ctx context.Context) time.Duration {
	b := time.Second
	if d, ok := ctx.Deadline(); ok {
		b = min(b, time.Until(d)/4)
	}
	return b
}

// Close stops the lookups and the background work, and drops the replies
// kept in memory.
func (s *Store) Close() {
	s.close.Do(func() {
		s.stop()
		_ = s.lookups.Unsubscribe()
		s.bg.Wait()
		s.mu.Lock()
		s.recent.close()
		s.mu.Unlock()
	})
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

// lease is the lease on key in the bucket.
func (s *Store) lease(key string) (bus.Lease, error) {
	kv, err := s.bucket()
	return bus.Lease{KV: kv, Key: key, TTL: s.o.Lease}, err
}
