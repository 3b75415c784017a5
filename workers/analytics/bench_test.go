package analytics

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkApply is the leader's work per scene event, without NATS: a
// scan by a new person on one of 100 scenes (the people growing), and the
// same person's subscribe. The memory it reports per operation is what
// the state keeps per person, and the day and hour changes waiting for a
// flush.
//
//	go test -run '^$' -bench Apply -benchmem ./workers/analytics
func BenchmarkApply(b *testing.B) {
	scenes := make([]string, 100)
	for i := range scenes {
		scenes[i] = "scene_" + strconv.Itoa(i)
	}
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, shanghai)
	for _, kind := range []string{KindScan, KindSubscribe} {
		b.Run(kind, func(b *testing.B) {
			s, out := newState(shanghai), newSeries(nil)
			b.ReportAllocs()
			i := uint64(0)
			for b.Loop() {
				i++
				s.apply(i, event{account: "default", kind: kind, scene: scenes[i%100], person: personHash("default", "o_"+strconv.FormatUint(i, 10)), received: at}, out)
				if out.ops > 10000 { // as a flush does, or the changes would grow
					for _, v := range out.changed {
						v.ops = v.ops[:0]
					}
					out.changed, out.ops = out.changed[:0], 0
				}
				if len(s.dirty) > 1000 {
					s.dirtyScenes()
				}
			}
		})
	}
}
