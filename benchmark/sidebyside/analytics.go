package sidebyside

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

func numCPU() int { return runtime.NumCPU() }

// analytics pre-fills the event stream with scans over scenes (as the
// ingress stores them), starts an analytics-only worker process and times
// it applying them, then checks every count through the API.
func (e *env) analytics(ctx context.Context, records, scenes int) (d Drain, err error) {
	d = Drain{Records: records, Scenes: scenes}
	ns, url, err := e.natsServer()
	if err != nil {
		return d, err
	}
	defer ns.stop()
	nc, err := nats.Connect(url)
	if err != nil {
		return d, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return d, err
	}
	if err := events.Ensure(ctx, js, events.Defaults()); err != nil {
		return d, err
	}
	people := max(records/4, 1)
	pending := make([]jetstream.PubAckFuture, 0, 4096)
	flush := func() error {
		for _, f := range pending {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			}
		}
		pending = pending[:0]
		return nil
	}
	for i := 0; i < records; i++ {
		m := &wechat.Message{ToUserName: "gh_bench", FromUserName: "o" + strconv.Itoa(i%people), CreateTime: 1700000000 + int64(i),
			MsgType: wechat.MsgEvent, Event: wechat.EventScan, EventKey: "scene_" + strconv.Itoa(i%scenes)}
		data := m.AppendXML(nil)
		f, err := js.PublishMsgAsync(&nats.Msg{Subject: events.Subject("default", m.Subject()), Data: data}, jetstream.WithMsgID(m.DedupKey("default", data)))
		if err != nil {
			return d, err
		}
		if pending = append(pending, f); len(pending) == cap(pending) {
			if err := flush(); err != nil {
				return d, err
			}
		}
	}
	if err := flush(); err != nil {
		return d, err
	}

	start := time.Now()
	w, err := startProc("worker", filepath.Join(e.bin, "workers"), []string{"NATS_URL=" + url, "ADMIN_ADDR=127.0.0.1:0", "WORKER_ROLES=analytics"})
	if err != nil {
		return d, err
	}
	defer w.stop()
	admin, err := w.listen("admin")
	if err != nil {
		return d, err
	}
	// Polling the leader's status: there is no event for "caught up".
	if err := wait.ForErr(30*time.Minute, 20*time.Millisecond, func() error {
		var st stats.Status
		if err := nettest.FetchJSON("http://"+admin+"/api/analytics", &st); err != nil || st.AppliedSeq < uint64(records) {
			return fmt.Errorf("analytics: %d of %d applied (%v)", st.AppliedSeq, records, err)
		}
		return nil
	}); err != nil {
		return d, err
	}
	d.Elapsed = time.Since(start)
	u := w.usage()

	// The API reads its process's copy of the buckets, kept by a watch: it
	// may trail the leader's status by a moment.
	var total int64
	var listed int
	_ = wait.ForErr(time.Minute, 20*time.Millisecond, func() (err error) {
		total, listed, err = sceneTotals(admin)
		if err == nil && (total != int64(records) || listed != scenes) {
			err = errors.New("not exact yet")
		}
		return err
	})
	d.Exact = total == int64(records) && listed == scenes
	fmt.Fprintf(e.o.Out, "\nanalytics: %d scans over %d scenes applied in %s: %.0f events/s; counts exact: %v (%d scans in %d scenes); worker RSS %.1f MiB\n",
		records, scenes, d.Elapsed.Round(time.Millisecond), float64(records)/d.Elapsed.Seconds(), d.Exact, total, listed, float64(u.rssKB)/1024)
	if !d.Exact {
		return d, fmt.Errorf("analytics counts not exact: %d scans in %d scenes, want %d in %d", total, listed, records, scenes)
	}
	return d, nil
}

// soak runs (c) at a steady rate and compares each process's memory in the
// first and the last minute (or fifth, for short runs). With SoakKill, a
// worker is killed -9 and replaced at that interval throughout.
func (e *env) soak(ctx context.Context) (*Measurement, error) {
	s, err := e.distributed(e.o.Workers)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex // guards s.procs: killed workers are replaced
	defer func() { mu.Lock(); defer mu.Unlock(); s.stop() }()
	window := min(time.Minute, e.o.Soak/5)
	type sample struct {
		at  time.Duration
		rss []int64
	}
	var samples []sample
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	every(&wg, stop, max(window/6, 100*time.Millisecond), func() bool {
		mu.Lock()
		var rss []int64
		for _, p := range s.procs {
			rss = append(rss, p.usage().rssKB)
		}
		mu.Unlock()
		samples = append(samples, sample{time.Since(start), rss})
		return true
	})
	kills, killErr := 0, error(nil)
	if e.o.SoakKill > 0 {
		every(&wg, stop, e.o.SoakKill, func() bool {
			mu.Lock()
			var idx []int
			for i, p := range s.procs {
				if strings.HasPrefix(p.name, "worker") {
					idx = append(idx, i)
				}
			}
			i := idx[kills%len(idx)]
			victim := s.procs[i]
			mu.Unlock()
			_ = victim.cmd.Process.Kill()
			<-victim.done
			w, err := e.worker(victim.name, s.natsURL)
			if err != nil {
				killErr = fmt.Errorf("restart %s: %w", victim.name, err)
				return false
			}
			mu.Lock()
			s.procs[i] = w
			kills++
			mu.Unlock()
			return true
		})
	}
	r, err := e.measure(ctx, "soak", s, e.o.SoakRate, e.o.Soak)
	close(stop)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if killErr != nil {
		return &r, killErr
	}
	rep := r.Report
	fmt.Fprintf(e.o.Out, "\nsoak: (c) at %.0f/s for %s, %d workers, %d worker kills (-9, every %s, each replaced):\n",
		e.o.SoakRate, e.o.Soak, e.o.Workers, kills, e.o.SoakKill)
	fmt.Fprintf(e.o.Out, "  requests sent %d; answered by a worker with a reply %d; \"success\" where no reply is due %d; answered by fallback %d; failed %d; p99 %s\n",
		rep.Sent, rep.Replies, rep.Empty, rep.Fallbacks, rep.Err, dur(rep.Percentile(99)))
	end := time.Since(start)
	for i, p := range s.procs {
		var first, last []int64
		for _, sm := range samples {
			if sm.at <= window {
				first = append(first, sm.rss[i])
			}
			if sm.at >= end-window {
				last = append(last, sm.rss[i])
			}
		}
		f, l := mean(first), mean(last)
		change := 0.0
		if f > 0 {
			change = (l - f) / f * 100
		}
		fmt.Fprintf(e.o.Out, "  %-12s RSS first %s %.1f MiB, last %s %.1f MiB: %+.1f%%\n", p.name, window, f/1024, window, l/1024, change)
	}
	if e.o.SoakKill > 0 && rep.Err > 0 {
		return &r, fmt.Errorf("soak: %d requests failed", rep.Err)
	}
	return &r, nil
}

// every runs fn every d, in a goroutine counted in wg, until stop closes or
// fn returns false.
func every(wg *sync.WaitGroup, stop <-chan struct{}, d time.Duration, fn func() bool) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if !fn() {
					return
				}
			}
		}
	}()
}

// mean of the samples taken while the process was alive (a killed
// worker reads 0 until its replacement is up).
func mean(xs []int64) float64 {
	var s, n int64
	for _, x := range xs {
		if x > 0 {
			s, n = s+x, n+1
		}
	}
	if n == 0 {
		return 0
	}
	return float64(s) / float64(n)
}

// sceneTotals sums the scans of every scene the API lists.
func sceneTotals(admin string) (total int64, listed int, err error) {
	for offset := 0; ; offset += 1000 {
		var page stats.ScenesPage
		if err := nettest.FetchJSON(fmt.Sprintf("http://%s/api/scenes?limit=1000&offset=%d", admin, offset), &page); err != nil {
			return 0, 0, err
		}
		for _, s := range page.Scenes {
			total += s.Scans
		}
		listed += len(page.Scenes)
		if len(page.Scenes) < 1000 {
			return total, listed, nil
		}
	}
}
