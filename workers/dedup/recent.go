package dedup

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// LookupSubject is where a worker asks every other worker for a reply it
// answered recently: the request is the dedup key, the answer the reply
// ("r" and its body) from whichever worker has it; the others stay silent.
const LookupSubject = "wxgate.replies.lookup"

// recent holds the replies this worker answered in the last TTL, in its
// own memory: storing one costs a map entry, not a write to NATS, which is
// what every message would pay. A retry at another worker finds it by
// asking (lookup); only the rare retry pays for the question.
type recent struct {
	ttl time.Duration
	max int

	mu    sync.Mutex
	byKey map[string][]byte
	order []stamped // oldest first, for expiry
}

type stamped struct {
	key string
	at  time.Time
}

func newRecent(ttl time.Duration, max int) *recent {
	return &recent{ttl: ttl, max: max, byKey: map[string][]byte{}}
}

// put keeps the reply of key (a copy with the reply prefix, ready to be
// sent as an answer to a lookup).
func (r *recent) put(key string, body []byte, now time.Time) {
	v := make([]byte, 0, len(replyPrefix)+len(body))
	v = append(append(v, replyPrefix...), body...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(now)
	if _, ok := r.byKey[key]; !ok {
		r.order = append(r.order, stamped{key, now})
	}
	r.byKey[key] = v
	for len(r.order) > r.max { // bounded, whatever the rate
		delete(r.byKey, r.order[0].key)
		r.order = r.order[1:]
	}
}

// get returns the stored answer ("r" and the body) for key.
func (r *recent) get(key string, now time.Time) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(now)
	v, ok := r.byKey[key]
	return v, ok
}

// expire drops what is older than the TTL; r.mu is held.
func (r *recent) expire(now time.Time) {
	n := 0
	for n < len(r.order) && now.Sub(r.order[n].at) > r.ttl {
		delete(r.byKey, r.order[n].key)
		n++
	}
	if n > 0 {
		r.order = append(r.order[:0:0], r.order[n:]...)
	}
}

// serveLookups answers other workers' lookups for replies this worker has.
func (s *Store) serveLookups() error {
	sub, err := s.nc.Subscribe(LookupSubject, func(m *nats.Msg) {
		if v, ok := s.recent.get(string(m.Data), time.Now()); ok && m.Reply != "" {
			_ = m.Respond(v)
		}
	})
	if err != nil {
		return err
	}
	s.lookupSub = sub
	return nil
}

// lookup asks every worker (this one first) for a reply of key answered
// recently. It waits at most a fraction of ctx's budget: a worker that
// has it answers in a millisecond, and silence means none has.
func (s *Store) lookup(ctx context.Context, key string) ([]byte, bool) {
	if v, ok := s.recent.get(key, time.Now()); ok {
		return v[len(replyPrefix):], true
	}
	lctx, cancel := context.WithTimeout(ctx, min(s.claimBudget(ctx), 250*time.Millisecond))
	defer cancel()
	resp, err := s.nc.RequestWithContext(lctx, LookupSubject, []byte(key))
	if err != nil {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrNoResponders) {
			s.o.Logger.Debug("dedup lookup", "dedup_key", key, "err", err)
		}
		return nil, false
	}
	if len(resp.Data) < len(replyPrefix) || string(resp.Data[:len(replyPrefix)]) != replyPrefix {
		return nil, false
	}
	return resp.Data[len(replyPrefix):], true
}
