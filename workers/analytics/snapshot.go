package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

// snapshot writes the state, when it moved, pruned of people older than
// the retention. Every value is written first: a leader that replays from
// the snapshot applies the events after it, and finds those before it in
// the values.
func (a *applier) snapshot(ctx context.Context) error {
	if a.st.seq == a.lastSnap {
		return nil
	}
	if err := a.flush(ctx); err != nil {
		return err
	}
	if len(a.series.changed) > 0 || len(a.st.dirty) > 0 {
		return errors.New("values not all written yet")
	}
	if n := a.st.prune(time.Now(), a.r.o.Streams.MaxAge); n > 0 {
		a.logger.Info("analytics: people past the retention forgotten", "people", n)
	}
	b := a.st.encode()
	if _, err := a.obj.PutBytes(ctx, snapshotName, b); err != nil {
		return err
	}
	a.lastSnap = a.st.seq
	people, followers, _ := a.st.size()
	a.r.m.snapshotBytes.Set(float64(len(b)))
	a.r.m.people.Set(float64(people))
	a.r.m.followers.Set(float64(followers))
	return nil
}

// finish writes what it can before the leader steps down or stops.
func (a *applier) finish() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.flush(ctx); err != nil {
		a.logger.Warn("analytics: last values not written", "err", err)
	}
	if err := a.snapshot(ctx); err != nil {
		a.logger.Warn("analytics: last values or snapshot not written", "err", err)
	}
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
		if a.st.rebuilding && info.NumPending == 0 {
			a.st.rebuilding = false
		}
	}
	people, followers, scenes := a.st.size()
	var unattributed int64
	for _, acct := range a.st.accounts {
		unattributed += acct.unattributed
	}
	b, _ := json.Marshal(stats.Status{
		Leader: a.r.o.ID, Epoch: a.st.epoch, AppliedSeq: a.st.seq, Pending: a.pending, Rebuilding: a.st.rebuilding,
		TimeZone: a.r.o.Zone.String(), Accounts: len(a.st.accounts), Scenes: scenes, People: people, Followers: followers,
		Unattributed: unattributed, Inexact: a.st.inexact, Updated: time.Now().UTC(),
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
