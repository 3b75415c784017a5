// Package health tracks whether the parts of a process work. /readyz
// answers 503 naming every part that does not, the gauge
// wxgate_component_ready{component} says the same to Prometheus, and a part
// that is lost for good reports it with Fatal, which ends the process
// non-zero so that compose or any orchestrator starts a fresh one: a process
// that is alive but deaf is the one failure nobody restarts.
package health

import (
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Checker holds the checks of one process's parts.
type Checker struct {
	mu     sync.Mutex
	parts  []part
	fatal  chan error
	failed sync.Once
}

type part struct {
	name  string
	check func() error
}

var descReady = prometheus.NewDesc("wxgate_component_ready",
	"1 while the part of the process works, 0 while it does not (the reason is on /readyz).",
	[]string{"component"}, nil)

// New returns a Checker whose gauge is registered with reg.
func New(reg prometheus.Registerer) (*Checker, error) {
	c := &Checker{fatal: make(chan error, 1)}
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	return c, nil
}

// Add adds a part. check must be cheap and must not block: it reads state
// that the part keeps up to date, it does not go to the network. Names are
// unique (they are label values); adding one twice is a bug and panics.
func (c *Checker) Add(name string, check func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.parts {
		if p.name == name {
			panic("health: part " + name + " added twice")
		}
	}
	c.parts = append(c.parts, part{name, check})
}

// Ready returns nil when every part works, or an error naming each that
// does not.
func (c *Checker) Ready() error {
	var errs []error
	for _, p := range c.snapshot() {
		if err := p.check(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Checker) snapshot() []part {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]part(nil), c.parts...)
}

// Fatal reports a part lost for good. The first report is kept; the
// process's run loop receives it from Fatals and exits non-zero.
func (c *Checker) Fatal(err error) {
	c.failed.Do(func() { c.fatal <- err })
}

// Fatals yields the first fatal error.
func (c *Checker) Fatals() <-chan error { return c.fatal }

// Describe implements prometheus.Collector.
func (c *Checker) Describe(ch chan<- *prometheus.Desc) { ch <- descReady }

// Collect implements prometheus.Collector.
func (c *Checker) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.snapshot() {
		v := 1.0
		if p.check() != nil {
			v = 0
		}
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, v, p.name)
	}
}
