package analytics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
)

// leaseKey holds the leader's ID in the analytics bucket; its revision
// moves each time the leader renews it.
const leaseKey = "leader"

// lease is the right to apply the stream. It is a KV value that its holder
// rewrites every ttl/3 with a compare-and-set; a value whose revision has
// not moved for ttl, by the candidate's own clock (no clocks compared), is
// taken over with a compare-and-set, so two candidates cannot both win.
type lease struct {
	kv  jetstream.KeyValue
	id  string
	ttl time.Duration
}

// acquire blocks until this process holds the lease, or ctx ends. It
// returns the revision it holds.
func (l *lease) acquire(ctx context.Context) (uint64, error) {
	var seenRev uint64
	var seenAt time.Time
	for {
		e, err := l.kv.Get(ctx, leaseKey)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if rev, err := l.kv.Create(ctx, leaseKey, []byte(l.id)); err == nil {
				return rev, nil
			}
		case err != nil:
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			seenRev = 0 // the store is away: judge staleness afresh when it is back
		default:
			if e.Revision() != seenRev {
				seenRev, seenAt = e.Revision(), time.Now()
			} else if time.Since(seenAt) > l.ttl {
				// Not renewed for a whole lease: its holder is gone.
				if rev, err := l.kv.Update(ctx, leaseKey, []byte(l.id), seenRev); err == nil {
					return rev, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(l.ttl / 3): // the holder renews this often
		}
	}
}

// hold renews the lease at rev until ctx ends or the lease is lost; the
// returned context ends when it is lost (or ctx ends), and release gives
// it up.
func (l *lease) hold(ctx context.Context, rev uint64) (held context.Context, release func()) {
	held, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		renewed := time.Now()
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-held.Done():
				return
			case <-t.C:
			}
			rctx, rcancel := context.WithTimeout(held, l.ttl/3)
			r, err := l.kv.Update(rctx, leaseKey, []byte(l.id), rev)
			rcancel()
			switch {
			case err == nil:
				rev, renewed = r, time.Now()
			case bus.IsKVConflict(err), errors.Is(err, jetstream.ErrKeyNotFound):
				cancel(errors.New("analytics lease taken over"))
				return
			case time.Since(renewed) > l.ttl*2/3:
				// Not renewed for most of a lease: another candidate may
				// take it any moment. Step down before it can.
				cancel(fmt.Errorf("analytics lease not renewed: %w", err))
				return
			}
		}
	}()
	return held, func() {
		cancel(errors.New("released"))
		<-done
		// Let a standby take over now rather than after a whole lease.
		dctx, dcancel := context.WithTimeout(context.Background(), time.Second)
		defer dcancel()
		_ = l.kv.Delete(dctx, leaseKey, jetstream.LastRevision(rev))
	}
}
