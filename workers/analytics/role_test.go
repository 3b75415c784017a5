package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/metricstest"
	"github.com/wxgate/wxgate/shared/natstest"
	"github.com/wxgate/wxgate/shared/wait"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type roleEnv struct {
	t    *testing.T
	nc   *nats.Conn
	js   jetstream.JetStream
	reg  *prometheus.Registry
	role *Role
	seq  atomic.Int64
}

// startRole runs a consuming analytics role on a real server.
func startRole(t *testing.T, srv *bus.Embedded, o RoleOptions) *roleEnv {
	t.Helper()
	e := &roleEnv{t: t, nc: natstest.Connect(t, srv), reg: prometheus.NewRegistry()}
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	e.js = js
	o.Conn, o.Logger, o.Registerer, o.Consume = e.nc, quiet, e.reg, true
	if e.role, err = StartRole(o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.role.Stop(ctx)
	})
	select {
	case <-e.role.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("analytics consumer did not start")
	}
	return e
}

// publish stores raw data in the scans stream, as any version of the
// workers (or anyone else) could have.
func (e *roleEnv) publish(subject string, data []byte) {
	e.t.Helper()
	id := "test." + strconv.FormatInt(e.seq.Add(1), 10)
	if _, err := e.js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: data}, jetstream.WithMsgID(id)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *roleEnv) record(r Record) {
	e.t.Helper()
	b, _ := json.Marshal(r)
	e.publish(r.Subject(), b)
}

// settled waits until every record in the stream was acknowledged (applied
// or terminated).
func (e *roleEnv) settled() {
	e.t.Helper()
	wait.For(e.t, wait.Short, wait.Every, func() error {
		c := e.role.Consumer()
		if c == nil {
			return errors.New("no consumer running")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		pending, ackPending, err := c.Lag(ctx)
		if err != nil || pending != 0 || ackPending != 0 {
			return errors.Join(err, errors.New("records still pending"))
		}
		return nil
	})
}

func (e *roleEnv) totals(scene string) Totals {
	e.t.Helper()
	s, err := e.role.Store(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	tot, _, err := s.Scene(context.Background(), scene)
	if err != nil {
		e.t.Fatal(err)
	}
	return tot
}

// Records an older version stored, or anyone could publish, that cannot be
// applied: each is copied to the dead-letter stream with its reason,
// terminated and counted; none stops the consumer or reaches a count, and
// every good record around them is counted exactly.
func TestPoisonRecordsAreQuarantined(t *testing.T) {
	srv := natstest.RunServer(t)
	e := startRole(t, srv, RoleOptions{})

	poison := map[string][]byte{
		PoisonUndecodable: []byte("{not json"),
	}
	long := rec(KindScan, "p", strings.Repeat("z", 5000))    // the record that killed every worker
	chinese := rec(KindScan, "p", strings.Repeat("场", 1000)) // 3 000 bytes
	empty := rec(KindScan, "p", "")
	unknown := rec("teleport", "p", "poster")
	e.record(rec(KindScan, "alice", "poster"))
	e.publish("wxgate.scans.scan", poison[PoisonUndecodable])
	e.record(long)
	e.record(rec(KindSubscribe, "bob", "poster"))
	e.record(chinese)
	e.record(empty)
	e.record(unknown)
	e.record(rec(KindScan, "carol", "counter"))
	e.settled()

	if got := e.totals("poster"); got.Scans != 2 || got.NewFollowers != 1 || got.UniquePeople != 2 {
		t.Errorf("poster = %+v, want 2 scans, 1 new follower, 2 people", got)
	}
	if got := e.totals("counter"); got.Scans != 1 {
		t.Errorf("counter = %+v, want 1 scan", got)
	}
	for reason, want := range map[string]float64{PoisonUndecodable: 1, PoisonInvalidScene: 3, PoisonUnknownKind: 1} {
		if got := metricstest.Value(t, e.reg, "wxgate_analytics_poison_total", "reason", reason); got != want {
			t.Errorf("poison{%s} = %v, want %v", reason, got, want)
		}
	}
	// Each is in the dead-letter stream, with its reason and origin.
	dl, err := e.js.Stream(context.Background(), DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for seq := uint64(1); seq <= 5; seq++ {
		m, err := dl.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		reasons[m.Header.Get(HeaderPoisonReason)]++
		if m.Header.Get(HeaderPoisonStream) != StreamName || m.Header.Get(HeaderPoisonSeq) == "" {
			t.Errorf("dead letter %d headers = %v", seq, m.Header)
		}
	}
	if reasons[PoisonInvalidScene] != 3 || reasons[PoisonUndecodable] != 1 || reasons[PoisonUnknownKind] != 1 {
		t.Errorf("dead-letter reasons = %v", reasons)
	}
	if err := e.role.Check(); err != nil {
		t.Errorf("role not ready after poison: %v", err)
	}
	if e.nc.IsClosed() {
		t.Fatal("the connection closed")
	}
	// The consumer still counts.
	e.record(rec(KindScan, "dave", "poster"))
	e.settled()
	if got := e.totals("poster"); got.Scans != 3 {
		t.Errorf("poster after poison = %+v, want 3 scans", got)
	}
}

// A valid record that fails to apply by itself (its scene's stored totals
// are corrupt) is retried a bounded number of times, then quarantined; the
// records beside it are counted meanwhile.
func TestRecordThatKeepsFailingIsQuarantined(t *testing.T) {
	srv := natstest.RunServer(t)
	e := startRole(t, srv, RoleOptions{})
	s, err := e.role.Store(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.kv.Put(context.Background(), sceneKey("broken"), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	e.record(rec(KindScan, "alice", "poster"))
	e.record(rec(KindScan, "alice", "broken"))
	e.record(rec(KindScan, "bob", "poster"))
	e.settled()
	if got := e.totals("poster"); got.Scans != 2 {
		t.Errorf("poster = %+v, want 2 scans", got)
	}
	if got := metricstest.Value(t, e.reg, "wxgate_analytics_poison_total", "reason", PoisonApplyFailed); got != 1 {
		t.Errorf("poison{apply_failed} = %v, want 1", got)
	}
}

// A consumer deleted on the server, then the totals bucket deleted: each is
// noticed and rebuilt, and what is recorded afterwards is counted exactly.
func TestLostConsumerAndBucketAreRebuilt(t *testing.T) {
	srv := natstest.RunServer(t)
	e := startRole(t, srv, RoleOptions{})
	e.record(rec(KindScan, "alice", "poster"))
	e.settled()

	rebuilt := func(n float64) {
		t.Helper()
		wait.For(t, wait.Short, wait.Every, func() error {
			if got := metricstest.Value(t, e.reg, "wxgate_analytics_consumer_rebuilds_total", "", ""); got < n {
				return errors.New("not rebuilt yet")
			}
			return e.role.Check()
		})
	}
	ctx := context.Background()
	if err := e.js.DeleteConsumer(ctx, StreamName, ConsumerName); err != nil {
		t.Fatal(err)
	}
	rebuilt(1)
	e.record(rec(KindScan, "bob", "poster"))
	e.settled()
	// Rebuilt from the start of the stream: alice's record is applied
	// again but counted once, by the sequences the scene remembers.
	if got := e.totals("poster"); got.Scans != 2 || got.UniquePeople != 2 {
		t.Errorf("poster after the consumer was rebuilt = %+v, want 2 scans, 2 people", got)
	}

	if err := e.js.DeleteKeyValue(ctx, BucketName); err != nil {
		t.Fatal(err)
	}
	rebuilt(2)
	e.record(rec(KindScan, "carol", "counter"))
	e.settled()
	if got := e.totals("counter"); got.Scans != 1 {
		t.Errorf("counter after the bucket was rebuilt = %+v, want 1 scan", got)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if v, _ := metricstest.Lookup(e.reg, "wechat_scene_scans_total", map[string]string{"scene": "counter", "kind": "scan"}); v != 1 {
			return errors.New("counter not exported")
		}
		return nil
	})
}

// With JetStream gone for good (a server without it) and NATS connected,
// the role says so in its check, and gives up after GiveUp: the process is
// told to end, so an orchestrator starts a fresh one.
func TestRoleGivesUpWhenItCannotRebuild(t *testing.T) {
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", Name: "nojs"}) // no StoreDir: no JetStream
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	fatal := make(chan error, 1)
	role, err := StartRole(RoleOptions{Conn: natstest.Connect(t, srv), Logger: quiet, Registerer: prometheus.NewRegistry(),
		Consume: true, GiveUp: 500 * time.Millisecond, Fatal: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = role.Stop(context.Background()) })
	select {
	case err := <-fatal:
		if !strings.Contains(err.Error(), "analytics consumer") {
			t.Errorf("fatal = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the role never gave up")
	}
	if err := role.Check(); err == nil {
		t.Error("role ready without a consumer")
	}
}
