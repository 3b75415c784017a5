// Package loadgen drives bounded load at a server, closed loop (a fixed
// number of workers, each sending as soon as its last request finished) or
// open loop (requests scheduled at a fixed rate, latency measured from the
// time each was due, so a stalled server cannot hide its stall by slowing
// the sender: no coordinated omission).
package loadgen

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Outcome classifies one request.
type Outcome int

// Outcomes.
const (
	Reply    Outcome = iota // answered with a reply
	Empty                   // answered "success" where nothing was expected
	Fallback                // answered "success" where a reply was expected
	Error                   // failed: transport error or non-200
)

// Options bound a run. At least one of Duration and Requests must be set.
type Options struct {
	// Concurrency is the number of workers: the load in closed loop, the
	// most requests in flight in open loop. Default 16.
	Concurrency int
	// Rate, when positive, schedules requests at this many per second
	// (open loop); otherwise workers send back to back (closed loop).
	Rate     float64
	Duration time.Duration
	Requests int
	// Do sends request number i and classifies the answer.
	Do func(ctx context.Context, i int) Outcome
}

// Report is what a run measured.
type Report struct {
	Mode                                 string
	Sent, Replies, Empty, Fallbacks, Err int
	Elapsed                              time.Duration
	latencies                            []time.Duration // sorted
}

// Run sends load until Duration has passed, Requests were sent, or ctx is
// done, and waits for the requests in flight.
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Duration <= 0 && o.Requests <= 0 {
		return Report{}, fmt.Errorf("loadgen: set a duration or a request count")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	// job is a request: its number and when it was due.
	type job struct {
		i   int
		due time.Time
	}
	jobs := make(chan job, o.Concurrency)
	var (
		mu     sync.Mutex
		report = Report{Mode: "closed loop"}
		wg     sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			counts := [4]int{}
			for j := range jobs {
				// Requests run to completion even past the deadline: the
				// run stops scheduling, it does not cut answers off.
				out := o.Do(context.WithoutCancel(ctx), j.i)
				lat = append(lat, time.Since(j.due))
				counts[out]++
			}
			mu.Lock()
			report.latencies = append(report.latencies, lat...)
			report.Replies += counts[Reply]
			report.Empty += counts[Empty]
			report.Fallbacks += counts[Fallback]
			report.Err += counts[Error]
			mu.Unlock()
		}()
	}
	sent := 0
	more := func() bool { return o.Requests <= 0 || sent < o.Requests }
	if o.Rate > 0 {
		report.Mode = fmt.Sprintf("open loop at %.0f/s", o.Rate)
		interval := time.Duration(float64(time.Second) / o.Rate)
		next := start
	schedule:
		for more() {
			if d := time.Until(next); d > 0 {
				select {
				case <-ctx.Done():
					break schedule
				case <-time.After(d): // the schedule itself: wait until the next request is due
				}
			}
			select {
			case jobs <- job{sent, next}:
				sent++
				next = next.Add(interval)
			case <-ctx.Done():
				break schedule
			}
		}
	} else {
	feed:
		for more() {
			select {
			case jobs <- job{sent, time.Now()}:
				sent++
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(jobs)
	wg.Wait()
	report.Sent = sent
	report.Elapsed = time.Since(start)
	slices.Sort(report.latencies)
	return report, nil
}

// Percentile returns the latency at p (0 < p <= 100).
func (r Report) Percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.latencies))*p/100+0.5) - 1
	return r.latencies[max(0, min(i, len(r.latencies)-1))]
}

// Throughput is answered requests per second.
func (r Report) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

// Print writes the report in the form wxsim and the benchmarks print.
func (r Report) Print(w io.Writer) {
	fmt.Fprintf(w, "mode: %s\n", r.Mode)
	fmt.Fprintf(w, "requests: %d  replies: %d  success(empty): %d  fallbacks: %d  errors: %d\n", r.Sent, r.Replies, r.Empty, r.Fallbacks, r.Err)
	fmt.Fprintf(w, "duration: %s  throughput: %.1f req/s\n", r.Elapsed.Round(time.Millisecond), r.Throughput())
	fmt.Fprintf(w, "latency: p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
		round(r.Percentile(50)), round(r.Percentile(90)), round(r.Percentile(99)), round(r.Percentile(99.9)), round(r.Percentile(100)))
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
