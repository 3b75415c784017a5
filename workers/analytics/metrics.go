package analytics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type roleMetrics struct {
	events        *prometheus.CounterVec
	poison        *prometheus.CounterVec
	unattributed  prometheus.Counter
	inexact       prometheus.Counter
	rebuilds      prometheus.Counter
	pending       prometheus.Gauge
	infoTime      prometheus.Gauge
	leader        prometheus.Gauge
	appliedSeq    prometheus.Gauge
	snapshotBytes prometheus.Gauge
	people        prometheus.Gauge
	followers     prometheus.Gauge
	conflicts     prometheus.Counter
}

func newRoleMetrics(reg prometheus.Registerer) *roleMetrics {
	f := promauto.With(reg)
	m := &roleMetrics{
		events: f.NewCounterVec(prometheus.CounterOpts{Name: "wxgate_analytics_events_total",
			Help: "Scene events applied by this process while it leads, by kind (other: a plain follow, or a scan whose scene is not a scene)."},
			[]string{"kind"}),
		poison: f.NewCounterVec(prometheus.CounterOpts{Name: "wxgate_analytics_poison_total",
			Help: "Events that could not be applied, copied to the dead-letter stream and skipped, by reason."},
			[]string{"reason"}),
		unattributed: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_unattributed_unfollows_total",
			Help: "Unfollows of people with no recorded scene (followed another way, or before wxgate)."}),
		inexact: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_inexact_scans_total",
			Help: "Late scans the leader could not place exactly (more than 14 days late, or in an hour of a day already counted): counted in scans, not in unique people."}),
		rebuilds: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_consumer_rebuilds_total",
			Help: "Times the analytics were set up again (a bucket lost or replaced, a watch ended) or rebuilt from the stream on request."}),
		pending: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_consumer_pending",
			Help: "Scene events in the stream not yet applied by the leader (its lag); only the leader reports it."}),
		infoTime: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_consumer_last_info_timestamp_seconds",
			Help: "When this process, leading, last reported its progress (Unix time). Old everywhere: no process applies the stream."}),
		leader: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_leader",
			Help: "1 while this process applies the event stream (one process at a time holds the lease)."}),
		appliedSeq: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_applied_sequence",
			Help: "The last event stream sequence the leader applied."}),
		snapshotBytes: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_snapshot_bytes",
			Help: "The size of the leader's last snapshot."}),
		people: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_people",
			Help: "(scene, person) pairs the leader holds for exact unique counts (within EVENTS_MAX_AGE)."}),
		followers: f.NewGauge(prometheus.GaugeOpts{Name: "wxgate_analytics_followers",
			Help: "Current followers with the scene they followed through, held by the leader for unfollow attribution."}),
		conflicts: f.NewCounter(prometheus.CounterOpts{Name: "wxgate_analytics_write_conflicts_total",
			Help: "Scene totals the leader found written by another (a leader before it, still finishing) and read again before writing. Rising steadily: two processes write the totals."}),
	}
	for _, k := range []string{KindSubscribe, KindScan, KindUnsubscribe, "other"} {
		m.events.WithLabelValues(k)
	}
	for _, r := range poisonReasons {
		m.poison.WithLabelValues(r)
	}
	return m
}
