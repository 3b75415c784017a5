// Package stats is the per-scene counts as they are stored and served: the
// KV format the analytics leader (workers/analytics) writes, and the JSON
// API every admin listener serves from it.
package stats

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SceneDoc is a scene's stored value: its totals, as of stream sequence
// Seq in rebuild generation Epoch. Writes compare (Epoch, Seq): a leader
// that finds a newer value than its own has been replaced, and stops.
type SceneDoc struct {
	Totals
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// Store keeps the totals in a JetStream KV bucket, one value per scene
// under "s.<scene, base64url>": written by the leader, read by the API and
// the exporters of every process.
type Store struct {
	KV      jetstream.KeyValue
	JS      jetstream.JetStream
	Prefix  string    // the bucket's subject prefix, for pipelined writes
	created time.Time // when the bucket's stream was created, to notice a new one
}

// Buckets: the totals, and the analytics' own (the leader's lease, rebuild
// requests, status; and, as an object store of the same name, snapshots).
const (
	BucketName    = "wxgate_scenes"
	AnalyticsName = "wxgate_analytics"
)

// OpenStore creates or opens the totals bucket: for the analytics leader,
// which owns it.
func OpenStore(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketName,
		Description: "wxgate per-scene totals",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	return newStore(ctx, js, kv)
}

// OpenExistingStore opens the totals bucket without creating or changing
// it: for processes that only read the totals (the ingress's API), so that
// their settings (replicas) never override the consumer's.
func OpenExistingStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, BucketName)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	return newStore(ctx, js, kv)
}

func newStore(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (*Store, error) {
	s := &Store{KV: kv, JS: js, Prefix: "$KV." + BucketName + "."}
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return nil, err
	}
	s.created = created
	return s, nil
}

func (s *Store) bucketCreated(ctx context.Context) (time.Time, error) {
	st, err := s.KV.Status(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		return bs.StreamInfo().Created, nil
	}
	return time.Time{}, nil
}

// ErrBucketReplaced means the totals bucket was deleted and made again
// since the store opened it: watches of the old one see nothing new.
var ErrBucketReplaced = errors.New("totals bucket replaced")

// CheckBucket reports whether the bucket the store opened is still there.
func (s *Store) CheckBucket(ctx context.Context) error {
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return err
	}
	if !created.Equal(s.created) {
		return ErrBucketReplaced
	}
	return nil
}

// SceneKey is the key of a scene's totals.
func SceneKey(scene string) string { return "s." + base64.RawURLEncoding.EncodeToString([]byte(scene)) }

// Scenes reads every scene's totals from the bucket (a value this version
// cannot read is left out).
func (s *Store) Scenes(ctx context.Context) ([]Totals, error) {
	docs, err := s.Docs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Totals, 0, len(docs))
	for _, d := range docs {
		out = append(out, d.Doc.Totals)
	}
	return out, nil
}

// Docs reads every scene value with its revision.
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

// Scene reads one scene's totals; ok is false when it has none.
func (s *Store) Scene(ctx context.Context, scene string) (t Totals, ok bool, err error) {
	e, err := s.KV.Get(ctx, SceneKey(scene))
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
	return d.Totals, true, nil
}

// analytics opens the analytics bucket (lease, rebuild requests, status).
func (s *Store) analytics(ctx context.Context) (jetstream.KeyValue, error) {
	return s.JS.KeyValue(ctx, AnalyticsName)
}

// RequestRebuild asks the leader to rebuild the totals from the event
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

// OpenOnUse is a StoreFunc that opens the totals bucket on first use,
// without creating or changing it: for processes that serve the API but do
// not run the analytics (the ingress, a replies-only worker), so that their
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

// DocRev is a stored scene value and its revision.
type DocRev struct {
	Doc SceneDoc
	Rev uint64
}

// Totals are the counts of one scene.
type Totals struct {
	Scene          string `json:"scene"`
	Scans          int64  `json:"scans"`           // subscribe + scan
	SubscribeScans int64  `json:"subscribe_scans"` // scans by people not yet following
	ScanScans      int64  `json:"scan_scans"`      // scans by followers
	NewFollowers   int64  `json:"new_followers"`   // follows through this scene
	UniquePeople   int64  `json:"unique_people"`   // distinct people that scanned it (within EVENTS_MAX_AGE)
	Unfollows      int64  `json:"unfollows"`       // unfollows of people who followed through it
	// FirstSeq is the stream sequence of the scene's first event; it orders
	// scenes the same way in every process (the metrics label bound).
	FirstSeq  uint64    `json:"first_seq"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// Status is the leader's progress, as the API shows it.
type Status struct {
	Leader     string `json:"leader"`
	Epoch      uint64 `json:"epoch"`       // rebuild generation
	AppliedSeq uint64 `json:"applied_seq"` // last event stream sequence applied
	Pending    uint64 `json:"pending"`     // scene events not yet applied
	Rebuilding bool   `json:"rebuilding"`  // a rebuild has not caught up with the stream yet
	Scenes     int    `json:"scenes"`
	People     int    `json:"people"`    // (scene, person) pairs held for unique counts
	Followers  int    `json:"followers"` // current followers with a scene
	// Unattributed counts unfollows of people with no recorded follow,
	// over the whole stream (the metric counts per process).
	Unattributed int64     `json:"unattributed_unfollows"`
	Updated      time.Time `json:"updated"`
}
