package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	defaults *Engine
	bucket   *bus.Bucket
	engines  *bus.View[*Engine]
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
	b := bus.NewBucket(o.Conn, Bucket, "wxgate: each account's reply rules (the revision is If-Match's)", o.Replicas)
	return &Set{defaults: def, bucket: b, engines: bus.StartView(b, o.Logger, decode)}, nil
}

// decode compiles an account's stored rules; rules that do not compile (a
// newer version's) leave the account with its last ones.
func decode(_ string, b []byte) (*Engine, error) {
	var d doc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	return Compile(d.Rules)
}

// Stop ends the watch.
func (s *Set) Stop() { s.engines.Stop() }

// Engine returns the account's compiled rules (the defaults when it has
// none stored).
func (s *Set) Engine(account string) *Engine {
	if e, ok := s.engines.Map()[account]; ok {
		return e
	}
	return s.defaults
}

// Ready is closed once the stored rules have been read.
func (s *Set) Ready() <-chan struct{} { return s.engines.Ready() }

// Check reports whether the rules are current.
func (s *Set) Check() error { return s.engines.Check() }

// Get reads an account's stored rules: stored is false (and rev 0) when it
// has none, and the defaults answer it.
func (s *Set) Get(ctx context.Context, account string) (rules []Rule, rev uint64, stored bool, err error) {
	kv, err := s.bucket.KV(ctx)
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
	kv, err := s.bucket.KV(ctx)
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
