package sidebyside

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/wxgate/wxgate/shared/loadgen"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// growth measures what each distinct scanner costs standalone mode: N
// people, each scanning one of the scenes once (a campaign's burst, closed
// loop), then memory and disk when the analytics have caught up and again
// once the duplicate window has passed (settled), per person.
func (e *env) growth(ctx context.Context, people int, settle time.Duration) error {
	dataDir := e.tempDir("growth")
	p, url, err := e.ingress([]string{"-standalone", "-nats-listen", ""}, "DATA_DIR="+dataDir)
	if err != nil {
		return err
	}
	defer p.stop()
	admin, err := p.listen("admin")
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // let the process settle before the baseline sample
	base := p.usage()

	var peak int64
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	every(&wg, stop, 200*time.Millisecond, func() bool {
		u := p.usage()
		mu.Lock()
		peak = max(peak, u.rssKB)
		mu.Unlock()
		return true
	})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: e.o.Connections}}
	s := wechat.Sender{Token: token}
	start := time.Now()
	r, err := loadgen.Run(ctx, loadgen.Options{Concurrency: e.o.Connections, Requests: people, Do: func(_ context.Context, i int) loadgen.Outcome {
		m := &wechat.Message{ToUserName: "gh_growth", FromUserName: "o_growth_" + strconv.Itoa(i), CreateTime: time.Now().Unix(),
			MsgType: wechat.MsgEvent, Event: wechat.EventScan, EventKey: "scene_" + strconv.Itoa(i%e.o.Scenes)}
		code, _, err := s.Post(client, url, m.AppendXML(nil), time.Now(), strconv.Itoa(i))
		if err != nil || code != http.StatusOK {
			return loadgen.Error
		}
		return loadgen.Reply
	}})
	if err != nil {
		close(stop)
		wg.Wait()
		return err
	}
	burst := time.Since(start)
	// Polling the leader's status: there is no event for "caught up".
	if err := wait.ForErr(30*time.Minute, 100*time.Millisecond, func() error {
		var st stats.Status
		if err := nettest.FetchJSON("http://"+admin+"/api/analytics", &st); err != nil || st.People < people || st.Pending > 0 {
			return fmt.Errorf("growth: analytics not caught up: %d of %d people, %d pending (%v)", st.People, people, st.Pending, err)
		}
		return nil
	}); err != nil {
		close(stop)
		wg.Wait()
		return err
	}
	caughtUp := p.usage()
	fmt.Fprintf(e.o.Out, "\ngrowth: %d distinct people over %d scenes through standalone, %d failed; burst %s (%.0f/s)\n",
		people, e.o.Scenes, r.Err, burst.Round(time.Millisecond), float64(people)/burst.Seconds())
	if settle > 0 {
		fmt.Fprintf(e.o.Out, "  settling %s (the stream's duplicate window, 10 minutes, must pass)...\n", settle)
		select {
		case <-time.After(settle):
		case <-ctx.Done():
		}
	}
	close(stop)
	wg.Wait()
	settled := p.usage()
	disk := du(dataDir)
	per := func(kb int64) float64 { return float64(kb-base.rssKB) * 1024 / float64(people) }
	fmt.Fprintf(e.o.Out, "  RSS: baseline %.1f MiB, peak %.1f MiB (%.0f B/person), caught up %.1f MiB (%.0f B/person), settled %.1f MiB (%.0f B/person)\n",
		float64(base.rssKB)/1024, float64(peak)/1024, per(peak), float64(caughtUp.rssKB)/1024, per(caughtUp.rssKB),
		float64(settled.rssKB)/1024, per(settled.rssKB))
	fmt.Fprintf(e.o.Out, "  disk (DATA_DIR): %.1f MiB, %.0f B/person (the events themselves, kept EVENTS_MAX_AGE, and the analytics snapshot)\n",
		float64(disk)/(1<<20), float64(disk)/float64(people))
	return nil
}

// du is the bytes of the files under dir.
func du(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
