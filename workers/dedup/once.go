package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
)

// The states of a key (docs/reply-once.md). A value is the state, ":", and
// its payload: the reply for reply, passive, retry and done; the holder for
// run and sending.
const (
	stateRun     = "run"
	stateReply   = "reply"
	statePassive = "passive"
	MarkSending  = "sending"
	MarkSent     = "sent"
	MarkRetry    = "retry"
	MarkUnknown  = "unknown"
	MarkDone     = "done"
)

// view is what a key holds: its state ("" when absent), its payload, and
// the revision a write compares against (0: absent, and a reply found in a
// worker's memory).
type view struct {
	state string
	body  []byte
	rev   uint64
}

func parse(e jetstream.KeyValueEntry) view {
	state, payload, _ := bytes.Cut(e.Value(), []byte{':'})
	return view{string(state), payload, e.Revision()}
}

// settled says a state is past the handler: it carries the reply, or a
// late send's fate.
func settled(state string) bool {
	switch state {
	case stateReply, statePassive, MarkSending, MarkSent, MarkRetry, MarkUnknown, MarkDone:
		return true
	}
	return false
}

func value(state string, payload []byte) []byte {
	return append(append(append(make([]byte, 0, len(state)+1+len(payload)), state...), ':'), payload...)
}

// Handler produces a reply; ctx ends at the handler timeout, not at the
// request's deadline.
type Handler func(ctx context.Context) ([]byte, error)

// get reads key within a share of ctx's time.
func (s *Store) get(ctx context.Context, key string) (view, error) {
	kv, err := s.bucket()
	if err != nil {
		return view{}, err
	}
	gctx, cancel := context.WithTimeout(ctx, budget(ctx))
	defer cancel()
	e, err := kv.Get(gctx, key)
	switch {
	case err == nil:
		return parse(e), nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return view{}, nil
	case ctx.Err() != nil:
		return view{}, ErrPending
	}
	return view{}, s.failed(err)
}

// write moves key from rev (0: absent) to state; ErrSettled when another
// wrote it first.
func (s *Store) write(ctx context.Context, key string, rev uint64, state string, payload []byte) (uint64, error) {
	kv, err := s.bucket()
	if err != nil {
		return 0, err
	}
	v := value(state, payload)
	if rev == 0 {
		rev, err = kv.Create(ctx, key, v)
	} else {
		rev, err = kv.Update(ctx, key, v, rev)
	}
	switch {
	case err == nil:
		return rev, nil
	case bus.IsKVConflict(err):
		return 0, ErrSettled
	case ctx.Err() != nil:
		return 0, ErrPending
	}
	return 0, s.failed(err)
}

// InHand is a first delivery in this worker's hands, from its arrival to
// its answer: a lookup finds it running here, and a claim made for it
// (after ClaimAfter, or when a lookup asks) is its lease.
type InHand struct {
	key      string
	since    time.Time
	claiming bool          // a claim was started; guarded by Store.mu
	claimed  chan struct{} // closed when the claim is made or refused
	held     *bus.Held     // the lease, when the claim took it
	err      error         // why not: bus.ErrLeaseHeld, or the store's error
}

// Arrived registers a first delivery of key that arrived here at since.
func (s *Store) Arrived(key string, since time.Time) *InHand {
	h := &InHand{key: key, since: since, claimed: make(chan struct{})}
	s.mu.Lock()
	if _, ok := s.inHand[key]; !ok { // a second copy in hand at once runs on its own
		s.inHand[key] = h
	}
	s.mu.Unlock()
	return h
}

// claimLocked starts claiming h's key, once; s.mu is held.
func (s *Store) claimLocked(h *InHand) {
	if h.claiming {
		return
	}
	h.claiming = true
	go func() {
		defer close(h.claimed)
		l, err := s.lease(h.key)
		if err != nil {
			h.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.o.Lease/3)
		defer cancel()
		if h.held, h.err = l.Create(ctx, value(stateRun, s.holder)); h.err != nil && !errors.Is(h.err, bus.ErrLeaseHeld) {
			h.err = s.failed(h.err)
		}
	}()
}

// watch claims the keys of first deliveries in hand longer than
// ClaimAfter, long before WeChat could retry them (5 s), and expires the
// replies kept in memory.
func (s *Store) watch() {
	defer s.bg.Done()
	t := time.NewTicker(max(s.o.ClaimAfter/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			s.recent.tick(now)
			for _, h := range s.inHand {
				if now.Sub(h.since) >= s.o.ClaimAfter {
					s.claimLocked(h)
				}
			}
			s.mu.Unlock()
		}
	}
}

// First runs a first delivery's handler in this goroutine, bounded by
// HandlerTimeout alone: a reply too late for this delivery still serves
// the retry or the late reply. Finished unclaimed (the common case), the
// reply is kept in memory; claimed, it is written over the lease. A
// delivery in hand longer than ClaimAfter claims its key before it runs:
// one a retry or the late sender got to first takes the retry's path
// (deadline is then its ingress's) instead of running the handler again.
func (s *Store) First(h *InHand, deadline time.Time, run Handler) ([]byte, Outcome, error) {
	if time.Since(h.since) >= s.o.ClaimAfter {
		s.mu.Lock()
		s.claimLocked(h)
		s.mu.Unlock()
		<-h.claimed
		if errors.Is(h.err, bus.ErrLeaseHeld) {
			s.finish(h, nil, h.err)
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			defer cancel()
			return s.Retry(ctx, h.key, run)
		}
	}
	hctx, cancel := context.WithTimeout(context.Background(), s.o.HandlerTimeout)
	body, err := run(hctx)
	cancel()
	s.finish(h, body, err)
	return body, Ran, err
}

// finish ends a first delivery: its reply kept in memory (before it leaves
// the hand, so that a lookup always finds one or the other), or written
// over its lease.
func (s *Store) finish(h *InHand, body []byte, err error) {
	s.mu.Lock()
	claimed := h.claiming
	if !claimed && err == nil {
		s.recent.put(h.key, body, time.Now())
	}
	if s.inHand[h.key] == h {
		delete(s.inHand, h.key)
	}
	s.mu.Unlock()
	if !claimed {
		return
	}
	<-h.claimed
	if h.held != nil {
		s.settle(h.key, h.held, body, err)
	} else if err == nil {
		s.remember(h.key, body) // unclaimed after all: as the common case
	}
}

// settle ends a handler's lease: its reply written over it, or (the
// handler failed) the key released, so that the next delivery runs it
// again. A reply that cannot be written is kept in memory, where lookups
// find it; ErrSettled means another took the lease over meanwhile.
func (s *Store) settle(key string, held *bus.Held, body []byte, err error) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err != nil {
		s.o.Logger.Warn("handler failed; its key is released for the next delivery", "dedup_key", key, "err", err)
		if rerr := held.Release(ctx); rerr != nil {
			s.o.Logger.Warn("dedup release", "dedup_key", key, "err", rerr)
		}
		return 0, err
	}
	rev, err := held.Finish(ctx, value(stateReply, body))
	switch {
	case err == nil:
		return rev, nil
	case errors.Is(err, bus.ErrLeaseHeld):
		err = ErrSettled // the one that took it over answers
	default:
		err = s.failed(err)
	}
	s.remember(key, body)
	s.o.Logger.Warn("dedup reply not stored", "dedup_key", key, "err", err)
	return 0, err
}

func (s *Store) remember(key string, body []byte) {
	s.mu.Lock()
	s.recent.put(key, body, time.Now())
	s.mu.Unlock()
}

// resolve finds what key holds: in the bucket, else in a worker's memory
// (view state reply, revision 0), waiting out a handler at work anywhere
// and taking over a dead one's lease. Found nowhere, it runs run under a
// lease (run nil: it returns the key absent). It returns within ctx.
func (s *Store) resolve(ctx context.Context, key string, run Handler) (view, Outcome, error) {
	for {
		v, err := s.get(ctx, key)
		if err != nil {
			return v, Stored, err
		}
		switch v.state {
		case "":
			if run == nil { // nothing will run, nor be sent
				return v, Stored, nil
			}
			body, found, running := s.lookup(ctx, key)
			switch {
			case found:
				return view{state: stateReply, body: body}, Stored, nil
			case running: // claimed for us by the worker that has it in hand
				continue
			}
			v, out, err := s.runLeased(ctx, key, 0, run)
			if errors.Is(err, ErrSettled) {
				continue // another claimed it first
			}
			return v, out, err
		}
		if settled(v.state) {
			return v, Stored, nil
		}
		// A lease (or a value this version does not know, treated alike).
		if run == nil {
			return v, Stored, nil
		}
		l, err := s.lease(key)
		if err != nil {
			return v, Stored, err
		}
		e, st, err := l.Await(ctx, func(e jetstream.KeyValueEntry) bool { return settled(parse(e).state) })
		switch {
		case ctx.Err() != nil:
			return view{}, Stored, ErrPending
		case err != nil:
			return view{}, Stored, s.failed(err)
		case st == bus.Stale:
			v, out, err := s.runLeased(ctx, key, e.Revision(), run)
			if errors.Is(err, ErrSettled) {
				continue
			}
			return v, out, err
		}
	}
}

// runLeased runs the handler under a lease on key, created, or taken over
// from the stale revision stale, and writes its reply over it. It returns
// within ctx (ErrPending past it); the handler carries on, up to
// HandlerTimeout, and stores its reply for whoever comes next. ErrSettled:
// another holds the key.
func (s *Store) runLeased(ctx context.Context, key string, stale uint64, run Handler) (view, Outcome, error) {
	l, err := s.lease(key)
	if err != nil {
		return view{}, Ran, err
	}
	var held *bus.Held
	out := Ran
	if stale == 0 {
		held, err = l.Create(ctx, value(stateRun, s.holder))
	} else {
		out = TookOver
		held, err = l.TakeOver(ctx, value(stateRun, s.holder), stale)
	}
	switch {
	case errors.Is(err, bus.ErrLeaseHeld):
		return view{}, out, ErrSettled
	case ctx.Err() != nil:
		return view{}, out, ErrPending
	case err != nil:
		return view{}, out, s.failed(err)
	}
	if out == TookOver {
		s.metrics.expired.Inc()
		s.o.Logger.Info("dedup lease expired, taken over", "dedup_key", key)
	}
	body, rev, err := s.background(ctx, run, func(body []byte, err error) (uint64, error) {
		return s.settle(key, held, body, err)
	})
	return view{state: stateReply, body: body, rev: rev}, out, err
}

// background runs the handler in a goroutine, past ctx up to
// HandlerTimeout, then after with its result; it returns what after
// returns if that comes within ctx, ErrPending otherwise.
func (s *Store) background(ctx context.Context, run Handler, after func([]byte, error) (uint64, error)) ([]byte, uint64, error) {
	type result struct {
		body []byte
		rev  uint64
		err  error
	}
	done := make(chan result, 1)
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		hctx, cancel := context.WithTimeout(context.Background(), s.o.HandlerTimeout)
		body, err := run(hctx)
		cancel()
		rev, err := after(body, err)
		done <- result{body, rev, err}
	}()
	select {
	case r := <-done:
		return r.body, r.rev, r.err
	case <-ctx.Done():
		return nil, 0, ErrPending
	}
}

// Retry returns the reply to answer a retry with, running run at most once
// across replicas. A reply is marked passive before it is returned, so that
// no late reply sends it too; nil with Late means a late reply has it
// (answer "success"). A reply returned with ErrNotMarked could not be
// marked (the bucket out of reach): the caller decides whether a late reply
// may carry it instead. ctx carries the request's deadline; past it,
// ErrPending, and a running handler carries on to store its reply.
func (s *Store) Retry(ctx context.Context, key string, run Handler) ([]byte, Outcome, error) {
	for {
		v, out, err := s.resolve(ctx, key, run)
		if errors.Is(err, ErrUnavailable) {
			return s.unguarded(ctx, key, v, out, run, err)
		}
		if err != nil {
			return nil, out, err
		}
		switch v.state {
		case statePassive:
		case stateReply, MarkRetry, MarkDone:
			if len(v.body) == 0 {
				break // nothing to say: nothing to mark
			}
			if _, err := s.write(ctx, key, v.rev, statePassive, v.body); errors.Is(err, ErrSettled) {
				continue // a late sender, or another retry, got there first
			} else if err != nil {
				return s.unguarded(ctx, key, v, out, run, err)
			}
		default: // sending, sent, unknown
			out, v.body = Late, nil
		}
		if out != Ran {
			s.metrics.duplicates.Inc()
		}
		if out == Stored {
			s.metrics.stored.Inc()
		}
		return v.body, out, nil
	}
}

// unguarded answers a retry while the bucket is out of reach: with the
// reply in hand, else one a worker keeps in memory, else by running the
// handler without a lease (kept in memory for the late reply). The reply
// comes with ErrNotMarked.
func (s *Store) unguarded(ctx context.Context, key string, v view, out Outcome, run Handler, cause error) ([]byte, Outcome, error) {
	if errors.Is(cause, ErrPending) || ctx.Err() != nil {
		return nil, out, ErrPending
	}
	s.metrics.unavailable.Inc()
	body := v.body
	if v.state == "" {
		if b, found, _ := s.lookup(ctx, key); found {
			body, out = b, Stored
		} else {
			s.o.Logger.Warn("replies store unavailable: handler run without a lease", "dedup_key", key, "err", cause)
			var err error
			body, _, err = s.background(ctx, run, func(body []byte, err error) (uint64, error) {
				if err == nil {
					s.remember(key, body)
				}
				return 0, err
			})
			if out = Unguarded; err != nil {
				return nil, out, err
			}
		}
	}
	if len(body) == 0 {
		return nil, out, nil
	}
	return body, out, fmt.Errorf("%w: %w", ErrNotMarked, cause)
}

// A Ticket is a reply the late sender may send, and where its key stood.
type Ticket struct {
	Body  []byte
	Tried bool // a late send was tried before and not taken (retry)
	s     *Store
	key   string
	rev   uint64
}

// ForLate returns the reply the late sender may send for key: found, waited
// for, or produced by run under a lease. ErrSettled: a retry was answered
// with it, or a late send has it (the error names the state). run nil (the
// window closed) runs nothing: the ticket says what the key holds. ctx
// bounds the wait (the person's window).
func (s *Store) ForLate(ctx context.Context, key string, run Handler) (*Ticket, error) {
	v, _, err := s.resolve(ctx, key, run)
	if err != nil {
		return nil, err
	}
	switch v.state {
	case "", stateRun, stateReply, MarkRetry:
		t := &Ticket{Tried: v.state == MarkRetry, s: s, key: key, rev: v.rev}
		if v.state != stateRun {
			t.Body = v.body
		}
		return t, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrSettled, v.state)
}

// Mark moves the key to mark, with payload, from where the ticket found it
// (or last moved it); ErrSettled when another wrote it first.
func (t *Ticket) Mark(ctx context.Context, mark string, payload []byte) error {
	rev, err := t.s.write(ctx, t.key, t.rev, mark, payload)
	if err == nil {
		t.rev = rev
	}
	return err
}
