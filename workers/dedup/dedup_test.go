package dedup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

type replica struct {
	store *Store
	js    jetstream.JetStream
}

// replicas opens n stores, each on its own connection to one server, as n
// worker processes would, and waits until their bucket is set up.
func replicas(t *testing.T, srv *bus.Embedded, n int, o Options) []replica {
	t.Helper()
	out := make([]replica, n)
	for i := range out {
		out[i] = open(t, srv, string(rune('a'+i)), o)
		wait.For(t, wait.Short, wait.Every, out[i].store.Check)
	}
	return out
}

func open(t *testing.T, srv *bus.Embedded, owner string, o Options) replica {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	o.Logger, o.Registerer = slog.New(slog.DiscardHandler), prometheus.NewRegistry()
	s, err := Open(js, owner, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return replica{s, js}
}

func sum(rs []replica, c func(*Store) prometheus.Counter) float64 {
	var total float64
	for _, r := range rs {
		total += testutil.ToFloat64(c(r.store))
	}
	return total
}

func duplicates(s *Store) prometheus.Counter  { return s.metrics.duplicates }
func stored(s *Store) prometheus.Counter      { return s.metrics.stored }
func expired(s *Store) prometheus.Counter     { return s.metrics.expired }
func unavailable(s *Store) prometheus.Counter { return s.metrics.unavailable }

// first runs a first delivery of key at s, arrived since ago.
func first(s *Store, key string, since time.Duration, run Handler) ([]byte, Outcome, error) {
	return s.First(s.Arrived(key, time.Now().Add(-since)), time.Now().Add(5*time.Second), run)
}

// waitStored waits until every handler has stored its reply (a reply is
// stored just after it is answered).
func waitStored(t *testing.T, rs ...replica) {
	t.Helper()
	for _, r := range rs {
		if err := r.store.Wait(within(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
}

func within(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	_ = cancel // released by the deadline; tests are short
	return ctx
}

func bucket(t *testing.T, r replica) jetstream.KeyValue {
	t.Helper()
	kv, err := r.js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// state is what key holds in the bucket: "state:payload", or "-".
func state(t *testing.T, r replica, key string) string {
	t.Helper()
	e, err := bucket(t, r).Get(context.Background(), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "-"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(e.Value())
}

// waitWatchers waits until n deliveries wait on a key (each watches it
// with a consumer of the bucket's stream): the event a test releases a
// handler on, so that every one of them was there while it ran.
func waitWatchers(t *testing.T, r replica, n int) {
	t.Helper()
	wait.For(t, wait.Short, wait.Every, func() error {
		s, err := r.js.Stream(context.Background(), "KV_"+Bucket)
		if err != nil {
			return err
		}
		info, err := s.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.Consumers < n {
			return fmt.Errorf("%d of %d deliveries wait on the key", info.State.Consumers, n)
		}
		return nil
	})
}

type answer struct {
	body []byte
	out  Outcome
	err  error
}

// Retries spread over replicas, all arriving while the first run is in
// flight: the handler runs once and every one gets its reply.
func TestRunsOnceAcrossReplicas(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 3, Options{ClaimAfter: 20 * time.Millisecond})
	var runs atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	run := func(context.Context) ([]byte, error) {
		if runs.Add(1) == 1 {
			close(started)
		}
		<-release
		return []byte("<xml>hi</xml>"), nil
	}

	const n = 9
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	do := func(i int) {
		defer wg.Done()
		st := rs[i%len(rs)].store
		var a answer
		if i == 0 {
			a.body, a.out, a.err = first(st, "msg.1", 0, run)
		} else {
			a.body, a.out, a.err = st.Retry(within(20*time.Second), "msg.1", run)
		}
		answers <- a
	}
	wg.Add(1)
	go do(0)
	<-started
	// WeChat retries 5 s after a delivery; by then the first has claimed
	// the key. Wait for the claim, as that retry would.
	wait.For(t, wait.Short, wait.Every, func() error {
		if s := state(t, rs[0], "msg.1"); s != "run:a" {
			return fmt.Errorf("key holds %q, want the first delivery's lease", s)
		}
		return nil
	})
	for i := 1; i < n; i++ {
		wg.Add(1)
		go do(i)
	}
	waitWatchers(t, rs[0], n-1) // every retry waits before the handler finishes
	close(release)
	wg.Wait()
	close(answers)

	counts := map[Outcome]int{}
	for a := range answers {
		if a.err != nil || string(a.body) != "<xml>hi</xml>" {
			t.Fatalf("answer %q %v %v", a.body, a.out, a.err)
		}
		counts[a.out]++
	}
	if runs.Load() != 1 || counts[Ran] != 1 || counts[Stored] != n-1 {
		t.Fatalf("handler ran %d times; outcomes %v", runs.Load(), counts)
	}
	if got := sum(rs, stored); got != n-1 {
		t.Fatalf("replies from store = %v, want %d", got, n-1)
	}
	if got := state(t, rs[0], "msg.1"); got != "passive:<xml>hi</xml>" {
		t.Fatalf("key holds %q, want it marked passive", got)
	}

	// A retry after the fact is answered from the store at once.
	waitStored(t, rs...)
	body, out, err := rs[2].store.Retry(within(5*time.Second), "msg.1", run)
	if err != nil || out != Stored || string(body) != "<xml>hi</xml>" || runs.Load() != 1 {
		t.Fatalf("late retry: %q %v %v (runs %d)", body, out, err, runs.Load())
	}
}

// A retry that reaches a worker while the first delivery's handler still
// runs, before any claim (ClaimAfter is far off), finds it in hand there by
// asking: the first delivery claims its key at once, and the retry waits
// for its reply instead of running the handler beside it.
func TestRetryWaitsForTheFirstDeliveryInHand(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{ClaimAfter: time.Minute})
	var runs atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	run := func(context.Context) ([]byte, error) {
		if runs.Add(1) == 1 {
			close(started)
			<-release
		}
		return []byte("first"), nil
	}
	firstDone := make(chan answer, 1)
	go func() {
		b, o, err := first(rs[0].store, "msg.inhand", 0, run)
		firstDone <- answer{b, o, err}
	}()
	<-started
	retry := make(chan answer, 1)
	go func() {
		b, o, err := rs[1].store.Retry(within(10*time.Second), "msg.inhand", run)
		retry <- answer{b, o, err}
	}()
	waitWatchers(t, rs[0], 1)
	if s := state(t, rs[0], "msg.inhand"); s != "run:a" {
		t.Fatalf("key holds %q, want the first delivery's lease, taken when the retry asked", s)
	}
	close(release)
	for name, a := range map[string]answer{"first": <-firstDone, "retry": <-retry} {
		if a.err != nil || string(a.body) != "first" {
			t.Errorf("%s = %q %v %v, want the first run's reply", name, a.body, a.out, a.err)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// A handler slower than the request's deadline keeps running, its lease
// renewed past the lease's length; the retry that comes meanwhile is
// answered with its reply.
func TestSlowHandlerAnswersTheRetry(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{Lease: time.Second, ClaimAfter: 20 * time.Millisecond})
	var runs atomic.Int32
	release := make(chan struct{})
	run := func(context.Context) ([]byte, error) {
		runs.Add(1)
		<-release
		return []byte("slow"), nil
	}
	// The first delivery's handler runs on past its request's deadline,
	// and claims the key after ClaimAfter.
	firstDone := make(chan error, 1)
	go func() {
		h := rs[0].store.Arrived("evt.slow", time.Now())
		body, out, err := rs[0].store.First(h, time.Now().Add(100*time.Millisecond), run)
		if err == nil && (out != Ran || string(body) != "slow") {
			err = fmt.Errorf("first delivery: %q %v", body, out)
		}
		firstDone <- err
	}()
	kv := bucket(t, rs[0])
	var claimed uint64
	wait.For(t, wait.Short, wait.Every, func() error {
		e, err := kv.Get(context.Background(), "evt.slow")
		if err == nil {
			claimed = e.Revision()
		}
		return err
	})
	// The second delivery reaches another replica while the handler runs.
	retry := make(chan answer, 1)
	go func() {
		b, o, err := rs[1].store.Retry(within(10*time.Second), "evt.slow", run)
		retry <- answer{b, o, err}
	}()
	// The lease is renewed (its revision moves) for longer than a lease.
	wait.For(t, wait.Short, wait.Every, func() error {
		e, err := kv.Get(context.Background(), "evt.slow")
		if err != nil || e.Revision() < claimed+4 {
			return fmt.Errorf("lease not renewed past its length yet (%v)", err)
		}
		return nil
	})
	close(release)
	if a := <-retry; a.err != nil || a.out != Stored || string(a.body) != "slow" {
		t.Fatalf("retry: %q %v %v", a.body, a.out, a.err)
	}
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 || sum(rs, expired) != 0 {
		t.Fatalf("runs %d, expired leases %v: a renewed lease was taken over", runs.Load(), sum(rs, expired))
	}
}

// A lease whose worker died (nobody renews it) is taken over.
func TestStaleClaimIsTakenOver(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 1, Options{Lease: 300 * time.Millisecond})
	if _, err := bucket(t, rs[0]).Create(context.Background(), "msg.dead", []byte("run:crashed-worker")); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	body, out, err := rs[0].store.Retry(within(5*time.Second), "msg.dead", func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte("again"), nil
	})
	if err != nil || out != TookOver || string(body) != "again" || runs.Load() != 1 {
		t.Fatalf("got %q %v %v, runs %d", body, out, err, runs.Load())
	}
	if testutil.ToFloat64(expired(rs[0].store)) != 1 {
		t.Fatalf("leases expired = %v, want 1", testutil.ToFloat64(expired(rs[0].store)))
	}
	if got := state(t, rs[0], "msg.dead"); got != "passive:again" {
		t.Fatalf("stored %q", got)
	}
}

// A handler that fails leaves nothing behind, claimed or not: the retry
// runs it again.
func TestFailedHandlerReleasesTheKey(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) {
		if runs.Add(1)%2 == 1 {
			return nil, errors.New("downstream failed")
		}
		return []byte("ok"), nil
	}
	if _, out, err := first(rs[0].store, "msg.2", 0, run); err == nil || out != Ran {
		t.Fatalf("first: %v %v, want the handler's error", out, err)
	}
	body, out, err := rs[1].store.Retry(within(5*time.Second), "msg.2", run)
	if err != nil || out != Ran || string(body) != "ok" || runs.Load() != 2 {
		t.Fatalf("retry: %q %v %v, runs %d", body, out, err, runs.Load())
	}
	// Claimed (it waited past ClaimAfter), its lease is released.
	if _, _, err := first(rs[0].store, "msg.3", 2*time.Second, run); err == nil {
		t.Fatal("first, claimed: want the handler's error")
	}
	if got := state(t, rs[0], "msg.3"); got != "-" {
		t.Fatalf("after a failed claimed run the key holds %q", got)
	}
	body, out, err = rs[1].store.Retry(within(5*time.Second), "msg.3", run)
	if err != nil || out != Ran || string(body) != "ok" || runs.Load() != 4 {
		t.Fatalf("retry of the claimed one: %q %v %v, runs %d", body, out, err, runs.Load())
	}
}

// A first delivery whose handler answers within ClaimAfter costs the store
// nothing: no claim, no write; its reply stays in the worker's memory, and
// a retry at another replica gets it from there by asking, without running
// the handler again, and marks it passive before answering.
func TestFastFirstDeliveryWritesNothing(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{ClaimAfter: time.Minute})
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) { runs.Add(1); return []byte("fast"), nil }
	body, out, err := first(rs[0].store, "msg.fast", 0, run)
	if err != nil || out != Ran || string(body) != "fast" {
		t.Fatalf("%q %v %v", body, out, err)
	}
	waitStored(t, rs...)
	st, err := bucket(t, rs[0]).Status(context.Background())
	if err != nil || st.Values() != 0 {
		t.Fatalf("bucket holds %d values (%v), want none: a fast reply is kept in memory", st.Values(), err)
	}
	body, out, err = rs[1].store.Retry(within(5*time.Second), "msg.fast", run)
	if err != nil || out != Stored || string(body) != "fast" || runs.Load() != 1 {
		t.Fatalf("retry at the other replica: %q %v %v, runs %d", body, out, err, runs.Load())
	}
	if got := state(t, rs[0], "msg.fast"); got != "passive:fast" {
		t.Fatalf("key holds %q, want it marked passive", got)
	}
	body, out, err = rs[0].store.Retry(within(5*time.Second), "msg.fast", run)
	if err != nil || out != Stored || string(body) != "fast" || runs.Load() != 1 {
		t.Fatalf("retry at the same replica: %q %v %v, runs %d", body, out, err, runs.Load())
	}
}

// A retry nobody answered before (its first delivery never reached a
// worker) runs the handler: silence to the lookup means no reply.
func TestRetryWithoutReplyRuns(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	body, out, err := rs[1].store.Retry(within(5*time.Second), "msg.unseen", func(context.Context) ([]byte, error) {
		return []byte("fresh"), nil
	})
	if err != nil || out != Ran || string(body) != "fresh" {
		t.Fatalf("%q %v %v", body, out, err)
	}
}

// A retry and a late reply never both carry the reply: whichever marks the
// key first wins, and the other sees it.
func TestRetryAndLateReplyNeverBoth(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) { return []byte(fmt.Sprint("reply ", runs.Add(1))), nil }

	// The retry first: answered passively; the late sender finds it so.
	if _, _, err := first(rs[0].store, "msg.passive", 0, run); err != nil {
		t.Fatal(err)
	}
	if b, _, err := rs[1].store.Retry(within(5*time.Second), "msg.passive", run); err != nil || string(b) != "reply 1" {
		t.Fatalf("retry = %q %v", b, err)
	}
	if _, err := rs[0].store.ForLate(within(5*time.Second), "msg.passive", run); !errors.Is(err, ErrSettled) {
		t.Fatalf("late reply after a passive answer: %v, want ErrSettled", err)
	}

	// The late sender first: it sends; the retry is told to say "success".
	if _, _, err := first(rs[0].store, "msg.late", 0, run); err != nil {
		t.Fatal(err)
	}
	tk, err := rs[1].store.ForLate(within(5*time.Second), "msg.late", run)
	if err != nil || string(tk.Body) != "reply 2" {
		t.Fatalf("late reply = %+v %v, want the first run's reply", tk, err)
	}
	if err := tk.Mark(context.Background(), MarkSending, []byte("b")); err != nil {
		t.Fatal(err)
	}
	if b, out, err := rs[0].store.Retry(within(5*time.Second), "msg.late", run); err != nil || out != Late || b != nil {
		t.Fatalf("retry while the late reply goes = %q %v %v, want Late and no reply", b, out, err)
	}
	// WeChat was busy: the mark says so, and the retry now answers with it.
	if err := tk.Mark(context.Background(), MarkRetry, tk.Body); err != nil {
		t.Fatal(err)
	}
	if b, out, err := rs[0].store.Retry(within(5*time.Second), "msg.late", run); err != nil || out != Stored || string(b) != "reply 2" {
		t.Fatalf("retry after a busy late attempt = %q %v %v, want the reply", b, out, err)
	}
	if err := tk.Mark(context.Background(), MarkSending, []byte("b")); !errors.Is(err, ErrSettled) {
		t.Fatalf("the late sender's next attempt: %v, want ErrSettled", err)
	}
	if runs.Load() != 2 {
		t.Fatalf("handler ran %d times, want 2 (once a message)", runs.Load())
	}
}

// Replies kept in memory expire after the TTL, are bounded in bytes (the
// oldest chunk goes first, counted as evicted), and an idle store gives
// its memory back.
func TestRecentExpiresAndIsBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	r := newRecent(time.Minute, 64, 32) // entries below take 16 bytes: two a chunk, two chunks
	evicted := 0
	r.evicted = func(n int) { evicted += n }
	get := func(key string, at time.Time) string {
		v, ok := r.get(key, at)
		if !ok {
			return "-"
		}
		return string(v[1:])
	}
	r.put("a", []byte("1"), now)
	r.put("b", []byte("2"), now.Add(30*time.Second))
	if got := get("a", now.Add(59*time.Second)); got != "1" {
		t.Fatalf("a within the TTL = %q", got)
	}
	if got := get("a", now.Add(61*time.Second)); got != "-" {
		t.Fatalf("a past the TTL = %q", got)
	}
	if got := get("b", now.Add(61*time.Second)); got != "2" {
		t.Fatalf("b within its TTL = %q", got)
	}
	later := now.Add(62 * time.Second)
	r.put("c", []byte("3"), later)
	r.put("d", []byte("4"), later)
	r.put("e", []byte("5"), later) // a third chunk: the first (b live) goes
	if got := get("b", later); got != "-" || evicted != 1 {
		t.Fatalf("b after the bound = %q, evicted %d, want gone and 1", got, evicted)
	}
	for k, v := range map[string]string{"c": "3", "d": "4", "e": "5"} {
		if got := get(k, later); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if r.bytes != 64 {
		t.Errorf("held %d bytes, want 64", r.bytes)
	}
	r.put("big", make([]byte, 40), later) // larger than a chunk: not kept
	if got := get("big", later); got != "-" {
		t.Errorf("an entry larger than a chunk was kept")
	}
	r.tick(later.Add(61 * time.Second))
	if r.bytes != 0 || len(r.index) != 0 || evicted != 1 {
		t.Errorf("idle past the TTL: held %d bytes, %d keys, evicted %d; want all given back", r.bytes, len(r.index), evicted)
	}
	r.close()
	r.put("f", []byte("6"), later)
	if r.bytes != 0 {
		t.Errorf("a closed store took a reply")
	}
}

// An empty reply (nothing to say) of a handler that outlived ClaimAfter is
// stored and served to the retry like any other; with nothing to say,
// there is nothing to mark.
func TestEmptyReplyIsStored(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 1, Options{ClaimAfter: 20 * time.Millisecond})
	release := make(chan struct{})
	run := func(context.Context) ([]byte, error) { <-release; return nil, nil }
	done := make(chan error, 1)
	go func() { _, _, err := first(rs[0].store, "evt.quiet", 0, run); done <- err }()
	wait.For(t, wait.Short, wait.Every, func() error {
		if state(t, rs[0], "evt.quiet") == "-" {
			return errors.New("not claimed yet")
		}
		return nil
	})
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	body, out, err := rs[0].store.Retry(within(5*time.Second), "evt.quiet", run)
	if err != nil || out != Stored || len(body) != 0 {
		t.Fatalf("%q %v %v", body, out, err)
	}
	if got := state(t, rs[0], "evt.quiet"); got != "reply:" {
		t.Fatalf("key holds %q, want the empty reply, unmarked", got)
	}
}

// With the server gone, retries are still answered, the first by running
// the handler without a lease, the next from this worker's memory; their
// replies come unmarked: the caller must not answer as if marked.
func TestStoreUnavailableStillAnswers(t *testing.T) {
	srv := natstest.RunServer(t)
	rs := replicas(t, srv, 1, Options{})
	srv.Shutdown()
	var runs atomic.Int32
	for i, want := range []Outcome{Unguarded, Stored} {
		body, out, err := rs[0].store.Retry(within(2*time.Second), "msg.3", func(context.Context) ([]byte, error) {
			runs.Add(1)
			return []byte("still"), nil
		})
		if !errors.Is(err, ErrNotMarked) || out != want || string(body) != "still" {
			t.Fatalf("retry %d: %q %v %v, want the reply, unmarked, %v", i, body, out, err, want)
		}
	}
	if runs.Load() != 1 || testutil.ToFloat64(unavailable(rs[0].store)) != 2 {
		t.Fatalf("runs %d, unavailable %v", runs.Load(), testutil.ToFloat64(unavailable(rs[0].store)))
	}
}

// A bucket deleted from under the store (finding N5) is noticed by the
// first operation that needs it, reported by Check while it is missing,
// and set up again; the retry that noticed still gets its reply, unmarked.
func TestBucketLossIsRepaired(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 1, Options{})
	if err := rs[0].js.DeleteKeyValue(context.Background(), Bucket); err != nil {
		t.Fatal(err)
	}
	run := func(context.Context) ([]byte, error) { return []byte("x"), nil }
	if body, _, err := rs[0].store.Retry(within(5*time.Second), "msg.lost", run); !errors.Is(err, ErrNotMarked) || string(body) != "x" {
		t.Fatalf("with the bucket gone: %q %v, want the reply, unmarked", body, err)
	}
	wait.For(t, wait.Short, wait.Every, rs[0].store.Check)
	if body, out, err := rs[0].store.Retry(within(5*time.Second), "msg.back", run); err != nil || out != Ran || string(body) != "x" {
		t.Fatalf("after the repair: %q %v %v", body, out, err)
	}
	if got := state(t, rs[0], "msg.back"); got != "passive:x" {
		t.Fatalf("key holds %q in the new bucket", got)
	}
}

// A store started while JetStream is away (finding N1's "not set up yet";
// core NATS is up, the server runs without JetStream): Check says so, and
// a retry's reply comes unmarked rather than silently passive. Once the
// server runs with JetStream, the store sets itself up, and the late sender
// finds the reply the unmarked retry ran (kept in memory) and sends it.
func TestNotSetUpWhileJetStreamIsAway(t *testing.T) {
	addr := fmt.Sprint("127.0.0.1:", nettest.FreePort(t))
	srv := serveAt(t, addr, "")
	nc, err := nats.Connect("nats://"+addr, nats.Token("once"), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(js, "a", Options{Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Check(); err == nil {
		t.Fatal("Check passes with JetStream away")
	}
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) { runs.Add(1); return []byte("kept"), nil }
	body, _, err := s.Retry(within(2*time.Second), "msg.early", run)
	if !errors.Is(err, ErrNotMarked) || string(body) != "kept" {
		t.Fatalf("retry before set-up = %q %v, want the reply, unmarked", body, err)
	}
	srv.Close()
	serveAt(t, addr, t.TempDir())
	wait.For(t, wait.Short, wait.Every, s.Check)
	tk, err := s.ForLate(within(5*time.Second), "msg.early", run)
	if err != nil || string(tk.Body) != "kept" {
		t.Fatalf("late reply = %+v %v, want the reply the retry ran", tk, err)
	}
	if err := tk.Mark(context.Background(), MarkSending, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", runs.Load())
	}
}

// serveAt runs a NATS server on addr, with JetStream in dir ("": without).
func serveAt(t *testing.T, addr, dir string) *bus.Embedded {
	t.Helper()
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: addr, StoreDir: dir, Name: "once", Token: "once"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// A first delivery that waited behind busy handlers (arrived 3.5 s ago)
// claims its key before it runs: a retry or a late reply arriving while
// it runs waits for its reply instead of running the handler beside it.
func TestLateStartingFirstDeliveryClaimsBeforeRunning(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	var runs atomic.Int32
	started, release := make(chan struct{}, 2), make(chan struct{})
	run := func(context.Context) ([]byte, error) {
		n := runs.Add(1)
		started <- struct{}{}
		<-release
		return []byte(fmt.Sprint("run ", n)), nil
	}
	firstDone := make(chan []byte, 1)
	go func() {
		b, _, _ := rs[0].store.First(rs[0].store.Arrived("msg.queued", time.Now().Add(-3500*time.Millisecond)), time.Now().Add(500*time.Millisecond), run)
		firstDone <- b
	}()
	<-started
	retry := make(chan []byte, 1)
	go func() { b, _, _ := rs[1].store.Retry(within(4*time.Second), "msg.queued", run); retry <- b }()
	waitWatchers(t, rs[1], 1) // the retry found the claim and waits; only then is the handler let go
	close(release)
	if got := string(<-retry); got != "run 1" {
		t.Errorf("retry = %q, want the first run's reply", got)
	}
	<-firstDone
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// A first delivery that starts after a retry already ran the handler (it
// sat in a queue past WeChat's retry) gets that reply: the handler does
// not run again.
func TestFirstDeliveryAfterTheRetryGetsItsReply(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) { return []byte(fmt.Sprint("run ", runs.Add(1))), nil }
	b1, out1, err := rs[1].store.Retry(within(4*time.Second), "msg.overtaken", run)
	if err != nil || out1 != Ran {
		t.Fatalf("retry: %q %v %v", b1, out1, err)
	}
	b0, out0, err := first(rs[0].store, "msg.overtaken", 6*time.Second, run)
	if err != nil || out0 != Stored || string(b0) != string(b1) || runs.Load() != 1 {
		t.Fatalf("queued first delivery = %q %v %v, runs %d; want the retry's %q, stored", b0, out0, err, runs.Load(), b1)
	}
}

// The index of replies is bounded by entries too, and made again after a
// burst so that its memory goes back.
func TestRecentIndexIsBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	r := newRecent(time.Minute, 1<<20, 4096) // at most 8192 entries
	for i := 0; i < 20000; i++ {
		r.put(fmt.Sprint("msg.", i), nil, now)
	}
	if n := len(r.index); n > 8192 {
		t.Fatalf("index holds %d entries, want at most 8192", n)
	}
	peak := r.peak
	r.tick(now.Add(2 * time.Minute))
	if len(r.index) != 0 || r.peak != 0 || peak < 4096 {
		t.Errorf("after expiry: %d entries, peak %d (was %d); want an empty, new index", len(r.index), r.peak, peak)
	}
}
