package reply

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/wxgate/wxgate/shared/accounts"
)

// knownSubjects get their own label value; a sender can invent any
// [a-z0-9_] type, so the rest share msg.other / event.other to keep the
// label bounded.
var knownSubjects = []string{
	"msg.text", "msg.image", "msg.voice", "msg.video", "msg.shortvideo", "msg.location", "msg.link", "msg.unknown", "msg.other",
	"event.subscribe", "event.unsubscribe", "event.scan", "event.location", "event.click", "event.view", "event.unknown", "event.other",
}

type metrics struct {
	handled  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	known    map[string]bool
}

// newMetrics registers the worker's metrics, by account (accts.Label) and
// subject. Each account's counters exist from when it appears; its
// histograms from its first request of each subject (17 subjects' worth
// of buckets for each of MAX_ACCOUNTS accounts, idle ones included, would
// be most of a scrape).
func newMetrics(reg prometheus.Registerer, accts *accounts.Registry) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		handled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_worker_handled_total",
			Help: "Requests a worker's handler ran for, by account and subject.",
		}, []string{"account", "subject"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wxgate_worker_handle_duration_seconds",
			Help:    "Time a worker's handler took, by account and subject.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"account", "subject"}),
		known: make(map[string]bool, len(knownSubjects)),
	}
	for _, s := range knownSubjects {
		m.known[s] = true
	}
	accts.Series(func(id string) {
		for _, s := range knownSubjects {
			m.handled.WithLabelValues(id, s)
		}
	}, m.handled, m.duration)
	return m
}

func (m *metrics) observe(account, subject string, d time.Duration) {
	label := subject
	if !m.known[label] {
		label = "msg.other"
		if strings.HasPrefix(subject, "event.") {
			label = "event.other"
		}
	}
	m.handled.WithLabelValues(account, label).Inc()
	m.duration.WithLabelValues(account, label).Observe(d.Seconds())
}
