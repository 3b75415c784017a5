package analytics

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

// The snapshot format: a version, then varints, strings as length and
// bytes. People are written by their hash in ascending order, each as the
// difference from the one before, with their traces relative to the
// latest date: about a dozen bytes a person. Version 1 was the format of
// the version before accounts and series (8af83c1): a leader that finds
// one rebuilds from the stream.
const snapshotVersion = 2

var errSnapshot = errors.New("analytics snapshot unreadable")

// Flags of a person in the snapshot.
const (
	fAll         = 1 << iota // a trace in the account
	fScene                   // a first scene and its trace
	fSceneSame               // … the same as the account's
	fGroup                   // a first group and its trace
	fGroupScenes             // … the group of the first scene
	fGroupSame               // … its trace the same as the account's
	fFollow                  // a follow
	fFollowScene             // … through the first scene
)

func (s *state) encode() []byte {
	people, _, scenes := s.size()
	b := make([]byte, 0, 64+scenes*96+people*14)
	b = binary.AppendUvarint(b, snapshotVersion)
	for _, v := range []uint64{s.epoch, s.base, s.rebuilt, s.seq} {
		b = binary.AppendUvarint(b, v)
	}
	b = binary.AppendVarint(b, s.stream)
	b = appendBool(b, s.rebuilding)
	b = appendString(b, s.zone.loc.String())
	b = binary.AppendVarint(b, s.inexact)
	ids := make([]string, 0, len(s.accounts))
	for id := range s.accounts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = s.accounts[id].encode(b)
	}
	return b
}

func (a *account) encode(b []byte) []byte {
	b = appendString(b, a.id)
	b = binary.AppendVarint(b, a.unattributed)
	b = binary.AppendUvarint(b, uint64(len(a.groups)))
	for _, g := range a.groups {
		b = appendString(b, g.name)
	}
	b = binary.AppendUvarint(b, uint64(len(a.scenes)))
	for _, sc := range a.scenes {
		b = appendString(b, sc.Scene)
		b = binary.AppendUvarint(b, uint64(sc.group))
		for _, v := range []int64{sc.Scans, sc.SubscribeScans, sc.ScanScans, sc.NewFollowers, sc.UniquePeople, sc.Unfollows,
			sc.FirstSeen.UnixNano(), sc.LastSeen.UnixNano()} {
			b = binary.AppendVarint(b, v)
		}
		b = binary.AppendUvarint(b, sc.FirstSeq)
	}
	type entry struct {
		hash uint64
		rec  uint32
	}
	order := make([]entry, 0, len(a.people))
	latest := 0
	for p, i := range a.people {
		order = append(order, entry{p, i})
		latest = max(latest, a.recs[i].all.date())
	}
	slices.SortFunc(order, func(x, y entry) int { return cmp.Compare(x.hash, y.hash) })
	b = binary.AppendUvarint(b, uint64(len(order)))
	b = binary.AppendUvarint(b, uint64(latest))
	index := make(map[uint32]uint32, len(a.more)) // a record → its place in order, for more
	last := uint64(0)
	for n, e := range order {
		r := a.recs[e.rec]
		b = binary.AppendUvarint(b, e.hash-last)
		last = e.hash
		var f byte
		if r.all != 0 {
			f |= fAll
		}
		if r.sceneID != 0 && r.scene != 0 {
			f |= fScene
			if r.scene == r.all {
				f |= fSceneSame
			}
		}
		if r.groupID != 0 && r.group != 0 {
			f |= fGroup
			if f&fScene != 0 && r.groupID-1 == a.scenes[r.sceneID-1].group {
				f |= fGroupScenes
			}
			if r.group == r.all {
				f |= fGroupSame
			}
		}
		if r.follow != 0 {
			f |= fFollow
			if f&fScene != 0 && r.follow == r.sceneID {
				f |= fFollowScene
			}
		}
		b = append(b, f)
		if f&fAll != 0 {
			b = r.all.append(b, latest)
		}
		if f&fScene != 0 {
			b = binary.AppendUvarint(b, uint64(r.sceneID-1))
			if f&fSceneSame == 0 {
				b = r.scene.append(b, latest)
			}
		}
		if f&fGroup != 0 {
			if f&fGroupScenes == 0 {
				b = binary.AppendUvarint(b, uint64(r.groupID-1))
			}
			if f&fGroupSame == 0 {
				b = r.group.append(b, latest)
			}
		}
		if f&fFollow != 0 && f&fFollowScene == 0 {
			b = binary.AppendUvarint(b, uint64(r.follow-1))
		}
		if len(a.more) > 0 {
			index[e.rec] = uint32(n)
		}
	}
	more := make([]moreKey, 0, len(a.more))
	for k := range a.more {
		more = append(more, k)
	}
	slices.SortFunc(more, func(x, y moreKey) int {
		return cmp.Or(cmp.Compare(index[x.rec], index[y.rec]), cmp.Compare(x.uni, y.uni))
	})
	b = binary.AppendUvarint(b, uint64(len(more)))
	for _, k := range more {
		b = binary.AppendUvarint(b, uint64(index[k.rec]))
		b = binary.AppendUvarint(b, uint64(k.uni))
		b = a.more[k].append(b, latest)
	}
	return b
}

// append writes t relative to the latest date: two bytes for a person
// seen in one hour of one day, most of the time.
func (t trace) append(b []byte, latest int) []byte {
	h := t.hours()
	single := h != 0 && h&(h-1) == 0
	extra := !single || t.days() != 1 || t.gap() != 0
	x := uint64(latest-t.date()) << 1
	if extra {
		x |= 1
	}
	b = binary.AppendUvarint(b, x)
	if !extra {
		return append(b, byte(bits.TrailingZeros64(h)))
	}
	b = binary.AppendUvarint(b, h)
	b = binary.AppendUvarint(b, t.days())
	return binary.AppendUvarint(b, uint64(t.gap()))
}

func (r *reader) trace(latest int) trace {
	x := r.uvarint()
	d := latest - int(x>>1)
	if x>>1 > 0xffff || d < 0 {
		r.fail("date out of range")
		return 0
	}
	if x&1 == 0 {
		h := r.byte()
		if h >= stats.MaxHours {
			r.fail("hour out of range")
		}
		return newTrace(d, 1<<h, 1, 0)
	}
	h, days, g := r.uvarint(), r.uvarint(), r.uvarint()
	if h == 0 || h > hoursMask || days&1 == 0 || days>>(windowDays+1) != 0 || g > gapUnknown {
		r.fail("trace out of range")
		return 0
	}
	return newTrace(d, h, days, int(g))
}

// decodeState reads a snapshot; loc is the zone it must have been taken
// in (another: errZone).
func decodeState(b []byte, loc *time.Location) (*state, error) {
	r := reader{b: b}
	if v := r.uvarint(); v != snapshotVersion {
		return nil, fmt.Errorf("%w: version %d", errSnapshot, v)
	}
	s := newState(loc)
	s.epoch, s.base, s.rebuilt, s.seq, s.stream = r.uvarint(), r.uvarint(), r.uvarint(), r.uvarint(), r.varint()
	s.rebuilding = r.byte() != 0
	if zone := r.string(); r.err == nil && zone != loc.String() {
		return s, fmt.Errorf("%w: counted in %s, not %s", errZone, zone, loc)
	}
	s.inexact = r.varint()
	n := r.count(4)
	for i := 0; i < n && r.err == nil; i++ {
		r.account(s)
	}
	return s, r.done()
}

// errZone is a snapshot counted in another time zone: the days are not
// this process's, so the counts are rebuilt.
var errZone = errors.New("the time zone changed")

func (r *reader) account(s *state) {
	id := r.string()
	if r.err != nil {
		return
	}
	if _, dup := s.accounts[id]; dup {
		r.fail("account twice")
		return
	}
	a := s.account(id)
	a.groups, a.byGrp = nil, map[string]uint32{}
	a.unattributed = r.varint()
	ng := r.count(1)
	for i := 0; i < ng && r.err == nil; i++ {
		if name := r.string(); a.group(name) != uint32(i) {
			r.fail("group twice")
		}
	}
	if len(a.groups) == 0 {
		a.group("")
	}
	ns := r.count(11)
	for i := 0; i < ns && r.err == nil; i++ {
		name := r.string()
		if _, dup := a.byName[name]; dup {
			r.fail("scene twice")
			return
		}
		sc := a.scene(name, 0, time.Time{})
		if g := r.uvarint(); g < uint64(len(a.groups)) {
			sc.group = uint32(g)
		} else {
			r.fail("group out of range")
		}
		sc.Scans, sc.SubscribeScans, sc.ScanScans, sc.NewFollowers, sc.UniquePeople, sc.Unfollows = r.varint(), r.varint(), r.varint(), r.varint(), r.varint(), r.varint()
		sc.FirstSeen, sc.LastSeen = time.Unix(0, r.varint()).UTC(), time.Unix(0, r.varint()).UTC()
		sc.FirstSeq = r.uvarint()
	}
	np := r.count(2)
	latest := int(r.uvarint())
	a.recs = make([]person, 0, np)
	hash := uint64(0)
	ref := func(n uint64, of int) uint32 { // an id, checked
		if n >= uint64(of) {
			r.fail("reference out of range")
			return 0
		}
		return uint32(n)
	}
	for i := 0; i < np && r.err == nil; i++ {
		d := r.uvarint()
		if i > 0 && (d == 0 || hash+d < hash) {
			r.fail("people out of order")
			return
		}
		hash += d
		f := r.byte()
		var p person
		if f&fAll != 0 {
			p.all = r.trace(latest)
		}
		if f&fScene != 0 {
			p.sceneID = ref(r.uvarint(), len(a.scenes)) + 1
			if p.scene = p.all; f&fSceneSame == 0 {
				p.scene = r.trace(latest)
			}
		}
		if f&fGroup != 0 {
			switch {
			case f&fGroupScenes == 0:
				p.groupID = ref(r.uvarint(), len(a.groups)) + 1
			case f&fScene != 0 && r.err == nil:
				p.groupID = a.scenes[p.sceneID-1].group + 1
			default:
				r.fail("group of no scene")
			}
			if p.group = p.all; f&fGroupSame == 0 {
				p.group = r.trace(latest)
			}
		}
		if f&fFollow != 0 {
			if p.follow = p.sceneID; f&fFollowScene == 0 {
				p.follow = ref(r.uvarint(), len(a.scenes)) + 1
			}
		}
		a.people[hash] = uint32(len(a.recs))
		a.recs = append(a.recs, p)
	}
	nm := r.count(3)
	for i := 0; i < nm && r.err == nil; i++ {
		rec := ref(r.uvarint(), len(a.recs))
		uni := r.uvarint()
		if id := uni &^ groupBit; (uni&groupBit == 0 && id >= uint64(len(a.scenes))) || (uni&groupBit != 0 && id >= uint64(len(a.groups))) || uni > 1<<32-1 {
			r.fail("universe out of range")
		}
		a.more[moreKey{rec, uint32(uni)}] = r.trace(latest)
	}
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
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

func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("trailing bytes")
	}
	return r.err
}

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.fail("short")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
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
