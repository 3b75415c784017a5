package analytics

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/natstest"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	srv := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(context.Background(), js, StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rec(kind, openid, scene string) Record {
	return Record{Account: "gh", OpenID: openid, Scene: scene, Kind: kind, Received: time.Unix(1700000000, 0)}
}

func totals(t *testing.T, s *Store, scene string) Totals {
	t.Helper()
	tot, ok, err := s.Scene(context.Background(), scene)
	if err != nil || !ok {
		t.Fatalf("scene %q: %v %v", scene, ok, err)
	}
	return tot
}

func TestApplyIsIdempotent(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	steps := []struct {
		seq uint64
		r   Record
	}{
		{1, rec(KindSubscribe, "alice", "poster")},
		{2, rec(KindScan, "alice", "poster")},
		{3, rec(KindScan, "bob", "poster")},
		{4, rec(KindUnsubscribe, "alice", "")},
		{5, rec(KindScan, "carol", "counter")},
	}
	// Every record applied, then every record redelivered (as after a
	// consumer crash before its acks): the second pass changes nothing.
	for pass := 0; pass < 2; pass++ {
		for _, st := range steps {
			applied, err := s.Apply(ctx, st.seq, st.r, 0)
			if err != nil {
				t.Fatal(err)
			}
			if pass == 1 && applied {
				t.Errorf("redelivery of seq %d applied again", st.seq)
			}
		}
	}
	got := totals(t, s, "poster")
	want := Totals{Scene: "poster", Scans: 3, SubscribeScans: 1, ScanScans: 2, NewFollowers: 1, UniquePeople: 2, Unfollows: 1, FirstSeq: 1}
	got.FirstSeen, got.LastSeen = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("poster = %+v\nwant     %+v", got, want)
	}
	if c := totals(t, s, "counter"); c.Scans != 1 || c.UniquePeople != 1 || c.Unfollows != 0 {
		t.Errorf("counter = %+v", c)
	}
	// A second unfollow without a new follow is not attributed again.
	if applied, err := s.Apply(ctx, 6, rec(KindUnsubscribe, "alice", ""), 0); err != nil || applied {
		t.Errorf("second unsubscribe applied=%v err=%v", applied, err)
	}
}

// A consumer that died after claiming a person but before updating the
// totals: the redelivery still counts the person as new, once.
func TestApplyAfterPartialCrash(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	r := rec(KindScan, "dave", "ad")
	if first, err := s.claimPerson(ctx, r, 7); err != nil || !first {
		t.Fatalf("claim = %v %v", first, err)
	}
	if _, err := s.Apply(ctx, 7, r, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, 8, r, 0); err != nil { // the same person again, a new scan
		t.Fatal(err)
	}
	if got := totals(t, s, "ad"); got.UniquePeople != 1 || got.Scans != 2 {
		t.Errorf("ad = %+v, want 2 scans by 1 person", got)
	}
}

// Concurrent consumers on one scene: compare-and-set never loses an
// increment.
func TestConcurrentApply(t *testing.T) {
	s := openStore(t)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq := uint64(w*each + i + 1)
				if _, err := s.Apply(context.Background(), seq, rec(KindScan, "p", "hot"), 0); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if got := totals(t, s, "hot"); got.Scans != workers*each || got.UniquePeople != 1 {
		t.Errorf("hot = %+v, want %d scans", got, workers*each)
	}
}

// Sequences at or below the ack floor are forgotten, so the stored value
// does not grow with traffic.
func TestAppliedSetIsPruned(t *testing.T) {
	s := openStore(t)
	for seq := uint64(1); seq <= 100; seq++ {
		if _, err := s.Apply(context.Background(), seq, rec(KindScan, "p", "busy"), seq-1); err != nil {
			t.Fatal(err)
		}
	}
	e, err := s.kv.Get(context.Background(), sceneKey("busy"))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Value()) > 512 {
		t.Errorf("scene value is %d bytes after 100 records: applied set not pruned", len(e.Value()))
	}
}

func TestApplyBatchIsIdempotentAcrossReplicas(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	batch := []item{
		{seq: 1, delivered: 1, rec: rec(KindSubscribe, "alice", "poster")},
		{seq: 2, delivered: 1, rec: rec(KindScan, "bob", "poster")},
		{seq: 3, delivered: 1, rec: rec(KindScan, "bob", "poster")}, // same person, same batch
		{seq: 4, delivered: 1, rec: rec(KindScan, "carol", "counter")},
		{seq: 5, delivered: 1, rec: rec(KindUnsubscribe, "alice", "")},
	}
	a, b := &sceneCache{}, &sceneCache{} // two replicas' caches
	if _, err := s.applyBatch(ctx, batch, 0, a); err != nil {
		t.Fatal(err)
	}
	// The whole batch again, as after a crash before the acks, through the
	// other replica (whose cache knows nothing): nothing changes.
	again := slices.Clone(batch)
	for i := range again {
		again[i].delivered = 2
	}
	if _, err := s.applyBatch(ctx, again, 0, b); err != nil {
		t.Fatal(err)
	}
	// A new record through the first replica, whose cached revision is
	// now stale for nothing, and through the second for poster.
	if _, err := s.applyBatch(ctx, []item{{seq: 6, delivered: 1, rec: rec(KindScan, "dave", "poster")}}, 0, b); err != nil {
		t.Fatal(err)
	}
	if _, err := s.applyBatch(ctx, []item{{seq: 7, delivered: 1, rec: rec(KindScan, "erin", "poster")}}, 0, a); err != nil {
		t.Fatal(err)
	}
	// bob again, in a later batch: his claim is known (cached), no new person.
	if _, err := s.applyBatch(ctx, []item{{seq: 8, delivered: 1, rec: rec(KindScan, "bob", "poster")}}, 0, a); err != nil {
		t.Fatal(err)
	}
	got := totals(t, s, "poster")
	if got.Scans != 6 || got.SubscribeScans != 1 || got.ScanScans != 5 || got.UniquePeople != 4 || got.NewFollowers != 1 || got.Unfollows != 1 {
		t.Errorf("poster = %+v, want 6 scans (1 subscribe), 4 people, 1 follower who left", got)
	}
	if c := totals(t, s, "counter"); c.Scans != 1 || c.UniquePeople != 1 {
		t.Errorf("counter = %+v", c)
	}
}

// A record whose claim was written by an earlier delivery, which then died
// before the totals: the redelivery still counts the person once.
func TestApplyBatchAfterPartialCrash(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	r := rec(KindScan, "frank", "ad")
	if _, err := s.claimBatch(ctx, []item{{seq: 9, delivered: 1, rec: r}}, &sceneCache{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.applyBatch(ctx, []item{{seq: 9, delivered: 2, rec: r}}, 0, &sceneCache{}); err != nil {
		t.Fatal(err)
	}
	if got := totals(t, s, "ad"); got.UniquePeople != 1 || got.Scans != 1 {
		t.Errorf("ad = %+v", got)
	}
}
