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
	r      *Role
	js     jetstream.JetStream
	store  *stats.Store
	kv     jetstream.KeyValue // the analytics bucket
	obj    jetstream.ObjectStore
	st     *state
	series *series
	// known holds the totals this leader last read or wrote: their point
	// (epoch, sequence) and KV revision.
	known   map[string]stats.DocRev
	pending uint64
	cons    jetstream.Consumer
	// consumer is the name of the ordered consumer the last event came
	// from: nats.go makes it again under a new name after a reset.
	consumer string
	lastSnap uint64    // st.seq at the last snapshot
	flushed  time.Time // the last flush
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
	// Every scene's totals are written once more at the first flush where
	// their value is behind the state (a bucket lost and made again, a
	// leader that died between its writes), with the revisions read in
	// one pass.
	docs, err := store.Docs(sctx)
	if err != nil {
		return err
	}
	var newest uint64
	for key, d := range docs {
		a.known[key] = d
		newest = max(newest, d.Doc.Epoch)
	}
	if err := a.load(sctx, newest, len(docs) > 0); err != nil {
		return err
	}
	a.series = newSeries(a.st)
	a.st.touchAll()
	a.labels(sctx)
	cancel()
	defer func() {
		// The state carries on in this process only when every change it
		// made to the values was written; otherwise the next leader
		// replays from the snapshot.
		r.last = nil
		if len(a.series.changed) == 0 {
			r.last = a.st
		}
	}()
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
// when it last led is taken instead when it is further along (the
// snapshot behind it, or lost with NATS's data). With no snapshot it can
// use while values exist (newest is their latest epoch), the counts are
// rebuilt from the stream in a new epoch: a snapshot of the version
// before accounts and series (8af83c1), one of another time zone, or one
// lost.
func (a *applier) load(ctx context.Context, newest uint64, values bool) error {
	b, err := a.obj.GetBytes(ctx, snapshotName)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("read the analytics snapshot: %w", err)
	}
	var st *state
	var derr error
	if err == nil {
		st, derr = decodeState(b, a.r.o.Zone)
	}
	if last := a.r.last; last != nil && (st == nil || derr != nil || ahead(last, st)) {
		a.st = last
		a.logger.Info("analytics: carrying on from the state held here", "seq", last.seq)
		return nil
	}
	switch {
	case err == nil && derr == nil:
		a.st, a.lastSnap = st, st.seq
		people, _, scenes := st.size()
		a.logger.Info("analytics snapshot loaded", "seq", st.seq, "scenes", scenes, "people", people)
	case err == nil || values:
		// The stream is the truth: rebuild from it rather than stop.
		if derr != nil {
			a.logger.Warn("analytics: the snapshot cannot be used; rebuilding the counts from the event stream", "err", derr)
			if old := (&reader{stats.Reader{B: b, Kind: errSnapshot}}); old.Uvarint() == 1 { // the version before series: its epoch follows
				newest = max(newest, old.Uvarint())
			}
		} else {
			a.logger.Warn("analytics: counts stored without a snapshot; rebuilding them from the event stream")
		}
		a.st = newState(a.r.o.Zone)
		a.restart(newest+1, 0)
	default:
		a.st = newState(a.r.o.Zone)
	}
	return nil
}

// restart starts the counts again at epoch, from the stream's first
// event: a rebuild (request is its revision, 0 for one the leader
// decided).
func (a *applier) restart(epoch, request uint64) {
	st := newState(a.r.o.Zone)
	st.epoch, st.base, st.rebuilt, st.rebuilding, st.stream = epoch, epoch, max(request, a.st.rebuilt), true, a.st.stream
	a.st, a.series, a.lastSnap = st, newSeries(st), ^uint64(0)
}

// labels takes the codes' labels of every account the state counts:
// a scene's group counts from now on.
func (a *applier) labels(ctx context.Context) {
	if a.r.o.Labels == nil {
		return
	}
	for id, acct := range a.st.accounts {
		l, err := a.r.o.Labels.Labels(ctx, id)
		if err != nil {
			a.logger.Debug("analytics: labels not read", "account", id, "err", err)
			continue
		}
		acct.setLabels(l)
	}
}

// ahead reports whether state a is at a later point than b.
func ahead(a, b *state) bool {
	if a.stream != b.stream {
		return a.epoch > b.epoch
	}
	return a.epoch > b.epoch || (a.epoch == b.epoch && a.seq > b.seq)
}
