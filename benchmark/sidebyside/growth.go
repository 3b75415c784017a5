package sidebyside

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Growth is one population model's run of the growth mode.
type Growth struct {
	Model                  string // "same": the same people every day; "new": new people each day
	People, Days, Scenes   int    // people a day, days, scenes
	Apply                  time.Duration
	RSSKB, HeapKB          int64 // the analytics worker, settled
	DiskBytes              int64 // beyond the event stream, settled
	ScenesP50, ScenesP99   time.Duration
	SeriesP50, SeriesP99   time.Duration
	DiskPerPersonDay       float64
	RSSPerPerson, RSSTotal float64 // bytes per person of the current day; MiB
}

// growth measures the analytics over days of history: o.Growth people a
// day for o.GrowthDays days over o.GrowthScenes scenes, stored straight
// into the event stream with their Wx-Received in the past (as a tool
// importing them would), applied by an analytics worker; for each model
// (the same people every day, new people each day): the worker's memory
// and the disk beyond the stream after each day and once settled, and the
// API's latency over the whole period.
func (e *env) growth(ctx context.Context) ([]Growth, error) {
	var out []Growth
	for _, model := range []string{"same", "new"} {
		if e.o.GrowthModel != "" && e.o.GrowthModel != model {
			continue
		}
		g, err := e.growthRun(ctx, model)
		if err != nil {
			return out, err
		}
		out = append(out, g)
	}
	return out, nil
}

func (e *env) growthRun(ctx context.Context, model string) (Growth, error) {
	g := Growth{Model: model, People: e.o.Growth, Days: e.o.GrowthDays, Scenes: e.o.GrowthScenes}
	storeDir := e.tempDir("growth")
	ns, url, err := e.natsServerAt(storeDir)
	if err != nil {
		return g, err
	}
	defer ns.stop()
	w, err := startProc("worker", filepath.Join(e.bin, "workers"), append([]string{"NATS_URL=" + url, "ADMIN_ADDR=127.0.0.1:0",
		"WORKER_ROLES=analytics", "ANALYTICS_TIME_ZONE=" + stats.DefaultZone}, e.o.Env...))
	if err != nil {
		return g, err
	}
	defer w.stop()
	admin, err := w.listen("admin")
	if err != nil {
		return g, err
	}
	if _, err := w.WaitLine("analytics started", startTimeout, func(l string) bool { return strings.Contains(l, "analytics started") }); err != nil {
		return g, err
	}
	base := w.usage()
	nc, err := nats.Connect(url)
	if err != nil {
		return g, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return g, err
	}
	loc, _ := time.LoadLocation(stats.DefaultZone)
	today, _ := stats.DateHour(time.Now(), loc)
	first := today - stats.Date(g.Days) + 1
	fmt.Fprintf(e.o.Out, "\ngrowth (%s people each day): %d people a day for %d days over %d scenes (%d person-days), stored with past Wx-Received, one analytics worker\n",
		map[string]string{"same": "(a) the same", "new": "(b) new"}[model], g.People, g.Days, g.Scenes, g.People*g.Days)
	fmt.Fprintf(e.o.Out, "  %-10s %9s %10s %10s %12s %14s %14s\n", "day", "applied", "people", "RSS MiB", "heap MiB", "disk MiB", "disk B/p-day")
	var seq uint64
	start := time.Now()
	for day := range g.Days {
		date := first + stats.Date(day)
		if seq, err = e.growthDay(ctx, js, model, day, date, loc, g); err != nil {
			return g, err
		}
		st, err := caughtUp(admin, seq)
		if err != nil {
			return g, err
		}
		heap := scrapeValue(admin, "go_memstats_heap_inuse_bytes")
		disk := beyondStream(storeDir)
		fmt.Fprintf(e.o.Out, "  %-10s %9d %10d %10.1f %12.1f %14.1f %14.2f\n", date, st.AppliedSeq, st.People,
			float64(w.usage().rssKB)/1024, heap/(1<<20), float64(disk)/(1<<20), float64(disk)/float64(g.People*(day+1)))
	}
	g.Apply = time.Since(start)
	// Settled: a snapshot written (every 30 s), the values flushed.
	select {
	case <-time.After(e.o.GrowthSettle):
	case <-ctx.Done():
		return g, ctx.Err()
	}
	u := w.usage()
	g.RSSKB, g.HeapKB, g.DiskBytes = u.rssKB, int64(scrapeValue(admin, "go_memstats_heap_inuse_bytes"))/1024, beyondStream(storeDir)
	g.DiskPerPersonDay = float64(g.DiskBytes) / float64(g.People*g.Days)
	g.RSSPerPerson = float64(u.rssKB-base.rssKB) * 1024 / float64(g.People)
	distinct := g.People
	if model == "new" {
		distinct *= g.Days
	}
	fmt.Fprintf(e.o.Out, "  applied in %s (%.0f events/s, publishing included); settled %s: worker RSS %.1f MiB (baseline %.1f), heap in use %.1f MiB\n",
		g.Apply.Round(time.Second), float64(g.People*g.Days)/g.Apply.Seconds(), e.o.GrowthSettle, float64(u.rssKB)/1024, float64(base.rssKB)/1024, float64(g.HeapKB)/1024)
	fmt.Fprintf(e.o.Out, "  memory: %.0f B per person of the current day (RSS above the baseline / %d), %.0f B per distinct person (/ %d)\n",
		g.RSSPerPerson, g.People, float64(u.rssKB-base.rssKB)*1024/float64(distinct), distinct)
	fmt.Fprintf(e.o.Out, "  disk beyond the event stream: %.1f MiB, %.2f B per person-day (goal ≤ 16)  %s; by stream:%s\n",
		float64(g.DiskBytes)/(1<<20), g.DiskPerPersonDay, met(g.DiskPerPersonDay <= 16), byStream(storeDir))
	if err := e.growthLatency(admin, first, today, &g); err != nil {
		return g, fmt.Errorf("%w\nthe worker's last lines:\n%s", err, w.Tail(30))
	}
	return g, nil
}

// growthDay stores one day's events: each person of the day scans (a
// follow on their first day) the scene person % scenes, through the day.
// It returns the last event's stream sequence.
func (e *env) growthDay(ctx context.Context, js jetstream.JetStream, model string, day int, date stats.Date, loc *time.Location, g Growth) (uint64, error) {
	start := date.Start(loc)
	end := (date + 1).Start(loc)
	if now := time.Now().Add(-time.Minute); end.After(now) { // today: up to now
		end = now
	}
	step := end.Sub(start) / time.Duration(g.People)
	pending := make([]jetstream.PubAckFuture, 0, 2000) // under nats.go's 4 000 outstanding
	var last uint64
	flush := func() error {
		for _, f := range pending {
			select {
			case ack := <-f.Ok():
				last = max(last, ack.Sequence)
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		pending = pending[:0]
		return nil
	}
	for i := range g.People {
		p := i
		if model == "new" {
			p = day*g.People + i
		}
		m := &wechat.Message{ToUserName: "gh_growth", FromUserName: "o_growth_" + strconv.Itoa(p), CreateTime: start.Unix(), MsgType: wechat.MsgEvent}
		scene := "scene_" + strconv.Itoa(p%g.Scenes)
		if model == "new" || day == 0 {
			m.Event, m.EventKey = wechat.EventSubscribe, wechat.ScenePrefix+scene
		} else {
			m.Event, m.EventKey = wechat.EventScan, scene
		}
		msg := &nats.Msg{Subject: events.SubjectPrefix + "default." + m.Subject(), Data: m.AppendXML(nil), Header: nats.Header{}}
		msg.Header.Set(bus.HeaderReceived, bus.FormatTime(start.Add(step*time.Duration(i))))
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			return 0, err
		}
		if pending = append(pending, f); len(pending) == cap(pending) {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	return last, flush()
}

// caughtUp waits until the leader applied the stream up to seq.
func caughtUp(admin string, seq uint64) (stats.Status, error) {
	var st stats.Status
	err := wait.ForErr(30*time.Minute, 100*time.Millisecond, func() error {
		if err := nettest.FetchJSON("http://"+admin+"/api/analytics", &st); err != nil || st.AppliedSeq < seq || st.Pending > 0 {
			return fmt.Errorf("growth: analytics at %d of %d (%v)", st.AppliedSeq, seq, err)
		}
		return nil
	})
	return st, err
}

// growthLatency times the API over the whole period: every scene with
// the period before (what the page's 30-day ranking asks), and a scene's
// 30-day series.
func (e *env) growthLatency(admin string, first, last stats.Date, g *Growth) error {
	client := &http.Client{Timeout: time.Minute}
	period := "from=" + first.String() + "&to=" + last.String()
	timeIt := func(n int, path func(i int) string) (p50, p99 time.Duration, err error) {
		var ds []time.Duration
		for i := range n {
			t0 := time.Now()
			resp, err := client.Get("http://" + admin + path(i))
			if err != nil {
				return 0, 0, err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return 0, 0, fmt.Errorf("GET %s: %d after %s", path(i), resp.StatusCode, time.Since(t0))
			}
			ds = append(ds, time.Since(t0))
		}
		slices.Sort(ds)
		return ds[n/2], ds[n*99/100], nil
	}
	// The first request starts the process's view of the values (read
	// whole once, then followed): timed apart.
	t0 := time.Now()
	if err := wait.ForErr(5*time.Minute, 100*time.Millisecond, func() error {
		_, _, err := timeIt(1, func(int) string { return "/api/scenes?limit=1000&compare=previous&" + period })
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.o.Out, "  the first request (the view read whole): %s\n", dur(time.Since(t0)))
	var err error
	if g.ScenesP50, g.ScenesP99, err = timeIt(200, func(int) string {
		return "/api/scenes?limit=1000&compare=previous&" + period
	}); err != nil {
		return err
	}
	if g.SeriesP50, g.SeriesP99, err = timeIt(200, func(i int) string {
		return "/api/scenes/scene_" + strconv.Itoa(i*7%g.Scenes) + "/series?step=day&" + period
	}); err != nil {
		return err
	}
	fmt.Fprintf(e.o.Out, "  /api/scenes, %d scenes over %d days with compare=previous: p50 %s, p99 %s  %s\n",
		g.Scenes, g.Days, dur(g.ScenesP50), dur(g.ScenesP99), met(g.ScenesP50 <= 200*time.Millisecond && g.ScenesP99 <= time.Second))
	fmt.Fprintf(e.o.Out, "  /api/scenes/{scene}/series, %d days: p50 %s, p99 %s  %s\n",
		g.Days, dur(g.SeriesP50), dur(g.SeriesP99), met(g.SeriesP50 <= 200*time.Millisecond && g.SeriesP99 <= time.Second))
	return nil
}

func met(ok bool) string {
	if ok {
		return "(goal met)"
	}
	return "(goal NOT MET)"
}

// scrapeValue reads one unlabelled series from a /metrics page.
func scrapeValue(admin, name string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// beyondStream is the bytes under a NATS store directory but those of the
// event stream itself: the analytics' buckets, their snapshot, and the
// rest of JetStream's.
func beyondStream(storeDir string) int64 {
	return du(storeDir) - du(filepath.Join(storeDir, "jetstream", "$G", "streams", events.Stream))
}

// byStream is the disk of each stream but the event stream.
func byStream(storeDir string) string {
	dirs, _ := filepath.Glob(filepath.Join(storeDir, "jetstream", "$G", "streams", "*"))
	var b strings.Builder
	for _, d := range dirs {
		if n := du(d); filepath.Base(d) != events.Stream && n > 0 {
			fmt.Fprintf(&b, " %s %.1f MiB", filepath.Base(d), float64(n)/(1<<20))
		}
	}
	return b.String()
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
