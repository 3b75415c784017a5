package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/stats/statstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// people plays the people of two accounts: who follows through which
// scene, and the XML of their next scene event.
type people struct {
	rng     *rand.Rand
	follows map[string]bool // account/person
	n       int
}

var exactScenes = map[string][]string{
	"default": {"poster", "counter", "mall", "street", "门店 5"},
	"second":  {"poster", "ad"},
}

// next is a scene event of one of the people of a pool of account: a
// follow through a scene, a scan by a follower, or an unfollow. Each
// person's events come in time order (the people who call in live are
// not those whose past is imported: a history imported after someone's
// later scans is counted exactly only within 14 days, see the trace).
func (p *people) next(account, pool string) (kind, person, scene string, xml []byte) {
	p.n++
	person = "o_" + account + "_" + pool + strconv.Itoa(p.rng.IntN(50))
	scene = exactScenes[account][p.rng.IntN(len(exactScenes[account]))]
	m := &wechat.Message{ToUserName: "gh_" + account, FromUserName: person, CreateTime: 1700000000 + int64(p.n), MsgType: wechat.MsgEvent}
	switch key := account + "/" + person; {
	case !p.follows[key]:
		kind, m.Event, m.EventKey = "subscribe", wechat.EventSubscribe, wechat.ScenePrefix+scene
		p.follows[key] = true
	case p.rng.IntN(8) == 0:
		kind, scene, m.Event = "unsubscribe", "", wechat.EventUnsubscribe
		p.follows[key] = false
	default:
		kind, m.Event, m.EventKey = "scan", wechat.EventScan, scene
	}
	return kind, person, scene, m.AppendXML(nil)
}

// Issue 20's exactness: scans, follows and unfollows over 40 days and two
// accounts, each delivered 1 to 4 times: the past ones stored straight
// into the stream with their Wx-Received (as another tool would), the
// default account's partly on the subjects of the version before
// accounts, and live callbacks through two ingresses; the analytics
// leader killed -9 and NATS restarted in between. Every point of every
// series (day and hour), every period with the one before, every group
// and every total equals the count recomputed from the stored events; the
// CSV reads back as the JSON; a rebuild gives the same, point for point.
func TestExactCountsOverDaysAccountsAndFaults(t *testing.T) {
	zone, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		t.Fatal(err)
	}
	port, storeDir := nettest.FreePort(t), t.TempDir()
	ns := startNATSAt(t, port, storeDir)
	fake := startFakeAPI(t)
	env := append([]string{"ANALYTICS_TIME_ZONE=Asia/Shanghai", "ACCOUNTS_SECRET_KEY=" + accountsKey}, fake.env()...)
	replies := startWorker(t, ns.url, append(env, "WORKER_ROLES=replies")...)
	analytics := []worker{startWorker(t, ns.url, append(env, "WORKER_ROLES=analytics")...),
		startWorker(t, ns.url, append(env, "WORKER_ROLES=analytics")...)}
	in1, url1, admin1 := startIngress(t, append(env, "NATS_URL="+ns.url, "REPLY_TIMEOUT=2s")...)
	in2, url2, admin2 := startIngress(t, append(env, "NATS_URL="+ns.url, "REPLY_TIMEOUT=2s")...)
	waitReady(t, admin1, admin2, replies.admin, analytics[0].admin, analytics[1].admin)
	// The second account exists (its counts are read back by its id).
	if code := apiJSON(t, "POST", "http://"+admin1+"/api/accounts", map[string]string{"id": "second", "token": "secondtoken1", "mode": "plain"}, nil); code != http.StatusCreated {
		t.Fatalf("POST /api/accounts: %d", code)
	}

	// The codes' groups: a scene without a code is in the group "".
	labels := map[string]string{"poster": "海报", "counter": "柜台一", "mall": "商场"}
	groups := map[string]string{"poster": "print", "counter": "stores", "mall": "stores"}
	for scene, group := range groups {
		if code, c := createQR(t, admin1, fmt.Sprintf(`{"scene":%q,"label":%q,"group":%q,"permanent":true}`, scene, labels[scene], group)); code != http.StatusCreated {
			t.Fatalf("code %s: %d %+v", scene, code, c)
		}
	}

	nc, err := nats.Connect(ns.url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(20, 1))
	pp := &people{rng: rng, follows: map[string]bool{}}
	sent := 0
	// past stores n events received from..to, in time order, each 1 to 4
	// times (one Nats-Msg-Id): the stream keeps one.
	past := func(n int, from, to time.Time) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), wait.Long)
		defer cancel()
		for i := range n {
			account := []string{"default", "second"}[rng.IntN(2)]
			kind, _, _, xml := pp.next(account, "past")
			at := from.Add(to.Sub(from) / time.Duration(n) * time.Duration(i))
			subject := events.SubjectPrefix + account + ".event." + kind
			if account == "default" && rng.IntN(2) == 0 {
				subject = events.SubjectPrefix + "event." + kind // as the version before accounts stored it
			}
			msg := &nats.Msg{Subject: subject, Data: xml, Header: nats.Header{}}
			msg.Header.Set(bus.HeaderReceived, bus.FormatTime(at))
			id := "import." + strconv.Itoa(pp.n)
			for range 1 + rng.IntN(4) {
				if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
					t.Fatalf("publish %s: %v", id, err)
				}
			}
			sent++
		}
	}
	s := wechat.Sender{Token: token}
	// live sends n callbacks of the default account now, each 1 to 4
	// times, through both ingresses, as WeChat retries.
	live := func(n int) {
		t.Helper()
		for range n {
			_, _, _, xml := pp.next("default", "live")
			for d := range 1 + rng.IntN(4) {
				u := []string{url1, url2}[(d+sent)%2]
				if code, _ := post(t, s, u, xml); code != 200 {
					t.Fatalf("callback: %d", code)
				}
			}
			sent++
		}
	}
	leader := func() worker {
		t.Helper()
		var w worker
		wait.For(t, wait.Long, wait.Every, func() error {
			for _, a := range analytics {
				if metricValue(t, a.admin, "wxgate_analytics_leader") == 1 {
					w = a
					return nil
				}
			}
			return fmt.Errorf("no leader")
		})
		return w
	}

	now := time.Now()
	day := 24 * time.Hour
	past(500, now.Add(-40*day), now.Add(-30*day))
	live(30)
	// The leader snapshots its state (every 30 s), applies more and writes
	// the values, then is killed -9 while events come: the standby loads
	// the snapshot and replays over values further along than it.
	obj, err := js.ObjectStore(context.Background(), stats.AnalyticsName)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Long, 100*time.Millisecond, func() error {
		_, err := obj.GetInfo(context.Background(), "state")
		return err
	})
	past(200, now.Add(-30*day), now.Add(-25*day))
	wait.For(t, wait.Long, 100*time.Millisecond, func() error {
		var st stats.Status
		if err := nettest.FetchJSON("http://"+admin1+"/api/analytics", &st); err != nil || st.Pending != 0 {
			return fmt.Errorf("not applied yet: %+v %v", st, err)
		}
		var page stats.SeriesPage
		if err := nettest.FetchJSON("http://"+admin1+"/api/series?account=default&from="+stats.DateOf(now.Add(-31*day).In(zone).Date()).String()+"&to="+stats.DateOf(now.Add(-25*day).In(zone).Date()).String(), &page); err != nil {
			return err
		}
		if page.Points[len(page.Points)-1].Scans == 0 {
			return fmt.Errorf("the last days not written yet")
		}
		return nil
	})
	dead := leader()
	dead.kill(t)
	past(700, now.Add(-25*day), now.Add(-10*day))
	for i, a := range analytics {
		if a == dead {
			analytics[i] = startWorker(t, ns.url, append(env, "WORKER_ROLES=analytics")...)
		}
	}
	live(30)
	// NATS restarts on its file store; everyone reconnects by themselves.
	if code := ns.terminate(t); code != 0 {
		t.Fatalf("nats-server exit %d", code)
	}
	ns = startNATSAt(t, port, storeDir)
	for _, p := range []*proc{in1, in2, replies.proc, analytics[0].proc, analytics[1].proc} {
		p.waitLog(t, "nats reconnected", nil)
	}
	waitReady(t, admin1, admin2, replies.admin, analytics[0].admin, analytics[1].admin)
	past(600, now.Add(-10*day), now.Add(-time.Hour))
	live(40)

	// The model: the stored events, in stream order, counted the obvious
	// way. The stream holds each event once.
	m := &statstest.Model{Zone: zone, Group: func(account, scene string) string {
		if account == "default" {
			return groups[scene]
		}
		return ""
	}}
	stream, err := js.Stream(context.Background(), events.Stream)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{
		"wxgate.events.*.event.*", "wxgate.events.event.*"}})
	if err != nil {
		t.Fatal(err)
	}
	var lastSeq uint64
	for len(m.Events) < sent {
		msg, err := cons.Next(jetstream.FetchMaxWait(wait.Long))
		if err != nil {
			t.Fatalf("read the stream: %d of %d events: %v", len(m.Events), sent, err)
		}
		meta, _ := msg.Metadata()
		lastSeq = meta.Sequence.Stream
		msgData, err := wechat.Parse(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		account := "default"
		if parts := strings.Split(msg.Subject(), "."); len(parts) == 5 {
			account = parts[2]
		}
		at, ok := bus.ParseTime(msg.Headers().Get(bus.HeaderReceived))
		if !ok {
			t.Fatalf("event %d has no %s", lastSeq, bus.HeaderReceived)
		}
		e := statstest.Event{Account: account, Person: msgData.FromUserName, At: at}
		switch msgData.Event {
		case wechat.EventSubscribe:
			e.Kind, e.Scene = "subscribe", strings.TrimPrefix(msgData.EventKey, wechat.ScenePrefix)
		case wechat.EventScan:
			e.Kind, e.Scene = "scan", msgData.EventKey
		default:
			e.Kind = "unsubscribe"
		}
		m.Events = append(m.Events, e)
	}
	if extra, err := cons.Next(jetstream.FetchMaxWait(500 * time.Millisecond)); err == nil {
		t.Fatalf("the stream holds more events than were sent: %s", extra.Subject())
	}

	// Caught up: the leader applied everything, and wrote it.
	today, _ := stats.DateHour(time.Now(), zone)
	first := today - 41
	settled := func(epoch uint64) {
		wait.For(t, wait.Long, 100*time.Millisecond, func() error {
			var st stats.Status
			if err := nettest.FetchJSON("http://"+admin2+"/api/analytics", &st); err != nil {
				return err
			}
			if st.AppliedSeq < lastSeq || st.Pending != 0 || st.Rebuilding || st.Epoch < epoch || st.Inexact != 0 {
				return fmt.Errorf("not caught up: %+v, stream at %d", st, lastSeq)
			}
			for _, account := range []string{"default", "second"} {
				var page stats.SeriesPage
				if err := nettest.FetchJSON("http://"+admin1+"/api/series?account="+account+"&from="+first.String()+"&to="+today.String(), &page); err != nil {
					return err
				}
				n := int64(0)
				for _, p := range page.Points {
					n += p.Scans
				}
				if want := m.All(account, stats.AccountUID).Scans; n != want {
					return fmt.Errorf("%s: %d scans in the series, want %d", account, n, want)
				}
			}
			return nil
		})
	}
	label := func(account, scene string) string {
		if account == "default" {
			return labels[scene]
		}
		return ""
	}
	settled(0)
	var before stats.Status
	nettest.GetJSON(t, "http://"+admin1+"/api/analytics", &before)
	for _, admin := range []string{"http://" + admin1, "http://" + analytics[0].admin} {
		statstest.Check(t, admin, m, []string{"default", "second"}, first, today, label)
	}
	statstest.CheckCSV(t, "http://"+admin2, "default", "门店 5", today-30, today)

	// Rebuilt from the stream (asked at one ingress): the same, point for point.
	resp, err := http.Post("http://"+admin2+"/api/analytics/rebuild", "", nil)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("rebuild: %v %v", resp, err)
	}
	resp.Body.Close()
	settled(before.Epoch + 1)
	statstest.Check(t, "http://"+admin1, m, []string{"default", "second"}, first, today, label)
}
