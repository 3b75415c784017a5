// Package metricstest reads single values out of a Prometheus gatherer in
// tests, by metric name and label values.
package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the value of the series name{label=value} (label may be
// empty for a series without labels): a counter's or gauge's value, a
// histogram's sample count. It fails the test when there is no such series.
func Value(t testing.TB, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabel(m.GetLabel(), label, value) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

func hasLabel(pairs []*dto.LabelPair, label, value string) bool {
	if label == "" {
		return len(pairs) == 0
	}
	for _, lp := range pairs {
		if lp.GetName() == label && lp.GetValue() == value {
			return true
		}
	}
	return false
}
