package bus

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// IsKVConflict reports whether a KV create or compare-and-set lost to
// another writer.
func IsKVConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// OpenOrCreateKV opens the bucket cfg names, creating it with cfg when it
// does not exist, and never changes one that does (its owner's replicas
// and limits stay). Two processes creating it at once both get it.
func OpenOrCreateKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	return kv, err
}
