package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Outcomes of a WeChat request, the outcome label.
const (
	outcomeReply    = "reply"    // a worker's reply (or the GET echo) went back
	outcomeEmpty    = "empty"    // the worker had nothing to say: "success"
	outcomeFallback = "fallback" // no reply in time or the bus failed: "success"
	outcomeRejected = "rejected" // a 4xx, or the 503 below: not accepted
	// outcomeUnavailable is a 503: the event could not be stored nor held
	// (JetStream away and the intake buffer full), so WeChat retries it.
	// Not a label of its own (the contract's outcomes are four): it is
	// observed as rejected, and counted in wxgate_intake_dropped_total.
	outcomeUnavailable = "unavailable"
)

// Fallback reasons.
const (
	reasonTimeout      = "timeout"
	reasonNoResponders = "no_responders"
	reasonBusDown      = "bus_down"
	reasonWorkerError  = "worker_error"
)

// Rejection reasons.
const (
	rejectSignature = "signature"
	rejectStale     = "stale"
	rejectMalformed = "malformed"
	rejectTooLarge  = "too_large"
	rejectDecrypt   = "decrypt"
)

type metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	fallbacks *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	panics    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_ingress_requests_total",
			Help: "WeChat callback requests answered, by outcome.",
		}, []string{"outcome"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxgate_ingress_request_duration_seconds",
			Help: "Time from receiving a WeChat callback to answering it, by outcome.",
			// Fine below 10ms where healthy replies are, and around the
			// REPLY_TIMEOUT and WeChat's 5s deadline.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 4, 4.5, 5},
		}, []string{"outcome"}),
		fallbacks: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_ingress_fallbacks_total",
			Help: "Callbacks answered \"success\" because no worker reply came, by reason.",
		}, []string{"reason"}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_ingress_rejected_total",
			Help: "Callbacks refused with a 4xx, by reason.",
		}, []string{"reason"}),
		panics: f.NewCounter(prometheus.CounterOpts{
			Name: "wxgate_ingress_panics_total",
			Help: "Handler panics recovered (a bug: each is logged with its stack).",
		}),
	}
	// Every series exists from the start, so rate() never sees a gap.
	for _, o := range []string{outcomeReply, outcomeEmpty, outcomeFallback, outcomeRejected} {
		m.requests.WithLabelValues(o)
		m.duration.WithLabelValues(o)
	}
	for _, r := range []string{reasonTimeout, reasonNoResponders, reasonBusDown, reasonWorkerError} {
		m.fallbacks.WithLabelValues(r)
	}
	for _, r := range []string{rejectSignature, rejectStale, rejectMalformed, rejectTooLarge, rejectDecrypt} {
		m.rejected.WithLabelValues(r)
	}
	return m
}
