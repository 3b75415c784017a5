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
// unsubscribe.
func RecordFrom(m *wechat.Message, dedupKey string, received time.Time) (Record, bool) {
	r := Record{
		Account: m.ToUserName, OpenID: m.FromUserName, Ticket: m.Ticket,
		CreateTime: m.CreateTime, Received: received.UTC(), DedupKey: dedupKey,
	}
	if scene, kind, ok := m.SceneScan(); ok {
		r.Scene, r.Kind = scene, kind
		return r, true
	}
	if m.IsEventType(wechat.EventUnsubscribe) {
		r.Kind = KindUnsubscribe
		return r, true
	}
	return Record{}, false
}

// Subject is where the record is published.
func (r Record) Subject() string { return SubjectPrefix + r.Kind }

func (r Record) marshal() []byte {
	b, _ := json.Marshal(r) // cannot fail: strings, ints and a time
	return b
}
