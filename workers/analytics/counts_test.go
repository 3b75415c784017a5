package analytics

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
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

// Scene events over 80 days and two accounts (some on the subjects of the
// version before accounts), read by the API from the buckets: every day
// and hour of every scene and account, every period with the one before,
// and every group, equal the counts recomputed from the events; the
// exporter has each account's; the CSV says what the JSON says; a rebuild
// gives the same, point for point.
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
	today, _ := stats.DateHour(time.Now(), shanghai)
	first := today - 81
	settled := func(epoch uint64) {
		wait.For(t, wait.Short, wait.Every, func() error {
			st := status(t, r)
			if st.AppliedSeq < uint64(len(m.Events)) || st.Rebuilding || st.Epoch < epoch || st.Inexact != 0 {
				return fmt.Errorf("not settled: %+v", st)
			}
			// The status may be written before the last flush.
			var page stats.SeriesPage
			statstest.Get(t, api.URL, "/api/series?from="+first.String()+"&to="+today.String(), &page)
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
	label := func(account, scene string) string { return codes[account][scene].Label }
	settled(0)
	statstest.Check(t, api.URL, m, []string{"default", "second"}, first, today, label)
	statstest.CheckCSV(t, api.URL, "second", "poster", today-20, today)
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
	statstest.Check(t, api.URL, m, []string{"default", "second"}, first, today, label)
}
