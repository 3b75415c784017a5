package analytics

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/stats"
)

var shanghai = func() *time.Location {
	loc, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		panic(err)
	}
	return loc
}()

// randomEvents is a random but reproducible run of scene events over two
// accounts and 40 days, some of them late by up to a few days.
func randomEvents(seed uint64, n int) []event {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]event, n)
	start := time.Date(2025, 3, 1, 0, 0, 0, 0, shanghai)
	for i := range out {
		at := start.Add(time.Duration(i) * 40 * 24 * time.Hour / time.Duration(n))
		if rng.IntN(10) == 0 {
			at = at.Add(-time.Duration(rng.IntN(72)) * time.Hour)
		}
		ev := event{account: []string{"default", "second"}[rng.IntN(2)], person: uint64(rng.IntN(60)), received: at}
		switch rng.IntN(10) {
		case 0, 1:
			ev.kind = KindSubscribe
		case 2:
			ev.kind = KindUnsubscribe
		case 3:
			// nothing to count: a plain follow
		default:
			ev.kind = KindScan
		}
		if ev.kind == KindSubscribe || ev.kind == KindScan {
			ev.scene = "scene_" + strconv.Itoa(rng.IntN(7))
		}
		out[i] = ev
	}
	return out
}

func applyAll(st *state, evs []event, from uint64, out *series) {
	for i, ev := range evs {
		st.apply(from+uint64(i), ev, out)
	}
}

// kv stands for the series bucket: values by key, as written.
type kv map[string][]byte

// flushTo merges every changed value of out over what kv holds, as a
// leader's flush does, and writes it.
func flushTo(t *testing.T, st *state, out *series, store kv) {
	t.Helper()
	for _, v := range out.changed {
		if !v.read {
			v.day, v.hours = &stats.Day{}, &stats.Hours{}
			if b, ok := store[v.key()]; ok {
				var err error
				if v.id.hourly {
					v.hours, err = stats.DecodeHours(b)
				} else {
					v.day, err = stats.DecodeDay(b)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			v.read = true
		}
		if len(v.ops) > 0 && v.merge(st) {
			t.Fatalf("%s: foreign", v.key())
		}
		if v.id.hourly {
			store[v.key()] = v.hours.Append(nil)
		} else {
			store[v.key()] = v.day.Append(nil)
		}
		v.dirty = false
	}
	out.changed = nil
}

// contents is kv without the points values were written at.
func contents(t *testing.T, store kv) map[string]string {
	out := map[string]string{}
	for k, b := range store {
		if k[0] == 'h' {
			h, _ := stats.DecodeHours(b)
			h.Epoch, h.Seq = 0, 0
			out[k] = string(h.Append(nil))
		} else {
			d, _ := stats.DecodeDay(b)
			d.Epoch, d.Seq = 0, 0
			out[k] = string(d.Append(nil))
		}
	}
	return out
}

// A leader that dies after writing values past its last snapshot: the
// next one loads the snapshot, replays the stream from it over the values
// as they were left, and ends with exactly the values and state of one
// leader applying everything: each value skips the events it already
// holds (its sequence), none is counted twice or missed.
func TestReplayAfterFailoverIsExact(t *testing.T) {
	evs := randomEvents(7, 3000)
	whole, wholeKV := newState(shanghai), kv{}
	ws := newSeries(nil)
	for i := 0; i < len(evs); i += 100 {
		applyAll(whole, evs[i:min(i+100, len(evs))], uint64(i)+1, ws)
		flushTo(t, whole, ws, wholeKV)
	}
	for _, c := range []struct{ snap, died int }{{0, 0}, {1, 500}, {999, 1000}, {1000, 2999}, {2000, 2000}, {3000, 3000}} {
		old, store := newState(shanghai), kv{}
		os := newSeries(nil)
		applyAll(old, evs[:c.snap], 1, os)
		flushTo(t, old, os, store) // a snapshot follows a complete flush
		snapshot := old.encode()
		applyAll(old, evs[c.snap:c.died], uint64(c.snap)+1, os)
		flushTo(t, old, os, store) // written after the snapshot, then killed

		st, err := decodeState(snapshot, shanghai)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.encode(), snapshot) {
			t.Fatalf("snapshot at %d does not round-trip", c.snap)
		}
		ns := newSeries(st) // values once read take changes at once
		for i := c.snap; i < len(evs); i += 77 {
			applyAll(st, evs[i:min(i+77, len(evs))], uint64(i)+1, ns)
			flushTo(t, st, ns, store)
		}
		if !bytes.Equal(st.encode(), whole.encode()) {
			t.Fatalf("snapshot %d, died %d: state differs from applying everything", c.snap, c.died)
		}
		if got, want := contents(t, store), contents(t, wholeKV); !reflect.DeepEqual(got, want) {
			for k := range want {
				if got[k] != want[k] {
					t.Errorf("snapshot %d, died %d: %s differs", c.snap, c.died, k)
				}
			}
			t.FailNow()
		}
	}
	// And the values are the events': every scan is in a day, an hour and
	// the totals of its scene.
	var scans, dayScans, hourScans int64
	for _, ev := range evs {
		if ev.kind == KindScan || ev.kind == KindSubscribe {
			scans++
		}
	}
	for k, b := range wholeKV {
		if k[0] == 'd' && k[len(k)-1] == 'a' {
			d, _ := stats.DecodeDay(b)
			dayScans += d.Subscribe + d.Scan
		}
		if k[0] == 'h' && k[len(k)-1] == 'a' {
			h, _ := stats.DecodeHours(b)
			for _, x := range h.H {
				hourScans += x.Subscribe + x.Scan
			}
		}
	}
	var totals int64
	for _, a := range whole.accounts {
		for _, sc := range a.scenes {
			totals += sc.Scans
		}
	}
	if dayScans != scans || hourScans != scans || totals != scans {
		t.Errorf("scans: %d events, %d in days, %d in hours, %d in totals", scans, dayScans, hourScans, totals)
	}
}

// People silent longer than the retention are forgotten (their events
// have left the stream); a later scan counts them again. A follower is
// kept for the attribution of their unfollow.
func TestPruneForgetsPeoplePastTheRetention(t *testing.T) {
	st, out := newState(shanghai), newSeries(nil)
	old := time.Date(2025, 1, 1, 12, 0, 0, 0, shanghai)
	st.apply(1, event{account: "default", kind: KindScan, scene: "s", person: 1, received: old}, out)
	st.apply(2, event{account: "default", kind: KindSubscribe, scene: "s", person: 3, received: old}, out)
	st.apply(3, event{account: "default", kind: KindScan, scene: "s", person: 2, received: old.Add(48 * time.Hour)}, out)
	if n := st.prune(old.Add(72*time.Hour), 0); n != 0 {
		t.Fatalf("pruned %d with no retention", n)
	}
	if n := st.prune(old.Add(72*time.Hour), 36*time.Hour); n != 1 {
		t.Fatalf("pruned %d, want 1 (the follower stays)", n)
	}
	st.apply(4, event{account: "default", kind: KindScan, scene: "s", person: 1, received: old.Add(72 * time.Hour)}, out)
	if got := st.accounts["default"].scenes[0].UniquePeople; got != 4 {
		t.Errorf("unique after a forgotten person came back = %d, want 4", got)
	}
	if un, _ := st.apply(5, event{account: "default", kind: KindUnsubscribe, person: 3, received: old.Add(73 * time.Hour)}, out); un {
		t.Error("the follower's unfollow was not attributed after the prune")
	}
}

// A snapshot of the version before series (8af83c1, version 1) is
// refused for what it is, so the leader rebuilds.
func TestOldSnapshotIsRefused(t *testing.T) {
	v1 := []byte{1, 3, 2, 9, 0, 0, 0, 0}
	if _, err := decodeState(v1, shanghai); !errors.Is(err, errSnapshot) {
		t.Fatalf("version 1: %v", err)
	}
	st := newState(shanghai)
	applyAll(st, randomEvents(3, 50), 1, newSeries(nil))
	if _, err := decodeState(st.encode(), time.UTC); !errors.Is(err, errZone) {
		t.Fatalf("another zone: %v", err)
	}
}

// FuzzDecodeState: a snapshot of any bytes is refused or read, never a
// panic or an allocation beyond what its bytes could hold.
func FuzzDecodeState(f *testing.F) {
	st := newState(shanghai)
	applyAll(st, randomEvents(1, 80), 1, newSeries(nil))
	f.Add(st.encode())
	f.Add([]byte{})
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b, shanghai)
		if err != nil {
			return
		}
		if _, err := decodeState(st.encode(), shanghai); err != nil {
			t.Fatalf("a decoded snapshot does not decode again: %v", err)
		}
	})
}

// The leader starts a new consumer when the one it has does not deliver:
// five seconds of failing info, or of events pending with none applied.
func TestStallCheck(t *testing.T) {
	infoErr := errors.New("no responders")
	type tick struct {
		pending uint64
		err     error
		seq     uint64
	}
	for _, c := range []struct {
		name   string
		ticks  []tick
		stalls bool
	}{
		{"idle", []tick{{0, nil, 5}, {0, nil, 5}, {0, nil, 5}, {0, nil, 5}, {0, nil, 5}, {0, nil, 5}}, false},
		{"applying", []tick{{9, nil, 1}, {9, nil, 2}, {9, nil, 3}, {9, nil, 4}, {9, nil, 5}, {9, nil, 6}}, false},
		{"pending, nothing applied", []tick{{9, nil, 5}, {9, nil, 5}, {9, nil, 5}, {9, nil, 5}, {9, nil, 5}, {9, nil, 5}}, true},
		{"info failing", []tick{{0, infoErr, 5}, {0, infoErr, 5}, {0, infoErr, 5}, {0, infoErr, 5}, {0, infoErr, 5}}, true},
		{"info failing, then answering", []tick{{0, infoErr, 5}, {0, infoErr, 5}, {0, infoErr, 5}, {0, infoErr, 5}, {0, nil, 5}, {0, infoErr, 5}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s stall
			var err error
			for _, tk := range c.ticks {
				if err = s.check(tk.pending, tk.err, tk.seq); err != nil {
					break
				}
			}
			if (err != nil) != c.stalls {
				t.Errorf("stalled: %v, want %v", err, c.stalls)
			}
		})
	}
}

// The snapshot keeps a person in about 9 bytes: 100 000 people who each
// followed through one of 1 000 scenes over a month (the growth mode's
// second model). The disk the analytics take beyond the stream is
// mostly this, and is bounded at 16 bytes per person-day.
func TestSnapshotSizePerPerson(t *testing.T) {
	st, out := newState(shanghai), newSeries(nil)
	start := time.Date(2025, 3, 1, 0, 0, 0, 0, shanghai)
	const n = 100000
	for i := range n {
		at := start.Add(time.Duration(i) * 30 * 24 * time.Hour / n)
		st.apply(uint64(i+1), event{account: "default", kind: KindSubscribe, scene: "scene_" + strconv.Itoa(i%1000),
			person: personHash("default", "o"+strconv.Itoa(i)), received: at}, out)
	}
	b := st.encode()
	if per := float64(len(b)) / n; per > 9.5 {
		t.Errorf("the snapshot takes %.2f bytes a person, want at most 9.5", per)
	} else {
		t.Logf("%.2f bytes a person", per)
	}
	back, err := decodeState(b, shanghai)
	if err != nil || !bytes.Equal(back.encode(), b) {
		t.Fatalf("round trip: %v", err)
	}
}
