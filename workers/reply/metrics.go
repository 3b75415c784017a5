package reply

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
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

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		handled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_worker_handled_total",
			Help: "Requests a worker's handler ran for, by subject.",
		}, []string{"subject"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wxgate_worker_handle_duration_seconds",
			Help:    "Time a worker's handler took, by subject.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"subject"}),
		known: make(map[string]bool, len(knownSubjects)),
	}
	for _, s := range knownSubjects {
		m.known[s] = true
		m.handled.WithLabelValues(s)
		m.duration.WithLabelValues(s)
	}
	return m
}

func (m *metrics) observe(subject string, d time.Duration) {
	label := subject
	if !m.known[label] {
		label = "msg.other"
		if strings.HasPrefix(subject, "event.") {
			label = "event.other"
		}
	}
	m.handled.WithLabelValues(label).Inc()
	m.duration.WithLabelValues(label).Observe(d.Seconds())
}
