package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

var quiet = slog.New(slog.DiscardHandler)

// fixture is a real NATS server with the event stream, and a publisher of
// events as the ingress stores them.
type fixture struct {
	t   *testing.T
	srv *bus.Embedded
	js  jetstream.JetStream
	n   atomic.Int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.RunServer(t)}
	js, err := jetstream.New(natstest.Connect(t, f.srv))
	if err != nil {
		t.Fatal(err)
	}
	f.js = js
	if err := events.Ensure(context.Background(), js, events.Defaults()); err != nil {
		t.Fatal(err)
	}
	return f
}

// role starts an analytics role on its own connection and waits until it
// is set up.
func (f *fixture) role(o RoleOptions) (*Role, *prometheus.Registry) {
	f.t.Helper()
	r, reg := startRole(f.t, natstest.Connect(f.t, f.srv), o)
	select {
	case <-r.Ready():
	case <-time.After(wait.Short):
		f.t.Fatal("analytics did not start")
	}
	return r, reg
}

// startRole starts an analytics role on nc, its own connection, at the
// test's pace: leases, flushes and checks of milliseconds where a process
// has seconds (a Logger, Lease, FlushEvery or CheckEvery in o stands).
func startRole(t *testing.T, nc *nats.Conn, o RoleOptions) (*Role, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Conn, o.Registerer = nc, reg
	if o.Logger == nil {
		o.Logger = quiet
	}
	if o.Lease == 0 {
		o.Lease = 600 * time.Millisecond
	}
	if o.FlushEvery == 0 {
		o.FlushEvery = 20 * time.Millisecond
	}
	if o.CheckEvery == 0 {
		o.CheckEvery = 50 * time.Millisecond
	}
	r, err := StartRole(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Stop(ctx)
	})
	return r, reg
}

// publish stores raw data as an event, as any version or publisher could.
func (f *fixture) publish(requestSubject string, data []byte) {
	f.t.Helper()
	msg := &nats.Msg{Subject: events.SubjectPrefix + requestSubject, Data: data, Header: nats.Header{}}
	if _, err := f.js.PublishMsg(context.Background(), msg, jetstream.WithMsgID(fmt.Sprint("test.", f.n.Add(1)))); err != nil {
		f.t.Fatal(err)
	}
}

// event stores a scene event: kind is subscribe, SCAN or unsubscribe.
func (f *fixture) event(ev, openid, scene string) {
	f.t.Helper()
	m := &wechat.Message{ToUserName: "gh", FromUserName: openid, CreateTime: 1700000000 + f.n.Load(), MsgType: wechat.MsgEvent, Event: ev}
	switch ev {
	case wechat.EventSubscribe:
		if scene != "" {
			m.EventKey = wechat.ScenePrefix + scene
		}
	case wechat.EventScan:
		m.EventKey = scene
	}
	f.publish(m.Subject(), m.AppendXML(nil))
}

// totals waits until the store shows want for scene.
func (f *fixture) totals(r *Role, scene string, want stats.Totals) {
	f.t.Helper()
	wait.For(f.t, wait.Short, wait.Every, func() error {
		s, err := r.Store(context.Background())
		if err != nil {
			return err
		}
		got, _, err := s.Scene(context.Background(), scene)
		if err != nil {
			return err
		}
		got.FirstSeq, got.FirstSeen, got.LastSeen = 0, time.Time{}, time.Time{}
		if got != want {
			return fmt.Errorf("%s = %+v, want %+v", scene, got, want)
		}
		return nil
	})
}

func want(scene string, subscribe, scan, followers, unique, unfollows int64) stats.Totals {
	return stats.Totals{Scene: scene, Scans: subscribe + scan, SubscribeScans: subscribe, ScanScans: scan,
		NewFollowers: followers, UniquePeople: unique, Unfollows: unfollows}
}

// Two processes: one leads, one stands by. The leader stops (its lease
// released) and then dies without releasing it: each time the other takes
// over and carries on from the snapshot, and every count stays exact.
func TestExactAcrossLeaderChanges(t *testing.T) {
	f := newFixture(t)
	a, _ := f.role(RoleOptions{ID: "a"})
	b, _ := f.role(RoleOptions{ID: "b"})
	f.event("subscribe", "alice", "poster")
	f.event("SCAN", "alice", "poster")
	f.event("SCAN", "bob", "poster")
	f.event("SCAN", "carol", "counter")
	f.totals(a, "poster", want("poster", 1, 2, 1, 2, 0))

	first, second := a, b
	if b.Leading() {
		first, second = b, a
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait.Short)
	defer cancel()
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	f.event("unsubscribe", "alice", "")
	f.event("SCAN", "dave", "poster")
	f.event("SCAN", "bob", "poster") // seen before: not unique
	f.totals(second, "poster", want("poster", 1, 4, 1, 3, 1))
	f.totals(second, "counter", want("counter", 0, 1, 0, 1, 0))
	if !second.Leading() {
		t.Error("the standby did not take over")
	}
}

// Events the analytics cannot read are copied to the dead-letter stream
// with their reason, counted, and skipped; they never stop the leader, and
// the events around them count exactly. A scan whose scene is not a scene
// (stored by any publisher) counts for nothing.
func TestPoisonEventsAreQuarantined(t *testing.T) {
	f := newFixture(t)
	r, reg := f.role(RoleOptions{})
	f.event("SCAN", "alice", "poster")
	f.publish("event.scan", []byte("{not xml"))
	f.event("SCAN", "zed", strings.Repeat("z", 5000))
	f.event("SCAN", "zed", strings.Repeat("场", 1000))
	f.event("subscribe", "bob", "poster")
	f.totals(r, "poster", want("poster", 1, 1, 1, 2, 0))
	wait.For(t, wait.Short, wait.Every, func() error {
		if got := metricstest.Value(t, reg, "wxgate_analytics_poison_total", "reason", PoisonUndecodable); got != 1 {
			return fmt.Errorf("poison = %v, want 1", got)
		}
		return nil
	})
	dl, err := f.js.Stream(context.Background(), DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := dl.GetMsg(context.Background(), 1)
	if err != nil || m.Header.Get(HeaderPoisonReason) != PoisonUndecodable || string(m.Data) != "{not xml" {
		t.Fatalf("dead letter = %+v, %v", m, err)
	}
	if err := r.Check(); err != nil {
		t.Errorf("not ready after poison: %v", err)
	}
	if got := metricstest.Value(t, reg, "wxgate_analytics_events_total", "kind", "other"); got != 2 {
		t.Errorf("scans of scenes that are not scenes = %v, want 2 counted as other", got)
	}
}

// Follow, unfollow and follow again, through two scenes, applied in one go
// from a backlog: each unfollow goes to the scene of the follow before it.
func TestUnfollowsAttributedInOrder(t *testing.T) {
	f := newFixture(t)
	f.event("subscribe", "p", "a")
	f.event("unsubscribe", "p", "")
	f.event("subscribe", "p", "b")
	f.event("unsubscribe", "p", "")
	f.event("unsubscribe", "stranger", "")
	r, reg := f.role(RoleOptions{})
	f.totals(r, "a", want("a", 1, 0, 1, 1, 1))
	f.totals(r, "b", want("b", 1, 0, 1, 1, 1))
	if got := metricstest.Value(t, reg, "wxgate_analytics_unattributed_unfollows_total", "", ""); got != 1 {
		t.Errorf("unattributed = %v, want 1", got)
	}
	s, err := r.Store(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error { // the status is written every second
		st, ok, err := s.Status(context.Background())
		if err != nil || !ok || st.AppliedSeq != 5 || st.Unattributed != 1 {
			return fmt.Errorf("status %+v %v %v, want 5 applied and 1 unattributed", st, ok, err)
		}
		return nil
	})
}

// The totals bucket deleted under a running leader: the role sets itself
// up again and writes every scene's totals anew from its state.
func TestLostBucketIsWrittenAgain(t *testing.T) {
	f := newFixture(t)
	r, reg := f.role(RoleOptions{})
	f.event("SCAN", "alice", "poster")
	f.totals(r, "poster", want("poster", 0, 1, 0, 1, 0))
	if err := f.js.DeleteKeyValue(context.Background(), stats.BucketName); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if got := metricstest.Value(t, reg, "wxgate_analytics_consumer_rebuilds_total", "", ""); got < 1 {
			return errors.New("not set up again yet")
		}
		return nil
	})
	f.event("SCAN", "bob", "counter")
	f.totals(r, "poster", want("poster", 0, 1, 0, 1, 0))
	f.totals(r, "counter", want("counter", 0, 1, 0, 1, 0))
	wait.For(t, wait.Short, wait.Every, func() error {
		if v, _ := metricstest.Lookup(reg, "wechat_scene_scans_total", map[string]string{"scene": "counter", "kind": "scan"}); v != 1 {
			return errors.New("counter not exported")
		}
		return nil
	})
}

// The event stream lost and made again (NATS restarted without its data):
// its sequences start over; the totals carry on and count what comes.
func TestReplacedStreamIsCountedFromItsStart(t *testing.T) {
	f := newFixture(t)
	r, _ := f.role(RoleOptions{})
	f.event("SCAN", "alice", "poster")
	f.event("SCAN", "bob", "poster")
	f.totals(r, "poster", want("poster", 0, 2, 0, 2, 0))
	if err := f.js.DeleteStream(context.Background(), events.Stream); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		_, err := f.js.Stream(context.Background(), events.Stream)
		return err // the leader makes it again
	})
	f.event("SCAN", "carol", "poster")
	f.totals(r, "poster", want("poster", 0, 3, 0, 3, 0))
}

// The leader's consumer deleted from under it (by an operator, or lost
// with a server): a new one carries on from the state, nothing counted
// twice or missed.
func TestDeletedConsumerIsReplaced(t *testing.T) {
	f := newFixture(t)
	r, _ := f.role(RoleOptions{})
	f.event("SCAN", "alice", "poster")
	f.totals(r, "poster", want("poster", 0, 1, 0, 1, 0))
	ctx := context.Background()
	s, err := f.js.Stream(ctx, events.Stream)
	if err != nil {
		t.Fatal(err)
	}
	names := s.ConsumerNames(ctx)
	deleted := 0
	for name := range names.Name() {
		if err := s.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if names.Err() != nil || deleted == 0 {
		t.Fatalf("consumers deleted: %d (%v), want the leader's", deleted, names.Err())
	}
	f.event("SCAN", "bob", "poster")
	f.event("SCAN", "alice", "poster")
	f.totals(r, "poster", want("poster", 0, 3, 0, 2, 0))
}

// status waits for r's leader to report, and returns what it said.
func status(t *testing.T, r *Role) stats.Status {
	t.Helper()
	var st stats.Status
	wait.For(t, wait.Short, wait.Every, func() error {
		s, err := r.Store(context.Background())
		if err != nil {
			return err
		}
		var ok bool
		if st, ok, err = s.Status(context.Background()); err != nil || !ok {
			return fmt.Errorf("no status yet: %v", err)
		}
		return nil
	})
	return st
}

// rebuildDroppingAGhost writes a scene's value no event explains (as an
// older version could have left), asks for a rebuild, and waits until it
// is done and the value is gone.
func rebuildDroppingAGhost(t *testing.T, r *Role) {
	t.Helper()
	s, err := r.Store(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.KV.Put(context.Background(), stats.SceneKey("ghost"), []byte(`{"scene":"ghost","scans":7}`)); err != nil {
		t.Fatal(err)
	}
	before := status(t, r)
	req, err := s.RequestRebuild(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		st, ok, err := s.Status(context.Background())
		if err != nil || !ok || st.Rebuilding || st.Epoch <= before.Epoch {
			return fmt.Errorf("status %+v %v %v, want a new epoch after %d (request %d)", st, ok, err, before.Epoch, req)
		}
		if _, ok, _ := s.Scene(context.Background(), "ghost"); ok {
			return errors.New("ghost still there")
		}
		return nil
	})
}

// A rebuild recomputes every total from the stream: the same values, a
// new epoch, and scenes the stream no longer explains are dropped.
func TestRebuildFromTheStream(t *testing.T) {
	f := newFixture(t)
	r, _ := f.role(RoleOptions{})
	f.event("subscribe", "alice", "poster")
	f.event("SCAN", "bob", "poster")
	f.totals(r, "poster", want("poster", 1, 1, 1, 2, 0))
	rebuildDroppingAGhost(t, r)
	f.totals(r, "poster", want("poster", 1, 1, 1, 2, 0))
}

// A scene a rebuild dropped (no event explained it) is counted again when
// it is scanned afterwards: its key's last message is a tombstone, which a
// write expecting no message never gets past.
func TestSceneDroppedByARebuildIsCountedAgain(t *testing.T) {
	f := newFixture(t)
	r, _ := f.role(RoleOptions{})
	f.event("SCAN", "bob", "poster")
	f.totals(r, "poster", want("poster", 0, 1, 0, 1, 0))
	rebuildDroppingAGhost(t, r)
	f.event("SCAN", "carol", "ghost")
	f.event("SCAN", "dave", "poster")
	f.totals(r, "ghost", want("ghost", 0, 1, 0, 1, 0))
	f.totals(r, "poster", want("poster", 0, 2, 0, 2, 0))
}

// POST /api/analytics/rebuild needs the admin token, answers 202, and the
// totals are recomputed from the stream: a value written over by someone
// else (a write conflict for the leader) is put right.
func TestRebuildOverHTTP(t *testing.T) {
	f := newFixture(t)
	r, reg := f.role(RoleOptions{})
	f.event("subscribe", "alice", "poster")
	f.event("SCAN", "bob", "poster")
	f.totals(r, "poster", want("poster", 1, 1, 1, 2, 0))
	s, err := r.Store(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.KV.Put(context.Background(), stats.SceneKey("poster"), []byte(`{"scene":"poster","scans":99}`)); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(stats.API(r.Store, "admin-token"))
	t.Cleanup(api.Close)
	post := func(token string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, api.URL+"/api/analytics/rebuild", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(""); code != http.StatusUnauthorized {
		t.Errorf("rebuild without the token = %d, want 401", code)
	}
	if code := post("admin-token"); code != http.StatusAccepted {
		t.Fatalf("rebuild = %d, want 202", code)
	}
	f.totals(r, "poster", want("poster", 1, 1, 1, 2, 0))
	if got, _ := metricstest.Lookup(reg, "wxgate_analytics_write_conflicts_total", nil); got < 1 {
		t.Errorf("write conflicts = %v, want at least 1 (the value written over)", got)
	}
}

// With JetStream gone (a server without it) and NATS connected, the role
// says so in its check and waits: its process's replies need no JetStream,
// and no restart would bring it back.
func TestRoleWaitsForJetStream(t *testing.T) {
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", Name: "nojs"}) // no StoreDir: no JetStream
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	fatal := make(chan error, 1)
	giveUp := 50 * time.Millisecond
	role, _ := startRole(t, natstest.Connect(t, srv), RoleOptions{GiveUp: giveUp, CheckEvery: 20 * time.Millisecond,
		Fatal: func(err error) { fatal <- err }})
	// Several attempts, each past GiveUp.
	begin := time.Now()
	wait.For(t, wait.Short, wait.Every, func() error {
		if role.Check() == nil {
			t.Fatal("role ready without JetStream")
		}
		select {
		case err := <-fatal:
			t.Fatalf("gave up on JetStream being away: %v", err)
		default:
		}
		if time.Since(begin) < 6*giveUp {
			return errors.New("still watching")
		}
		return nil
	})
}

// JetStream answers but refuses what the analytics need (here: the totals
// bucket exists with settings they cannot take, memory storage): a fresh
// process is the way out that remains, so after GiveUp the process is told
// to end, and the role is not ready meanwhile.
func TestRoleGivesUpWhenJetStreamRefuses(t *testing.T) {
	f := newFixture(t)
	if _, err := f.js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: stats.BucketName, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	fatal := make(chan error, 1)
	role, _ := startRole(t, natstest.Connect(t, f.srv), RoleOptions{GiveUp: 100 * time.Millisecond, CheckEvery: 20 * time.Millisecond,
		Fatal: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		}})
	select {
	case err := <-fatal:
		if !strings.Contains(err.Error(), "analytics") {
			t.Errorf("fatal = %v", err)
		}
	case <-time.After(wait.Short):
		t.Fatal("the role never gave up")
	}
	if err := role.Check(); err == nil {
		t.Error("role ready without its bucket")
	}
}

// NATS restarted without its data while the leader is idle: nats.go makes
// the ordered consumer again on the new stream, whose events must be
// counted once, from its start, not as the old stream's continuation and
// then again.
func TestIdleLeaderNATSRestartedWithoutData(t *testing.T) {
	srv := natstest.NewRestartable(t)
	f := &fixture{t: t}
	tc := srv.Connect()
	var err error
	if f.js, err = jetstream.New(tc); err != nil {
		t.Fatal(err)
	}
	if err := events.Ensure(context.Background(), f.js, events.Defaults()); err != nil {
		t.Fatal(err)
	}
	r, reg := startRole(t, srv.Connect(), RoleOptions{})
	// Leading, with its consumer, and no event delivered yet.
	before := status(t, r)

	srv.Stop()
	srv.StartEmpty()
	wait.For(t, wait.Short, wait.Every, func() error {
		if !tc.IsConnected() {
			return errors.New("not reconnected")
		}
		return events.Ensure(context.Background(), f.js, events.Defaults()) // as the ingress does
	})
	for _, who := range []string{"a", "b", "c", "d", "e"} {
		f.event("SCAN", who, "poster")
	}
	// Settled: the analytics were set up again on the new server, and the
	// leader has applied the new stream's five events.
	wait.For(t, wait.Long, wait.Every, func() error {
		if v, _ := metricstest.Lookup(reg, "wxgate_analytics_consumer_rebuilds_total", nil); v < 1 {
			return fmt.Errorf("set-ups %v", v)
		}
		s, err := r.Store(context.Background())
		if err != nil {
			return err
		}
		st, ok, err := s.Status(context.Background())
		if err != nil || !ok || st.AppliedSeq != 5 || st.Pending != 0 || st.Epoch <= before.Epoch {
			return fmt.Errorf("status %+v %v %v", st, ok, err)
		}
		return nil
	})
	f.totals(r, "poster", want("poster", 0, 5, 0, 5, 0))
}

// logBuffer is a log destination safe for the role's goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The stream WXGATE_SCANS is a build that never shipped, which counted into
// the same totals bucket from its own stream: its totals cannot be told
// from these. Beside it the role is not ready, never ends the process (an
// operator must act), and says what to do once a minute, not at every
// attempt; it takes none of those totals as its own. Once the stream is
// gone the role starts, and a rebuild leaves only what the event stream
// explains.
func TestRefusesTheScansStreamsTotals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.js.CreateStream(ctx, jetstream.StreamConfig{Name: "WXGATE_SCANS", Subjects: []string{"wxgate.scans.>"}}); err != nil {
		t.Fatal(err)
	}
	// What that build left: totals with no epoch and no sequence.
	kv, err := f.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: stats.BucketName, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for scene, v := range map[string]string{"poster": `{"scene":"poster","scans":40,"scan_scans":40}`, "old": `{"scene":"old","scans":7,"scan_scans":7}`} {
		if _, err := kv.Put(ctx, stats.SceneKey(scene), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	f.event("SCAN", "alice", "poster")

	var logs logBuffer
	fatal := make(chan error, 1)
	giveUp := 50 * time.Millisecond
	r, _ := startRole(t, natstest.Connect(t, f.srv), RoleOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		GiveUp: giveUp, CheckEvery: 20 * time.Millisecond, Fatal: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		}})
	const todo = "nats stream rm WXGATE_SCANS"
	begin := time.Now()
	wait.For(t, wait.Short, wait.Every, func() error {
		select {
		case <-r.Ready():
			t.Fatal("the role started beside WXGATE_SCANS")
		case err := <-fatal:
			t.Fatalf("the process was told to end: %v", err)
		default:
		}
		if err := r.Check(); err == nil || !strings.Contains(err.Error(), todo) {
			return fmt.Errorf("check = %v, want one saying %q", err, todo)
		}
		if time.Since(begin) < 6*giveUp { // attempts past GiveUp, every CheckEvery
			return errors.New("still watching")
		}
		return nil
	})
	if n := strings.Count(logs.String(), todo); n != 1 {
		t.Errorf("what to do was logged %d times, want once (once a minute):\n%s", n, logs.String())
	}
	if got, _ := kv.Get(ctx, stats.SceneKey("poster")); got == nil || !strings.Contains(string(got.Value()), `"scans":40`) {
		t.Errorf("poster was written beside WXGATE_SCANS: %v", got)
	}

	// The operator's steps.
	if err := f.js.DeleteStream(ctx, "WXGATE_SCANS"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.Ready():
	case <-time.After(wait.Short):
		t.Fatalf("not started once WXGATE_SCANS was gone: %v", r.Check())
	}
	f.totals(r, "poster", want("poster", 0, 1, 0, 1, 0)) // the event stream's count, not 40 + 1
	s, err := r.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RequestRebuild(ctx); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if _, ok, err := s.Scene(ctx, "old"); err != nil || ok {
			return fmt.Errorf("old still there (%v)", err)
		}
		return nil
	})
	f.totals(r, "poster", want("poster", 0, 1, 0, 1, 0))
}
