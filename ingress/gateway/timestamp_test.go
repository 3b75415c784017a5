package gateway

import (
	"errors"
	"math"
	"strconv"
	"testing"
	"time"
)

// The timestamp window holds on both sides of now for every timestamp a
// sender can write, the int64 limits and beyond included (finding F7: one
// 634 years ahead passed as fresh), under the usual skew and the largest.
func TestCheckTimestamp(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	const maxSkew = time.Duration(math.MaxInt64) // about 292 years
	tests := []struct {
		ts       string
		under5m  int // status with a 5m skew; 0: accepted
		underMax int // with maxSkew
	}{
		{at(0), 0, 0},
		{at(-5 * time.Minute), 0, 0},
		{at(5 * time.Minute), 0, 0},
		{at(-5*time.Minute - time.Second), 403, 0},
		{at(5*time.Minute + time.Second), 403, 0},
		{at(time.Hour), 403, 0},
		{"+" + at(0), 0, 0}, // ParseInt's sign: the same instant, signed as written
		{"1000000000", 403, 0},
		{"0", 403, 0},
		{"-1", 403, 0},
		{"10923372036", 403, 0},   // now + 292 years: the edge of maxSkew
		{"10923372037", 403, 403}, // one second past it
		{"20000000000", 403, 403}, // 634 years ahead: past time.Duration's range
		{"+20000000000", 403, 403},
		{"-20000000000", 403, 403},
		{strconv.FormatInt(math.MaxInt64, 10), 403, 403},
		{strconv.FormatInt(math.MinInt64, 10), 403, 403},
		{strconv.FormatInt(math.MaxInt64-1, 10), 403, 403},
		{strconv.FormatInt(math.MinInt64+1, 10), 403, 403},
		{"99999999999999999999", 403, 403}, // past int64: a number, just too far
		{"-99999999999999999999", 403, 403},
		{"soon", 400, 400},
		{"", 400, 400},
		{" " + at(0), 400, 400},
		{at(0) + ".5", 400, 400},
		{"1e9", 400, 400},
		{"0x6553f100", 400, 400},
		{"++1", 400, 400},
	}
	for _, tt := range tests {
		for _, c := range []struct {
			skew time.Duration
			want int
		}{{5 * time.Minute, tt.under5m}, {maxSkew, tt.underMax}} {
			err := (&Gateway{o: Options{TimestampSkew: c.skew}}).checkTimestamp(tt.ts, now)
			var r *rejection
			switch {
			case c.want == 0 && err != nil:
				t.Errorf("skew %s: %q refused: %v", c.skew, tt.ts, err)
			case c.want == 0:
			case !errors.As(err, &r) || r.status != c.want:
				t.Errorf("skew %s: %q = %v, want a %d rejection", c.skew, tt.ts, err, c.want)
			case (c.want == 403) != (r.reason == rejectStale):
				t.Errorf("skew %s: %q reason %q", c.skew, tt.ts, r.reason)
			}
		}
	}
	// 0 turns the check off.
	if err := (&Gateway{}).checkTimestamp("20000000000", now); err != nil {
		t.Errorf("skew 0: %v", err)
	}
}
