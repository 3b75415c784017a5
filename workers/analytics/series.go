package analytics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/wxgate/wxgate/shared/stats"
)

// op is what one event changes in one day or hour value.
type op struct {
	seq                         uint64
	hour                        int8 // -1: the day value
	sub, scan, unfollow, unique int8
	gaps                        [2]gapChange
}

type gapChange struct {
	days int32
	n    int8 // 0: none
}

// valueID names a day or hour value without building its key.
type valueID struct {
	a      *account
	date   stats.Date
	uni    uint32 // a scene id, a group id | groupBit, or allUni
	hourly bool
}

// val is a day or hour value as the leader knows it: what it read or
// wrote, and the ops applied since. Values are read only when written
// (flush), so applying never waits on NATS.
type val struct {
	id    valueID
	uid   string
	day   *stats.Day
	hours *stats.Hours
	ops   []op
	rev   uint64 // the KV revision read or written; 0: none
	// read: day or hours hold the stored value (or its absence) as of
	// rev. recheck: a write found the value written meanwhile: read it
	// again before writing. create: it was deleted meanwhile.
	read, recheck, create bool
	dirty                 bool // merged but not written yet
	used                  int  // the flush round it was last changed in
}

func (v *val) key() string {
	if v.id.hourly {
		return stats.HourKey(v.id.a.id, v.id.date, v.uid)
	}
	return stats.DayKey(v.id.a.id, v.id.date, v.uid)
}

func (v *val) point() (epoch, seq uint64) {
	if v.id.hourly {
		return v.hours.Epoch, v.hours.Seq
	}
	return v.day.Epoch, v.day.Seq
}

// series holds the values the leader changed and has not let go of.
type series struct {
	st      *state // whose changes they are; nil: merged only by flush
	vals    map[valueID]*val
	changed []*val // with ops or not yet written
	ops     int    // ops waiting for their value to be read
	round   int
}

func newSeries(st *state) *series { return &series{st: st, vals: map[valueID]*val{}} }

// add applies o to its value: at once when the value was read, or once
// it is (an op waits with its sequence, to be skipped if the stored value
// holds it already).
func (s *series) add(id valueID, uid string, o op) {
	v := s.vals[id]
	if v == nil {
		v = &val{id: id, uid: uid, day: &stats.Day{}, hours: &stats.Hours{}}
		s.vals[id] = v
	}
	if len(v.ops) == 0 && !v.dirty {
		s.changed = append(s.changed, v)
	}
	v.ops = append(v.ops, o)
	if v.read && !v.recheck && s.st != nil {
		v.merge(s.st)
		return
	}
	s.ops++
}

// merge applies v's ops to what it holds, after a read of its stored
// value: one written at this epoch already holds the events up to its
// sequence; one of an epoch since the counts started (a replaced stream)
// is carried on; an older one is stale; a newer one is another leader's,
// left alone. The result is at the state's point, or the stored one's
// when that is further.
func (v *val) merge(st *state) (foreign bool) {
	epoch, seq := v.point()
	switch {
	case epoch > st.epoch:
		v.ops, v.dirty = nil, false
		return true
	case epoch < st.base:
		v.day, v.hours, seq = &stats.Day{}, &stats.Hours{}, 0
	case epoch < st.epoch:
		seq = 0
	}
	for _, o := range v.ops {
		if o.seq <= seq {
			continue // applied already, by a leader before this one
		}
		if o.hour < 0 {
			d := v.day
			d.Subscribe, d.Scan, d.Unfollows = d.Subscribe+int64(o.sub), d.Scan+int64(o.scan), d.Unfollows+int64(o.unfollow)
			for _, g := range o.gaps {
				if g.n != 0 {
					d.AddGap(uint32(g.days), int64(g.n))
				}
			}
		} else {
			h := v.hours.At(int(o.hour))
			h.Subscribe, h.Scan, h.Unfollows, h.Unique = h.Subscribe+int64(o.sub), h.Scan+int64(o.scan),
				h.Unfollows+int64(o.unfollow), h.Unique+int64(o.unique)
		}
	}
	v.ops = v.ops[:0]
	// A value a leader before this one wrote further along than this one
	// is now still holds the events up to its point.
	seq = max(seq, st.seq)
	v.day.Epoch, v.day.Seq, v.hours.Epoch, v.hours.Seq = st.epoch, seq, st.epoch, seq
	v.dirty = true
	return false
}

// readConcurrency bounds the reads of one flush.
const readConcurrency = 16

// flushSeries reads the changed values it never read (in parallel) and
// merges their changes, then, andWrite, writes them pipelined, each
// expecting the revision it read. conflicts counts the values found
// written meanwhile by another (read again at the next flush).
func (a *applier) flushSeries(ctx context.Context, andWrite bool) (conflicts int, err error) {
	s := a.series
	s.round++
	changed := s.changed
	s.changed = nil
	defer func() { // whatever is not written now waits for the next flush
		for _, v := range changed {
			if len(v.ops) > 0 || v.dirty {
				s.changed = append(s.changed, v)
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readConcurrency)
	for _, v := range changed {
		if v.read && !v.recheck {
			continue
		}
		g.Go(func() error { return a.readValue(gctx, v) })
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	type write struct {
		v *val
		f jetstream.PubAckFuture
	}
	var writes []write
	s.ops = 0
	for _, v := range changed {
		v.used = s.round
		if len(v.ops) > 0 && v.merge(a.st) {
			conflicts++
			a.logger.Warn("analytics: a value was written at a later epoch by another leader; left alone", "key", v.key())
			continue
		}
		if !v.dirty || !andWrite {
			continue
		}
		var b []byte
		if v.id.hourly {
			b = v.hours.Append(nil)
		} else {
			b = v.day.Append(nil)
		}
		if v.create { // over a deleted value: Create writes past its tombstone
			rev, err := a.store.Series.Create(ctx, v.key(), b)
			if err != nil && !errors.Is(err, jetstream.ErrKeyExists) && !isWrongLastSequence(err) {
				return conflicts, fmt.Errorf("write %s: %w", v.key(), err)
			}
			if err != nil {
				v.recheck, conflicts = true, conflicts+1
				continue
			}
			v.rev, v.dirty, v.create = rev, false, false
			continue
		}
		f, err := a.js.PublishMsgAsync(&nats.Msg{Subject: a.store.SeriesPrefix + v.key(), Data: b},
			jetstream.WithExpectLastSequencePerSubject(v.rev))
		if err != nil {
			return conflicts, fmt.Errorf("write %s: %w", v.key(), err)
		}
		writes = append(writes, write{v, f})
	}
	for _, w := range writes {
		select {
		case ack := <-w.f.Ok():
			w.v.rev, w.v.dirty = ack.Sequence, false
		case err := <-w.f.Err():
			if !isWrongLastSequence(err) {
				return conflicts, fmt.Errorf("write %s: %w", w.v.key(), err)
			}
			w.v.recheck = true
			conflicts++
		case <-ctx.Done():
			return conflicts, context.Cause(ctx)
		}
	}
	a.evict()
	return conflicts, nil
}

// readValue reads v's stored value. After a conflict, the stored one is
// taken instead of v's when it is at least as far along (it holds v's
// events); otherwise v's is written over it.
func (a *applier) readValue(ctx context.Context, v *val) error {
	e, err := a.store.Series.Get(ctx, v.key())
	absent := errors.Is(err, jetstream.ErrKeyNotFound)
	if err != nil && !absent {
		return fmt.Errorf("read %s: %w", v.key(), err)
	}
	day, hours := &stats.Day{}, &stats.Hours{}
	if !absent {
		var derr error
		if v.id.hourly {
			hours, derr = stats.DecodeHours(e.Value())
		} else {
			day, derr = stats.DecodeDay(e.Value())
		}
		if derr != nil { // unreadable: as a value of no epoch, written over
			day, hours = &stats.Day{}, &stats.Hours{}
		}
	}
	if v.recheck {
		v.recheck, v.create = false, false
		if absent { // deleted meanwhile (a rebuild's clean-up): written past its tombstone
			v.create, v.dirty = true, true
			return nil
		}
		theirs, theirSeq := day.Epoch+hours.Epoch, day.Seq+hours.Seq // one of each pair is zero
		if mine, mineSeq := v.point(); theirs < mine || (theirs == mine && theirSeq < mineSeq) {
			v.rev, v.dirty = e.Revision(), true // ours is further along
			return nil
		}
	}
	v.day, v.hours, v.rev, v.read, v.dirty = day, hours, 0, true, false
	if !absent {
		v.rev = e.Revision()
	}
	return nil
}

// evict lets go of the values no flush changed lately and no one is
// likely to change soon: older than yesterday, or beyond a bound.
func (a *applier) evict() {
	s := a.series
	today, _ := a.st.zone.at(time.Now())
	for id, v := range s.vals {
		if len(v.ops) > 0 || v.dirty || v.recheck || v.create {
			continue
		}
		if (id.date < today-1 && v.used < s.round) || len(s.vals) > maxValues {
			delete(s.vals, id)
		}
	}
}

// maxValues bounds the values the leader keeps between flushes.
const maxValues = 20000
