package analytics

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

// state is everything the analytics know, as of stream sequence seq.
type state struct {
	epoch        uint64 // bumped by a rebuild: its totals start again
	rebuilt      uint64 // the revision of the rebuild request that made this epoch
	seq          uint64 // the last stream sequence applied
	stream       int64  // the event stream's creation time (Unix ns): a new stream starts at sequence 1 again
	scenes       []*sceneState
	byName       map[string]uint32
	follows      map[uint64]uint32 // a follower's person hash → the scene they followed through
	unattributed int64             // unfollows of people with no recorded follow
	dirty        []*sceneState     // changed since their totals were last written
}

type sceneState struct {
	stats.Totals
	// people maps each person seen on the scene to the day (since the Unix
	// epoch) of their last scan there: uniques are exact, and a person
	// silent for longer than the retention is forgotten with their events.
	people map[uint64]uint16
	dirty  bool // changed since the totals were last written
}

func newState() *state {
	return &state{byName: map[string]uint32{}, follows: map[uint64]uint32{}}
}

func day(t time.Time) uint16 { return uint16(t.Unix() / 86400) }

func (s *state) scene(name string, seq uint64, at time.Time) *sceneState {
	if id, ok := s.byName[name]; ok {
		return s.scenes[id]
	}
	sc := &sceneState{Totals: stats.Totals{Scene: name, FirstSeq: seq, FirstSeen: at, LastSeen: at}, people: map[uint64]uint16{}}
	s.byName[name] = uint32(len(s.scenes))
	s.scenes = append(s.scenes, sc)
	return sc
}

// apply folds the event at stream sequence seq in. It is deterministic:
// the same events in the same order give the same state, which is what
// makes a replay from a snapshot exact.
func (s *state) apply(seq uint64, ev event) (unattributed bool) {
	s.seq = seq
	ev.received = ev.received.UTC()
	switch ev.kind {
	case KindSubscribe, KindScan:
		sc := s.scene(ev.scene, seq, ev.received)
		sc.Scans++
		if ev.kind == KindSubscribe {
			sc.SubscribeScans++
			sc.NewFollowers++
			s.follows[ev.person] = s.byName[ev.scene]
		} else {
			sc.ScanScans++
		}
		if _, seen := sc.people[ev.person]; !seen {
			sc.UniquePeople++
		}
		sc.people[ev.person] = day(ev.received)
		if ev.received.Before(sc.FirstSeen) {
			sc.FirstSeen = ev.received
		}
		if ev.received.After(sc.LastSeen) {
			sc.LastSeen = ev.received
		}
		s.touch(sc)
	case KindUnsubscribe:
		id, ok := s.follows[ev.person]
		if !ok {
			s.unattributed++
			return true
		}
		delete(s.follows, ev.person)
		sc := s.scenes[id]
		sc.Unfollows++
		s.touch(sc)
	}
	return false
}

// touch marks a scene changed since its totals were written.
func (s *state) touch(sc *sceneState) {
	if !sc.dirty {
		sc.dirty = true
		s.dirty = append(s.dirty, sc)
	}
}

// touchAll marks every scene, to write them all again.
func (s *state) touchAll() {
	for _, sc := range s.scenes {
		s.touch(sc)
	}
}

// dirtyScenes returns the scenes changed since their totals were written;
// flush clears each one's mark as its write succeeds.
func (s *state) dirtyScenes() []*sceneState {
	out := s.dirty
	s.dirty = nil
	return out
}

// prune forgets people whose last scan on a scene is older than maxAge:
// their events have left the stream, so the state keeps no more of them
// than the stream does. A person who scans again later counts as new.
func (s *state) prune(now time.Time, maxAge time.Duration) int {
	if maxAge <= 0 {
		return 0
	}
	oldest := day(now.Add(-maxAge))
	n := 0
	for _, sc := range s.scenes {
		for p, d := range sc.people {
			if d < oldest {
				delete(sc.people, p)
				n++
			}
		}
	}
	return n
}

// people is how many (scene, person) pairs and followers the state holds.
func (s *state) size() (pairs, followers int) {
	for _, sc := range s.scenes {
		pairs += len(sc.people)
	}
	return pairs, len(s.follows)
}

// The snapshot format: a version, then varints, strings as length and
// bytes, hashes as 8 bytes. Small and dependency-free; a new version is a
// new number.
const snapshotVersion = 1

var errSnapshot = errors.New("analytics snapshot unreadable")

func (s *state) encode() []byte {
	pairs, followers := s.size()
	b := make([]byte, 0, 64+len(s.scenes)*96+pairs*11+followers*11)
	b = binary.AppendUvarint(b, snapshotVersion)
	b = binary.AppendUvarint(b, s.epoch)
	b = binary.AppendUvarint(b, s.rebuilt)
	b = binary.AppendUvarint(b, s.seq)
	b = binary.AppendVarint(b, s.stream)
	b = binary.AppendVarint(b, s.unattributed)
	b = binary.AppendUvarint(b, uint64(len(s.scenes)))
	for _, sc := range s.scenes {
		b = appendString(b, sc.Scene)
		for _, v := range []int64{sc.Scans, sc.SubscribeScans, sc.ScanScans, sc.NewFollowers, sc.UniquePeople, sc.Unfollows,
			sc.FirstSeen.UnixNano(), sc.LastSeen.UnixNano()} {
			b = binary.AppendVarint(b, v)
		}
		b = binary.AppendUvarint(b, sc.FirstSeq)
		b = binary.AppendUvarint(b, uint64(len(sc.people)))
		for p, d := range sc.people {
			b = binary.BigEndian.AppendUint64(b, p)
			b = binary.AppendUvarint(b, uint64(d))
		}
	}
	b = binary.AppendUvarint(b, uint64(len(s.follows)))
	for p, id := range s.follows {
		b = binary.BigEndian.AppendUint64(b, p)
		b = binary.AppendUvarint(b, uint64(id))
	}
	return b
}

func decodeState(b []byte) (*state, error) {
	r := reader{b: b}
	if v := r.uvarint(); v != snapshotVersion {
		return nil, fmt.Errorf("%w: version %d", errSnapshot, v)
	}
	s := newState()
	s.epoch, s.rebuilt, s.seq, s.stream, s.unattributed = r.uvarint(), r.uvarint(), r.uvarint(), r.varint(), r.varint()
	n := r.count(8)
	for i := 0; i < n && r.err == nil; i++ {
		sc := &sceneState{Totals: stats.Totals{Scene: r.string()}}
		sc.Scans, sc.SubscribeScans, sc.ScanScans, sc.NewFollowers, sc.UniquePeople, sc.Unfollows = r.varint(), r.varint(), r.varint(), r.varint(), r.varint(), r.varint()
		sc.FirstSeen, sc.LastSeen = time.Unix(0, r.varint()).UTC(), time.Unix(0, r.varint()).UTC()
		sc.FirstSeq = r.uvarint()
		np := r.count(9)
		sc.people = make(map[uint64]uint16, np)
		for j := 0; j < np && r.err == nil; j++ {
			sc.people[r.uint64()] = uint16(r.uvarint())
		}
		s.byName[sc.Scene] = uint32(len(s.scenes))
		s.scenes = append(s.scenes, sc)
	}
	nf := r.count(9)
	for i := 0; i < nf && r.err == nil; i++ {
		p, id := r.uint64(), r.uvarint()
		if id >= uint64(len(s.scenes)) {
			r.fail("follow of an unknown scene")
			break
		}
		s.follows[p] = uint32(id)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return s, r.err
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// reader reads a snapshot, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", errSnapshot, what)
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad number")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) uint64() uint64 {
	if len(r.b) < 8 {
		r.fail("short")
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) string() string {
	n := r.count(1)
	if r.err != nil {
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// count reads a length whose items take at least min bytes each: a count
// the remaining bytes cannot hold is refused before anything is allocated.
func (r *reader) count(min int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)/min) {
		r.fail("count beyond the data")
		return 0
	}
	return int(n)
}
