package analytics

import (
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

// state is everything the analytics know, as of stream sequence seq.
type state struct {
	// epoch is the generation of what is written: bumped by a rebuild,
	// whose counts start again, and by a replaced stream, whose sequences
	// start again while the counts carry on. base is the epoch the counts
	// started in: a value of an older one is stale.
	epoch, base uint64
	rebuilt     uint64 // the revision of the rebuild request that made base
	rebuilding  bool   // a rebuild that has not caught up with the stream
	seq         uint64 // the last stream sequence applied
	stream      int64  // the event stream's creation time (Unix ns): a new stream starts at sequence 1 again
	zone        zone
	inexact     int64 // late scans not placed exactly (see trace)
	accounts    map[string]*account
	dirty       []*sceneState // totals changed since they were last written
}

// account is one account's part of the state.
type account struct {
	id     string
	scenes []*sceneState
	byName map[string]uint32
	groups []*group
	byGrp  map[string]uint32
	// people maps a person (hash) to their record; free are records
	// of people forgotten, for reuse.
	people map[uint64]uint32
	recs   []person
	free   []uint32
	// more holds a person's traces beyond their first scene and group.
	more         map[moreKey]trace
	unattributed int64 // unfollows of people with no recorded follow
	labels       map[string]stats.Label
}

type sceneState struct {
	stats.Totals
	account *account
	id      uint32
	group   uint32 // the group the scene counts in now
	uid     string
	dirty   bool // changed since the totals were last written
}

type group struct {
	name, uid string
}

// person is what the state keeps of one person in an account: their
// trace in the account, in their first scene and group (most people have
// one), and the scene they followed through.
type person struct {
	all, scene, group trace
	// sceneID and groupID are the id+1 of the first scene and group
	// (0: none), follow the id+1 of the scene of the follow.
	sceneID, groupID, follow uint32
}

type moreKey struct {
	rec, uni uint32 // uni: a scene id, or a group id | groupBit
}

const groupBit = 1 << 31

func newState(loc *time.Location) *state {
	return &state{zone: zone{loc: loc}, accounts: map[string]*account{}}
}

func (s *state) account(id string) *account {
	a := s.accounts[id]
	if a == nil {
		a = &account{id: id, byName: map[string]uint32{}, byGrp: map[string]uint32{}, people: map[uint64]uint32{}, more: map[moreKey]trace{}}
		a.group("")
		s.accounts[id] = a
	}
	return a
}

func (a *account) group(name string) uint32 {
	if id, ok := a.byGrp[name]; ok {
		return id
	}
	a.byGrp[name] = uint32(len(a.groups))
	a.groups = append(a.groups, &group{name: name, uid: stats.GroupUID(name)})
	return uint32(len(a.groups) - 1)
}

func (a *account) scene(name string, seq uint64, at time.Time) *sceneState {
	if id, ok := a.byName[name]; ok {
		return a.scenes[id]
	}
	sc := &sceneState{Totals: stats.Totals{Scene: name, FirstSeq: seq, FirstSeen: at, LastSeen: at},
		account: a, id: uint32(len(a.scenes)), group: a.group(a.labels[name].Group), uid: stats.SceneUID(name)}
	a.byName[name] = sc.id
	a.scenes = append(a.scenes, sc)
	return sc
}

// person is the record of p, made when new.
func (a *account) person(p uint64) uint32 {
	if i, ok := a.people[p]; ok {
		return i
	}
	var i uint32
	if n := len(a.free); n > 0 {
		i, a.free = a.free[n-1], a.free[:n-1]
	} else {
		i = uint32(len(a.recs))
		a.recs = append(a.recs, person{})
	}
	a.people[p] = i
	return i
}

// trace is a pointer to the trace of record i in universe uni (a scene
// id, or a group id | groupBit): the record's own first scene or group,
// or an entry of more. A zero trace is none.
func (a *account) trace(i, uni uint32) (t trace, set func(trace)) {
	r := &a.recs[i]
	id, tr := &r.sceneID, &r.scene
	if uni&groupBit != 0 {
		id, tr = &r.groupID, &r.group
	}
	if *id == uni&^groupBit+1 {
		return *tr, func(t trace) { *tr = t }
	}
	k := moreKey{i, uni}
	if t, ok := a.more[k]; ok || (*id != 0 && *tr != 0) {
		return t, func(t trace) { a.more[k] = t }
	}
	// The record's own slot is free (never used, or its trace forgotten).
	return 0, func(t trace) { *id, *tr = uni&^groupBit+1, t }
}

// setLabels takes the account's codes' labels: a scene's group counts from
// now on.
func (a *account) setLabels(labels map[string]stats.Label) {
	a.labels = labels
	for _, sc := range a.scenes {
		sc.group = a.group(labels[sc.Scene].Group)
	}
}

// apply folds the event at stream sequence seq in, and adds what it
// changes in the day and hour values to out. It is deterministic: the same
// events in the same order give the same state and values, which is what
// makes a replay from a snapshot exact. It reports an unfollow of someone
// with no recorded follow, and a late scan it could not place exactly.
func (s *state) apply(seq uint64, ev event, out *series) (unattributed, inexact bool) {
	s.seq = seq
	if ev.kind == "" {
		return false, false
	}
	a := s.account(ev.account)
	at := ev.received.UTC()
	date, hour := s.zone.at(at)
	switch ev.kind {
	case KindSubscribe, KindScan:
		sc := a.scene(ev.scene, seq, at)
		sub, scan := int8(0), int8(1)
		if ev.kind == KindSubscribe {
			sub, scan = 1, 0
			sc.SubscribeScans++
			sc.NewFollowers++
		} else {
			sc.ScanScans++
		}
		sc.Scans++
		sc.FirstSeen, sc.LastSeen = minTime(sc.FirstSeen, at), maxTime(sc.LastSeen, at)
		s.touch(sc)
		i := a.person(ev.person)
		if ev.kind == KindSubscribe {
			a.recs[i].follow = sc.id + 1
		}
		for _, u := range []struct {
			uni    uint32
			uid    string
			hourly bool
		}{{sc.id, sc.uid, true}, {sc.group | groupBit, a.groups[sc.group].uid, false}, {allUni, stats.AccountUID, true}} {
			var t trace
			var set func(trace)
			if u.uni == allUni {
				t, set = a.recs[i].all, func(t trace) { a.recs[i].all = t }
			} else {
				t, set = a.trace(i, u.uni)
			}
			if t == 0 && u.uni == sc.id {
				sc.UniquePeople++
			}
			t2, c := t.scan(int(date), hour)
			set(t2)
			inexact = inexact || c.inexact
			day := op{seq: seq, hour: -1, sub: sub, scan: scan}
			if c.day {
				day.gaps[0] = gapChange{int32(c.gap), 1}
			}
			out.add(valueID{a, date, u.uni, false}, u.uid, day)
			if c.moved {
				out.add(valueID{a, stats.Date(c.next), u.uni, false}, u.uid,
					op{seq: seq, hour: -1, gaps: [2]gapChange{{int32(c.was), -1}, {int32(c.is), 1}}})
			}
			if u.hourly {
				h := op{seq: seq, hour: int8(hour), sub: sub, scan: scan}
				if c.hour {
					h.unique = 1
				}
				out.add(valueID{a, date, u.uni, true}, u.uid, h)
			}
		}
	case KindUnsubscribe:
		i, ok := a.people[ev.person]
		if !ok || a.recs[i].follow == 0 {
			a.unattributed++
			return true, false
		}
		sc := a.scenes[a.recs[i].follow-1]
		a.recs[i].follow = 0
		sc.Unfollows++
		s.touch(sc)
		day, h := op{seq: seq, hour: -1, unfollow: 1}, op{seq: seq, hour: int8(hour), unfollow: 1}
		out.add(valueID{a, date, sc.id, false}, sc.uid, day)
		out.add(valueID{a, date, sc.id, true}, sc.uid, h)
		out.add(valueID{a, date, sc.group | groupBit, false}, a.groups[sc.group].uid, day)
		out.add(valueID{a, date, allUni, false}, stats.AccountUID, day)
		out.add(valueID{a, date, allUni, true}, stats.AccountUID, h)
	}
	return false, inexact
}

// allUni is the universe of the whole account.
const allUni = ^uint32(0)

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// touch marks a scene's totals changed since they were written.
func (s *state) touch(sc *sceneState) {
	if !sc.dirty {
		sc.dirty = true
		s.dirty = append(s.dirty, sc)
	}
}

// touchAll marks every scene, to write them all again.
func (s *state) touchAll() {
	for _, a := range s.accounts {
		for _, sc := range a.scenes {
			s.touch(sc)
		}
	}
}

// dirtyScenes returns the scenes changed since their totals were written;
// flush clears each one's mark as its write succeeds.
func (s *state) dirtyScenes() []*sceneState {
	out := s.dirty
	s.dirty = nil
	return out
}

// prune forgets traces whose latest scan is older than maxAge, and the
// people left with none and no follow: their events have left the stream,
// so the state keeps no more of them than the stream does. A person who
// scans again later counts as new.
func (s *state) prune(now time.Time, maxAge time.Duration) int {
	if maxAge <= 0 {
		return 0
	}
	oldest, _ := s.zone.at(now.Add(-maxAge))
	old := func(t trace) bool { return t != 0 && t.date() < int(oldest) }
	n := 0
	for _, a := range s.accounts {
		for p, i := range a.people {
			r := &a.recs[i]
			for _, t := range []*trace{&r.all, &r.scene, &r.group} {
				if old(*t) {
					*t = 0
				}
			}
			if r.all == 0 && r.follow == 0 {
				*r = person{}
				delete(a.people, p)
				a.free = append(a.free, i)
				n++
			}
		}
		for k, t := range a.more {
			if old(t) || a.recs[k.rec].all == 0 {
				delete(a.more, k)
			}
		}
	}
	return n
}

// size is how many people (with a trace or a follow) and followers the
// state holds, and its scenes.
func (s *state) size() (people, followers, scenes int) {
	for _, a := range s.accounts {
		people += len(a.people)
		scenes += len(a.scenes)
		for _, i := range a.people {
			if a.recs[i].follow != 0 {
				followers++
			}
		}
	}
	return people, followers, scenes
}

// zone turns times into local dates and hours, quickly while they fall on
// the day it last saw.
type zone struct {
	loc        *time.Location
	date       stats.Date
	start, end int64 // the date's bounds, Unix ns
}

func (z *zone) at(t time.Time) (stats.Date, int) {
	ns := t.UnixNano()
	if ns < z.start || ns >= z.end {
		d, _ := stats.DateHour(t, z.loc)
		z.date, z.start, z.end = d, d.Start(z.loc).UnixNano(), (d + 1).Start(z.loc).UnixNano()
		if ns < z.start || ns >= z.end { // a day that starts oddly (a zone's jump at midnight)
			z.end = z.start
			return stats.DateHour(t, z.loc)
		}
	}
	return z.date, int((ns - z.start) / int64(time.Hour))
}
