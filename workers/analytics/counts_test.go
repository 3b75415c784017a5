package analytics

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/stats/statstest"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// labels is a Labeler of fixed codes.
type labels map[string]map[string]stats.Label

func (l labels) Labels(_ context.Context, account string) (map[string]stats.Label, error) {
	return l[account], nil
}

// publishAt stores a scene event of account received at t, as the ingress
// (or any tool) stores it; account "" stores it as the version before
// accounts did.
func (f *fixture) publishAt(e statstest.Event, oldSubject bool) {
	f.t.Helper()
	m := &wechat.Message{ToUserName: "gh_" + e.Account, FromUserName: e.Person, CreateTime: e.At.Unix(), MsgType: wechat.MsgEvent}
	switch e.Kind {
	case "subscribe":
		m.Event, m.EventKey = wechat.EventSubscribe, wechat.ScenePrefix+e.Scene
	case "scan":
		m.Event, m.EventKey = wechat.EventScan, e.Scene
	default:
		m.Event = wechat.EventUnsubscribe
	}
	subject := events.SubjectPrefix + e.Account + "." + m.Subject()
	if oldSubject {
		subject = events.SubjectPrefix + m.Subject()
	}
	msg := &nats.Msg{Subject: subject, Data: m.AppendXML(nil), Header: nats.Header{}}
	msg.Header.Set(bus.HeaderReceived, bus.FormatTime(e.At))
	if _, err := f.js.PublishMsg(context.Background(), msg, jetstream.WithMsgID(fmt.Sprint("test.", f.n.Add(1)))); err != nil {
		f.t.Fatal(err)
	}
}

// countsRun is scene events over 80 days and two accounts, the default's
// partly on the subjects of the version before accounts, with same-day
// scans out of order, and the codes' groups.
func countsRun(seed uint64, n int) (labels, *statstest.Model, []bool) {
	rng := rand.New(rand.NewPCG(seed, 3))
	codes := labels{
		"default": {"poster": {Label: "海报", Group: "print"}, "counter": {Label: "柜台", Group: "stores"}, "mall": {Label: "商场", Group: "stores"}},
		"second":  {"poster": {Label: "Poster", Group: "ads"}},
	}
	m := &statstest.Model{Zone: shanghai, Group: func(account, scene string) string { return codes[account][scene].Group }}
	end := time.Now().Add(-time.Hour)
	start := end.Add(-80 * 24 * time.Hour)
	scenes := []string{"poster", "counter", "mall", "street", "场景 5"}
	for i := range n {
		at := start.Add(end.Sub(start) / time.Duration(n) * time.Duration(i))
		e := statstest.Event{Account: []string{"default", "second"}[rng.IntN(2)], Person: "p" + strconv.Itoa(rng.IntN(40)), At: at}
		switch r := rng.IntN(10); {
		case r < 2:
			e.Kind, e.Scene = "subscribe", scenes[rng.IntN(len(scenes))]
		case r < 3:
			e.Kind = "unsubscribe"
		default:
			e.Kind, e.Scene = "scan", scenes[rng.IntN(len(scenes))]
		}
		m.Events = append(m.Events, e)
	}
	// Some scans reach the stream after later ones of the same day.
	for i := 1; i < len(m.Events); i++ {
		a, b := m.Events[i-1].At.In(shanghai), m.Events[i].At.In(shanghai)
		if a.YearDay() == b.YearDay() && rng.IntN(5) == 0 {
			m.Events[i-1], m.Events[i] = m.Events[i], m.Events[i-1]
		}
	}
	old := make([]bool, len(m.Events))
	for i, e := range m.Events {
		old[i] = e.Account == "default" && rng.IntN(2) == 0
	}
	return codes, m, old
}

// getAPI fetches an API path (JSON into v), failing the test on any
// answer but 200.
func getAPI(t *testing.T, base, path string, v any) {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// checkCounts compares every point of every series (days and hours), the
// totals, periods with the period before, and the groups, with the model.
func checkCounts(t *testing.T, base string, m *statstest.Model, codes labels) {
	t.Helper()
	today, _ := stats.DateHour(time.Now(), shanghai)
	first := today - 81
	for _, account := range []string{"default", "second"} {
		q := "&account=" + account
		// Every day of every scene, and of the account.
		unis := map[string]string{"/api/series?": stats.AccountUID}
		for _, scene := range m.Scenes(account) {
			unis["/api/scenes/"+url.PathEscape(scene)+"/series?"] = stats.SceneUID(scene)
		}
		for path, uid := range unis {
			var page stats.SeriesPage
			getAPI(t, base, path+"step=day&from="+first.String()+"&to="+today.String()+q, &page)
			if len(page.Points) != int(today-first+1) {
				t.Fatalf("%s: %d points", path, len(page.Points))
			}
			for i, p := range page.Points {
				d := first + stats.Date(i)
				if want := m.Period(account, uid, d, d); p.Counts != want || p.Start != d.Start(shanghai).Format(time.RFC3339) {
					t.Fatalf("%s%s day %s: %s %+v, want %+v", path, account, d, p.Start, p.Counts, want)
				}
			}
			for from := first; from <= today; from += stats.MaxHourDays {
				to := min(from+stats.MaxHourDays-1, today)
				getAPI(t, base, path+"step=hour&from="+from.String()+"&to="+to.String()+q, &page)
				if len(page.Points) != 24*int(to-from+1) {
					t.Fatalf("%s: %d hour points for %d days", path, len(page.Points), to-from+1)
				}
				for i, p := range page.Points {
					d, h := from+stats.Date(i/24), i%24
					if want := m.Hour(account, uid, d, h); p.Counts != want {
						t.Fatalf("%s%s %s hour %d: %+v, want %+v", path, account, d, h, p.Counts, want)
					}
				}
			}
		}
		// All time, and periods with the one before.
		var all stats.ScenesPage
		getAPI(t, base, "/api/scenes?limit=1000"+q, &all)
		for _, s := range all.Scenes {
			if want := m.All(account, stats.SceneUID(s.Scene)); s.Counts() != want || s.Label != codes[account][s.Scene].Label {
				t.Errorf("%s all time %s: %+v %q, want %+v", account, s.Scene, s.Counts(), s.Label, want)
			}
		}
		for _, p := range [][2]stats.Date{{first, today}, {today - 6, today}, {today - 30, today - 10}, {today, today}, {first + 3, first + 40}} {
			from, to := p[0], p[1]
			pf, pt := from-(to-from+1), from-1
			var page stats.ScenesPage
			getAPI(t, base, "/api/scenes?limit=1000&compare=previous&from="+from.String()+"&to="+to.String()+q, &page)
			if len(page.Scenes) < len(m.Scenes(account)) {
				t.Fatalf("%s %s..%s: %d scenes listed", account, from, to, len(page.Scenes))
			}
			for _, s := range page.Scenes {
				uid := stats.SceneUID(s.Scene)
				if want, prev := m.Period(account, uid, from, to), m.Period(account, uid, pf, pt); s.Counts() != want || s.Previous == nil || *s.Previous != prev {
					t.Fatalf("%s %s..%s %s: %+v (previous %+v), want %+v (previous %+v)", account, from, to, s.Scene, s.Counts(), s.Previous, want, prev)
				}
			}
			var groups stats.GroupsPage
			getAPI(t, base, "/api/groups?compare=previous&from="+from.String()+"&to="+to.String()+q, &groups)
			seen := 0
			for _, g := range groups.Groups {
				uid := stats.GroupUID(g.Group)
				if want, prev := m.Period(account, uid, from, to), m.Period(account, uid, pf, pt); g.Counts != want || *g.Previous != prev {
					t.Fatalf("%s %s..%s group %q: %+v, want %+v", account, from, to, g.Group, g.Counts, want)
				}
				if g.Counts.Scans > 0 {
					seen++
				}
			}
			if seen == 0 && m.Period(account, stats.AccountUID, from, to).Scans > 0 {
				t.Fatalf("%s %s..%s: no group has scans", account, from, to)
			}
		}
	}
}

// csvRows fetches a CSV answer and checks its byte-order mark.
func csvRows(t *testing.T, base, path string) [][]string {
	t.Helper()
	resp, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" || !bytes.HasPrefix(b, []byte("\uFEFF")) {
		t.Fatalf("GET %s: %d %s %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), b[:min(len(b), 20)])
	}
	rows, err := csv.NewReader(bytes.NewReader(b[3:])).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// Scene events over 80 days and two accounts (some on the subjects of the
// version before accounts), read by the API from the buckets: every day
// and hour of every scene and account, every period with the one before,
// and every group, equal the counts recomputed from the events; the CSV
// says what the JSON says; a rebuild gives the same, point for point.
func TestCountsByDayHourAndGroup(t *testing.T) {
	f := newFixture(t)
	codes, m, old := countsRun(11, 1500)
	r, reg := f.role(RoleOptions{Zone: shanghai, Labels: codes, MaxScenes: 3})
	for i, e := range m.Events {
		f.publishAt(e, old[i])
	}
	h, err := stats.API(stats.APIOptions{Store: r.Store, Zone: shanghai, Labels: codes, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(h)
	t.Cleanup(api.Close)
	settled := func(epoch uint64) {
		wait.For(t, wait.Short, wait.Every, func() error {
			st := status(t, r)
			if st.AppliedSeq < uint64(len(m.Events)) || st.Rebuilding || st.Epoch < epoch || st.Inexact != 0 {
				return fmt.Errorf("not settled: %+v", st)
			}
			return nil
		})
		// The status is written before the last flush: wait for the values.
		wait.For(t, wait.Short, wait.Every, func() error {
			var page stats.SeriesPage
			today, _ := stats.DateHour(time.Now(), shanghai)
			getAPI(t, api.URL, "/api/series?from="+(today-81).String()+"&to="+today.String(), &page)
			n := int64(0)
			for _, p := range page.Points {
				n += p.Scans
			}
			if want := m.All("default", stats.AccountUID).Scans; n != want {
				return fmt.Errorf("%d scans, want %d", n, want)
			}
			return nil
		})
	}
	settled(0)
	checkCounts(t, api.URL, m, codes)
	// Each account's scenes are exported under its label, the busiest 3 by
	// name, the rest in the account's overflow.
	wait.For(t, wait.Short, wait.Every, func() error { // the exporters follow the totals by a watch
		for _, account := range []string{"default", "second"} {
			var sum float64
			for _, scene := range m.Scenes(account) {
				v, ok := metricstest.Lookup(reg, "wechat_scene_scans_total", map[string]string{"account": account, "scene": scene, "kind": "scan"})
				if want := float64(m.All(account, stats.SceneUID(scene)).ScanScans); ok && v != want {
					return fmt.Errorf("%s %s: %v scans exported, want %v", account, scene, v, want)
				}
				sum += v
			}
			overflow, _ := metricstest.Lookup(reg, "wechat_scene_scans_overflow_total", map[string]string{"account": account, "kind": "scan"})
			if want := float64(m.All(account, stats.AccountUID).ScanScans); sum+overflow != want || overflow == 0 {
				return fmt.Errorf("%s: %v scans by scene and %v in the overflow, want %v in all", account, sum, overflow, want)
			}
		}
		return nil
	})

	// The CSV read back equals the JSON.
	today, _ := stats.DateHour(time.Now(), shanghai)
	period := "from=" + (today - 20).String() + "&to=" + today.String()
	var page stats.ScenesPage
	getAPI(t, api.URL, "/api/scenes?compare=previous&"+period, &page)
	rows := csvRows(t, api.URL, "/api/scenes?compare=previous&format=csv&"+period)
	if len(rows) != len(page.Scenes)+1 || rows[0][0] != "scene" || rows[0][3] != "scans" || rows[0][10] != "previous_scans" {
		t.Fatalf("csv: %v", rows)
	}
	for i, s := range page.Scenes {
		want := append([]string{s.Scene, s.Label, s.Group}, countsStrings(s.Counts())...)
		want = append(want, countsStrings(*s.Previous)...)
		if !slices.Equal(rows[i+1], want) {
			t.Errorf("csv row %d: %v, want %v", i+1, rows[i+1], want)
		}
	}
	var series stats.SeriesPage
	getAPI(t, api.URL, "/api/scenes/poster/series?step=hour&account=second&"+"from="+(today-2).String()+"&to="+today.String(), &series)
	rows = csvRows(t, api.URL, "/api/scenes/poster/series?step=hour&account=second&format=csv&"+"from="+(today-2).String()+"&to="+today.String())
	for i, p := range series.Points {
		if want := append([]string{p.Start}, countsStrings(p.Counts)...); !slices.Equal(rows[i+1], want) {
			t.Fatalf("series csv row %d: %v, want %v", i+1, rows[i+1], want)
		}
	}

	// Rebuilt from the stream: the same, point for point.
	s, err := r.Store(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	before := status(t, r)
	if _, err := s.RequestRebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	settled(before.Epoch + 1)
	checkCounts(t, api.URL, m, codes)
}

func countsStrings(c stats.Counts) []string {
	var out []string
	for _, n := range []int64{c.Scans, c.SubscribeScans, c.ScanScans, c.NewFollowers, c.UniquePeople, c.Unfollows, c.NetFollowers} {
		out = append(out, strconv.FormatInt(n, 10))
	}
	return out
}
