// Package analytics folds the event stream's scene events (subscribe, SCAN,
// unsubscribe) into exact counts per account: per scene all time (scans by
// kind, new followers, unique people, unfollows attributed to the scene of
// the follow), and per scene, group and account for each local day and
// hour, with the unique people of any period exact (stats.Sum). The totals
// go to the KV bucket wxgate_scenes, the day and hour values to
// wxgate_series; they are exported to Prometheus and served as JSON
// (shared/stats).
//
// One process at a time applies the stream (the leader, by a lease in KV;
// any number stand by), in stream order, with its state in memory: per
// account, the scenes' totals and groups, and per person a trace of their
// scans in each universe (trace) and the scene they followed through. The
// state is snapshotted to a JetStream object store with the sequence it
// reached, after every value up to it was written; a new leader loads it
// and replays the stream from there. Applying is deterministic and every
// value carries the point it was written at, so every event counts
// exactly once whatever dies when. Nothing per person is kept in NATS's
// own indexes.
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
	account  string // an accounts.ValidID
	kind     string // KindSubscribe, KindScan, KindUnsubscribe; "" for nothing to count
	scene    string
	person   uint64 // a hash of the account and the OpenID
	received time.Time
}

// Why an event cannot be applied.
var (
	errUndecodable = errors.New("not a WeChat message")
	errAccount     = errors.New("the subject's account is not an account id")
	errTime        = errors.New("received outside 2000-2100")
)

// sceneFilters are the subjects the analytics read: the scene events of
// every account (wxgate.events.<account>.event.<type>) and those an older
// version stored, which are the account default's (wxgate.events.event.<type>).
var sceneFilters = func() []string {
	var out []string
	for _, ev := range []string{wechat.EventSubscribe, wechat.EventScan, wechat.EventUnsubscribe} {
		s := wechat.SubjectFor(wechat.MsgEvent, ev)
		out = append(out, events.SubjectPrefix+s, events.SubjectPrefix+"*."+s)
	}
	return out
}()

// accountOf is the account of a stored event, from its subject.
func accountOf(subject string) (string, error) {
	id, ok := events.AccountOf(events.SubjectPrefix, subject)
	if !ok {
		return "", fmt.Errorf("%w: %.40q", errAccount, subject)
	}
	return id, nil
}

// Times the analytics count: a date fits the traces' 16 bits, with room.
var (
	earliest = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	latest   = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

// decode reads the event from a stored message. An event that is not a
// scene scan (a plain follow, a scan whose scene is not a scene) counts
// for nothing; its kind is "" then.
func decode(msg jetstream.Msg) (event, error) {
	account, err := accountOf(msg.Subject())
	if err != nil {
		return event{}, err
	}
	m := new(wechat.Message)
	if !wechat.Classify(msg.Data(), m) {
		if m, err = wechat.Parse(msg.Data()); err != nil {
			return event{}, fmt.Errorf("%w: %w", errUndecodable, err)
		}
	}
	ev := event{account: account, person: personHash(account, m.FromUserName), received: events.Received(msg.Headers(), m)}
	if ev.received.Before(earliest) || !ev.received.Before(latest) {
		return event{}, fmt.Errorf("%w: %s", errTime, ev.received.UTC().Format(time.RFC3339))
	}
	if scene, kind, ok := m.SceneScan(); ok {
		ev.kind, ev.scene = kind, scene
	} else if m.IsEventType(wechat.EventUnsubscribe) {
		ev.kind = KindUnsubscribe
	}
	return ev, nil
}

// personHash is a 64-bit hash of the account and the OpenID: no OpenID is
// kept, and two people collide with probability n²/2⁶⁵ (under one in ten
// million for a million people in one account).
func personHash(account, openid string) uint64 {
	h := sha256.New()
	h.Write([]byte(account))
	h.Write([]byte{0})
	h.Write([]byte(openid))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
