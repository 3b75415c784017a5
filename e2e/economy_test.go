package e2e

import (
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// The token economy: N processes under steady load ask WeChat for the
// access_token once per token lifetime between them, not once each. The
// fake's tokens live 2 s here (WeChat's: 7200 s) with a 1 s rotation
// window (WeChat's: 300 s), so a refresh is due every 1.1 s (the window's
// 90%). E2E_ECONOMY_REPLICAS (default 4: two workers, two ingresses) and
// E2E_ECONOMY_DURATION (default 10s) change the run.
func TestTokenEconomy(t *testing.T) {
	replicas := 4
	if v, err := strconv.Atoi(os.Getenv("E2E_ECONOMY_REPLICAS")); err == nil && v > 0 {
		replicas = v
	}
	run := 10 * time.Second
	if d, err := time.ParseDuration(os.Getenv("E2E_ECONOMY_DURATION")); err == nil && d > 0 {
		run = d
	}
	const ttl, overlap = 2 * time.Second, time.Second
	ns := startNATS(t)
	fake := startFakeAPI(t, "-token-ttl", ttl.String(), "-overlap", overlap.String())
	var admins []string
	for i := 0; i < replicas; i++ {
		if i%2 == 0 {
			admins = append(admins, startWorker(t, ns.url, fake.env()...).admin)
		} else {
			_, _, a := startIngress(t, append([]string{"NATS_URL=" + ns.url}, fake.env()...)...)
			admins = append(admins, a)
		}
	}
	waitReady(t, admins...)
	if code, c := createQR(t, admins[0], `{"scene":"warm_up"}`); code != 201 {
		t.Fatalf("warm-up: %d %+v", code, c)
	}
	start := fake.calls(t).Calls[wechatapitest.StableToken]

	var created atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(run)
	for g := 0; g < 2*replicas; g++ {
		wg.Add(1)
		go func(admin string) {
			defer wg.Done()
			for time.Now().Before(end) {
				if code, c := createQR(t, admin, `{"scene":"load"}`); code != 201 {
					t.Errorf("under load: %d %+v", code, c)
					return
				}
				created.Add(1)
			}
		}(admins[g%replicas])
	}
	wg.Wait()
	c := fake.calls(t)
	calls := c.Calls[wechatapitest.StableToken] - start
	every := ttl - overlap*9/10
	want := int(run / every)
	t.Logf("%d replicas, %d codes in %v (%.0f/s): %d stable_token calls, one per %v; a refresh is due every %v",
		replicas, created.Load(), run, float64(created.Load())/run.Seconds(), calls, run/time.Duration(max(calls, 1)), every)
	// Not measured: WeChat's real tokens live 2 hours, and the run lasts
	// seconds. What is measured is the calls per refresh period; the hourly
	// figure is that times the periods in an hour of WeChat's tokens.
	perPeriod := float64(calls) / (float64(run) / float64(every))
	t.Logf("computed, not measured: %.2f stable_token calls per refresh period (measured) × %.2f periods an hour with WeChat's 7200 s tokens (a refresh every 7200-270 s) = %.2f calls an hour, whatever the replicas",
		perPeriod, 3600/(7200-270.0), perPeriod*3600/(7200-270.0))
	if calls < want-2 || calls > want+2 {
		t.Errorf("%d stable_token calls in %v, want about %d (one per %v, whatever the replicas)", calls, run, want, every)
	}
	if len(c.Errcodes[wechatapitest.QRCodeCreate]) > 0 || len(c.Errcodes[wechatapitest.StableToken]) > 0 {
		t.Errorf("refusals: %v", c.Errcodes)
	}
	if c.ForceRefresh != 0 {
		t.Errorf("force_refresh sent %d times; wxgate never sends it", c.ForceRefresh)
	}
}
