package e2e

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

// Each test here runs real processes under steady traffic (traffic_test.go),
// breaks something, and checks that every delivery was answered within
// WeChat's deadline, that it recovers by itself, and that every scan is
// counted exactly once.

const rate = 100 // deliveries per second

// underLoad starts an ingress on natsURL, waits until it and the given
// admin listeners are ready, and sends traffic through it until steady
// messages have been answered by a worker.
func underLoad(t *testing.T, natsURL string, steady int64, admins ...string) (ingress *proc, admin string, tr *traffic) {
	t.Helper()
	ingress, url, admin := startIngress(t, "NATS_URL="+natsURL)
	waitReady(t, append(admins, admin)...)
	tr = startTraffic(t, rate, fixed(url))
	tr.waitReplies("steady state", steady)
	return ingress, admin, tr
}

// Workers killed -9 under load, one, then all; then new ones started.
func TestFaultWorkersKilledAndBack(t *testing.T) {
	ns := startNATS(t)
	w1, w2 := startWorker(t, ns.url), startWorker(t, ns.url)
	_, admin, tr := underLoad(t, ns.url, 200, w1.admin, w2.admin)
	w1.kill(t)
	tr.waitReplies("one worker left", 200)

	w2.kill(t)
	before := metricValue(t, admin, `wxgate_ingress_fallbacks_total{account="default",reason="no_responders"}`)
	tr.waitFallbacks("no workers: success", 50)
	if after := metricValue(t, admin, `wxgate_ingress_fallbacks_total{account="default",reason="no_responders"}`); after <= before {
		t.Fatalf("no workers, yet no no_responders fallbacks (%v -> %v)", before, after)
	}
	if nettest.Status("http://"+admin+"/readyz") != 200 {
		t.Fatal("the ingress should stay ready without workers: it still answers WeChat")
	}

	w3 := startWorker(t, ns.url)
	startWorker(t, ns.url)
	tr.waitReplies("workers back", 200)
	want := tr.finish()
	waitCounts(t, w3.admin, want)
}

// The NATS server stopped for 30 seconds, the longest restart the
// intake promises to ride out, and started again under load: the ingress
// answers "success" at once, holds every event, and reports not ready
// meanwhile; everyone reconnects without help, the held events are
// stored, and every scan that got 200 is counted exactly once.
func TestFaultNATSRestart(t *testing.T) {
	const outage = 30 * time.Second
	port, store := nettest.FreePort(t), t.TempDir()
	ns := startNATSAt(t, port, store)
	w1, w2 := startWorker(t, ns.url), startWorker(t, ns.url)
	ingress, admin, tr := underLoad(t, ns.url, 200, w1.admin, w2.admin)
	down := time.Now()
	if code := ns.terminate(t); code != 0 {
		t.Fatalf("nats-server exit %d", code)
	}
	waitNotReady(t, admin)
	tr.waitFallbacks("NATS down: success", 50)
	if v := metricValue(t, admin, `wxgate_ingress_fallbacks_total{account="default",reason="bus_down"}`); v == 0 {
		t.Fatal("NATS down, yet no bus_down fallbacks")
	}
	time.Sleep(time.Until(down.Add(outage))) // the outage's length is the case under test
	held := metricValue(t, admin, "wxgate_intake_held")
	if held < 1000 {
		t.Fatalf("%v events held after %v down, want them all (about 100 a second)", held, outage)
	}

	ns = startNATSAt(t, port, store)
	for _, p := range []*proc{ingress, w1.proc, w2.proc} {
		p.waitLog(t, "nats reconnected", nil)
	}
	waitReady(t, admin, w1.admin, w2.admin)
	tr.waitReplies("after the restart", 200)
	want := tr.finish()
	waitCounts(t, w1.admin, want)
	if v := metricValue(t, admin, "wxgate_intake_held"); v != 0 {
		t.Errorf("%v events still held after the restart", v)
	}
	h, f := metricValue(t, admin, `wxgate_intake_events_total{result="held"}`), metricValue(t, admin, `wxgate_intake_events_total{result="flushed"}`)
	if h < held || f != h {
		t.Errorf("held %v, flushed %v: want every held event flushed", h, f)
	}
	for _, reason := range []string{"full", "shutdown", "refused"} {
		if v := metricValue(t, admin, `wxgate_intake_dropped_total{kind="event",reason="`+reason+`"}`); v != 0 {
			t.Errorf("dropped{%s} = %v, want 0", reason, v)
		}
	}
}

// SIGTERM to one of two ingress replicas under load. Traffic goes through
// a balancer that follows /readyz, as a load balancer would: not one
// delivery fails.
func TestFaultIngressSIGTERM(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.url)
	a, urlA, adminA := startIngress(t, "NATS_URL="+ns.url, "SHUTDOWN_DELAY=5s") // the default: the drain is under test
	_, urlB, adminB := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, adminA, adminB, w.admin)

	lb := newBalancer(map[string]string{urlA: adminA, urlB: adminB})
	defer lb.close()
	tr := startTraffic(t, rate, lb.ready)
	tr.waitReplies("steady state", 200)

	type exit struct {
		code int
		err  error
	}
	exited := make(chan exit, 1)
	go func() { code, err := a.Terminate(wait.Long); exited <- exit{code, err} }()
	tr.waitReplies("while A drains", 100)
	if e := <-exited; e.err != nil || e.code != 0 {
		t.Fatalf("ingress A exit %d, %v", e.code, e.err)
	}
	tr.waitReplies("on B alone", 200)
	want := tr.finish()
	waitCounts(t, w.admin, want)
}

// balancer sends to the backends whose /readyz answered 200 at its last
// probe, every 100 ms, as a load balancer's health check would.
type balancer struct {
	mu    sync.Mutex
	up    []string
	stop  chan struct{}
	done  chan struct{}
	admin map[string]string
}

func newBalancer(backends map[string]string) *balancer {
	b := &balancer{admin: backends, stop: make(chan struct{}), done: make(chan struct{})}
	b.probe()
	go func() {
		defer close(b.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				b.probe()
			}
		}
	}()
	return b
}

func (b *balancer) probe() {
	var up []string
	for url, admin := range b.admin {
		if nettest.Status("http://"+admin+"/readyz") == 200 {
			up = append(up, url)
		}
	}
	b.mu.Lock()
	b.up = up
	b.mu.Unlock()
}

func (b *balancer) ready() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.up
}

func (b *balancer) close() { close(b.stop); <-b.done }

// The analytics consumer stopped under load, then back: the replies never
// noticed, and the consumer catches up exactly. The outage lasts until 300
// scans have been answered without the consumer; E2E_OUTAGE=3m makes it a
// soak of that length instead.
func TestFaultAnalyticsConsumerDown(t *testing.T) {
	var soak time.Duration
	if v := os.Getenv("E2E_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("E2E_OUTAGE: %v", err)
		}
		soak = d
	}
	ns := startNATS(t)
	replies := startRole(t, ns.url, "replies")
	consumer := startRole(t, ns.url, "analytics")
	_, _, tr := underLoad(t, ns.url, 100, replies.admin, consumer.admin)
	if code := consumer.terminate(t); code != 0 {
		t.Fatalf("consumer exit %d", code)
	}
	stoppedAt, down := tr.replied.Load(), time.Now()
	if soak > 0 {
		time.Sleep(soak) // the soak's length is what is under test; traffic keeps flowing
		if backlog := tr.replied.Load() - stoppedAt; backlog < int64(soak/time.Second)*rate/2 {
			t.Fatalf("only %d scans answered during a %v consumer outage: replies depend on the consumer", backlog, soak)
		}
	} else {
		tr.waitReplies("scans answered without the consumer", 300)
	}
	outage, backlog := time.Since(down), tr.replied.Load()-stoppedAt
	consumer = startRole(t, ns.url, "analytics")
	back := time.Now()
	want := tr.finish()
	waitCounts(t, consumer.admin, want)
	t.Logf("consumer down %v with %d scans answered meanwhile; caught up %v after its restart",
		outage.Round(time.Millisecond), backlog, time.Since(back).Round(time.Millisecond))
}
