package dedup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

type replica struct {
	store *Store
	reg   *prometheus.Registry
	js    jetstream.JetStream
}

// replicas opens n stores, each on its own connection to one server, as n
// worker processes would.
func replicas(t *testing.T, srv *bus.Embedded, n int, o Options) []replica {
	t.Helper()
	out := make([]replica, n)
	for i := range out {
		js, err := jetstream.New(natstest.Connect(t, srv))
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		o := o
		o.Registerer = reg
		s, err := Open(context.Background(), js, string(rune('a'+i)), o)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = replica{s, reg, js}
	}
	return out
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
	type answer struct {
		body []byte
		out  Outcome
		err  error
	}
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	do := func(i int) {
		defer wg.Done()
		st := rs[i%len(rs)].store
		var body []byte
		var out Outcome
		var err error
		if i == 0 {
			body, out, err = st.First("msg.1", time.Now(), time.Now().Add(20*time.Second), run)
		} else {
			body, out, err = st.Do(within(20*time.Second), "msg.1", run)
		}
		answers <- answer{body, out, err}
	}
	wg.Add(1)
	go do(0)
	<-started
	// WeChat retries 5 s after a delivery; by then the first has claimed
	// the key. Wait for the claim, as that retry would.
	kv, err := rs[0].js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		_, err := kv.Get(context.Background(), "msg.1")
		return err
	})
	for i := 1; i < n; i++ {
		wg.Add(1)
		go do(i)
	}
	// Every retry has seen the claim before the handler finishes.
	wait.For(t, wait.Short, wait.Every, func() error {
		if d := sum(rs, duplicates); d < n-1 {
			return fmt.Errorf("%v of %d duplicates seen", d, n-1)
		}
		return nil
	})
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

	// A retry after the fact is answered from the store at once.
	waitStored(t, rs...)
	body, out, err := rs[2].store.Do(within(5*time.Second), "msg.1", run)
	if err != nil || out != Stored || string(body) != "<xml>hi</xml>" || runs.Load() != 1 {
		t.Fatalf("late retry: %q %v %v (runs %d)", body, out, err, runs.Load())
	}
}

// A handler slower than the request's deadline keeps running; the retry
// that comes after it is answered with its reply.
func TestSlowHandlerAnswersTheRetry(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{Lease: time.Second, ClaimAfter: 50 * time.Millisecond})
	var runs atomic.Int32
	finished := make(chan struct{})
	run := func(context.Context) ([]byte, error) {
		runs.Add(1)
		time.Sleep(1500 * time.Millisecond) // the slow handler under test
		defer close(finished)
		return []byte("slow"), nil
	}
	// The first delivery's handler runs on past its request's deadline,
	// and claims the key after ClaimAfter.
	first := make(chan error, 1)
	go func() {
		body, out, err := rs[0].store.First("evt.slow", time.Now(), time.Now().Add(300*time.Millisecond), run)
		if err == nil && (out != Ran || string(body) != "slow") {
			err = fmt.Errorf("first delivery: %q %v", body, out)
		}
		first <- err
	}()
	kv, err := rs[0].js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error { _, err := kv.Get(context.Background(), "evt.slow"); return err })
	// The second delivery reaches another replica while the handler runs.
	body, out, err := rs[1].store.Do(within(10*time.Second), "evt.slow", run)
	if err != nil || out != Stored || string(body) != "slow" {
		t.Fatalf("retry: %q %v %v", body, out, err)
	}
	<-finished
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 || sum(rs, expired) != 0 {
		t.Fatalf("runs %d, expired claims %v: a refreshed claim was taken over", runs.Load(), sum(rs, expired))
	}
	if err := rs[0].store.Wait(within(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
}

// A claim whose worker died (nobody refreshes it) is taken over.
func TestStaleClaimIsTakenOver(t *testing.T) {
	srv := natstest.RunServer(t)
	rs := replicas(t, srv, 1, Options{Lease: 300 * time.Millisecond})
	kv, err := rs[0].js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(context.Background(), "msg.dead", []byte(claimPrefix+"crashed-worker")); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	body, out, err := rs[0].store.Do(within(5*time.Second), "msg.dead", func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte("again"), nil
	})
	if err != nil || out != TookOver || string(body) != "again" || runs.Load() != 1 {
		t.Fatalf("got %q %v %v, runs %d", body, out, err, runs.Load())
	}
	if testutil.ToFloat64(expired(rs[0].store)) != 1 {
		t.Fatalf("claims expired = %v, want 1", testutil.ToFloat64(expired(rs[0].store)))
	}
	waitStored(t, rs...)
	e, err := kv.Get(context.Background(), "msg.dead")
	if err != nil || string(e.Value()) != replyPrefix+"again" {
		t.Fatalf("stored %q %v", e.Value(), err)
	}
}

// A handler that fails leaves nothing behind: the retry runs it again.
func TestFailedHandlerReleasesTheKey(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) {
		if runs.Add(1) == 1 {
			return nil, errors.New("downstream failed")
		}
		return []byte("ok"), nil
	}
	if _, out, err := rs[0].store.First("msg.2", time.Now(), time.Now().Add(5*time.Second), run); err == nil || out != Ran {
		t.Fatalf("first: %v %v, want the handler's error", out, err)
	}
	body, out, err := rs[1].store.Do(within(5*time.Second), "msg.2", run)
	if err != nil || out != Ran || string(body) != "ok" || runs.Load() != 2 {
		t.Fatalf("retry: %q %v %v, runs %d", body, out, err, runs.Load())
	}
}

// A first delivery whose handler answers within ClaimAfter costs the store
// nothing: no claim, no write; its reply stays in the worker's memory, and
// a retry at another replica gets it from there by asking, without running
// the handler again.
func TestFastFirstDeliveryWritesNothing(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{ClaimAfter: time.Minute})
	var runs atomic.Int32
	run := func(context.Context) ([]byte, error) { runs.Add(1); return []byte("fast"), nil }
	body, out, err := rs[0].store.First("msg.fast", time.Now(), time.Now().Add(5*time.Second), run)
	if err != nil || out != Ran || string(body) != "fast" {
		t.Fatalf("%q %v %v", body, out, err)
	}
	waitStored(t, rs...)
	kv, err := rs[0].js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(context.Background())
	if err != nil || st.Values() != 0 {
		t.Fatalf("bucket holds %d values (%v), want none: a fast reply is kept in memory", st.Values(), err)
	}
	if got := testutil.ToFloat64(duplicates(rs[0].store)); got != 0 {
		t.Errorf("duplicates = %v: the first delivery looked the key up", got)
	}
	body, out, err = rs[1].store.Do(within(5*time.Second), "msg.fast", run)
	if err != nil || out != Stored || string(body) != "fast" || runs.Load() != 1 {
		t.Fatalf("retry at the other replica: %q %v %v, runs %d", body, out, err, runs.Load())
	}
	body, out, err = rs[0].store.Do(within(5*time.Second), "msg.fast", run)
	if err != nil || out != Stored || string(body) != "fast" || runs.Load() != 1 {
		t.Fatalf("retry at the same replica: %q %v %v, runs %d", body, out, err, runs.Load())
	}
}

// A retry nobody answered before (its first delivery never reached a
// worker) runs the handler: silence to the lookup means no reply.
func TestRetryWithoutReplyRuns(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 2, Options{})
	body, out, err := rs[1].store.Do(within(5*time.Second), "msg.unseen", func(context.Context) ([]byte, error) {
		return []byte("fresh"), nil
	})
	if err != nil || out != Ran || string(body) != "fresh" {
		t.Fatalf("%q %v %v", body, out, err)
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
		return string(v[len(replyPrefix):])
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
	if r.held() != 64 {
		t.Errorf("held %d bytes, want 64", r.held())
	}
	r.put("big", make([]byte, 40), later) // larger than a chunk: not kept
	if got := get("big", later); got != "-" {
		t.Errorf("an entry larger than a chunk was kept")
	}
	r.tick(later.Add(61 * time.Second))
	if r.held() != 0 || len(r.index) != 0 || evicted != 1 {
		t.Errorf("idle past the TTL: held %d bytes, %d keys, evicted %d; want all given back", r.held(), len(r.index), evicted)
	}
	r.close()
	r.put("f", []byte("6"), later)
	if r.held() != 0 {
		t.Errorf("a closed store took a reply")
	}
}

// An empty reply (nothing to say) of a handler that outlived ClaimAfter is
// stored and served to the retry like any other.
func TestEmptyReplyIsStored(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 1, Options{ClaimAfter: 20 * time.Millisecond})
	release := make(chan struct{})
	run := func(context.Context) ([]byte, error) { <-release; return nil, nil }
	kv, err := rs[0].js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := rs[0].store.First("evt.quiet", time.Now(), time.Now().Add(5*time.Second), run)
		done <- err
	}()
	wait.For(t, wait.Short, wait.Every, func() error { _, err := kv.Get(context.Background(), "evt.quiet"); return err })
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitStored(t, rs...)
	body, out, err := rs[0].store.Do(within(5*time.Second), "evt.quiet", run)
	if err != nil || out != Stored || len(body) != 0 {
		t.Fatalf("%q %v %v", body, out, err)
	}
}

// With the store gone, requests are still answered, each by its own run.
func TestStoreUnavailableStillAnswers(t *testing.T) {
	srv := natstest.RunServer(t)
	rs := replicas(t, srv, 1, Options{})
	srv.Shutdown()
	var runs atomic.Int32
	for i := 0; i < 2; i++ {
		body, out, err := rs[0].store.Do(within(2*time.Second), "msg.3", func(context.Context) ([]byte, error) {
			runs.Add(1)
			return []byte("still"), nil
		})
		if err != nil || out != Unguarded || string(body) != "still" {
			t.Fatalf("%q %v %v", body, out, err)
		}
	}
	if runs.Load() != 2 || testutil.ToFloat64(unavailable(rs[0].store)) != 2 {
		t.Fatalf("runs %d, unavailable %v", runs.Load(), testutil.ToFloat64(unavailable(rs[0].store)))
	}
}

// The bucket lives in server memory: a restarted server has lost it, and
// the store brings it back while requests are still answered.
func TestBucketLossIsRepaired(t *testing.T) {
	rs := replicas(t, natstest.RunServer(t), 1, Options{})
	if err := rs[0].js.DeleteKeyValue(context.Background(), Bucket); err != nil {
		t.Fatal(err)
	}
	run := func(context.Context) ([]byte, error) { return []byte("x"), nil }
	if _, out, err := rs[0].store.Do(within(5*time.Second), "msg.lost", run); err != nil || out != Unguarded {
		t.Fatalf("with the bucket gone: %v %v, want an unguarded answer", out, err)
	}
	// The repair runs in the background.
	i := 0
	wait.For(t, wait.Short, wait.Every, func() error {
		i++
		_, out, err := rs[0].store.Do(within(5*time.Second), "msg.back."+string(rune('a'+i%26)), run)
		if err != nil {
			t.Fatal(err)
		}
		if out != Ran {
			return fmt.Errorf("bucket not recreated: outcome %v", out)
		}
		return nil
	})
}

// A first delivery that waited behind busy handlers (received 3.5 s ago)
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
	since := time.Now().Add(-3500 * time.Millisecond)
	first := make(chan []byte, 1)
	go func() {
		b, _, _ := rs[0].store.First("msg.queued", since, time.Now().Add(500*time.Millisecond), run)
		first <- b
	}()
	<-started
	retry := make(chan []byte, 1)
	go func() { b, _, _ := rs[1].store.Do(within(4*time.Second), "msg.queued", run); retry <- b }()
	// The retry finds the claim and waits; only then is the handler let go.
	wait.For(t, wait.Short, wait.Every, func() error {
		if testutil.ToFloat64(duplicates(rs[1].store)) != 1 {
			return errors.New("the retry has not found the claim yet")
		}
		return nil
	})
	close(release)
	if got := string(<-retry); got != "run 1" {
		t.Errorf("retry = %q, want the first run's reply", got)
	}
	<-first
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
	b1, out1, err := rs[1].store.Do(within(4*time.Second), "msg.overtaken", run)
	if err != nil || out1 != Ran {
		t.Fatalf("retry: %q %v %v", b1, out1, err)
	}
	waitStored(t, rs...)
	b0, out0, err := rs[0].store.First("msg.overtaken", time.Now().Add(-6*time.Second), time.Now().Add(time.Second), run)
	if err != nil || out0 != Stored || string(b0) != string(b1) || runs.Load() != 1 {
		t.Fatalf("queued first delivery = %q %v %v, runs %d; want the retry's %q, stored", b0, out0, err, runs.Load(), b1)
	}
}

// The index of replies, on the Go heap, is bounded by entries too, and
// made again after a burst so that its memory goes back.
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
