package dedup

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxgate/wxgate/shared/bus"
)

// LookupSubject is where a worker asks every worker for a message it has:
// the request is the dedup key, the answer the reply ("r" and its body) or
// "w" (in hand there, its key now claimed) from whichever worker has it;
// the others stay silent.
const LookupSubject = "wxgate.replies.lookup"

// DefaultMemory bounds the replies a worker keeps: 64 MiB hold about
// 180 000 text replies, 30 s of a worker answering 6 000 a second.
const DefaultMemory = 64 << 20

// recent holds the replies this worker answered in the last TTL, in its own
// memory: storing one costs a copy, not a write to NATS, which is what every
// message would pay. A retry at another worker finds it by asking (lookup);
// only the rare retry pays for the question.
//
// Replies are appended to chunks of bytes, indexed by a hash of their key
// in a map without pointers: the collector does not scan either, so a
// burst's replies cost their bytes, once (cap the process with GOMEMLIMIT
// beside DEDUP_MEMORY_MB). Past max bytes the oldest chunk goes first, and a
// retry of its replies runs the handler again (counted as evicted). The
// Store's mutex guards it.
type recent struct {
	ttl   time.Duration
	max   int // bytes
	chunk int // bytes in a chunk
	seed  maphash.Seed

	index   map[uint64]uint64 // key hash → chunk sequence << 32 | offset
	chunks  []*chunk          // oldest first
	next    uint64            // the sequence of the next chunk
	bytes   int               // held in chunks
	closed  bool
	peak    int         // the most entries the index has held since it was made
	evicted func(n int) // replies dropped before their TTL, for a metric
}

type chunk struct {
	seq    uint64
	buf    []byte
	used   int
	newest time.Time
	hashes []uint64 // of the entries in it, to clear the index when it goes
}

// An entry in a chunk: when (unix nanoseconds), key length, body length,
// key, body.
const entryHead = 8 + 2 + 4

func newRecent(ttl time.Duration, max, chunk int) *recent {
	return &recent{ttl: ttl, max: max, chunk: chunk, seed: maphash.MakeSeed(), index: map[uint64]uint64{}, evicted: func(int) {}}
}

// put keeps the reply of key. A key longer than a dedup key, or a reply
// larger than a chunk, is not kept: a retry of it runs the handler again.
func (r *recent) put(key string, body []byte, now time.Time) {
	n := entryHead + len(key) + len(body)
	if len(key) > 0xffff || n > r.chunk || n > r.max {
		return
	}
	if r.closed {
		return
	}
	h := maphash.String(r.seed, key)
	r.expire(now)
	// The index lives on the Go heap: bounded too, by entries (a reply
	// takes at least entryHead bytes of chunk, an index entry about 40).
	for len(r.index) >= max(r.max/128, 64) && len(r.chunks) > 0 {
		r.drop(true, now)
	}
	c := r.tail()
	if c == nil || len(c.buf)-c.used < n {
		for r.bytes+r.chunk > r.max && len(r.chunks) > 0 {
			r.drop(true, now)
		}
		c = &chunk{seq: r.next, buf: make([]byte, r.chunk)}
		r.next++
		r.chunks = append(r.chunks, c)
		r.bytes += len(c.buf)
	}
	e := c.buf[c.used : c.used+n]
	binary.LittleEndian.PutUint64(e, uint64(now.UnixNano()))
	binary.LittleEndian.PutUint16(e[8:], uint16(len(key)))
	binary.LittleEndian.PutUint32(e[10:], uint32(len(body)))
	copy(e[entryHead:], key)
	copy(e[entryHead+len(key):], body)
	r.index[h] = c.seq<<32 | uint64(c.used)
	r.peak = max(r.peak, len(r.index))
	c.hashes = append(c.hashes, h)
	c.used += n
	c.newest = now
}

// get returns a copy of the reply of key, as the answer to a lookup ("r"
// and the body).
func (r *recent) get(key string, now time.Time) ([]byte, bool) {
	h := maphash.String(r.seed, key)
	loc, ok := r.index[h]
	if !ok || len(r.chunks) == 0 {
		return nil, false
	}
	i := int(loc>>32) - int(r.chunks[0].seq)
	if i < 0 || i >= len(r.chunks) {
		return nil, false
	}
	e := r.chunks[i].buf[loc&0xffffffff:]
	at := time.Unix(0, int64(binary.LittleEndian.Uint64(e)))
	kl, bl := int(binary.LittleEndian.Uint16(e[8:])), int(binary.LittleEndian.Uint32(e[10:]))
	if string(e[entryHead:entryHead+kl]) != key || now.Sub(at) > r.ttl {
		return nil, false // another key with the same hash, or expired
	}
	body := e[entryHead+kl : entryHead+kl+bl]
	return append(append(make([]byte, 0, 1+bl), 'r'), body...), true
}

// expire drops the chunks whose newest reply is older than the TTL.
func (r *recent) expire(now time.Time) {
	for len(r.chunks) > 0 && now.Sub(r.chunks[0].newest) > r.ttl {
		r.drop(false, time.Time{})
	}
}

// drop removes the oldest chunk and its index entries. Dropped for room
// (evicting, at now), its replies still inside their TTL are counted as
// evicted.
func (r *recent) drop(evicting bool, now time.Time) {
	c := r.chunks[0]
	live := 0
	for _, h := range c.hashes {
		loc, ok := r.index[h]
		if !ok || loc>>32 != c.seq {
			continue // replaced by a later reply of the same hash
		}
		delete(r.index, h)
		if evicting && now.Sub(time.Unix(0, int64(binary.LittleEndian.Uint64(c.buf[loc&0xffffffff:])))) <= r.ttl {
			live++
		}
	}
	if live > 0 {
		r.evicted(live)
	}
	r.chunks[0] = nil
	r.chunks = r.chunks[1:]
	if len(r.chunks) == 0 {
		r.chunks = nil
	}
	r.bytes -= len(c.buf)
}

func (r *recent) tail() *chunk {
	if len(r.chunks) == 0 {
		return nil
	}
	return r.chunks[len(r.chunks)-1]
}

// tick expires what is old while no reply comes, so that an idle worker
// gives a burst's memory back.
func (r *recent) tick(now time.Time) {
	r.expire(now)
	// A Go map keeps its size after a burst: made again, smaller.
	if r.peak >= 4096 && len(r.index) < r.peak/4 {
		index := make(map[uint64]uint64, len(r.index))
		for h, loc := range r.index {
			index[h] = loc
		}
		r.index, r.peak = index, len(index)
	}
}

// close gives the memory back.
func (r *recent) close() {
	for len(r.chunks) > 0 {
		r.drop(false, time.Time{})
	}
	r.closed = true
}

// answerLookup answers another worker's lookup (or this one's): with the
// reply, kept here; or, the message in hand here, with 'w' once its key is
// claimed, so that the asker waits for the lease instead of running the
// handler beside it. Otherwise it stays silent.
func (s *Store) answerLookup(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	key := string(m.Data)
	s.mu.Lock()
	v, ok := s.recent.get(key, time.Now())
	h := s.inHand[key]
	if !ok && h != nil {
		s.claimLocked(h)
	}
	s.mu.Unlock()
	switch {
	case ok:
		_ = m.Respond(v)
	case h != nil:
		go func() {
			<-h.claimed
			if h.held != nil || errors.Is(h.err, bus.ErrLeaseHeld) {
				_ = m.Respond([]byte{'w'})
			}
		}()
	}
}

// lookup asks every worker for key, this one first: found, a reply one kept
// in memory; running, a first delivery one has in hand, whose key is now
// claimed. Silence for LookupWait means none has.
func (s *Store) lookup(ctx context.Context, key string) (body []byte, found, running bool) {
	s.mu.Lock()
	v, ok := s.recent.get(key, time.Now())
	s.mu.Unlock()
	if ok {
		return v[1:], true, false
	}
	lctx, cancel := context.WithTimeout(ctx, min(budget(ctx), s.o.LookupWait))
	defer cancel()
	resp, err := s.nc.RequestWithContext(lctx, LookupSubject, []byte(key))
	if err != nil {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrNoResponders) {
			s.o.Logger.Debug("dedup lookup", "dedup_key", key, "err", err)
		}
		return nil, false, false
	}
	if len(resp.Data) == 0 {
		return nil, false, false
	}
	return resp.Data[1:], resp.Data[0] == 'r', resp.Data[0] == 'w'
}
