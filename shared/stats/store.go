// Package stats is the analytics' counts as they are stored and served:
// the KV formats the analytics leader (workers/analytics) writes, and the
// JSON and CSV API every admin listener serves from them.
//
// Per account: each scene's all-time totals in the bucket wxgate_scenes
// (s.<account>.<scene, base64url>, JSON), and each universe's (a scene, a
// group, the account) counts per local day and hour in wxgate_series
// (d.<account>.<YYYYMMDD>.<universe> and h.…, binary; see Day and Hours).
package stats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/accounts"
)

// SceneDoc is a scene's stored totals, as of stream sequence Seq in
// generation Epoch. Writes compare (Epoch, Seq): a value is never moved
// back.
type SceneDoc struct {
	Totals
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// Store is the analytics' buckets: written by the leader, read by the
// API and the exporters of every process.
type Store struct {
	KV     jetstream.KeyValue // the totals
	Series jetstream.KeyValue // the day and hour values
	JS     jetstream.JetStream
	// Prefix and SeriesPrefix are the buckets' subject prefixes, for
	// pipelined writes.
	Prefix, SeriesPrefix string
	created              [2]time.Time // when the buckets' streams were created, to notice new ones

	viewOnce sync.Once
	view     *view
}

// Buckets: the totals, the series, and the analytics' own (the leader's
// lease, rebuild requests, status; and, as an object store of the same
// name, snapshots).
const (
	BucketName    = "wxgate_scenes"
	SeriesName    = "wxgate_series"
	AnalyticsName = "wxgate_analytics"
)

// OpenStore creates or opens the buckets: for the analytics leader, which
// owns them.
func OpenStore(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	var kvs [2]jetstream.KeyValue
	for i, b := range [2][2]string{{BucketName, "wxgate per-scene totals, per account"},
		{SeriesName, "wxgate counts per account, universe (scene, group, account) and local day or hour"}} {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      b[0],
			Description: b[1],
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		})
		if err != nil {
			return nil, fmt.Errorf("kv %s: %w", b[0], err)
		}
		kvs[i] = kv
	}
	return newStore(ctx, js, kvs)
}

// OpenExistingStore opens the buckets without creating or changing them:
// for processes that only read (the ingress's API), so that their
// settings (replicas) never override the leader's.
func OpenExistingStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	var kvs [2]jetstream.KeyValue
	for i, name := range []string{BucketName, SeriesName} {
		kv, err := js.KeyValue(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("kv %s: %w", name, err)
		}
		kvs[i] = kv
	}
	return newStore(ctx, js, kvs)
}

func newStore(ctx context.Context, js jetstream.JetStream, kvs [2]jetstream.KeyValue) (*Store, error) {
	s := &Store{KV: kvs[0], Series: kvs[1], JS: js, Prefix: "$KV." + BucketName + ".", SeriesPrefix: "$KV." + SeriesName + "."}
	created, err := s.bucketsCreated(ctx)
	if err != nil {
		return nil, err
	}
	s.created = created
	return s, nil
}

func (s *Store) bucketsCreated(ctx context.Context) (out [2]time.Time, err error) {
	for i, kv := range []jetstream.KeyValue{s.KV, s.Series} {
		st, err := kv.Status(ctx)
		if err != nil {
			return out, fmt.Errorf("kv %s: %w", kv.Bucket(), err)
		}
		if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
			out[i] = bs.StreamInfo().Created
		}
	}
	return out, nil
}

// ErrBucketReplaced means a bucket was deleted and made again since the
// store opened it: watches of the old one see nothing new.
var ErrBucketReplaced = errors.New("analytics bucket replaced")

// CheckBucket reports whether the buckets the store opened are still there.
func (s *Store) CheckBucket(ctx context.Context) error {
	created, err := s.bucketsCreated(ctx)
	if err != nil {
		return err
	}
	for i := range created {
		if !created[i].Equal(s.created[i]) {
			return ErrBucketReplaced
		}
	}
	return nil
}

// TotalsKey is the key of a scene's totals. Only an accounts.ValidID
// account may reach it.
func TotalsKey(account, scene string) string { return "s." + account + "." + b64(scene) }

// totalsAccount is the account of a totals key; ok is false for a key of
// an older version (s.<scene>, the default account's before accounts),
// which a rebuild replaces.
func totalsAccount(key string) (account string, ok bool) {
	rest, _ := strings.CutPrefix(key, "s.")
	account, rest, ok = strings.Cut(rest, ".")
	return account, ok && accounts.ValidID(account) && !strings.Contains(rest, ".")
}

// Docs reads every totals value with its revision, those of an older
// version's keys included.
func (s *Store) Docs(ctx context.Context) (map[string]DocRev, error) {
	w, err := s.KV.Watch(ctx, "s.>", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read totals: %w", err)
	}
	defer w.Stop()
	out := map[string]DocRev{}
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // all current values delivered
				return out, nil
			}
			var d SceneDoc
			if err := json.Unmarshal(e.Value(), &d); err == nil {
				out[e.Key()] = DocRev{d, e.Revision()}
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("read totals: %w", ctx.Err())
		}
	}
}

// AccountTotals reads one account's totals.
type AccountTotals struct {
	s       *Store
	account string
}

// For is account's totals.
func (s *Store) For(account string) AccountTotals { return AccountTotals{s, account} }

// Scene reads one scene's totals; ok is false when it has none.
func (a AccountTotals) Scene(ctx context.Context, scene string) (t Totals, ok bool, err error) {
	e, err := a.s.KV.Get(ctx, TotalsKey(a.account, scene))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Totals{}, false, nil
	}
	if err != nil {
		return Totals{}, false, fmt.Errorf("read totals: %w", err)
	}
	var d SceneDoc
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return Totals{}, false, fmt.Errorf("read totals: %w", err)
	}
	return d.Totals.withNet(), true, nil
}

// Scenes reads every scene's totals of the account.
func (a AccountTotals) Scenes(ctx context.Context) ([]Totals, error) {
	v, err := a.s.readView(ctx)
	if err != nil {
		return nil, err
	}
	return v.totals(a.account), nil
}

// Scene and Scenes are the account default's: what the QR-code page shows
// until it takes an account.
func (s *Store) Scene(ctx context.Context, scene string) (Totals, bool, error) {
	return s.For(accounts.DefaultID).Scene(ctx, scene)
}

// Scenes reads the default account's totals.
func (s *Store) Scenes(ctx context.Context) ([]Totals, error) {
	return s.For(accounts.DefaultID).Scenes(ctx)
}

// analytics opens the analytics bucket (lease, rebuild requests, status).
func (s *Store) analytics(ctx context.Context) (jetstream.KeyValue, error) {
	return s.JS.KeyValue(ctx, AnalyticsName)
}

// RequestRebuild asks the leader to rebuild every count from the event
// stream; it returns the request's revision.
func (s *Store) RequestRebuild(ctx context.Context) (uint64, error) {
	kv, err := s.analytics(ctx)
	if err != nil {
		return 0, err
	}
	return kv.Put(ctx, RebuildKey, []byte(time.Now().UTC().Format(time.RFC3339Nano)))
}

// Status reads the leader's last report; ok is false when none has.
func (s *Store) Status(ctx context.Context) (st Status, ok bool, err error) {
	kv, err := s.analytics(ctx)
	if err != nil {
		return Status{}, false, err
	}
	e, err := kv.Get(ctx, StatusKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Status{}, false, nil
	}
	if err != nil {
		return Status{}, false, err
	}
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return Status{}, false, err
	}
	return st, true, nil
}

// StoreFunc returns the store, or an error while it cannot be opened yet
// (NATS or JetStream not reachable, no leader has made the buckets).
type StoreFunc func(context.Context) (*Store, error)

// OpenOnUse is a StoreFunc that opens the buckets on first use, without
// creating or changing them: for processes that serve the API but do not
// run the analytics (the ingress, a replies-only worker), so that their
// settings never override the owner's.
func OpenOnUse(nc *nats.Conn) StoreFunc {
	var (
		mu    sync.Mutex
		store *Store
	)
	return func(ctx context.Context) (*Store, error) {
		mu.Lock()
		defer mu.Unlock()
		if store != nil {
			return store, nil
		}
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, err
		}
		s, err := OpenExistingStore(ctx, js)
		if err != nil {
			return nil, err
		}
		store = s
		return store, nil
	}
}

// Keys of the analytics bucket.
const (
	LeaseKey   = "leader"  // the leader's lease: its ID, renewed
	RebuildKey = "rebuild" // its revision is the latest rebuild request
	StatusKey  = "status"  // the leader's progress, for the API
)

// DocRev is a stored totals value and its revision.
type DocRev struct {
	Doc SceneDoc
	Rev uint64
}

// Totals are the counts of one scene: all time, or over a period (with
// the period before it in Previous).
type Totals struct {
	Scene string `json:"scene"`
	// Label and Group are the scene's QR code's, when it has one.
	Label          string  `json:"label,omitempty"`
	Group          string  `json:"group,omitempty"`
	Scans          int64   `json:"scans"`           // subscribe + scan
	SubscribeScans int64   `json:"subscribe_scans"` // scans by people not yet following
	ScanScans      int64   `json:"scan_scans"`      // scans by followers
	NewFollowers   int64   `json:"new_followers"`   // follows through this scene
	UniquePeople   int64   `json:"unique_people"`   // distinct people that scanned it (within EVENTS_MAX_AGE)
	Unfollows      int64   `json:"unfollows"`       // unfollows of people who followed through it
	NetFollowers   int64   `json:"net_followers"`   // new followers − unfollows
	Previous       *Counts `json:"previous,omitempty"`
	// FirstSeq is the stream sequence of the scene's first event (all
	// time only).
	FirstSeq  uint64    `json:"first_seq,omitzero"`
	FirstSeen time.Time `json:"first_seen,omitzero"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
}

func (t Totals) withNet() Totals {
	t.NetFollowers = t.NewFollowers - t.Unfollows
	return t
}

// Counts are the totals' counts.
func (t Totals) Counts() Counts {
	return Counts{t.Scans, t.SubscribeScans, t.ScanScans, t.NewFollowers, t.UniquePeople, t.Unfollows, t.NewFollowers - t.Unfollows}
}

func (t *Totals) setCounts(c Counts) {
	t.Scans, t.SubscribeScans, t.ScanScans, t.NewFollowers, t.UniquePeople, t.Unfollows, t.NetFollowers =
		c.Scans, c.SubscribeScans, c.ScanScans, c.NewFollowers, c.UniquePeople, c.Unfollows, c.NetFollowers
}

// Status is the leader's progress, as the API shows it.
type Status struct {
	Leader     string `json:"leader"`
	Epoch      uint64 `json:"epoch"`       // generation of the values written
	AppliedSeq uint64 `json:"applied_seq"` // last event stream sequence applied
	Pending    uint64 `json:"pending"`     // scene events not yet applied
	Rebuilding bool   `json:"rebuilding"`  // a rebuild has not caught up with the stream yet
	TimeZone   string `json:"time_zone"`   // the zone of the dates (ANALYTICS_TIME_ZONE)
	Accounts   int    `json:"accounts"`
	Scenes     int    `json:"scenes"`
	People     int    `json:"people"`    // people held for unique counts and attribution
	Followers  int    `json:"followers"` // current followers with a scene
	// Unattributed counts unfollows of people with no recorded follow,
	// over the whole stream (the metric counts per process).
	Unattributed int64 `json:"unattributed_unfollows"`
	// Inexact counts late scans the leader could not place exactly (more
	// than 14 days late, or in an hour of a day already counted), over
	// the whole stream: counted in scans, not in unique people.
	Inexact int64     `json:"inexact_scans"`
	Updated time.Time `json:"updated"`
}
