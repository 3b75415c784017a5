package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/stats"
)

const snapshotName = "state" // the object holding the snapshot

// applier is the leader's work: the state, the stream and the stores.
type applier struct {
	r     *Role
	js    jetstream.JetStream
	store *stats.Store
	kv    jetstream.KeyValue // the analytics bucket
	obj   jetstream.ObjectStore
	st    *state
	// known holds the scene values this leader last read or wrote: their
	// point (epoch, sequence) and KV revision.
	known map[string]stats.DocRev
	// rebuilding is true from a rebuild's start until it has caught up
	// with the stream (the request's revision is kept in the state).
	rebuilding bool
	pending    uint64
	cons       jetstream.Consumer
	// consumer is the name of the ordered consumer the last event came
	// from: nats.go makes it again under a new name after a reset.
	consumer string
	lastSnap uint64 // st.seq at the last snapshot
	logger   *slog.Logger
}

// lead applies the event stream while ctx (the lease) lasts. It returns
// why it stopped; the role then stands by, or tries again.
func (r *Role) lead(ctx context.Context, js jetstream.JetStream, store *stats.Store, kv jetstream.KeyValue) error {
	a := &applier{r: r, js: js, store: store, kv: kv, known: map[string]stats.DocRev{}, logger: r.o.Logger}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	obj, err := js.CreateOrUpdateObjectStore(sctx, jetstream.ObjectStoreConfig{
		Bucket:      stats.AnalyticsName,
		Description: "wxgate analytics: the leader's snapshot (state and the stream sequence it reached)",
		Storage:     jetstream.FileStorage,
		Replicas:    max(r.o.Streams.Replicas, 1),
	})
	if err != nil {
		return fmt.Errorf("object store %s: %w", stats.AnalyticsName, err)
	}
	a.obj = obj
	if err := a.load(sctx); err != nil {
		return err
	}
	// Every scene is written once more at the first flush where its value
	// is behind the state (a bucket lost and made again, a leader that
	// died between its writes), with the revisions read in one pass.
	docs, err := store.Docs(sctx)
	if err != nil {
		return err
	}
	for key, d := range docs {
		a.known[key] = d
	}
	a.st.touchAll()
	cancel()
	defer func() { r.last = a.st }()
	for {
		err := a.run(ctx)
		if !errors.Is(err, errRebuild) && !errors.Is(err, errStreamChanged) {
			return err
		}
	}
}

var (
	errRebuild       = errors.New("rebuild requested")
	errStreamChanged = errors.New("the event stream changed under the consumer")
)

// load reads the snapshot, or starts afresh. A state this process held
// when it last led is taken instead when it is further along (the snapshot
// behind it, or lost with NATS's data).
func (a *applier) load(ctx context.Context) error {
	b, err := a.obj.GetBytes(ctx, snapshotName)
	if last := a.r.last; last != nil {
		if err == nil {
			if st, derr := decodeState(b); derr == nil && !ahead(last, st) {
				a.st, a.lastSnap = st, st.seq
				return nil
			}
		}
		if err == nil || errors.Is(err, jetstream.ErrObjectNotFound) {
			a.st = last
			a.logger.Info("analytics: carrying on from the state held here", "seq", last.seq, "scenes", len(last.scenes))
			return nil
		}
	}
	switch {
	case err == nil:
		st, err := decodeState(b)
		if err != nil {
			// A snapshot this version cannot read: the stream is the
			// truth, so rebuild from it rather than stop.
			a.logger.Error("analytics snapshot unreadable; rebuilding from the stream", "err", err)
			a.st = newState()
			a.st.epoch = 1
			a.rebuilding = true
			return nil
		}
		a.st = st
		a.lastSnap = st.seq
		a.logger.Info("analytics snapshot loaded", "seq", st.seq, "scenes", len(st.scenes))
		return nil
	case errors.Is(err, jetstream.ErrObjectNotFound):
		a.st = newState()
		return nil
	default:
		return fmt.Errorf("read the analytics snapshot: %w", err)
	}
}

// ahead reports whether state a is at a later point than b.
func ahead(a, b *state) bool {
	if a.stream != b.stream {
		return a.epoch > b.epoch
	}
	return a.epoch > b.epoch || (a.epoch == b.epoch && a.seq > b.seq)
}
