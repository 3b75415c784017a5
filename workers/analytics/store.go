package analytics

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

// sceneDoc is a scene's stored value: its totals, as of stream sequence
// Seq in rebuild generation Epoch. Writes compare (Epoch, Seq): a leader
// that finds a newer value than its own has been replaced, and stops.
type sceneDoc struct {
	Totals
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// Store keeps the totals in a JetStream KV bucket, one value per scene
// under "s.<scene, base64url>": written by the leader, read by the API and
// the exporters of every process.
type Store struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	prefix  string    // the bucket's subject prefix, for pipelined writes
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
	s := &Store{kv: kv, js: js, prefix: "$KV." + BucketName + "."}
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return nil, err
	}
	s.created = created
	return s, nil
}

func (s *Store) bucketCreated(ctx context.Context) (time.Time, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("kv %s: %w", BucketName, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		return bs.StreamInfo().Created, nil
	}
	return time.Time{}, nil
}

// errBucketReplaced means the totals bucket was deleted and made again
// since the store opened it: watches of the old one see nothing new.
var errBucketReplaced = errors.New("totals bucket replaced")

// checkBucket reports whether the bucket the store opened is still there.
func (s *Store) checkBucket(ctx context.Context) error {
	created, err := s.bucketCreated(ctx)
	if err != nil {
		return err
	}
	if !created.Equal(s.created) {
		return errBucketReplaced
	}
	return nil
}

func sceneKey(scene string) string { return "s." + base64.RawURLEncoding.EncodeToString([]byte(scene)) }

// Scenes reads every scene's totals from the bucket (a value this version
// cannot read is left out).
func (s *Store) Scenes(ctx context.Context) ([]Totals, error) {
	docs, err := s.docs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Totals, 0, len(docs))
	for _, d := range docs {
		out = append(out, d.doc.Totals)
	}
	return out, nil
}

// docs reads every scene value with its revision.
func (s *Store) docs(ctx context.Context) (map[string]docRev, error) {
	w, err := s.kv.Watch(ctx, "s.>", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read totals: %w", err)
	}
	defer w.Stop()
	out := map[string]docRev{}
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // all current values delivered
				return out, nil
			}
			var d sceneDoc
			if err := json.Unmarshal(e.Value(), &d); err == nil {
				out[e.Key()] = docRev{d, e.Revision()}
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("read totals: %w", ctx.Err())
		}
	}
}

// Scene reads one scene's totals; ok is false when it has none.
func (s *Store) Scene(ctx context.Context, scene string) (t Totals, ok bool, err error) {
	e, err := s.kv.Get(ctx, sceneKey(scene))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Totals{}, false, nil
	}
	if err != nil {
		return Totals{}, false, fmt.Errorf("read totals: %w", err)
	}
	var d sceneDoc
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return Totals{}, false, fmt.Errorf("read totals: %w", err)
	}
	return d.Totals, true, nil
}

// analytics opens the analytics bucket (lease, rebuild requests, status).
func (s *Store) analytics(ctx context.Context) (jetstream.KeyValue, error) {
	return s.js.KeyValue(ctx, AnalyticsName)
}

// RequestRebuild asks the leader to rebuild the totals from the event
// stream; it returns the request's revision.
func (s *Store) RequestRebuild(ctx context.Context) (uint64, error) {
	kv, err := s.analytics(ctx)
	if err != nil {
		return 0, err
	}
	return kv.Put(ctx, rebuildKey, []byte(time.Now().UTC().Format(time.RFC3339Nano)))
}

// Status reads the leader's last report; ok is false when none has.
func (s *Store) Status(ctx context.Context) (st Status, ok bool, err error) {
	kv, err := s.analytics(ctx)
	if err != nil {
		return Status{}, false, err
	}
	e, err := kv.Get(ctx, statusKey)
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
