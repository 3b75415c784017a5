// Package wait polls for a condition that has no event to wait on: another
// process's view of things, a counter, a server's state. As nats-server's
// checkForErr and checkFor: an error-returning core, and a wrapper that
// fails the test with the last error seen.
package wait

import (
	"fmt"
	"testing"
	"time"
)

// The standard bounds. They are generous because CI runs the race detector
// and several processes on two cores; a passing test never waits them out.
const (
	// Short bounds waits on this process and servers embedded in it.
	Short = 10 * time.Second
	// Long bounds waits on other processes: their start, their reconnects,
	// a consumer catching up, a Prometheus scrape.
	Long = 60 * time.Second
	// Every is the poll interval: short against the waits, long against
	// the cost of one check.
	Every = 10 * time.Millisecond
)

// ForErr calls f until it returns nil, every interval, for at most total.
// On timeout it returns f's last error. f runs at least once, and once more
// at or after the deadline.
func ForErr(total, every time.Duration, f func() error) error {
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %w", total, err)
		}
		time.Sleep(every)
	}
}

// For is ForErr that fails the test on timeout. f may itself fail the test,
// for a state that can never come right (a count past its target).
func For(tb testing.TB, total, every time.Duration, f func() error) {
	tb.Helper()
	if err := ForErr(total, every, f); err != nil {
		tb.Fatal(err)
	}
}
