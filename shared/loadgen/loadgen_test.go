package loadgen

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestClosedLoopBoundedByRequests(t *testing.T) {
	var calls atomic.Int64
	r, err := Run(context.Background(), Options{Concurrency: 4, Requests: 100, Do: func(_ context.Context, i int) Outcome {
		calls.Add(1)
		return Outcome(i % 4)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 100 || calls.Load() != 100 {
		t.Fatalf("sent %d, called %d, want 100", r.Sent, calls.Load())
	}
	if r.Replies != 25 || r.Empty != 25 || r.Fallbacks != 25 || r.Err != 25 {
		t.Errorf("outcomes = %+v", r)
	}
	var b strings.Builder
	r.Print(&b)
	if !strings.Contains(b.String(), "requests: 100") || !strings.Contains(b.String(), "p99.9") {
		t.Errorf("report:\n%s", b.String())
	}
}

// Open loop measures from the due time: a server that stalls once shows the
// stall in every request that was due meanwhile, not in one.
func TestOpenLoopCountsStallForEveryDueRequest(t *testing.T) {
	release := make(chan struct{})
	var first atomic.Bool
	go func() {
		time.Sleep(200 * time.Millisecond) // the stall being measured
		close(release)
	}()
	r, err := Run(context.Background(), Options{Concurrency: 1, Rate: 200, Requests: 20, Do: func(context.Context, int) Outcome {
		if first.CompareAndSwap(false, true) {
			<-release
		}
		return Reply
	}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 20 {
		t.Fatalf("sent %d", r.Sent)
	}
	// Requests 2..20 were due within 100ms but could only go after the
	// stall: at least half of them waited over 100ms.
	if p50 := r.Percentile(50); p50 < 100*time.Millisecond {
		t.Errorf("p50 = %v: the stall was hidden (coordinated omission)", p50)
	}
}

func TestRunNeedsABound(t *testing.T) {
	if _, err := Run(context.Background(), Options{Do: func(context.Context, int) Outcome { return Reply }}); err == nil {
		t.Error("unbounded run accepted")
	}
}
