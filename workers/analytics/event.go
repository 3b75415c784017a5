// Package analytics folds the event stream's scene events (subscribe, SCAN,
// unsubscribe) into exact per-scene totals: scans by kind, new followers,
// unique people and unfollows attributed to the scene of the follow. The
// totals are written to a JetStream KV bucket (one value per scene), exported
// to Prometheus and served as JSON.
//
// One process at a time applies the stream (the leader, by a lease in KV;
// any number stand by), in stream order, with its state in memory: the
// people seen per scene and the scene each follower followed through. The
// state is snapshotted to a JetStream object store with the sequence it
// reached, so a new leader loads it and replays the stream from there:
// applying is deterministic, so every event counts exactly once whatever
// dies when. The per-person state lives only in memory and in the
// snapshot: nothing per person is kept in NATS's own indexes.
package analytics

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Kinds of scene event.
const (
	KindSubscribe   = wechat.KindSubscribe
	KindScan        = wechat.KindScan
	KindUnsubscribe = "unsubscribe"
)

// event is what the analytics take from one stored event.
type event struct {
	kind     string // KindSubscribe, KindScan, KindUnsubscribe; "" for nothing to count
	scene    string
	person   uint64 // a hash of the account and the OpenID
	received time.Time
}

// errUndecodable is an event that is not a WeChat message: quarantined.
var errUndecodable = errors.New("not a WeChat message")

// decode reads the event from a stored message. An event that is not a
// scene scan (a plain follow, a scan whose scene is not a scene) counts for
// nothing but an unsubscribe's attribution; its kind is "" then.
func decode(msg jetstream.Msg) (event, error) {
	m := new(wechat.Message)
	if !wechat.Classify(msg.Data(), m) {
		var err error
		if m, err = wechat.Parse(msg.Data()); err != nil {
			return event{}, fmt.Errorf("%w: %w", errUndecodable, err)
		}
	}
	ev := event{person: person(m.ToUserName, m.FromUserName), received: events.Received(msg.Headers(), m)}
	if scene, kind, ok := m.SceneScan(); ok {
		ev.kind, ev.scene = kind, scene
	} else if m.IsEventType(wechat.EventUnsubscribe) {
		ev.kind = KindUnsubscribe
	}
	return ev, nil
}

// person is a 64-bit hash of the account and the OpenID: no OpenID is
// kept, and two people collide with probability n²/2⁶⁵ (under one in ten
// million for a million people on one scene).
func person(account, openid string) uint64 {
	h := sha256.New()
	h.Write([]byte(account))
	h.Write([]byte{0})
	h.Write([]byte(openid))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
