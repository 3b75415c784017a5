package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Lease is a claim on one key of a KV bucket, the one way wxgate decides
// who does something once: the analytics leader, the access_token refresh,
// a permanent QR code's creation, a slow reply handler. Its holder writes
// the key (any value: its name, or what it is doing) and rewrites it every
// TTL/3 while it works; anyone may take it over, by compare-and-set, once
// its revision has not moved for TTL by their own clock. No time written by
// another host is ever compared: a lease says who holds it, never until
// when.
//
// A holder ends a lease by writing the key's final value (Finish: the reply,
// the code) or deleting it (Release), each a compare-and-set against its own
// last revision, so a holder that lost the lease cannot overwrite the one
// that took it over.
type Lease struct {
	KV  jetstream.KeyValue
	Key string
	TTL time.Duration
}

// ErrLeaseHeld means another holder's lease is live (or the key holds a
// final value): it was not taken.
var ErrLeaseHeld = errors.New("lease held by another")

// Held is a lease this process holds. It is renewed in the background
// until Finish or Release; Lost is closed when a renewal finds it taken
// over, or when it could not be renewed for most of a TTL (another may
// take it over any moment).
type Held struct {
	l       Lease
	value   []byte
	mu      sync.Mutex
	rev     uint64
	lost    chan struct{}
	lostErr error
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	ending  sync.Once
}

// Create takes the lease when the key is absent (or deleted), writing
// value; ErrLeaseHeld when the key exists.
func (l Lease) Create(ctx context.Context, value []byte) (*Held, error) {
	rev, err := l.KV.Create(ctx, l.Key, value)
	if IsKVConflict(err) {
		return nil, ErrLeaseHeld
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", l.Key, err)
	}
	return l.hold(value, rev), nil
}

// TakeOver takes a stale lease whose last revision was rev (see Await);
// ErrLeaseHeld when it moved meanwhile.
func (l Lease) TakeOver(ctx context.Context, value []byte, rev uint64) (*Held, error) {
	r, err := l.KV.Update(ctx, l.Key, value, rev)
	if IsKVConflict(err) {
		return nil, ErrLeaseHeld
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", l.Key, err)
	}
	return l.hold(value, r), nil
}

// Acquire blocks until this process holds the lease, or ctx ends: it
// creates the key, or takes over a lease not renewed for TTL.
func (l Lease) Acquire(ctx context.Context, value []byte) (*Held, error) {
	for {
		h, err := l.Create(ctx, value)
		if !errors.Is(err, ErrLeaseHeld) {
			if err != nil && ctx.Err() == nil {
				// The store is away: try again at the renewal pace.
				select {
				case <-ctx.Done():
				case <-time.After(l.TTL / 3):
				}
				continue
			}
			return h, err
		}
		e, state, err := l.Await(ctx, func(jetstream.KeyValueEntry) bool { return false })
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		case state == Stale:
			if h, err := l.TakeOver(ctx, value, e.Revision()); err == nil {
				return h, nil
			}
		}
	}
}

// What Await found.
type AwaitState int

const (
	Final AwaitState = iota // the key holds a final value (done(e) said so)
	Free                    // the key is absent or deleted: Create may take it
	Stale                   // a lease not renewed for TTL: TakeOver may take it
)

// Await watches the key until done says its value is final, the key is
// free, or the lease on it is stale (its revision unchanged for TTL on
// this process's clock), or ctx ends.
func (l Lease) Await(ctx context.Context, done func(jetstream.KeyValueEntry) bool) (jetstream.KeyValueEntry, AwaitState, error) {
	w, err := l.KV.Watch(ctx, l.Key)
	if err != nil {
		return nil, 0, fmt.Errorf("lease %s: %w", l.Key, err)
	}
	defer func() { _ = w.Stop() }()
	stale := time.NewTimer(l.TTL)
	defer stale.Stop()
	var last jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return nil, 0, fmt.Errorf("lease %s: watch ended", l.Key)
			case e == nil: // the current value is delivered; none: free
				if last == nil {
					return nil, Free, nil
				}
			case e.Operation() != jetstream.KeyValuePut:
				return e, Free, nil
			case done(e):
				return e, Final, nil
			default:
				last = e
				stale.Reset(l.TTL)
			}
		case <-stale.C:
			if last == nil {
				// No value was ever delivered (the key aged out of the
				// bucket without a marker): free.
				return nil, Free, nil
			}
			return last, Stale, nil
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

func (l Lease) hold(value []byte, rev uint64) *Held {
	h := &Held{l: l, value: value, rev: rev, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go h.renew()
	return h
}

func (h *Held) renew() {
	defer close(h.done)
	renewed := time.Now()
	t := time.NewTicker(h.l.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.l.TTL/3)
		h.mu.Lock()
		rev := h.rev
		h.mu.Unlock()
		r, err := h.l.KV.Update(ctx, h.l.Key, h.value, rev)
		cancel()
		switch {
		case err == nil:
			h.mu.Lock()
			h.rev = r
			h.mu.Unlock()
			renewed = time.Now()
		case IsKVConflict(err), errors.Is(err, jetstream.ErrKeyNotFound):
			h.lose(errors.New("taken over"))
			return
		case time.Since(renewed) > h.l.TTL*2/3:
			// Not renewed for most of a TTL: another may take it any
			// moment. Give it up before it can.
			h.lose(fmt.Errorf("not renewed: %w", err))
			return
		}
	}
}

func (h *Held) lose(err error) {
	h.once.Do(func() {
		h.lostErr = fmt.Errorf("lease %s %w", h.l.Key, err)
		close(h.lost)
	})
}

// Lost is closed when the lease is lost; Err then says why.
func (h *Held) Lost() <-chan struct{} { return h.lost }

// Err is why the lease was lost, nil while it is held.
func (h *Held) Err() error {
	select {
	case <-h.lost:
		return h.lostErr
	default:
		return nil
	}
}

// Context returns a context that ends when ctx does or the lease is lost.
func (h *Held) Context(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-h.lost:
			cancel(h.Err())
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// end stops the renewals and returns the last revision held.
func (h *Held) end() uint64 {
	h.ending.Do(func() { close(h.stop) })
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

// Finish ends the lease by writing the key's final value, unless the lease
// was taken over meanwhile (ErrLeaseHeld): the holder's work is then
// another's.
func (h *Held) Finish(ctx context.Context, final []byte) (uint64, error) {
	rev := h.end()
	if h.Err() != nil {
		return 0, ErrLeaseHeld
	}
	r, err := h.l.KV.Update(ctx, h.l.Key, final, rev)
	if IsKVConflict(err) {
		return 0, ErrLeaseHeld
	}
	return r, err
}

// Release ends the lease by deleting the key, if it is still this
// holder's: whoever comes next need not wait a TTL.
func (h *Held) Release(ctx context.Context) error {
	rev := h.end()
	if h.Err() != nil {
		return nil
	}
	err := h.l.KV.Delete(ctx, h.l.Key, jetstream.LastRevision(rev))
	if IsKVConflict(err) {
		return nil
	}
	return err
}
