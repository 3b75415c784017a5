package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// traffic plays WeChat at a steady rate against ingress replicas. Every
// message is a SCAN of one of four scenes, unique per message. As WeChat
// does, a message answered 200 (the reply, or "success" by a fallback) is
// done: WeChat never sends it again, so every message answered 200 must be
// counted, exactly once. A message that got no 200 (an error, a 503, an
// answer past the deadline) is sent again, up to WeChat's three retries.
type traffic struct {
	t       *testing.T
	sender  wechat.Sender
	client  *http.Client
	targets func() []string // where to send, round robin

	next                    atomic.Int64
	deliveries, failed      atomic.Int64
	replied, fallback       atomic.Int64
	maxFallback, maxLatency atomic.Int64 // nanoseconds

	mu       sync.Mutex
	failures []string
	want     map[string]int // messages accepted (answered 200), by scene
	open     map[int64]bool // messages not yet accepted

	stopping chan struct{}
	wg       sync.WaitGroup
}

// deadline is WeChat's: a delivery answered later than this has failed.
const deadline = 5 * time.Second

func startTraffic(t *testing.T, rate int, targets func() []string) *traffic {
	t.Helper()
	tr := &traffic{
		t: t, sender: wechat.Sender{Token: token}, targets: targets,
		client:   &http.Client{Timeout: deadline + time.Second},
		want:     map[string]int{},
		open:     map[int64]bool{},
		stopping: make(chan struct{}),
	}
	tr.wg.Add(1)
	go func() {
		defer tr.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-tr.stopping:
				return
			case <-tick.C:
				n := tr.next.Add(1)
				tr.mu.Lock()
				tr.open[n] = true
				tr.mu.Unlock()
				tr.wg.Add(1)
				go tr.deliver(n)
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-tr.stopping:
		default:
			close(tr.stopping)
		}
	})
	return tr
}

func scanMessage(n int64) ([]byte, string) {
	scene := "scene_" + strconv.FormatInt(n%4, 10)
	return []byte(fmt.Sprintf("<xml><ToUserName>gh_e2e</ToUserName><FromUserName>o_fault_%d</FromUserName><CreateTime>%d</CreateTime>"+
		"<MsgType>event</MsgType><Event>SCAN</Event><EventKey>%s</EventKey></xml>", n, 1700000000+n, scene)), scene
}

var rr atomic.Int64

// deliver sends message n until it is accepted, at most 1 + 3 times, as
// WeChat would (faster than WeChat's 5 s, to keep the test short).
func (tr *traffic) deliver(n int64) {
	defer tr.wg.Done()
	msg, scene := scanMessage(n)
	for attempt := 1; ; attempt++ {
		targets := tr.targets()
		if len(targets) == 0 {
			tr.fail("message %d: no ingress to send to", n)
			return
		}
		url := targets[int(rr.Add(1))%len(targets)]
		tr.deliveries.Add(1)
		start := time.Now()
		code, body, err := tr.sender.Post(tr.client, url, msg, time.Now(), "n"+strconv.FormatInt(n, 10)+"_"+strconv.Itoa(attempt))
		took := time.Since(start)
		atomicMax(&tr.maxLatency, int64(took))
		switch {
		case err != nil || code != 200:
			tr.failed.Add(1)
			tr.fail("message %d attempt %d to %s: status %d, %v", n, attempt, url, code, err)
		case took > deadline:
			tr.failed.Add(1)
			tr.fail("message %d attempt %d: answered after %v, past WeChat's deadline", n, attempt, took)
		case string(body) == "success":
			tr.fallback.Add(1)
			atomicMax(&tr.maxFallback, int64(took))
			tr.accepted(n, scene)
			return
		case strings.Contains(string(body), scene):
			tr.replied.Add(1)
			tr.accepted(n, scene)
			return
		default:
			tr.failed.Add(1)
			tr.fail("message %d: unexpected reply %q", n, body)
		}
		if attempt == 4 {
			tr.fail("message %d: not accepted in %d deliveries", n, attempt)
			return
		}
		time.Sleep(500 * time.Millisecond) // WeChat's retry interval, shortened
	}
}

// accepted records message n answered 200: it must be counted.
func (tr *traffic) accepted(n int64, scene string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.want[scene]++
	delete(tr.open, n)
}

func atomicMax(v *atomic.Int64, x int64) {
	for {
		old := v.Load()
		if x <= old || v.CompareAndSwap(old, x) {
			return
		}
	}
}

func (tr *traffic) fail(format string, args ...any) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.failures) < 20 {
		tr.failures = append(tr.failures, fmt.Sprintf(format, args...))
	}
}

// waitReplies waits until n more messages than now have been answered by
// a worker.
func (tr *traffic) waitReplies(what string, n int64) {
	tr.t.Helper()
	target := tr.replied.Load() + n
	wait.For(tr.t, wait.Long, wait.Every, func() error {
		if got := tr.replied.Load(); got < target {
			return fmt.Errorf("%s: %d of %d messages answered by a worker", what, got, target)
		}
		return nil
	})
}

// waitFallbacks waits until n more deliveries than now were answered
// "success".
func (tr *traffic) waitFallbacks(what string, n int64) {
	tr.t.Helper()
	target := tr.fallback.Load() + n
	wait.For(tr.t, wait.Long, wait.Every, func() error {
		if got := tr.fallback.Load(); got < target {
			return fmt.Errorf("%s: %d of %d deliveries answered \"success\"", what, got, target)
		}
		return nil
	})
}

// finish stops new messages, waits until every message sent has been
// answered, fails the test on any failed delivery, and returns the scene
// counts the analytics must show: every message answered 200.
func (tr *traffic) finish() map[string]int {
	tr.t.Helper()
	close(tr.stopping)
	tr.wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.t.Logf("traffic: %d messages, %d deliveries: %d answered by a worker, %d by fallback, %d failed; slowest answer %v, slowest fallback %v",
		tr.next.Load(), tr.deliveries.Load(), tr.replied.Load(), tr.fallback.Load(), tr.failed.Load(),
		time.Duration(tr.maxLatency.Load()).Round(time.Millisecond), time.Duration(tr.maxFallback.Load()).Round(time.Millisecond))
	if tr.failed.Load() != 0 || len(tr.failures) != 0 || len(tr.open) != 0 {
		tr.t.Fatalf("%d failed deliveries, %d messages never accepted:\n%s",
			tr.failed.Load(), len(tr.open), strings.Join(tr.failures, "\n"))
	}
	return tr.want
}

func fixed(urls ...string) func() []string { return func() []string { return urls } }
