package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/stats"
)

// flush writes what changed since the last flush: the day and hour values
// and the scenes' totals. Each write is a compare-and-set that never
// moves a value back (see flushSeries and flushTotals).
func (a *applier) flush(ctx context.Context) error {
	a.flushed = time.Now()
	series, err := a.flushSeries(ctx, true)
	if err != nil {
		return err
	}
	totals, err := a.flushTotals(ctx)
	if err != nil {
		return err
	}
	if conflicts := series + totals; conflicts > 0 {
		a.r.m.conflicts.Add(float64(conflicts))
		a.logger.Debug("analytics: values written meanwhile by another; read again at the next flush", "values", conflicts)
		// Not now: a value whose write failed still holds one of the
		// epoch before, which dropStale would take for one to drop.
		return nil
	}
	if !a.st.rebuilding && a.st.base != 0 {
		a.dropStale(ctx)
	}
	return nil
}

// flushTotals writes the totals of every scene changed since the last
// flush, pipelined, each expecting the revision last known: a value
// already at a later (epoch, sequence) is left alone, since applying is
// deterministic and it is at least as right.
func (a *applier) flushTotals(ctx context.Context) (int, error) {
	dirty := a.st.dirtyScenes()
	// Whatever is not written now stays marked, for the next flush.
	defer func() {
		for _, sc := range dirty {
			if sc.dirty {
				a.st.dirty = append(a.st.dirty, sc)
			}
		}
	}()
	writes, conflicts, err := a.publish(ctx, dirty)
	if err != nil {
		return 0, err
	}
	n, err := a.await(ctx, writes)
	return conflicts + n, err
}

// write is a scene's totals on their way to the bucket.
type write struct {
	sc  *sceneState
	key string
	doc stats.SceneDoc
	f   jetstream.PubAckFuture
}

// publish sends the writes of the scenes, each expecting the revision last
// known; a scene with no value is created at once. conflicts counts the
// scenes found written meanwhile.
func (a *applier) publish(ctx context.Context, scenes []*sceneState) (writes []write, conflicts int, err error) {
	for _, sc := range scenes {
		key := stats.TotalsKey(sc.account.id, sc.Scene)
		k, absent, err := a.stored(ctx, key)
		if err != nil {
			return nil, 0, err
		}
		if newer(k.Doc, a.st) {
			continue // catching up: that value is ahead of us still
		}
		doc := stats.SceneDoc{Totals: sc.Totals, Epoch: a.st.epoch, Seq: a.st.seq}
		doc.NetFollowers = doc.NewFollowers - doc.Unfollows
		b, _ := json.Marshal(doc)
		if absent {
			created, err := a.create(ctx, key, doc, b)
			if err != nil {
				return nil, 0, err
			}
			if created {
				sc.dirty = false
			} else {
				conflicts++
			}
			continue
		}
		f, err := a.js.PublishMsgAsync(&nats.Msg{Subject: a.store.Prefix + key, Data: b}, jetstream.WithExpectLastSequencePerSubject(k.Rev))
		if err != nil {
			return nil, 0, fmt.Errorf("write %s: %w", key, err)
		}
		writes = append(writes, write{sc, key, doc, f})
	}
	return writes, conflicts, nil
}

// stored is the value at key as this leader knows it, read when it does
// not; absent when there is none.
func (a *applier) stored(ctx context.Context, key string) (k stats.DocRev, absent bool, err error) {
	if k, ok := a.known[key]; ok {
		return k, false, nil
	}
	e, err := a.store.KV.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return k, true, nil
	case err != nil:
		return k, false, fmt.Errorf("read %s: %w", key, err)
	}
	var d stats.SceneDoc
	_ = json.Unmarshal(e.Value(), &d)
	return stats.DocRev{Doc: d, Rev: e.Revision()}, false, nil
}

// create writes the value of a scene never written, or deleted (a rebuild
// dropped it): the key's last message may be a tombstone, which a write
// expecting no message would never get past. Create writes over it. Rare:
// a scene's first write under this leader. It reports false when the value
// was written meanwhile: read at the next flush.
func (a *applier) create(ctx context.Context, key string, doc stats.SceneDoc, b []byte) (bool, error) {
	rev, err := a.store.KV.Create(ctx, key, b)
	switch {
	case err == nil:
		a.known[key] = stats.DocRev{Doc: doc, Rev: rev}
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists), isWrongLastSequence(err):
		// Over a tombstone, Create returns the server's error as it is.
		return false, nil
	default:
		return false, fmt.Errorf("write %s: %w", key, err)
	}
}

// await takes the answers to writes; conflicts counts the values someone
// else wrote first (a leader before us, still finishing): read again at
// the next flush.
func (a *applier) await(ctx context.Context, writes []write) (conflicts int, err error) {
	for _, w := range writes {
		select {
		case ack := <-w.f.Ok():
			a.known[w.key] = stats.DocRev{Doc: w.doc, Rev: ack.Sequence}
			w.sc.dirty = false
		case err := <-w.f.Err():
			delete(a.known, w.key)
			if !isWrongLastSequence(err) {
				return conflicts, fmt.Errorf("write %s: %w", w.key, err)
			}
			conflicts++
		case <-ctx.Done():
			return conflicts, context.Cause(ctx)
		}
	}
	return conflicts, nil
}

// newer reports whether a stored value is at a later point than the state.
func newer(d stats.SceneDoc, st *state) bool {
	return d.Epoch > st.epoch || (d.Epoch == st.epoch && d.Seq > st.seq)
}

// dropStale deletes, once a rebuild caught up, the values of an epoch
// before it: totals of scenes the rebuilt counts do not have (their
// events expired, or none explains them, or an older version's keys), and
// day and hour values no event in the stream explains.
func (a *applier) dropStale(ctx context.Context) {
	if a.r.dropped.Load() == a.st.base {
		return
	}
	docs, err := a.store.Docs(ctx)
	if err != nil {
		return
	}
	for key, d := range docs {
		if d.Doc.Epoch < a.st.base {
			if err := a.store.KV.Delete(ctx, key, jetstream.LastRevision(d.Rev)); err == nil {
				delete(a.known, key)
			}
		}
	}
	w, err := a.store.Series.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			break
		}
		if epoch, ok := valueEpoch(e.Value()); !ok || epoch < a.st.base {
			_ = a.store.Series.Delete(ctx, e.Key(), jetstream.LastRevision(e.Revision()))
		}
	}
	a.r.dropped.Store(a.st.base)
}

// valueEpoch is the epoch a day or hour value was written at.
func valueEpoch(b []byte) (uint64, bool) {
	if len(b) < 2 {
		return 0, false
	}
	r := reader{stats.Reader{B: b[1:], Kind: errSnapshot}}
	epoch := r.Uvarint()
	return epoch, r.Err == nil
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
