package analytics

import (
	"math/rand/v2"
	"slices"
	"testing"
)

type scanAt struct{ date, hour int }

// follow applies a person's scans, in the order given, to a trace, and
// returns the gap histogram of each day and the people of each hour that
// the changes add up to, and whether any scan was inexact.
func follow(scans []scanAt) (days map[int]map[int]int, hours map[scanAt]int, inexact bool) {
	days, hours = map[int]map[int]int{}, map[scanAt]int{}
	add := func(date, gap, n int) {
		if days[date] == nil {
			days[date] = map[int]int{}
		}
		if days[date][gap] += n; days[date][gap] == 0 {
			delete(days[date], gap)
		}
	}
	var t trace
	for _, s := range scans {
		var c change
		t, c = t.scan(s.date, s.hour)
		if c.day {
			add(s.date, c.gap, 1)
		}
		if c.moved {
			add(c.next, c.was, -1)
			add(c.next, c.is, 1)
		}
		if c.hour {
			hours[s]++
		}
		inexact = inexact || c.inexact
	}
	return days, hours, inexact
}

// truth is the same from the scans themselves, in time order.
func truth(scans []scanAt) (days map[int]map[int]int, hours map[scanAt]int) {
	days, hours = map[int]map[int]int{}, map[scanAt]int{}
	var dates []int
	for _, s := range scans {
		hours[s] = 1
		if !slices.Contains(dates, s.date) {
			dates = append(dates, s.date)
		}
	}
	slices.Sort(dates)
	for i, d := range dates {
		gap := 0
		if i > 0 {
			gap = d - dates[i-1]
		}
		days[d] = map[int]int{gap: 1}
	}
	return days, hours
}

// randomScans is a person's scans over 400 days: bursts of days close
// together, long silences, several scans a day; order shuffles each scan
// by up to late days (and up to lateHours hours within its day).
func randomScans(rng *rand.Rand, late, lateHours int) []scanAt {
	var scans []scanAt
	date := rng.IntN(30)
	for date < 400 && len(scans) < 60 {
		for n := 1 + rng.IntN(3); n > 0; n-- {
			scans = append(scans, scanAt{date, rng.IntN(24)})
		}
		switch rng.IntN(4) {
		case 0:
			date += 1 + rng.IntN(3)
		case 1:
			date += 1 + rng.IntN(20)
		case 2:
			date += 1 + rng.IntN(200)
		default:
			date++
		}
	}
	type keyed struct {
		s       scanAt
		day, hr int
	}
	ks := make([]keyed, len(scans))
	for i, s := range scans {
		ks[i] = keyed{s, s.date + rng.IntN(late+1), s.hour + rng.IntN(lateHours+1)}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int {
		if a.day != b.day {
			return a.day - b.day
		}
		return a.hr - b.hr
	})
	for i := range ks {
		scans[i] = ks[i].s
	}
	return scans
}

func sameDays(a, b map[int]map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for d, g := range a {
		for k, n := range g {
			if b[d][k] != n {
				return false
			}
		}
		if len(g) != len(b[d]) {
			return false
		}
	}
	return true
}

// In time order, and with scans reaching the stream up to 14 days late,
// every day's gap histogram is what the scans in time order give, so every
// period's unique people are exact (shared/stats' TestSumUniqueIsExact).
func TestTraceDaysExactUpTo14DaysLate(t *testing.T) {
	for seed := uint64(0); seed < 3000; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		late := []int{0, 1, 3, 14}[seed%4]
		scans := randomScans(rng, late, 0)
		got, _, _ := follow(scans)
		want, _ := truth(scans)
		if !sameDays(got, want) {
			t.Fatalf("seed %d (late %d days): %v\nscans %v\nwant %v", seed, late, got, scans, want)
		}
	}
}

// Scans out of order within their day (a retry held for an hour) count in
// the right hours, exactly; in order, nothing is ever inexact.
func TestTraceHoursExact(t *testing.T) {
	for seed := uint64(0); seed < 2000; seed++ {
		rng := rand.New(rand.NewPCG(seed, 2))
		lateHours := []int{0, 5, 23}[seed%3]
		scans := randomScans(rng, 0, lateHours)
		gotDays, gotHours, inexact := follow(scans)
		wantDays, wantHours := truth(scans)
		if inexact || !sameDays(gotDays, wantDays) {
			t.Fatalf("seed %d: inexact %v, days %v, want %v", seed, inexact, gotDays, wantDays)
		}
		for s, n := range wantHours {
			if gotHours[s] != n {
				t.Fatalf("seed %d: hour %v counted %d, want %d", seed, s, gotHours[s], n)
			}
		}
		if len(gotHours) != len(wantHours) {
			t.Fatalf("seed %d: %d hours counted, want %d", seed, len(gotHours), len(wantHours))
		}
	}
}

// Late beyond the window: a scan before everything known about a person
// (history imported after the live events) is placed exactly while the
// trace knows the earliest day was their first; what it cannot place is
// said to be inexact, never counted as a new person.
func TestTraceBeyondTheWindow(t *testing.T) {
	scans := []scanAt{{100, 1}, {101, 2}, {110, 3}, {50, 4}}
	got, _, inexact := follow(scans)
	want, _ := truth(scans)
	if inexact || !sameDays(got, want) {
		t.Fatalf("history before the first day: %v (inexact %v), want %v", got, inexact, want)
	}
	// Between 50 and 101 is known (101's previous is 50); before 50 is not.
	got, _, inexact = follow(append(scans, scanAt{70, 5}))
	want, _ = truth(append(scans, scanAt{70, 5}))
	if inexact || !sameDays(got, want) {
		t.Fatalf("between known days: %v (inexact %v), want %v", got, inexact, want)
	}
	got, _, inexact = follow(append(scans, scanAt{40, 5}))
	if !inexact {
		t.Fatal("a scan before a day whose previous is unknown was placed")
	}
	for d, g := range got {
		for gap, n := range g {
			if n < 0 || (gap == 0 && d != 50) {
				t.Errorf("day %d: gap %d count %d", d, gap, n)
			}
		}
	}
	// A day already counted, earlier than the latest: its hour is unknown.
	if _, hours, inexact := follow([]scanAt{{10, 1}, {12, 1}, {10, 7}}); !inexact || hours[scanAt{10, 7}] != 0 {
		t.Errorf("late scan on a counted day: inexact %v, hours %v", inexact, hours)
	}
}
