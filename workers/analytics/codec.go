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
	latest, oldest := 0, 0xffff
	span := func(t trace) {
		if t != 0 {
			latest, oldest = max(latest, t.date()), min(oldest, t.date())
		}
	}
	for p, i := range a.people {
		order = append(order, entry{p, i})
		r := a.recs[i]
		span(r.all)
		span(r.scene)
		span(r.group)
	}
	for _, t := range a.more {
		span(t)
	}
	slices.SortFunc(order, func(x, y entry) int { return cmp.Compare(x.hash, y.hash) })
	k := riceK(len(order))
	dates := dates{latest, idBits(max(latest-oldest+1, 1))}
	b = binary.AppendUvarint(b, uint64(len(order)))
	b = binary.AppendUvarint(b, uint64(latest))
	b = binary.AppendUvarint(b, uint64(dates.width))
	b = binary.AppendUvarint(b, uint64(len(a.more)))
	// The people, bit by bit: most are a hash's distance to the one before
	// (Rice code), one bit of flags, a trace in two dozen bits and a scene.
	w := bitWriter{b: make([]byte, 0, len(order)*9)}
	sceneBits, groupBits := idBits(len(a.scenes)), idBits(len(a.groups))
	index := make(map[uint32]uint32, len(a.more)) // a record → its place in order, for more
	last, lastFlags := uint64(0), byte(0)
	for n, e := range order {
		r := a.recs[e.rec]
		w.rice(e.hash-last, k)
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
		if w.bit(f == lastFlags); f != lastFlags {
			w.write(uint64(f), 8)
			lastFlags = f
		}
		if f&fAll != 0 {
			r.all.write(&w, dates)
		}
		if f&fScene != 0 {
			w.write(uint64(r.sceneID-1), sceneBits)
			if f&fSceneSame == 0 {
				r.scene.write(&w, dates)
			}
		}
		if f&fGroup != 0 {
			if f&fGroupScenes == 0 {
				w.write(uint64(r.groupID-1), groupBits)
			}
			if f&fGroupSame == 0 {
				r.group.write(&w, dates)
			}
		}
		if f&fFollow != 0 && f&fFollowScene == 0 {
			w.write(uint64(r.follow-1), sceneBits)
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
	at := uint32(0)
	for _, m := range more {
		w.gamma(uint64(index[m.rec] - at))
		at = index[m.rec]
		if w.bit(m.uni&groupBit != 0); m.uni&groupBit != 0 {
			w.write(uint64(m.uni&^groupBit), groupBits)
		} else {
			w.write(uint64(m.uni), sceneBits)
		}
		a.more[m].write(&w, dates)
	}
	people := w.bytes()
	b = binary.AppendUvarint(b, uint64(len(people)))
	return append(b, people...)
}

// riceK is the Rice parameter of n hashes' distances: about the log of
// their mean, 2⁶⁴/n.
func riceK(n int) uint { return uint(64 - bits.Len64(uint64(max(n, 1)))) }

// idBits is the width of an id among n.
func idBits(n int) uint { return uint(bits.Len64(uint64(max(n-1, 0)))) }

// dates are how an account's traces write their dates: days before the
// latest, in a fixed width (the span of the account's dates).
type dates struct {
	latest int
	width  uint
}

// write writes t: two dozen bits for a person seen in one hour of one
// day, most of the time.
func (t trace) write(w *bitWriter, d dates) {
	h := t.hours()
	single := h != 0 && h&(h-1) == 0
	extra := !single || t.days() != 1 || t.gap() != 0
	w.write(uint64(d.latest-t.date()), d.width)
	if w.bit(extra); !extra {
		w.write(uint64(bits.TrailingZeros64(h)), 5)
		return
	}
	w.write(h, stats.MaxHours)
	w.write(t.days(), windowDays+1)
	w.write(uint64(t.gap()), 9)
}

func readTrace(r *bitReader, d dates) (trace, bool) {
	date := d.latest - int(r.read(d.width))
	if date < 0 {
		return 0, false
	}
	if !r.bit() {
		h := r.read(5)
		return newTrace(date, 1<<h, 1, 0), h < stats.MaxHours
	}
	h, days, g := r.read(stats.MaxHours), r.read(windowDays+1), r.read(9)
	return newTrace(date, h, days, int(g)), h != 0 && days&1 == 1
}

// decodeState reads a snapshot; loc is the zone it must have been taken
// in (another: errZone).
func decodeState(b []byte, loc *time.Location) (*state, error) {
	r := reader{stats.Reader{B: b, Kind: errSnapshot}}
	if v := r.Uvarint(); v != snapshotVersion {
		return nil, fmt.Errorf("%w: version %d", errSnapshot, v)
	}
	s := newState(loc)
	s.epoch, s.base, s.rebuilt, s.seq, s.stream = r.Uvarint(), r.Uvarint(), r.Uvarint(), r.Uvarint(), r.Varint()
	s.rebuilding = r.Byte() != 0
	if zone := r.string(); r.Err == nil && zone != loc.String() {
		return s, fmt.Errorf("%w: counted in %s, not %s", errZone, zone, loc)
	}
	s.inexact = r.Varint()
	n := r.Count(4)
	for i := 0; i < n && r.Err == nil; i++ {
		r.account(s)
	}
	return s, r.Done()
}

// errZone is a snapshot counted in another time zone: the days are not
// this process's, so the counts are rebuilt.
var errZone = errors.New("the time zone changed")

func (r *reader) account(s *state) {
	id := r.string()
	if r.Err != nil {
		return
	}
	if _, dup := s.accounts[id]; dup {
		r.Fail("account twice")
		return
	}
	a := s.account(id)
	a.groups, a.byGrp = nil, map[string]uint32{}
	a.unattributed = r.Varint()
	ng := r.Count(1)
	for i := 0; i < ng && r.Err == nil; i++ {
		if name := r.string(); a.group(name) != uint32(i) {
			r.Fail("group twice")
		}
	}
	if len(a.groups) == 0 {
		a.group("")
	}
	ns := r.Count(11)
	for i := 0; i < ns && r.Err == nil; i++ {
		name := r.string()
		if _, dup := a.byName[name]; dup {
			r.Fail("scene twice")
			return
		}
		sc := a.scene(name, 0, time.Time{})
		if g := r.Uvarint(); g < uint64(len(a.groups)) {
			sc.group = uint32(g)
		} else {
			r.Fail("group out of range")
		}
		sc.Scans, sc.SubscribeScans, sc.ScanScans, sc.NewFollowers, sc.UniquePeople, sc.Unfollows = r.Varint(), r.Varint(), r.Varint(), r.Varint(), r.Varint(), r.Varint()
		sc.FirstSeen, sc.LastSeen = time.Unix(0, r.Varint()).UTC(), time.Unix(0, r.Varint()).UTC()
		sc.FirstSeq = r.Uvarint()
	}
	n, last, width, m := r.Uvarint(), r.Uvarint(), r.Uvarint(), r.Uvarint()
	blob := r.Bytes(r.Count(1))
	if r.Err != nil || n > 8*uint64(len(blob)) || m > 8*uint64(len(blob)) || last > 0xffff || width > 16 {
		r.Fail("people beyond the data")
		return
	}
	np, nm, latest := int(n), int(m), dates{int(last), uint(width)}
	br := &bitReader{b: blob}
	k := riceK(np)
	sceneBits, groupBits := idBits(len(a.scenes)), idBits(len(a.groups))
	ok := true
	ref := func(width uint, of int) uint32 { // an id, checked
		n := br.read(width)
		if n >= uint64(of) {
			ok = false
			return 0
		}
		return uint32(n)
	}
	trace := func() trace {
		t, good := readTrace(br, latest)
		ok = ok && good
		return t
	}
	a.recs = make([]person, 0, np)
	hash, f := uint64(0), byte(0)
	for i := 0; i < np && ok && !br.bad; i++ {
		d := br.rice(k)
		if i > 0 && (d == 0 || hash+d < hash) {
			r.Fail("people out of order")
			return
		}
		hash += d
		if !br.bit() {
			f = byte(br.read(8))
		}
		var p person
		if f&fAll != 0 {
			p.all = trace()
		}
		if f&fScene != 0 {
			p.sceneID = ref(sceneBits, len(a.scenes)) + 1
			if p.scene = p.all; f&fSceneSame == 0 {
				p.scene = trace()
			}
		}
		if f&fGroup != 0 {
			switch {
			case f&fGroupScenes == 0:
				p.groupID = ref(groupBits, len(a.groups)) + 1
			case f&fScene != 0 && ok:
				p.groupID = a.scenes[p.sceneID-1].group + 1
			default:
				ok = false
			}
			if p.group = p.all; f&fGroupSame == 0 {
				p.group = trace()
			}
		}
		if f&fFollow != 0 {
			if p.follow = p.sceneID; f&fFollowScene == 0 {
				p.follow = ref(sceneBits, len(a.scenes)) + 1
			}
		}
		a.people[hash] = uint32(len(a.recs))
		a.recs = append(a.recs, p)
	}
	at := uint64(0)
	for i := 0; i < nm && ok && !br.bad; i++ {
		at += br.gamma()
		if at >= uint64(len(a.recs)) {
			ok = false
			break
		}
		var uni uint32
		if br.bit() {
			uni = ref(groupBits, len(a.groups)) | groupBit
		} else {
			uni = ref(sceneBits, len(a.scenes))
		}
		a.more[moreKey{uint32(at), uni}] = trace()
	}
	if !ok || br.bad || len(a.recs) != np || len(a.more) != nm {
		r.Fail("people unreadable")
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
type reader struct{ stats.Reader }

func (r *reader) string() string { return string(r.Bytes(r.Count(1))) }
