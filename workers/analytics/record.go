// Package analytics fans scene scans out to a JetStream stream and folds
// them into durable, exactly-once per-scene totals in JetStream KV, exported
// to Prometheus and served as JSON.
//
// The flow: a worker that handles a parametric-QR subscribe, a SCAN or an
// unsubscribe publishes a Record on wxgate.scans.<kind> with Nats-Msg-Id set
// to the message's dedup key, so WeChat's retries are stored once. An
// analytics consumer (durable, shareable by replicas) applies each record to
// the totals of its scene with compare-and-set updates that remember which
// stream sequences they applied, so a redelivery never counts twice.
package analytics

import (
	"encoding/json"
	"time"

	"github.com/wxgate/wxgate/shared/wechat"
)

// Stream and subjects. The subjects are outside msg.> and event.>: a stream
// that captured request subjects would answer requests with its PubAck.
const (
	StreamName     = "WXGATE_SCANS"
	SubjectPrefix  = "wxgate.scans."
	StreamSubjects = SubjectPrefix + ">"
	ConsumerName   = "wxgate-analytics"
	BucketName     = "wxgate_scenes"
)

// Record kinds: the two scan kinds and unsubscribe, which is recorded so
// that unfollows can be attributed to the scene the person followed through.
const (
	KindSubscribe   = wechat.KindSubscribe
	KindScan        = wechat.KindScan
	KindUnsubscribe = "unsubscribe"
)

// Record is one scan (or unfollow) as stored in the stream, in JSON. It is
// the contract for any other consumer of the stream.
type Record struct {
	Account    string    `json:"account"`         // ToUserName
	OpenID     string    `json:"openid"`          // FromUserName
	Scene      string    `json:"scene,omitempty"` // empty for unsubscribe
	Kind       string    `json:"kind"`            // subscribe, scan or unsubscribe
	Ticket     string    `json:"ticket,omitempty"`
	CreateTime int64     `json:"create_time"` // WeChat's CreateTime, Unix seconds
	Received   time.Time `json:"received"`    // when the ingress received it
	DedupKey   string    `json:"dedup_key"`
}

// RecordFrom returns the record for m, if m is a scene scan or an
// unsubscribe. A scan whose scene is not a valid scene gives no record, and
// rejected says why (wechat.SceneProblem).
func RecordFrom(m *wechat.Message, dedupKey string, received time.Time) (r Record, ok bool, rejected string) {
	r = Record{
		Account: m.ToUserName, OpenID: m.FromUserName, Ticket: m.Ticket,
		CreateTime: m.CreateTime, Received: received.UTC(), DedupKey: dedupKey,
	}
	if scene, kind, scan := m.SceneCandidate(); scan {
		if p := wechat.SceneProblem(scene); p != "" {
			return Record{}, false, p
		}
		r.Scene, r.Kind = scene, kind
		return r, true, ""
	}
	if m.IsEventType(wechat.EventUnsubscribe) {
		r.Kind = KindUnsubscribe
		return r, true, ""
	}
	return Record{}, false, ""
}

// Reasons a stored record is quarantined instead of applied (the reason
// label of wxgate_analytics_poison_total).
const (
	PoisonUndecodable  = "undecodable"   // not a JSON record
	PoisonUnknownKind  = "unknown_kind"  // a kind this version does not count
	PoisonInvalidScene = "invalid_scene" // a scan whose scene is not 1-64 characters of UTF-8
	PoisonNoPerson     = "no_openid"     // no account or OpenID to attribute it to
	PoisonApplyFailed  = "apply_failed"  // valid, but failed to apply on every delivery
)

var poisonReasons = []string{PoisonUndecodable, PoisonUnknownKind, PoisonInvalidScene, PoisonNoPerson, PoisonApplyFailed}

// problem says why the record cannot be applied, or "" when it can. Records
// come from the stream, which any version (or any publisher) may have
// written: they are checked again here, so that a record an older version
// stored cannot make a key, a subject or a label of unbounded size.
func (r Record) problem() string {
	switch r.Kind {
	case KindSubscribe, KindScan:
		if wechat.SceneProblem(r.Scene) != "" {
			return PoisonInvalidScene
		}
	case KindUnsubscribe:
	default:
		return PoisonUnknownKind
	}
	if r.OpenID == "" {
		return PoisonNoPerson
	}
	return ""
}

// Subject is where the record is published.
func (r Record) Subject() string { return SubjectPrefix + r.Kind }

func (r Record) marshal() []byte {
	b, _ := json.Marshal(r) // cannot fail: strings, ints and a time
	return b
}
