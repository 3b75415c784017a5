package stats

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// The unique people of every period, summed from the days' gap histograms,
// equal a brute-force count of the distinct people who scanned in it, for
// random sets of scan days (sparse, dense, one person many days, many
// people one day).
func TestSumUniqueIsExact(t *testing.T) {
	const days = 60
	for seed := uint64(0); seed < 40; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		people := 1 + rng.IntN(30)
		density := rng.Float64()
		scanned := make([][]bool, people) // person → day → scanned
		values := map[Date]*Day{}
		for p := range scanned {
			scanned[p] = make([]bool, days)
			prev := -1
			for d := 0; d < days; d++ {
				if rng.Float64() >= density {
					continue
				}
				scanned[p][d] = true
				gap := uint32(0)
				if prev >= 0 {
					gap = uint32(d - prev)
				}
				if values[Date(d)] == nil {
					values[Date(d)] = &Day{}
				}
				values[Date(d)].AddGap(gap, 1)
				prev = d
			}
		}
		for from := 0; from < days; from++ {
			for to := from; to < days; to++ {
				want := int64(0)
				for p := range scanned {
					for d := from; d <= to; d++ {
						if scanned[p][d] {
							want++
							break
						}
					}
				}
				got := Sum(Date(from), Date(to), func(d Date) *Day { return values[d] }).UniquePeople
				if got != want {
					t.Fatalf("seed %d, days %d..%d: %d unique, want %d", seed, from, to, got, want)
				}
			}
		}
	}
}

// FuzzSumUnique: any occurrence set, given as bytes (a person per byte
// pair: a day and a step), sums exactly over any period.
func FuzzSumUnique(f *testing.F) {
	f.Add([]byte{0, 1, 3, 2, 9, 0, 1, 1}, uint8(2), uint8(5))
	f.Fuzz(func(t *testing.T, b []byte, from, to uint8) {
		if from > to || len(b) > 64 {
			return
		}
		values := map[Date]*Day{}
		want := int64(0)
		for i := 0; i+1 < len(b); i += 2 {
			// Person i/2 scans every step days from day b[i], up to day 255.
			start, step := int(b[i]), 1+int(b[i+1])%40
			prev, counted := -1, false
			for d := start; d < 256; d += step {
				if values[Date(d)] == nil {
					values[Date(d)] = &Day{}
				}
				gap := uint32(0)
				if prev >= 0 {
					gap = uint32(d - prev)
				}
				values[Date(d)].AddGap(gap, 1)
				prev = d
				if d >= int(from) && d <= int(to) && !counted {
					want, counted = want+1, true
				}
			}
		}
		if got := Sum(Date(from), Date(to), func(d Date) *Day { return values[d] }).UniquePeople; got != want {
			t.Fatalf("%d unique, want %d", got, want)
		}
	})
}

func TestDates(t *testing.T) {
	for _, s := range []string{"1970-01-01", "2000-02-29", "2024-12-31", "2100-03-01", "1969-12-31"} {
		d, err := ParseDate(s)
		if err != nil || d.String() != s {
			t.Errorf("%s: %v %v", s, d, err)
		}
		tm, _ := time.Parse(time.DateOnly, s)
		if int64(d) != tm.Unix()/86400 && tm.Unix() >= 0 {
			t.Errorf("%s: date %d, want %d", s, d, tm.Unix()/86400)
		}
	}
	for _, s := range []string{"2024-1-01", "2024-02-30", "20240101", "", "2024-01-01T00:00:00Z", " 2024-01-01"} {
		if _, err := ParseDate(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skip(err)
	}
	spring, _ := ParseDate("2024-03-10")
	fall, _ := ParseDate("2024-11-03")
	if spring.Hours(ny) != 23 || fall.Hours(ny) != 25 || (spring+1).Hours(ny) != 24 {
		t.Errorf("hours: %d %d %d", spring.Hours(ny), fall.Hours(ny), (spring + 1).Hours(ny))
	}
	// 01:30 twice on the day summer time ends: hours 1 and 2.
	first := time.Date(2024, 11, 3, 5, 30, 0, 0, time.UTC)
	if d, h := DateHour(first, ny); d != fall || h != 1 {
		t.Errorf("first 01:30: %v %d", d, h)
	}
	if d, h := DateHour(first.Add(time.Hour), ny); d != fall || h != 2 {
		t.Errorf("second 01:30: %v %d", d, h)
	}
	sh, _ := time.LoadLocation("Asia/Shanghai")
	// 23:59 and 00:00 in Shanghai are on two days.
	if d, h := DateHour(time.Date(2024, 5, 1, 15, 59, 0, 0, time.UTC), sh); d.String() != "2024-05-01" || h != 23 {
		t.Errorf("23:59: %v %d", d, h)
	}
	if d, h := DateHour(time.Date(2024, 5, 1, 16, 0, 0, 0, time.UTC), sh); d.String() != "2024-05-02" || h != 0 {
		t.Errorf("00:00: %v %d", d, h)
	}
}

func TestValuesRoundTrip(t *testing.T) {
	d := &Day{Epoch: 3, Seq: 1 << 40, Subscribe: 5, Scan: 7, Unfollows: 2}
	d.AddGap(0, 4)
	d.AddGap(12, 1)
	d.AddGap(3, 2)
	d.AddGap(12, -1)
	back, err := DecodeDay(d.Append(nil))
	if err != nil || !reflect.DeepEqual(back, d) || len(d.Gaps) != 2 {
		t.Fatalf("day: %+v %v, want %+v", back, err, d)
	}
	h := &Hours{Epoch: 1, Seq: 9}
	h.At(0).Scan = 3
	*h.At(5) = Hour{Subscribe: 2, Scan: 1, Unique: 2, Unfollows: 1}
	*h.At(20) = Hour{Subscribe: 4, Unique: 4}
	h.At(22).Unfollows = 1
	hb, err := DecodeHours(h.Append(nil))
	if err != nil || !reflect.DeepEqual(hb, h) {
		t.Fatalf("hours: %+v %v, want %+v", hb, err, h)
	}
	if c := d.Counts(); c.Scans != 12 || c.UniquePeople != 6 || c.NetFollowers != 3 || c.NewFollowers != 5 {
		t.Errorf("counts %+v", c)
	}
}

// FuzzDecodeValues: a value of any bytes is refused or read, never a
// panic, and what is read writes back the same.
func FuzzDecodeValues(f *testing.F) {
	d := &Day{Epoch: 1, Seq: 2, Scan: 3}
	d.AddGap(0, 1)
	f.Add(d.Append(nil))
	h := &Hours{}
	h.At(3).Scan = 1
	f.Add(h.Append(nil))
	f.Add([]byte{1, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := DecodeDay(b); err == nil {
			if _, err := DecodeDay(d.Append(nil)); err != nil {
				t.Fatalf("day does not decode again: %v", err)
			}
		}
		if h, err := DecodeHours(b); err == nil {
			if _, err := DecodeHours(h.Append(nil)); err != nil {
				t.Fatalf("hours do not decode again: %v", err)
			}
		}
	})
}
