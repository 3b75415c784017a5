package sidebyside

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The whole benchmark with a tiny bound, so that it cannot rot. It asserts
// what the report contains and that nothing failed, never a timing.
func TestTinyRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs every binary")
	}
	var out strings.Builder
	err := Run(context.Background(), Options{
		Connections: 4, Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond,
		Rates: []float64{100}, RateTime: 300 * time.Millisecond,
		Workers: 1, Scaling: []int{1}, Scenes: 3,
		Records: 300, RecordSets: []int{5},
		Soak: 600 * time.Millisecond, SoakRate: 50,
		Out: &out,
	})
	report := out.String()
	if err != nil {
		t.Fatalf("benchmark: %v\n%s", err, report)
	}
	for _, want := range []string{
		"(a) floor: no bus", "(b) standalone", "(c) distributed, 1 workers", "ratios: throughput b/a",
		"(a) at 100/s", "(c) 1 workers", "nats-server", "loadgen",
		"analytics: 300 scans over 5 scenes", "counts exact: true", "soak: (c) at 50/s",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	for _, line := range strings.Split(report, "\n") {
		f := strings.Fields(line)
		// Table rows: errors and fallbacks are the 6th and 7th columns from
		// the right of the configuration name; just require " 0 " for both.
		if len(f) > 8 && (strings.HasPrefix(line, "(a)") || strings.HasPrefix(line, "(b)") || strings.HasPrefix(line, "(c)")) {
			if !strings.Contains(line, "      0         0  ") {
				t.Errorf("errors or fallbacks in: %s", line)
			}
		}
	}
}
