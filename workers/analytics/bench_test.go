package analytics

import (
	"strconv"
	"testing"
	"time"
)

// BenchmarkApply is the leader's work per scene event, without NATS: a
// scan by a new person on one of 100 scenes (the exact uniques' map
// growing), and the same person's subscribe. The memory it reports per
// operation is what the state keeps per person.
//
//	go test -run '^$' -bench Apply -benchmem ./workers/analytics
func BenchmarkApply(b *testing.B) {
	scenes := make([]string, 100)
	for i := range scenes {
		scenes[i] = "scene_" + strconv.Itoa(i)
	}
	at := time.Unix(1_700_000_000, 0)
	for _, kind := range []string{KindScan, KindSubscribe} {
		b.Run(kind, func(b *testing.B) {
			s := newState()
			b.ReportAllocs()
			i := uint64(0)
			for b.Loop() {
				i++
				s.apply(i, event{kind: kind, scene: scenes[i%100], person: person("gh_bench", "o_"+strconv.FormatUint(i, 10)), received: at})
				if len(s.dirty) > 1000 {
					s.dirtyScenes() // as the flusher does, or the list would grow
				}
			}
		})
	}
}
