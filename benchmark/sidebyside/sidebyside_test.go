package sidebyside

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// The whole benchmark with a tiny bound, so that it cannot rot. It checks
// what was measured and that nothing failed, never a timing.
func TestTinyRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs every binary")
	}
	var out strings.Builder
	res, err := Run(context.Background(), Options{
		Connections: 4, Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond,
		Rates: []float64{100}, RateTime: 300 * time.Millisecond,
		Workers: 1, Scaling: []int{1}, Scenes: 3,
		Records: 300, RecordSets: []int{5},
		Soak: 600 * time.Millisecond, SoakRate: 50,
		Growth: 300, GrowthDays: 3, GrowthScenes: 7, GrowthSettle: time.Millisecond,
		Accounts: 3, Rules: 20, Out: &out,
	})
	if err != nil {
		t.Fatalf("benchmark: %v\n%s", err, out.String())
	}
	names := func(ms []Measurement) (ns []string) {
		for _, m := range ms {
			ns = append(ns, m.Name)
		}
		return ns
	}
	for _, c := range []struct {
		what string
		got  []string
		want []string
	}{
		{"closed loop", names(res.Closed), []string{"(a) floor: no bus", "(b) standalone", "(c) distributed, 1 workers"}},
		{"open loop", names(res.Open), []string{"(a) at 100/s", "(b) at 100/s", "(c) at 100/s"}},
		{"scaling", names(res.Scaling), []string{"(c) 1 workers"}},
		{"accounts", names(res.Accounts), []string{"(b) 1 account", "(b) 3 accounts", "(c) 1 account", "(c) 3 accounts"}},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s measured %q, want %q", c.what, c.got, c.want)
		}
	}
	if res.Soak == nil {
		t.Fatal("no soak")
	}
	all := append(append(append(append(res.Closed, res.Open...), res.Scaling...), res.Accounts...), *res.Soak)
	for _, m := range all {
		r := m.Report
		if r.Sent == 0 || r.Err != 0 || r.Fallbacks != 0 || r.Replies == 0 {
			t.Errorf("%s: sent %d, failed %d, fallbacks %d, replies %d: want every request answered by a worker or no-one needed", m.Name, r.Sent, r.Err, r.Fallbacks, r.Replies)
		}
		var procs []string
		for _, p := range m.Procs {
			procs = append(procs, p.Name)
		}
		if procs[len(procs)-1] != "loadgen" || (strings.HasPrefix(m.Name, "(c)") || m.Name == "soak") && !slices.Contains(procs, "nats-server") {
			t.Errorf("%s: processes %q, want the configuration's and the load generator", m.Name, procs)
		}
	}
	if len(res.Growth) != 2 || res.Growth[0].Model != "same" || res.Growth[1].Model != "new" {
		t.Fatalf("growth %+v, want both models", res.Growth)
	}
	for _, g := range res.Growth {
		if g.RSSKB == 0 || g.DiskBytes == 0 || g.ScenesP50 == 0 || g.SeriesP99 == 0 {
			t.Errorf("growth %s measured %+v", g.Model, g)
		}
	}
	if len(res.Drains) != 1 || res.Drains[0] != (Drain{Records: 300, Scenes: 5, Elapsed: res.Drains[0].Elapsed, Exact: true}) {
		t.Errorf("analytics drains %+v, want 300 scans over 5 scenes, exact", res.Drains)
	}
}
