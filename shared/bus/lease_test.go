package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
)

func leaseBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "leases", Storage: jetstream.MemoryStorage})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestLeaseOneHolderAtATime(t *testing.T) {
	ctx := context.Background()
	// A TTL the race detector on a loaded machine cannot miss a renewal of.
	l := bus.Lease{KV: leaseBucket(t), Key: "k", TTL: time.Second}
	a, err := l.Create(ctx, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Create(ctx, []byte("b")); !errors.Is(err, bus.ErrLeaseHeld) {
		t.Fatalf("second Create: %v, want ErrLeaseHeld", err)
	}
	// Renewed, the lease never looks stale: Await sees the final value,
	// written once the lease has been renewed past two TTLs.
	go func() {
		w, err := l.KV.Watch(ctx, "k")
		if err != nil {
			return
		}
		defer w.Stop()
		for renewals := 0; renewals < 7; {
			if e := <-w.Updates(); e != nil {
				renewals++
			}
		}
		_, _ = a.Finish(ctx, []byte("done"))
	}()
	e, state, err := l.Await(ctx, func(e jetstream.KeyValueEntry) bool { return string(e.Value()) == "done" })
	if err != nil || state != bus.Final || string(e.Value()) != "done" {
		t.Fatalf("Await = %v, %v, %v; want the final value", e, state, err)
	}
}

func TestLeaseNotRenewedIsTakenOver(t *testing.T) {
	ctx := context.Background()
	kv := leaseBucket(t)
	l := bus.Lease{KV: kv, Key: "k", TTL: 200 * time.Millisecond}
	// A holder that died: its claim is written once and never renewed.
	if _, err := kv.Create(ctx, "k", []byte("dead")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e, state, err := l.Await(ctx, func(jetstream.KeyValueEntry) bool { return false })
	if err != nil || state != bus.Stale {
		t.Fatalf("Await = %v, %v; want Stale", state, err)
	}
	if waited := time.Since(start); waited < l.TTL {
		t.Fatalf("judged stale after %s, before a whole TTL", waited)
	}
	h, err := l.TakeOver(ctx, []byte("me"), e.Revision())
	if err != nil {
		t.Fatal(err)
	}
	// Taken over twice from the same revision: only one wins.
	if _, err := l.TakeOver(ctx, []byte("other"), e.Revision()); !errors.Is(err, bus.ErrLeaseHeld) {
		t.Fatalf("second TakeOver: %v, want ErrLeaseHeld", err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, state, err := l.Await(ctx, func(jetstream.KeyValueEntry) bool { return false }); err != nil || state != bus.Free {
		t.Fatalf("after Release: %v, %v; want Free", state, err)
	}
}

// A lease whose value says it runs until a far-off time (another host's
// clock ahead, the case of finding N6) is judged by its revision alone.
func TestLeaseIgnoresTimesWrittenByOthers(t *testing.T) {
	ctx := context.Background()
	kv := leaseBucket(t)
	if _, err := kv.Create(ctx, "k", []byte(`{"holder":"DEADHOST","until":"2099-12-05T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	l := bus.Lease{KV: kv, Key: "k", TTL: 200 * time.Millisecond}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	h, err := l.Acquire(actx, []byte("me"))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	_ = h.Release(ctx)
}

func TestLeaseLostWhenTakenOver(t *testing.T) {
	ctx := context.Background()
	kv := leaseBucket(t)
	l := bus.Lease{KV: kv, Key: "k", TTL: 300 * time.Millisecond}
	h, err := l.Create(ctx, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	// Another writes over it (as one that judged it stale would).
	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("b"), e.Revision()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("the holder did not notice the takeover")
	}
	if _, err := h.Finish(ctx, []byte("late")); !errors.Is(err, bus.ErrLeaseHeld) {
		t.Fatalf("Finish after takeover: %v, want ErrLeaseHeld", err)
	}
	if e, _ := kv.Get(ctx, "k"); string(e.Value()) != "b" {
		t.Fatalf("value %q: the lost holder overwrote the new one", e.Value())
	}
}
