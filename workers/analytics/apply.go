package analytics

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
)

// maxBatch bounds the events taken from the server at once.
const maxBatch = 500

// run consumes the stream from where the state stands until ctx ends, an
// error stops it, a rebuild is requested (errRebuild: state reset), or the
// stream is not the state's any more (errStreamChanged).
func (a *applier) run(ctx context.Context) error {
	f, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer f.stop()
	a.r.m.leader.Set(1)
	defer a.r.m.leader.Set(0)
	a.r.markAlive()

	// What changed is written every FlushEvery: one write per value per
	// tick, whatever the rate (a write per event would churn the file
	// store), and sooner when many events wait.
	tick := time.NewTicker(a.r.o.FlushEvery)
	defer tick.Stop()
	snap := time.NewTicker(a.r.o.SnapshotEvery)
	defer snap.Stop()
	check := time.NewTicker(a.r.o.CheckEvery)
	defer check.Stop()
	var stalled stall
	for {
		select {
		case <-ctx.Done():
			a.finish()
			return context.Cause(ctx)
		case err := <-f.failed:
			a.finish()
			return fmt.Errorf("consumer lost: %w", err)
		case m := <-f.msgs:
			if err := a.drain(ctx, m, f.msgs); err != nil {
				// Start again from the stream as it is now (open checks its
				// identity); what was not applied is delivered again.
				a.logger.Warn("analytics: starting the consumer again", "err", err)
				return err
			}
			if a.series.ops >= maxOps { // read their values, to apply the changes at once from now on
				if _, err := a.flushSeries(ctx, false); err != nil {
					return err
				}
			}
		case <-tick.C:
			// Catching up with a backlog (a rebuild, a leader that was
			// away, an import), values are written once it is applied (or
			// every catchUpFlush), not at every tick: a day's value once,
			// not once a tick while its events go by.
			if a.pending > 0 && time.Since(a.flushed) < catchUpFlush {
				continue
			}
			if err := a.flush(ctx); err != nil {
				return err
			}
		case <-snap.C:
			if err := a.snapshot(ctx); err != nil {
				a.logger.Warn("analytics snapshot not written", "err", err)
			}
		case e, ok := <-f.rebuilds:
			if !ok { // ctx ended, or the watch by itself
				a.finish()
				return cmp.Or(context.Cause(ctx), errors.New("the watch of rebuild requests ended"))
			}
			if a.rebuild(e) {
				return errRebuild
			}
		case <-check.C:
			if err := a.check(ctx, &stalled); err != nil {
				a.finish()
				return err
			}
		}
	}
}

// feed is what a run reads: the stream's events, the loss of its consumer,
// and rebuild requests.
type feed struct {
	msgs     chan jetstream.Msg
	failed   chan error
	rebuilds <-chan jetstream.KeyValueEntry
	stop     func()
}

// open follows the event stream from where the state stands: it finds the
// stream (made again when lost), takes a new stream's identity into the
// state, and starts an ordered consumer after the state's sequence, and a
// watch of rebuild requests.
func (a *applier) open(ctx context.Context) (*feed, error) {
	info, err := a.streamInfo(ctx)
	if err != nil {
		return nil, err
	}
	a.follow(info)
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: sceneFilters, DeliverPolicy: jetstream.DeliverAllPolicy}
	if a.st.seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, a.st.seq+1
	}
	cons, err := a.js.OrderedConsumer(ctx, events.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	a.cons, a.consumer = cons, ""
	f := &feed{msgs: make(chan jetstream.Msg, 4*maxBatch), failed: make(chan error, 1)}
	// done releases a delivery blocked on a full msgs once the run is over:
	// nats.go closes the subscription only after its callback returns.
	done := make(chan struct{})
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case f.msgs <- m:
		case <-done: // not applied: the next run starts after a.st.seq
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
				case f.failed <- err:
				default:
				}
				return
			}
			a.logger.Warn("analytics consume", "err", err)
		}))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	// The latest request first (one made while no leader ran), then each
	// new one as it comes.
	w, err := a.kv.Watch(ctx, stats.RebuildKey, jetstream.IgnoreDeletes())
	f.stop = func() {
		close(done)
		cc.Stop()
		<-cc.Closed()
		if w != nil {
			_ = w.Stop()
		}
	}
	if err != nil {
		f.stop()
		return nil, fmt.Errorf("watch rebuild requests: %w", err)
	}
	f.rebuilds = w.Updates()
	return f, nil
}

// streamInfo reads the event stream's info; a stream lost with NATS's data
// is made again (the ingress stores into it).
func (a *applier) streamInfo(ctx context.Context) (*jetstream.StreamInfo, error) {
	stream, err := a.js.Stream(ctx, events.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if err = events.Ensure(ctx, a.js, a.r.o.Streams); err == nil {
			stream, err = a.js.Stream(ctx, events.Stream)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", events.Stream, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", events.Stream, err)
	}
	return info, nil
}

// follow takes the stream's identity into the state.
func (a *applier) follow(info *jetstream.StreamInfo) {
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
}

// drain applies m and every event already delivered after it.
func (a *applier) drain(ctx context.Context, m jetstream.Msg, msgs <-chan jetstream.Msg) error {
	for {
		if err := a.applyMsg(ctx, m); err != nil {
			return err
		}
		select {
		case m = <-msgs:
		default:
			return nil
		}
	}
}

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
		// consumer again: the stream may have been replaced since open
		// looked (an idle leader, NATS restarted without its data).
		changed, err := a.streamChanged(ctx)
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
		reason := PoisonUndecodable
		switch {
		case errors.Is(err, errAccount):
			reason = PoisonAccount
		case errors.Is(err, errTime):
			reason = PoisonTime
		}
		a.r.quarantine(a.js, m, a.st.stream, seq, reason, err)
		a.st.seq = seq
		return nil
	}
	if ev.kind != "" && a.st.accounts[ev.account] == nil {
		// An account's first event: its codes' groups count from it on.
		acct := a.st.account(ev.account)
		if a.r.o.Labels != nil {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if l, err := a.r.o.Labels.Labels(lctx, ev.account); err == nil {
				acct.setLabels(l)
			}
			cancel()
		}
	}
	unattributed, inexact := a.st.apply(seq, ev, a.series)
	if unattributed {
		a.r.m.unattributed.Inc()
	}
	if inexact {
		a.st.inexact++
		a.r.m.inexact.Inc()
	}
	kind := ev.kind
	if kind == "" {
		kind = "other"
	}
	a.r.m.events.WithLabelValues(kind).Inc()
	if a.st.rebuilding && a.pending == 0 {
		a.st.rebuilding = false
	}
	return nil
}

// maxOps is how many changes may wait for their values to be read before
// they are (a bound on a replay's memory); catchUpFlush is how long
// values may wait to be written while a backlog is applied.
const (
	maxOps       = 200000
	catchUpFlush = 30 * time.Second
)

// streamChanged reports whether the stream is no longer the one the state
// counts (by its creation time); err when the server cannot tell.
func (a *applier) streamChanged(ctx context.Context) (changed bool, err error) {
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

// check looks, every CheckEvery, at what no event tells, and writes the
// status. The stream replaced under an idle consumer: nats.go's reset
// starts it at the old sequence in the new stream, where it may wait with
// nothing pending, unseen by the stall check.
func (a *applier) check(ctx context.Context, stalled *stall) error {
	if changed, _ := a.streamChanged(ctx); changed {
		return errStreamChanged
	}
	a.labels(ctx)
	pending, infoErr := a.writeStatus(ctx)
	if err := stalled.check(pending, infoErr, a.st.seq); err != nil {
		return err
	}
	a.r.markAlive()
	return nil
}

// stall notices a consumer that does not deliver: one the server no longer
// answers about, or one with events pending that applies none, for five
// checks running. The leader then starts a new one.
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
		return fmt.Errorf("consumer stalled: %d events pending, none applied for %d checks", pending, s.still)
	}
	return nil
}

// rebuild resets the state for a rebuild request made since the state's
// (a new epoch, from the stream's first event), and reports whether it did.
func (a *applier) rebuild(e jetstream.KeyValueEntry) bool {
	if e == nil || e.Revision() <= a.st.rebuilt { // nil: the latest request delivered
		return false
	}
	a.logger.Info("analytics rebuild from the event stream", "request", e.Revision())
	a.restart(a.st.epoch+1, e.Revision())
	a.r.m.rebuilds.Inc()
	return true
}
