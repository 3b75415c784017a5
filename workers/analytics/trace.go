package analytics

import (
	"math/bits"

	"github.com/wxgate/wxgate/shared/stats"
)

// trace is what the leader keeps of one person in one universe (a scene,
// a group, the account), in 64 bits:
//
//	bits  0-15  D, the date of their latest scan there (days since 1970)
//	bits 16-40  the hours of D they scanned in
//	bits 41-54  the days among the 14 before D they scanned on
//	bits 55-63  G, the gap of the earliest of those days (or of D): the
//	            days since the scan before it; 0 none, 511 unknown
//
// That is enough to count each scan's day and hour exactly (see scan) when
// a person's scans reach the stream in order, and when one comes late by
// less than 15 days (a held or imported event): its day is placed among
// the known ones, and the next day's gap moved.
type trace uint64

const (
	windowDays = 14
	gapUnknown = 511
	hoursMask  = 1<<stats.MaxHours - 1
	windowMask = 1<<windowDays - 1
)

func (t trace) date() int     { return int(t & 0xffff) }
func (t trace) hours() uint64 { return uint64(t>>16) & hoursMask }

// days has bit j set for each day D−j they scanned on (j = 0..14).
func (t trace) days() uint64 { return 1 | (uint64(t>>41)&windowMask)<<1 }
func (t trace) gap() int     { return int(t >> 55) }

func newTrace(date int, hours, days uint64, gap int) trace {
	return trace(uint64(date)&0xffff | (hours&hoursMask)<<16 | (days>>1&windowMask)<<41 | uint64(min(gap, gapUnknown))<<55)
}

// change is what one scan changes in the counts of its universe.
type change struct {
	// day: a new occurrence on the scan's day, gap days after the
	// person's previous one (0: their first).
	day bool
	gap int
	// hour: a new person in the scan's hour.
	hour bool
	// moved: the occurrence on the later day next now follows this one:
	// its gap goes from was to now.
	moved         bool
	next, was, is int
	// inexact: a late scan the trace cannot place (its day, or its hour,
	// may already be counted): counted in the scans only.
	inexact bool
}

// scan folds a scan on date at hour into t (0: none yet) and says what it
// changes.
func (t trace) scan(date, hour int) (trace, change) {
	if t == 0 {
		return newTrace(date, 1<<hour, 1, 0), change{day: true, hour: true}
	}
	d, days, g := t.date(), t.days(), t.gap()
	switch {
	case date == d:
		if t.hours()&(1<<hour) != 0 {
			return t, change{}
		}
		return newTrace(d, t.hours()|1<<hour, days, g), change{hour: true}
	case date > d:
		k := date - d
		if k > windowDays { // every known day leaves the window: D is the new day's previous
			return newTrace(date, 1<<hour, 1, k), change{day: true, gap: k, hour: true}
		}
		shifted := days << k
		kept := shifted&(1<<(windowDays+1)-1) | 1
		if dropped := shifted >> (windowDays + 1); dropped != 0 {
			// The earliest day kept follows the latest one dropped.
			earliest := bits.Len64(kept) - 1
			g = windowDays + 1 + bits.TrailingZeros64(dropped) - earliest
		}
		return newTrace(date, 1<<hour, kept, g), change{day: true, gap: k, hour: true}
	}
	// A late scan, j days before D.
	j := d - date
	if j <= windowDays && days&(1<<j) != 0 {
		return t, change{inexact: true} // a day already counted; its hours are not known
	}
	if j < windowDays && days>>(j+1) != 0 {
		// Between two known days.
		prev := j + 1 + bits.TrailingZeros64(days>>(j+1))
		next := bits.Len64(days&(1<<j-1)) - 1
		return newTrace(d, t.hours(), days|1<<j, g),
			change{day: true, gap: prev - j, hour: true, moved: true, next: d - next, was: prev - next, is: j - next}
	}
	// Before the earliest known day e; its previous is e−G.
	e := bits.Len64(days) - 1
	gapX := 0 // the late day becomes their first
	switch {
	case g == gapUnknown:
		return t, change{inexact: true}
	case g != 0 && j >= e+g:
		return t, change{inexact: true} // on or before e's previous, which is not known
	case g != 0:
		gapX = e + g - j
	}
	c := change{day: true, gap: gapX, hour: true, moved: true, next: d - e, was: g, is: j - e}
	if j <= windowDays {
		return newTrace(d, t.hours(), days|1<<j, gapX), c
	}
	return newTrace(d, t.hours(), days, j-e), c
}
