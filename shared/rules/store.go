package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
)

// Bucket keeps each account's rules, one value per account under its id;
// the value's revision is the rules' revision (If-Match).
const Bucket = "wxgate_rules"

// MaxDocBytes bounds an account's stored list, as JSON: what one NATS
// message carries, with room to spare.
const MaxDocBytes = 900 << 10

// ErrRevision means the rules changed since the revision the caller had.
var ErrRevision = errors.New("the rules changed since that revision")

type doc struct {
	Rules   []Rule    `json:"rules"`
	Updated time.Time `json:"updated_at"`
}

// Options configure a Set. Logger is required; Conn may be nil (no bus:
// every account answers by the defaults).
type Options struct {
	Conn     *nats.Conn
	Defaults []Rule
	Replicas int
	Logger   *slog.Logger
}

// Set is every account's rules, compiled, as this process knows them: kept
// current by a watch of the bucket, so a change applies at every replica
// within a moment. An account with no rules stored answers by the defaults.
type Set struct {
	o        Options
	defaults *Engine

	engines atomic.Pointer[map[string]*Engine]
	down    atomic.Pointer[error]

	mu     sync.Mutex
	kv     jetstream.KeyValue
	cancel context.CancelFunc
	done   chan struct{}
}

// Start compiles the defaults and, with a connection, starts following the
// bucket.
func Start(o Options) (*Set, error) {
	if o.Logger == nil {
		return nil, errors.New("rules: Options.Logger is required")
	}
	def, err := Compile(o.Defaults)
	if err != nil {
		return nil, fmt.Errorf("default rules: %w", err)
	}
	s := &Set{o: o, defaults: def, done: make(chan struct{})}
	m := map[string]*Engine{}
	s.engines.Store(&m)
	if o.Conn == nil {
		close(s.done)
		return s, nil
	}
	notYet := errors.New("rules not read yet")
	s.down.Store(&notYet)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.keep(ctx)
	return s, nil
}

// Stop ends the watch.
func (s *Set) Stop() {
	if s.cancel != nil {
		s.cancel()
	}
	<-s.done
}

// Engine returns the account's compiled rules (the defaults when it has
// none stored).
func (s *Set) Engine(account string) *Engine {
	if e, ok := (*s.engines.Load())[account]; ok {
		return e
	}
	return s.defaults
}

// Defaults is the default rules' engine.
func (s *Set) Defaults() *Engine { return s.defaults }

// Check reports whether the rules are current.
func (s *Set) Check() error {
	if p := s.down.Load(); p != nil {
		return fmt.Errorf("rules: %w", *p)
	}
	return nil
}

func (s *Set) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, nil
	}
	if s.o.Conn == nil {
		return nil, errors.New("rules: no NATS connection")
	}
	js, err := jetstream.New(s.o.Conn)
	if err != nil {
		return nil, err
	}
	kv, err := bus.OpenOrCreateKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "wxgate: each account's reply rules (the revision is If-Match's)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(s.o.Replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	s.kv = kv
	return kv, nil
}

func (s *Set) keep(ctx context.Context) {
	defer close(s.done)
	for attempt := 0; ; attempt++ {
		err := s.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		s.down.Store(&err)
		s.mu.Lock()
		s.kv = nil
		s.mu.Unlock()
		if attempt == 0 || attempt%60 == 0 {
			s.o.Logger.Warn("rules: not watching the bucket; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *Set) watch(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	kv, err := s.bucket(sctx)
	cancel()
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	next := map[string]*Engine{}
	current := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("the rules watch ended")
			}
			if e == nil {
				current = true
				s.engines.Store(&next)
				s.down.Store(nil)
				continue
			}
			if current {
				cur := *s.engines.Load()
				next = make(map[string]*Engine, len(cur)+1)
				for k, v := range cur {
					next[k] = v
				}
			}
			s.apply(next, e)
			if current {
				s.engines.Store(&next)
			}
		}
	}
}

func (s *Set) apply(m map[string]*Engine, e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		delete(m, e.Key())
		return
	}
	var d doc
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		s.o.Logger.Error("rules: an unreadable value; the account keeps its last rules", "account", e.Key(), "err", err)
		return
	}
	eng, err := Compile(d.Rules)
	if err != nil {
		s.o.Logger.Error("rules: stored rules that do not compile; the account keeps its last rules", "account", e.Key(), "err", err)
		return
	}
	m[e.Key()] = eng
}

// Get reads an account's stored rules: stored is false (and rev 0) when it
// has none, and the defaults answer it.
func (s *Set) Get(ctx context.Context, account string) (rules []Rule, rev uint64, stored bool, err error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return nil, 0, false, err
	}
	e, err := kv.Get(ctx, account)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return s.defaults.Rules(), 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("read rules: %w", err)
	}
	var d doc
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return nil, 0, false, fmt.Errorf("read rules: %w", err)
	}
	return d.Rules, e.Revision(), true, nil
}

// Put stores an account's rules if they are still at revision ifMatch (0:
// none stored yet), and returns the new revision.
func (s *Set) Put(ctx context.Context, account string, rules []Rule, ifMatch uint64) (uint64, error) {
	if err := Validate(rules); err != nil {
		return 0, err
	}
	if rules == nil {
		rules = []Rule{}
	}
	b, err := json.Marshal(doc{Rules: rules, Updated: time.Now().UTC()})
	if err != nil {
		return 0, err
	}
	if len(b) > MaxDocBytes {
		return 0, &Error{Index: -1, Field: "rules", Msg: fmt.Sprintf("%d bytes of JSON, more than %d", len(b), MaxDocBytes)}
	}
	kv, err := s.bucket(ctx)
	if err != nil {
		return 0, err
	}
	var rev uint64
	if ifMatch == 0 {
		rev, err = kv.Create(ctx, account, b)
	} else {
		rev, err = kv.Update(ctx, account, b, ifMatch)
	}
	if bus.IsKVConflict(err) {
		return 0, ErrRevision
	}
	if err != nil {
		return 0, fmt.Errorf("store rules: %w", err)
	}
	return rev, nil
}
