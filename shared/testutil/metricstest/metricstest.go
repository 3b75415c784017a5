// Package metricstest reads values out of a Prometheus gatherer in tests,
// by metric name and labels.
package metricstest

import (
	"bufio"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the value of the series name{label=value} (label may be
// empty for a series without labels). It fails the test when there is no
// such series.
func Value(t testing.TB, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	labels := map[string]string{}
	if label != "" {
		labels[label] = value
	}
	v, ok := Lookup(g, name, labels)
	if !ok {
		t.Fatalf("no series %s{%s=%q}", name, label, value)
	}
	return v
}

// Lookup returns the value of the first series of name whose labels include
// labels: a counter's or gauge's value, a histogram's sample count.
func Lookup(g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m.GetLabel(), labels) {
				return value(m), true
			}
		}
	}
	return 0, false
}

// Series returns every series of name, keyed by its labels ("k=v,k=v").
func Series(t testing.TB, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var parts []string
			for _, lp := range m.GetLabel() {
				parts = append(parts, lp.GetName()+"="+lp.GetValue())
			}
			sort.Strings(parts)
			out[strings.Join(parts, ",")] = value(m)
		}
	}
	return out
}

func matches(pairs []*dto.LabelPair, labels map[string]string) bool {
	n := 0
	for _, lp := range pairs {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels) && (len(labels) > 0 || len(pairs) == 0)
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// Scrape reads one series, named and labelled exactly as exposed (for
// example `x_total{reason="a"}`), from a live process's /metrics URL; 0
// when the series is absent.
func Scrape(t testing.TB, url, series string) float64 {
	t.Helper()
	var v float64
	scrape(t, url, func(line string) bool {
		s, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			return true
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("%s: %q: %v", series, s, err)
		}
		v = f
		return false
	})
	return v
}

// Names returns the metric families a live process's /metrics URL exposes,
// as its # TYPE lines name them.
func Names(t testing.TB, url string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	scrape(t, url, func(line string) bool {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
		return true
	})
	return names
}

// scrape GETs url and hands each line of the text exposition to line until
// it returns false.
func scrape(t testing.TB, url string, line func(string) bool) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if !line(sc.Text()) {
			return
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}
