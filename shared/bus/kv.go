package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// IsKVConflict reports whether a KV create or compare-and-set lost to
// another writer.
func IsKVConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// Bucket is a KV bucket (one value a key, file storage) opened on first
// use and created then if it does not exist. One that exists is never
// changed: its owner's replicas and limits stay. Two processes creating it
// at once both get it.
type Bucket struct {
	nc  *nats.Conn
	cfg jetstream.KeyValueConfig

	mu sync.Mutex
	kv jetstream.KeyValue
}

// NewBucket describes the bucket name on nc; nc may be nil (no bus: KV
// fails).
func NewBucket(nc *nats.Conn, name, description string, replicas int) *Bucket {
	return &Bucket{nc: nc, cfg: jetstream.KeyValueConfig{Bucket: name, Description: description,
		History: 1, Storage: jetstream.FileStorage, Replicas: max(replicas, 1)}}
}

// KV opens the bucket, or creates it.
func (b *Bucket) KV(ctx context.Context) (jetstream.KeyValue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	if b.nc == nil {
		return nil, fmt.Errorf("kv %s: no NATS connection", b.cfg.Bucket)
	}
	js, err := jetstream.New(b.nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, b.cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, b.cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, b.cfg.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", b.cfg.Bucket, err)
	}
	b.kv = kv
	return kv, nil
}

// Forget makes the next KV open the bucket again, creating it if it went
// (deleted, or NATS restarted without its data).
func (b *Bucket) Forget() {
	b.mu.Lock()
	b.kv = nil
	b.mu.Unlock()
}
