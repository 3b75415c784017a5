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
	// rejectAccount: no such account (404, counted under the account
	// "unknown"), or a message to another ToUserName than the account's
	// original_id (400).
	rejectAccount = "account"
)

var (
	outcomes = []string{outcomeReply, outcomeEmpty, outcomeFallback, outcomeRejected}
	reasons  = []string{reasonTimeout, reasonNoResponders, reasonBusDown, reasonWorkerError}
	rejects  = []string{rejectSignature, rejectStale, rejectMalformed, rejectTooLarge, rejectDecrypt, rejectAccount}
	keys     = []string{"current", "previous"} // the key label of wxgate_decrypt_total
)

// metrics are the gateway's; every vector but panics is by account, a
// label bounded by MAX_ACCOUNTS (and "unknown").
type metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	fallbacks *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	decrypt   *prometheus.CounterVec
	panics    prometheus.Counter
}

// accountMetrics are one account's series, made when it appears (so that
// rate() never sees a gap) and kept with it: a request finds its series
// by a map read, never by hashing labels.
type accountMetrics struct {
	requests  map[string]prometheus.Counter
	duration  map[string]prometheus.Observer
	fallbacks map[string]prometheus.Counter
	rejected  map[string]prometheus.Counter
	decrypt   [2]prometheus.Counter // current, previous
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_ingress_requests_total",
			Help: "WeChat callback requests answered, by account and outcome.",
		}, []string{"account", "outcome"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxgate_ingress_request_duration_seconds",
			Help: "Time from receiving a WeChat callback to answering it, by account and outcome.",
			// Fine below 10ms where healthy replies are, and around the
			// REPLY_TIMEOUT and WeChat's 5s deadline.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 4, 4.5, 5},
		}, []string{"account", "outcome"}),
		fallbacks: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_ingress_fallbacks_total",
			Help: "Callbacks answered \"success\" because no worker reply came, by account and reason.",
		}, []string{"account", "reason"}),
		rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_ingress_rejected_total",
			Help: "Callbacks refused with a 4xx, by account (\"unknown\": no such account) and reason.",
		}, []string{"account", "reason"}),
		decrypt: f.NewCounterVec(prometheus.CounterOpts{
			Name: "wxgate_decrypt_total",
			Help: "Encrypted callbacks opened, by account and key: current, or previous (during a key change; when it stays at zero the old key can go).",
		}, []string{"account", "key"}),
		panics: f.NewCounter(prometheus.CounterOpts{
			Name: "wxgate_ingress_panics_total",
			Help: "Handler panics recovered (a bug: each is logged with its stack).",
		}),
	}
}

// of makes the series of account id.
func (m *metrics) of(id string) *accountMetrics {
	a := &accountMetrics{requests: map[string]prometheus.Counter{}, duration: map[string]prometheus.Observer{},
		fallbacks: map[string]prometheus.Counter{}, rejected: map[string]prometheus.Counter{}}
	for _, o := range outcomes {
		a.requests[o] = m.requests.WithLabelValues(id, o)
		a.duration[o] = m.duration.WithLabelValues(id, o)
	}
	for _, r := range reasons {
		a.fallbacks[r] = m.fallbacks.WithLabelValues(id, r)
	}
	for _, r := range rejects {
		a.rejected[r] = m.rejected.WithLabelValues(id, r)
	}
	for i, k := range keys {
		a.decrypt[i] = m.decrypt.WithLabelValues(id, k)
	}
	return a
}

// drop removes the series of account id: it is gone.
func (m *metrics) drop(id string) {
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.requests, m.duration, m.fallbacks, m.rejected, m.decrypt} {
		v.DeletePartialMatch(prometheus.Labels{"account": id})
	}
}
