package health

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/testutil/metricstest"
)

func TestReadyNamesEveryFailingPart(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	var natsErr, consumerErr error
	c.Add("nats", func() error { return natsErr })
	c.Add("analytics", func() error { return consumerErr })
	if err := c.Ready(); err != nil {
		t.Fatalf("all working: %v", err)
	}
	natsErr, consumerErr = errors.New("nats: CLOSED"), errors.New("consumer lost")
	err = c.Ready()
	if err == nil || !strings.Contains(err.Error(), "nats: nats: CLOSED") || !strings.Contains(err.Error(), "analytics: consumer lost") {
		t.Fatalf("Ready = %v, want both parts named", err)
	}
	consumerErr = nil
	if got := metricstest.Value(t, reg, "wxgate_component_ready", "component", "nats"); got != 0 {
		t.Errorf("nats ready gauge = %v, want 0", got)
	}
	if got := metricstest.Value(t, reg, "wxgate_component_ready", "component", "analytics"); got != 1 {
		t.Errorf("analytics ready gauge = %v, want 1", got)
	}
}

func TestFatalKeepsTheFirst(t *testing.T) {
	c, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	first := errors.New("first")
	c.Fatal(first)
	c.Fatal(errors.New("second")) // must not block nor replace
	if got := <-c.Fatals(); got != first {
		t.Fatalf("Fatals = %v, want the first", got)
	}
}

func TestAddTwicePanics(t *testing.T) {
	c, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c.Add("x", func() error { return nil })
	defer func() {
		if recover() == nil {
			t.Fatal("a part added twice did not panic")
		}
	}()
	c.Add("x", func() error { return nil })
}
