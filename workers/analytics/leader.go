package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
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

// load reads the snapshot, or starts afresh: from the totals already in
// the bucket when they were written by a version that kept no snapshot. A
// state this process held when it last led is taken instead when it is
// further along (the snapshot behind it, or lost with NATS's data).
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
		return a.baseline(ctx)
	default:
		return fmt.Errorf("read the analytics snapshot: %w", err)
	}
}

// baseline takes the totals of a version that counted from another stream
// (no epoch, no sequence in its values) as the starting point, so an
// upgrade does not reset the dashboards. Unique people counted then are
// not known by person: someone seen before the upgrade who scans again
// counts as new once.
func (a *applier) baseline(ctx context.Context) error {
	docs, err := a.store.Docs(ctx)
	if err != nil {
		return err
	}
	n := 0
	for key, d := range docs {
		if d.Doc.Epoch != 0 || d.Doc.Seq != 0 || d.Doc.Scene == "" {
			continue
		}
		sc := a.st.scene(d.Doc.Scene, 0, d.Doc.FirstSeen)
		sc.Totals = d.Doc.Totals
		sc.FirstSeq = 0
		a.known[key] = d
		n++
	}
	if n > 0 {
		a.logger.Info("analytics: totals of the previous version taken as the baseline", "scenes", n)
	}
	return nil
}

// run consumes the stream from where the state stands until ctx ends, an
// error stops it, or a rebuild is requested (errRebuild: state reset).
func (a *applier) run(ctx context.Context) error {
	stream, err := a.js.Stream(ctx, events.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// Lost with NATS's data: make it again; the ingress stores into it.
		if err = events.Ensure(ctx, a.js, a.r.o.Streams); err == nil {
			stream, err = a.js.Stream(ctx, events.Stream)
		}
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", events.Stream, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", events.Stream, err)
	}
	if created := info.Created.UnixNano(); a.st.stream != created {
		if a.st.stream != 0 {
			// NATS lost the stream and it was made again: its sequences
			// start over. The totals carry on from where they were, in a
			// new generation, so that values written now are not taken for
			// older than those before.
			a.logger.Warn("the event stream was replaced; counting its events from the start", "applied_seq", a.st.seq)
			a.st.epoch++
			a.st.touchAll()
		}
		a.st.stream, a.st.seq = created, 0
	}
	if first := info.State.FirstSeq; a.st.seq+1 < first && info.State.Msgs > 0 {
		a.logger.Warn("events expired before they were applied (the retention is shorter than the outage)", "from", a.st.seq+1, "to", first-1)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: events.SceneSubjects, DeliverPolicy: jetstream.DeliverAllPolicy}
	if a.st.seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, a.st.seq+1
	}
	cons, err := a.js.OrderedConsumer(ctx, events.Stream, cfg)
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	a.cons, a.consumer = cons, ""
	msgs := make(chan jetstream.Msg, 4*maxBatch)
	failed := make(chan error, 1)
	// stop releases a delivery blocked on a full msgs once run returns:
	// nats.go closes the subscription only after its callback returns.
	stop := make(chan struct{})
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-stop: // not applied: the next run starts after a.st.seq
		}
	},
		jetstream.PullMaxMessages(2*maxBatch),
		// Short pulls and heartbeats: a consumer left on a server that is
		// gone is noticed in seconds (and reset by nats.go), not minutes.
		jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrStreamNotFound) ||
				errors.Is(err, jetstream.ErrConsumerNotFound) {
				select {
				case failed <- err:
				default:
				}
				return
			}
			a.logger.Warn("analytics consume", "err", err)
		}))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer func() {
		close(stop)
		cc.Stop()
		<-cc.Closed()
	}()
	a.r.m.leader.Set(1)
	defer a.r.m.leader.Set(0)
	a.r.markAlive()

	// Totals are written every FlushEvery while events flow, and a moment
	// after they stop: at a campaign's rate one write per scene per tick,
	// for a lone scan (the quick start) at once.
	tick := time.NewTicker(a.r.o.FlushEvery)
	defer tick.Stop()
	quiet := time.NewTimer(time.Hour)
	defer quiet.Stop()
	snap := time.NewTicker(a.r.o.SnapshotEvery)
	defer snap.Stop()
	second := time.NewTicker(time.Second)
	defer second.Stop()
	var stalled stall
	for {
		select {
		case <-ctx.Done():
			a.finish()
			return context.Cause(ctx)
		case err := <-failed:
			a.finish()
			return fmt.Errorf("consumer lost: %w", err)
		case m := <-msgs:
			err := a.applyMsg(ctx, m)
			// Take whatever else is ready.
			for more := err == nil; more; {
				select {
				case m := <-msgs:
					err = a.applyMsg(ctx, m)
					more = err == nil
				default:
					more = false
				}
			}
			if err != nil {
				// Start again from the stream as it is now (run checks
				// its identity); what was not applied is delivered again.
				a.logger.Warn("analytics: starting the consumer again", "err", err)
				return err
			}
			quiet.Reset(5 * time.Millisecond)
		case <-tick.C:
			if err := a.flush(ctx); err != nil {
				return err
			}
		case <-quiet.C:
			if err := a.flush(ctx); err != nil {
				return err
			}
		case <-snap.C:
			if err := a.snapshot(ctx); err != nil {
				a.logger.Warn("analytics snapshot not written", "err", err)
			}
		case <-second.C:
			// The stream replaced under an idle consumer: nats.go's reset
			// starts it at the old sequence in the new stream, where it may
			// wait with nothing pending, unseen by the stall check.
			if changed, _ := a.sameStream(ctx); changed {
				a.finish()
				return errStreamChanged
			}
			if asked, err := a.rebuildAsked(ctx); err != nil {
				a.logger.Debug("analytics rebuild check", "err", err)
			} else if asked {
				return errRebuild
			}
			pending, infoErr := a.writeStatus(ctx)
			if err := stalled.check(pending, infoErr, a.st.seq); err != nil {
				a.finish()
				return err
			}
			a.r.markAlive()
		}
	}
}

// stall notices a consumer that does not deliver: one the server no longer
// answers about, or one with events pending that applies none, for five
// seconds running. The leader then starts a new one.
type stall struct {
	failures, still int
	seq             uint64
}

func (s *stall) check(pending uint64, infoErr error, seq uint64) error {
	if infoErr != nil {
		if s.failures++; s.failures >= 5 {
			return fmt.Errorf("consumer info failing: %w", infoErr)
		}
		return nil
	}
	s.failures = 0
	if pending == 0 || seq != s.seq {
		s.still, s.seq = 0, seq
		return nil
	}
	if s.still++; s.still >= 5 {
		return fmt.Errorf("consumer stalled: %d events pending, none applied for %ds", pending, s.still)
	}
	return nil
}

// maxBatch bounds the events taken from the server at once.
const maxBatch = 500

// applyMsg applies one event. It refuses (errStreamChanged) an event from
// a stream other than the one the state counts: the ordered consumer,
// reset after a server restart that lost its data, carries on at the old
// sequence in the new stream, whose events would be counted from the
// middle and then again from the start.
func (a *applier) applyMsg(ctx context.Context, m jetstream.Msg) error {
	meta, err := m.Metadata()
	if err != nil {
		return nil
	}
	if meta.Consumer != a.consumer {
		// The first event of a run, or the first since nats.go made the
		// consumer again: the stream may have been replaced since run
		// looked (an idle leader, NATS restarted without its data).
		changed, err := a.sameStream(ctx)
		if changed {
			return errStreamChanged
		}
		if err != nil {
			return fmt.Errorf("%w: %w", errStreamChanged, err) // cannot tell: start again and look
		}
		a.consumer = meta.Consumer
	}
	seq := meta.Sequence.Stream
	a.pending = meta.NumPending
	a.r.m.pending.Set(float64(meta.NumPending))
	if seq <= a.st.seq {
		return nil // applied already (a consumer reset can deliver it again)
	}
	ev, err := decode(m)
	if err != nil {
		a.r.quarantine(a.js, m, a.st.stream, seq, PoisonUndecodable, err)
		a.st.seq = seq
		return nil
	}
	if a.st.apply(seq, ev) {
		a.r.m.unattributed.Inc()
	}
	kind := ev.kind
	if kind == "" {
		kind = "other"
	}
	a.r.m.events.WithLabelValues(kind).Inc()
	if a.rebuilding && a.pending == 0 {
		a.rebuilding = false
	}
	return nil
}

// sameStream reports whether the stream is no longer the one the state
// counts (by its creation time); err when the server cannot tell.
func (a *applier) sameStream(ctx context.Context) (changed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := a.js.Stream(ctx, events.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", events.Stream, err)
	}
	return s.CachedInfo().Created.UnixNano() != a.st.stream, nil
}

// flush writes the totals of every scene changed since the last flush,
// pipelined, each a compare-and-set that never moves a value back: a
// value already at a later (epoch, sequence) is left alone, since
// applying is deterministic and it is at least as right.
func (a *applier) flush(ctx context.Context) error {
	type write struct {
		sc  *sceneState
		key string
		doc stats.SceneDoc
		f   jetstream.PubAckFuture
	}
	var writes []write
	dirty := a.st.dirtyScenes()
	// Whatever is not written now stays marked, for the next flush.
	defer func() {
		for _, sc := range dirty {
			if sc.dirty {
				a.st.dirty = append(a.st.dirty, sc)
			}
		}
	}()
	conflicts := 0
	for _, sc := range dirty {
		key := stats.SceneKey(sc.Scene)
		k, known := a.known[key]
		absent := false
		if !known {
			e, err := a.store.KV.Get(ctx, key)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
				absent = true
			case err != nil:
				return fmt.Errorf("read %s: %w", key, err)
			default:
				var d stats.SceneDoc
				_ = json.Unmarshal(e.Value(), &d)
				k = stats.DocRev{Doc: d, Rev: e.Revision()}
			}
		}
		if newer(k.Doc, a.st) {
			continue // catching up: that value is ahead of us still
		}
		doc := stats.SceneDoc{Totals: sc.Totals, Epoch: a.st.epoch, Seq: a.st.seq}
		b, _ := json.Marshal(doc)
		if absent {
			// Never written, or deleted (a rebuild dropped it): the key's
			// last message may be a tombstone, which a write expecting no
			// message would never get past. Create writes over it. Rare:
			// a scene's first write under this leader.
			rev, err := a.store.KV.Create(ctx, key, b)
			switch {
			case err == nil:
				a.known[key] = stats.DocRev{Doc: doc, Rev: rev}
				sc.dirty = false
			case errors.Is(err, jetstream.ErrKeyExists), isWrongLastSequence(err):
				// Written meanwhile (over a tombstone, Create returns the
				// server's error as it is): read it at the next flush.
				conflicts++
			default:
				return fmt.Errorf("write %s: %w", key, err)
			}
			continue
		}
		f, err := a.js.PublishMsgAsync(&nats.Msg{Subject: a.store.Prefix + key, Data: b}, jetstream.WithExpectLastSequencePerSubject(k.Rev))
		if err != nil {
			return fmt.Errorf("write %s: %w", key, err)
		}
		writes = append(writes, write{sc, key, doc, f})
	}
	for _, w := range writes {
		select {
		case ack := <-w.f.Ok():
			a.known[w.key] = stats.DocRev{Doc: w.doc, Rev: ack.Sequence}
			w.sc.dirty = false
		case err := <-w.f.Err():
			// Someone else wrote it (a leader before us, still finishing):
			// read it again at the next flush.
			delete(a.known, w.key)
			if !isWrongLastSequence(err) {
				return fmt.Errorf("write %s: %w", w.key, err)
			}
			conflicts++
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	if conflicts > 0 {
		a.r.m.conflicts.Add(float64(conflicts))
		a.logger.Debug("analytics: totals written meanwhile by another; read again at the next flush", "scenes", conflicts)
		// Not now: a scene whose write failed still holds a value of the
		// epoch before, which dropStale would take for one to drop.
		return nil
	}
	if !a.rebuilding && a.st.epoch != 0 {
		a.dropStale(ctx)
	}
	return nil
}

// ahead reports whether state a is at a later point than b.
func ahead(a, b *state) bool {
	if a.stream != b.stream {
		return a.epoch > b.epoch
	}
	return a.epoch > b.epoch || (a.epoch == b.epoch && a.seq > b.seq)
}

// newer reports whether a stored value is at a later point than the state.
func newer(d stats.SceneDoc, st *state) bool {
	return d.Epoch > st.epoch || (d.Epoch == st.epoch && d.Seq > st.seq)
}

// dropStale deletes, after a rebuild caught up, the values of scenes the
// rebuilt state does not have (their events expired, or came from the
// previous version's baseline).
func (a *applier) dropStale(ctx context.Context) {
	if a.st.epoch == 0 || a.r.dropped.Load() == a.st.epoch {
		return
	}
	docs, err := a.store.Docs(ctx)
	if err != nil {
		return
	}
	for key, d := range docs {
		if d.Doc.Epoch < a.st.epoch {
			if err := a.store.KV.Delete(ctx, key, jetstream.LastRevision(d.Rev)); err == nil {
				delete(a.known, key)
			}
		}
	}
	a.r.dropped.Store(a.st.epoch)
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// snapshot writes the state, when it moved, pruned of people older than
// the retention.
func (a *applier) snapshot(ctx context.Context) error {
	if a.st.seq == a.lastSnap {
		return nil
	}
	if n := a.st.prune(time.Now(), a.r.o.Streams.MaxAge); n > 0 {
		a.logger.Info("analytics: people past the retention forgotten", "pairs", n)
	}
	b := a.st.encode()
	if _, err := a.obj.PutBytes(ctx, snapshotName, b); err != nil {
		return err
	}
	a.lastSnap = a.st.seq
	pairs, followers := a.st.size()
	a.r.m.snapshotBytes.Set(float64(len(b)))
	a.r.m.people.Set(float64(pairs))
	a.r.m.followers.Set(float64(followers))
	return nil
}

// finish writes what it can before the leader steps down or stops.
func (a *applier) finish() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.flush(ctx); err != nil {
		a.logger.Warn("analytics: last totals not written", "err", err)
	}
	if err := a.snapshot(ctx); err != nil {
		a.logger.Warn("analytics: last snapshot not written", "err", err)
	}
}

// rebuildAsked reports a rebuild requested since the state's; it resets
// the state for it (a new epoch, from the stream's first event).
func (a *applier) rebuildAsked(ctx context.Context) (bool, error) {
	e, err := a.kv.Get(ctx, stats.RebuildKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if e.Revision() <= a.st.rebuilt {
		return false, nil
	}
	a.logger.Info("analytics rebuild from the event stream", "request", e.Revision())
	st := newState()
	st.epoch, st.stream, st.rebuilt = a.st.epoch+1, a.st.stream, e.Revision()
	a.st, a.rebuilding, a.lastSnap = st, true, ^uint64(0)
	a.r.m.rebuilds.Inc()
	return true, nil
}

// writeStatus publishes the leader's progress for the API, and returns
// the consumer's pending count as the server tells it.
func (a *applier) writeStatus(ctx context.Context) (uint64, error) {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	info, infoErr := a.cons.Info(ictx)
	cancel()
	if infoErr == nil {
		// Idle, no message tells the lag: the server does.
		a.pending = info.NumPending
		a.r.m.pending.Set(float64(info.NumPending))
		if a.rebuilding && info.NumPending == 0 {
			a.rebuilding = false
		}
	}
	pairs, followers := a.st.size()
	b, _ := json.Marshal(stats.Status{
		Leader: a.r.o.ID, Epoch: a.st.epoch, AppliedSeq: a.st.seq, Pending: a.pending, Rebuilding: a.rebuilding,
		Scenes: len(a.st.scenes), People: pairs, Followers: followers, Unattributed: a.st.unattributed, Updated: time.Now().UTC(),
	})
	if _, err := a.kv.Put(ctx, stats.StatusKey, b); err != nil {
		a.logger.Debug("analytics status", "err", err)
	}
	a.r.m.appliedSeq.Set(float64(a.st.seq))
	if infoErr == nil {
		a.r.m.infoTime.SetToCurrentTime()
	}
	return a.pending, infoErr
}
