package intake

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/wxgate/wxgate/shared/wechat"
)

type metrics struct {
	stored, duplicate, held, flushed, unanswered prometheus.Counter
	dropped                                      *prometheus.CounterVec
	sceneRejected                                *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	events := f.NewCounterVec(prometheus.CounterOpts{
		Name: "wxgate_intake_events_total",
		Help: "Verified callbacks given to the event stream, by result: stored, duplicate (a retry or replay of a stored event), held (JetStream away; published later), flushed (a held event stored at last).",
	}, []string{"result"})
	m := &metrics{
		stored: events.WithLabelValues("stored"), duplicate: events.WithLabelValues("duplicate"),
		held: events.WithLabelValues("held"), flushed: events.WithLabelValues("flushed"),
		unanswered: f.NewCounter(prometheus.CounterOpts{
			Name: "wxgate_intake_unanswered_total",
			Help: "Events answered \"success\" without their reply, recorded in WXGATE_UNANSWERED for a late reply.",
		}),
		dropped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_intake_dropped_total",
			Help: "What the intake could not keep, by kind (event, unanswered) and reason: full (past the buffer; an event is answered 503, so WeChat retries it), share (its account holds half the buffer, while there are other accounts: answered 503 too), shutdown (still held at exit), refused (JetStream will not take it as it is: answered, not stored).",
		}, []string{"kind", "reason"}),
		sceneRejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_scene_rejected_total",
			Help: "Scans answered but not counted, because their scene is empty, longer than 64 characters or not UTF-8, by account and reason.",
		}, []string{"account", "reason"}),
	}
	for _, k := range [][2]string{{"event", "full"}, {"event", "share"}, {"event", "shutdown"}, {"event", "refused"}, {"unanswered", "full"}, {"unanswered", "shutdown"}, {"unanswered", "refused"}} {
		m.dropped.WithLabelValues(k[0], k[1])
	}
	for _, r := range wechat.SceneReasons {
		m.sceneRejected.WithLabelValues(wechat.DefaultAccount, r)
	}
	return m
}

// heldFunc exports how many events are held now.
func (m *metrics) heldFunc(reg prometheus.Registerer, held func() float64) {
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wxgate_intake_held",
		Help: "Events held by this ingress because JetStream could not take them yet (INTAKE_BUFFER is the bound).",
	}, held)
}
