package analytics

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"
)

// events is a random but reproducible run of scene events.
func randomEvents(seed uint64, n int) []event {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]event, n)
	start := time.Unix(1700000000, 0)
	for i := range out {
		ev := event{person: uint64(rng.IntN(200)), received: start.Add(time.Duration(i) * time.Minute)}
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

func applyAll(st *state, evs []event, from uint64) {
	for i, ev := range evs {
		st.apply(from+uint64(i), ev)
	}
}

func clean(st *state) *state {
	for _, sc := range st.scenes {
		sc.dirty = false
	}
	st.dirty = nil
	return st
}

// Applying is deterministic, and a snapshot taken anywhere, decoded and
// replayed from its sequence, ends exactly where applying everything does:
// what lets a new leader take over with exact counts.
func TestSnapshotAndReplayIsExact(t *testing.T) {
	evs := randomEvents(7, 2000)
	whole := newState()
	applyAll(whole, evs, 1)
	for _, cut := range []int{0, 1, 999, 1999, 2000} {
		st := newState()
		applyAll(st, evs[:cut], 1)
		st.epoch, st.rebuilt, st.stream = 3, 2, 12345
		back, err := decodeState(st.encode())
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if !reflect.DeepEqual(clean(back), clean(st)) {
			t.Fatalf("cut %d: the snapshot did not round-trip", cut)
		}
		applyAll(back, evs[cut:], uint64(cut)+1)
		whole.epoch, whole.rebuilt, whole.stream = 3, 2, 12345
		if !reflect.DeepEqual(clean(back), clean(whole)) {
			t.Fatalf("cut %d: replay from the snapshot differs from applying everything", cut)
		}
	}
	// And the counts are the events': each subscribe is a new follower, a
	// person is unique once per scene.
	var subscribes, scans int64
	for _, ev := range evs {
		switch ev.kind {
		case KindSubscribe:
			subscribes++
		case KindScan:
			scans++
		}
	}
	var gotSub, gotScan int64
	for _, sc := range whole.scenes {
		gotSub += sc.SubscribeScans
		gotScan += sc.ScanScans
		if int64(len(sc.people)) != sc.UniquePeople {
			t.Errorf("%s: %d people held, %d unique counted", sc.Scene, len(sc.people), sc.UniquePeople)
		}
	}
	if gotSub != subscribes || gotScan != scans {
		t.Errorf("counted %d subscribes and %d scans, want %d and %d", gotSub, gotScan, subscribes, scans)
	}
}

// People silent on a scene for longer than the retention are forgotten
// (their events have left the stream); a later scan counts them again.
func TestPruneForgetsPeoplePastTheRetention(t *testing.T) {
	st := newState()
	old := time.Unix(1700000000, 0)
	st.apply(1, event{kind: KindScan, scene: "s", person: 1, received: old})
	st.apply(2, event{kind: KindScan, scene: "s", person: 2, received: old.Add(48 * time.Hour)})
	if n := st.prune(old.Add(72*time.Hour), 0); n != 0 {
		t.Fatalf("pruned %d with no retention", n)
	}
	if n := st.prune(old.Add(72*time.Hour), 36*time.Hour); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	st.apply(3, event{kind: KindScan, scene: "s", person: 1, received: old.Add(72 * time.Hour)})
	if got := st.scenes[0].UniquePeople; got != 3 {
		t.Errorf("unique after a forgotten person came back = %d, want 3", got)
	}
}

// FuzzDecodeState: a snapshot of any bytes is refused or read, never a
// panic or an allocation beyond what its bytes could hold.
func FuzzDecodeState(f *testing.F) {
	st := newState()
	applyAll(st, randomEvents(1, 50), 1)
	f.Add(st.encode())
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		if _, err := decodeState(st.encode()); err != nil {
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
