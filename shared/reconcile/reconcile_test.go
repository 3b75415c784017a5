package reconcile

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/testutil/clocktest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

var shanghai, _ = time.LoadLocation("Asia/Shanghai")

// env is a NATS server with the event streams, the fake WeChat API with
// the apps of the accounts default and shop, and the day D under test:
// yesterday, so that events received on it can be stored now (a count
// starts at the stream's time of the day's beginning). Our clock and the
// fake's are set apart.
type env struct {
	t        *testing.T
	ns       *bus.Embedded
	js       jetstream.JetStream
	fake     *wechatapitest.Server
	base     string
	clk, wx  *clocktest.Clock
	d        time.Time // D's midnight
	date     string    // D as the API writes it
	accounts *accounts.Registry
	sent     int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	y, m, dd := time.Now().In(shanghai).Date()
	d := time.Date(y, m, dd-1, 0, 0, 0, 0, shanghai)
	e := &env{t: t, ns: natstest.RunServer(t), d: d, date: d.Format(time.DateOnly)}
	e.clk, e.wx = clocktest.New(d.Add(33*time.Hour)), clocktest.New(d.Add(33*time.Hour)) // 09:00 the day after
	e.fake = wechatapitest.New(wechatapitest.Options{AppID: "wx_default", Secret: "secret-default",
		Apps: map[string]string{"wx_shop": "secret-shop"}, Now: e.wx.Now, TokenTTL: 48 * time.Hour})
	ts := httptest.NewServer(e.fake)
	t.Cleanup(ts.Close)
	e.base = ts.URL
	nc := natstest.Connect(t, e.ns)
	e.js, _ = jetstream.New(nc)
	if err := events.Ensure(context.Background(), e.js, events.Defaults()); err != nil {
		t.Fatal(err)
	}
	e.accounts = e.registry(nc)
	if _, err := e.accounts.Create(context.Background(), accounts.Account{ID: "shop", Token: "ShopToken1", AppID: "wx_shop", AppSecret: "secret-shop"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.accounts.Create(context.Background(), accounts.Account{ID: "noapi", Token: "NoAPIToken"}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) registry(nc *nats.Conn) *accounts.Registry {
	reg, err := accounts.Start(accounts.Options{Conn: nc, Logger: slog.New(slog.DiscardHandler),
		SecretKey: base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")),
		Default:   accounts.Account{AppID: "wx_default", AppSecret: "secret-default"}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(reg.Stop)
	wait.For(e.t, wait.Short, wait.Every, reg.Check)
	return reg
}

// followers are our new followers as the analytics would give them: the
// day's number of the month, times 10, for every account.
type followers struct{}

func (followers) NewFollowers(_ context.Context, _, from, to string) ([]int64, error) {
	f, _ := time.Parse(time.DateOnly, from)
	t, _ := time.Parse(time.DateOnly, to)
	var out []int64
	for d := f; !d.After(t); d = d.AddDate(0, 0, 1) {
		out = append(out, int64(d.Day()*10))
	}
	return out, nil
}

// process is one wxgate process's Reconciler (its own connection, clients
// and registry) and its API.
func (e *env) process(name string) (*Reconciler, string) {
	e.t.Helper()
	nc := natstest.Connect(e.t, e.ns, nats.Name(name))
	reg := e.registry(nc)
	wait.For(e.t, wait.Short, wait.Every, func() error {
		if _, ok := reg.Get("noapi"); !ok {
			return fmt.Errorf("%s has not seen the accounts yet", name)
		}
		return nil
	})
	logger := slog.New(slog.DiscardHandler)
	wx, err := wechatapi.NewClients(wechatapi.Options{Base: e.base, Accounts: reg, Conn: nc, Logger: logger, Registerer: prometheus.NewRegistry()})
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := New(Options{Conn: nc, Accounts: reg, WeChat: wx, Followers: followers{}, Zone: shanghai,
		Streams: events.Defaults(), Logger: logger, Now: e.clk.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler(""))
	e.t.Cleanup(srv.Close)
	return r, srv.URL
}

// publish stores an event on subject as received at t (unanswered copies
// too: their stream is the subject's).
func (e *env) publish(subject string, t time.Time) {
	e.t.Helper()
	m := nats.NewMsg(subject)
	m.Header.Set(bus.HeaderReceived, bus.FormatTime(t))
	e.sent++
	m.Header.Set(jetstream.MsgIDHeader, strconv.Itoa(e.sent)) // each its own: none a duplicate
	m.Data = []byte("<xml/>")
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatal(err)
	}
}

// datacube is how many times the fake was asked for each datacube API.
func (e *env) datacube() [2]int {
	c := e.fake.Calls()
	return [2]int{c.Calls[wechatapitest.UserSummary], c.Calls[wechatapitest.InterfaceSummary]}
}

type answer struct {
	Account  string `json:"account"`
	TimeZone string `json:"time_zone"`
	Days     []Day  `json:"days"`
}

// get asks the API for from..to ("" the day D) and decodes the answer.
func get(t *testing.T, url, query string) (int, answer, []byte) {
	t.Helper()
	resp, err := http.Get(url + Route + "?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var a answer
	if resp.StatusCode == 200 && bytes.HasPrefix(b, []byte("{")) {
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
	}
	return resp.StatusCode, a, b
}

func (e *env) day(t *testing.T, url, account string) Day {
	t.Helper()
	code, a, b := get(t, url, "from="+e.date+"&to="+e.date+"&account="+account)
	if code != 200 || len(a.Days) != 1 || a.Days[0].Date != e.date || a.TimeZone != "Asia/Shanghai" || a.Account != account {
		t.Fatalf("GET = %d %s", code, b)
	}
	return a.Days[0]
}

func n(v int64) *int64 { return &v }

func str(v *int64) string {
	if v == nil {
		return "null"
	}
	return strconv.FormatInt(*v, 10)
}

// equal compares figures, null included.
func equal(got, want *int64) bool { return str(got) == str(want) }

// checkDay fails unless d carries exactly the figures of want (its
// WeChatError compared by errcode).
func checkDay(t *testing.T, what string, d, want Day) {
	t.Helper()
	got := []*int64{d.NewFollowersByQR, d.WeChatNewUserQR, d.WeChatCancelUserQR, d.Callbacks, d.Fallbacks, d.WeChatCallbackCount, d.WeChatFailCount, d.WeChatMaxTimeCostMS}
	exp := []*int64{want.NewFollowersByQR, want.WeChatNewUserQR, want.WeChatCancelUserQR, want.Callbacks, want.Fallbacks, want.WeChatCallbackCount, want.WeChatFailCount, want.WeChatMaxTimeCostMS}
	for i := range got {
		if !equal(got[i], exp[i]) {
			t.Errorf("%s: %s = %s, want %s", what, csvHeader[i+1], str(got[i]), str(exp[i]))
		}
	}
	if (d.WeChatError == nil) != (want.WeChatError == nil) || (d.WeChatError != nil && d.WeChatError.Errcode != want.WeChatError.Errcode) {
		t.Errorf("%s: wechat_error = %+v, want %+v", what, d.WeChatError, want.WeChatError)
	}
}

// The events of D for the default account, as the ingress of this
// version and of the versions before accounts stored them, with events of
// other accounts and of the days around it, which must not count.
func (e *env) sendEvents() (callbacks, fallbacks int64) {
	d := e.d
	for i, s := range []string{"wxgate.events.msg.text", "wxgate.events.event.subscribe", "wxgate.events.default.msg.text",
		"wxgate.events.default.event.scan", "wxgate.events.default.event.click"} {
		for j := 0; j <= i; j++ {
			e.publish(s, d.Add(time.Duration(i*4+j)*time.Hour+time.Duration(j)*time.Second))
			callbacks++
		}
	}
	e.publish("wxgate.events.msg.text", d) // the first instant
	e.publish("wxgate.events.default.msg.image", d.Add(24*time.Hour-time.Nanosecond))
	callbacks += 2
	for _, s := range []string{"wxgate.unanswered.msg.text", "wxgate.unanswered.default.event.subscribe"} {
		e.publish(s, d.Add(13*time.Hour))
		fallbacks++
	}
	// Not D's, or not the default account's.
	e.publish("wxgate.events.msg.text", d.Add(-time.Nanosecond))
	e.publish("wxgate.events.default.msg.text", d.Add(24*time.Hour))
	e.publish("wxgate.unanswered.default.msg.text", d.Add(25*time.Hour))
	e.publish("wxgate.events.shop.msg.text", d.Add(time.Hour))
	e.publish("wxgate.events.shop.event.subscribe", d.Add(2*time.Hour))
	e.publish("wxgate.unanswered.shop.msg.text", d.Add(time.Hour))
	return callbacks, fallbacks
}

// WeChat's figures of D for the default account: follows through QR codes,
// follows from elsewhere (not QR, must not count), and its callbacks.
func (e *env) setFigures() {
	if err := e.fake.SetDatacube(wechatapitest.DatacubeFigures{
		Users: []wechatapitest.UserRow{{RefDate: e.date, UserSource: 30, NewUser: 12, CancelUser: 3},
			{RefDate: e.date, UserSource: 0, NewUser: 40, CancelUser: 9}},
		Callbacks: []wechatapitest.InterfaceRow{{RefDate: e.date, CallbackCount: 500, FailCount: 2, TotalTimeCost: 9000, MaxTimeCost: 1200}},
	}); err != nil {
		e.t.Fatal(err)
	}
}

// After 08:00 the day's row carries both sides: ours (the events sent, by
// when they were received, old subjects as the default account's, other
// accounts' and days' left out; the analytics' new followers) and WeChat's
// QR-code follows and callbacks. Another account's row is its own.
func TestRowAfterEight(t *testing.T) {
	e := newEnv(t)
	callbacks, fallbacks := e.sendEvents()
	e.setFigures()
	_, url := e.process("p1")
	want := Day{NewFollowersByQR: n(int64(e.d.Day() * 10)), WeChatNewUserQR: n(12), WeChatCancelUserQR: n(3),
		Callbacks: n(callbacks), Fallbacks: n(fallbacks), WeChatCallbackCount: n(500), WeChatFailCount: n(2), WeChatMaxTimeCostMS: n(1200)}
	checkDay(t, "default", e.day(t, url, "default"), want)
	if got := e.datacube(); got != [2]int{1, 1} {
		t.Errorf("WeChat asked %v times, want once each", got)
	}
	// Kept: asked again, nothing is fetched or counted again.
	e.publish("wxgate.events.default.msg.text", e.d.Add(time.Hour))
	checkDay(t, "default, again", e.day(t, url, "default"), want)
	if got := e.datacube(); got != [2]int{1, 1} {
		t.Errorf("WeChat asked %v times, want once each", got)
	}
	// The shop's: its own events, its own AppID's figures (none set: zero).
	checkDay(t, "shop", e.day(t, url, "shop"), Day{NewFollowersByQR: want.NewFollowersByQR, WeChatNewUserQR: n(0), WeChatCancelUserQR: n(0),
		Callbacks: n(2), Fallbacks: n(1), WeChatCallbackCount: n(0), WeChatFailCount: n(0), WeChatMaxTimeCostMS: n(0)})
	// An account without an AppSecret: ours, and why WeChat's are null.
	d := e.day(t, url, "noapi")
	checkDay(t, "noapi", d, Day{NewFollowersByQR: want.NewFollowersByQR, Callbacks: n(0), Fallbacks: n(0), WeChatError: &WeChatError{}})
	if d.WeChatError == nil || d.WeChatError.Errmsg == "" {
		t.Errorf("noapi: wechat_error %+v, want the missing AppSecret named", d.WeChatError)
	}
}

// Before 08:00 WeChat's figures are null and WeChat is not asked; ours are
// there once the day has ended. When our clock says 08:00 but WeChat has
// not published the day yet (it leaves it out of its list), the figures
// stay null and are asked for again an hour later.
func TestBeforeEight(t *testing.T) {
	e := newEnv(t)
	callbacks, fallbacks := e.sendEvents()
	e.setFigures()
	_, url := e.process("p1")
	e.clk.Add(-2 * time.Hour) // 07:00
	e.wx.Add(-2 * time.Hour)
	ours := Day{NewFollowersByQR: n(int64(e.d.Day() * 10)), Callbacks: n(callbacks), Fallbacks: n(fallbacks)}
	checkDay(t, "07:00", e.day(t, url, "default"), ours)
	if got := e.datacube(); got != [2]int{0, 0} {
		t.Errorf("WeChat asked %v times before 08:00", got)
	}
	e.clk.Add(90 * time.Minute) // 08:30 here, 07:00 at WeChat
	for i, asked := range []int{1, 1, 2} {
		checkDay(t, "08:30, unpublished", e.day(t, url, "default"), ours)
		if got := e.datacube(); got != [2]int{asked, asked} {
			t.Errorf("request %d: WeChat asked %v times, want %d", i, got, asked)
		}
		if i == 1 {
			e.clk.Add(time.Hour) // not asked again sooner
		}
	}
	e.wx.Add(2 * time.Hour) // 09:00 at WeChat, 10:30 here
	e.clk.Add(time.Hour)
	ours.WeChatNewUserQR, ours.WeChatCancelUserQR, ours.WeChatCallbackCount, ours.WeChatFailCount, ours.WeChatMaxTimeCostMS = n(12), n(3), n(500), n(2), n(1200)
	checkDay(t, "published", e.day(t, url, "default"), ours)
	// A day the streams no longer hold whole (72 hours) is not counted.
	e.clk.Add(72 * time.Hour)
	old := e.d.AddDate(0, 0, 1).Format(time.DateOnly)
	if _, a, b := get(t, url, "from="+old+"&to="+old); len(a.Days) != 1 || a.Days[0].Callbacks != nil {
		t.Errorf("a day past the streams' 72 hours: %s", b)
	}
}

// An account that may not call the datacube: the errcode is shown, the
// figures are null, ours are there; a request does not ask WeChat again,
// the daily run does, and once WeChat answers the error is gone.
func TestUnauthorized(t *testing.T) {
	e := newEnv(t)
	callbacks, fallbacks := e.sendEvents()
	e.setFigures()
	off := true
	_ = e.fake.SetDatacube(wechatapitest.DatacubeFigures{Unauthorized: &off})
	r, url := e.process("p1")
	ours := Day{NewFollowersByQR: n(int64(e.d.Day() * 10)), Callbacks: n(callbacks), Fallbacks: n(fallbacks), WeChatError: &WeChatError{Errcode: 48001}}
	d := e.day(t, url, "default")
	checkDay(t, "48001", d, ours)
	if d.WeChatError == nil || d.WeChatError.Hint == "" || d.WeChatError.Errmsg == "" {
		t.Errorf("wechat_error %+v, want errmsg and hint", d.WeChatError)
	}
	asked := e.datacube()
	checkDay(t, "48001, again", e.day(t, url, "default"), ours)
	if got := e.datacube(); got != asked {
		t.Errorf("a request asked WeChat again after its refusal: %v, then %v", asked, got)
	}
	off = false
	_ = e.fake.SetDatacube(wechatapitest.DatacubeFigures{Unauthorized: &off})
	if err := r.daily(context.Background()); err != nil {
		t.Fatal(err)
	}
	ours.WeChatError, ours.WeChatNewUserQR, ours.WeChatCancelUserQR, ours.WeChatCallbackCount, ours.WeChatFailCount, ours.WeChatMaxTimeCostMS = nil, n(12), n(3), n(500), n(2), n(1200)
	checkDay(t, "after the daily run", e.day(t, url, "default"), ours)
}

// Two processes run the daily completion at once: WeChat is asked once
// per API and account (the lease), though the first call is slow.
func TestTwoProcessesFetchOnce(t *testing.T) {
	e := newEnv(t)
	callbacks, fallbacks := e.sendEvents()
	e.setFigures()
	if err := e.fake.Inject(wechatapitest.Fault{API: wechatapitest.UserSummary, AppID: "wx_default", Delay: "500ms", Count: 1}); err != nil {
		t.Fatal(err)
	}
	r1, url := e.process("p1")
	r2, _ := e.process("p2")
	var wg sync.WaitGroup
	for _, r := range []*Reconciler{r1, r2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.daily(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	c := e.fake.Calls()
	for _, app := range []string{"wx_default", "wx_shop"} {
		if u, i := c.Apps[app].Calls[wechatapitest.UserSummary], c.Apps[app].Calls[wechatapitest.InterfaceSummary]; u != 1 || i != 1 {
			t.Errorf("%s: getusersummary %d, getinterfacesummary %d times, want once each", app, u, i)
		}
	}
	checkDay(t, "default", e.day(t, url, "default"), Day{NewFollowersByQR: n(int64(e.d.Day() * 10)), WeChatNewUserQR: n(12), WeChatCancelUserQR: n(3),
		Callbacks: n(callbacks), Fallbacks: n(fallbacks), WeChatCallbackCount: n(500), WeChatFailCount: n(2), WeChatMaxTimeCostMS: n(1200)})
	if got := e.datacube(); got != [2]int{2, 2} {
		t.Errorf("WeChat asked %v times, want the daily run's alone", got)
	}
}

// Bad requests are 400 naming the problem, unknown accounts 404, WeChat
// not asked; the CSV is the JSON: a BOM, the JSON field names, a row per
// day with null as an empty cell.
func TestRequests(t *testing.T) {
	e := newEnv(t)
	e.setFigures()
	_, url := e.process("p1")
	prev := e.d.AddDate(0, 0, -1).Format(time.DateOnly)
	for query, want := range map[string]int{
		"from=" + e.date:                           400,
		"from=2026-02-30&to=2026-03-01":            400,
		"from=2026-03-01&to=20260302":              400,
		"from=2026-03-02&to=2026-03-01":            400,
		"from=2026-01-01&to=2026-02-01":            400, // 32 days
		"from=2026-01-01&to=2026-01-31&format=xml": 400,
		"from=2026-01-01&to=2026-01-01&account=..": 404,
		"from=2026-01-01&to=2026-01-01&account=no": 404,
	} {
		if code, _, b := get(t, url, query); code != want {
			t.Errorf("%s: %d %s, want %d", query, code, b, want)
		}
	}
	if got := e.datacube(); got != [2]int{0, 0} {
		t.Errorf("bad requests asked WeChat %v times", got)
	}
	// 31 days: in spans WeChat takes, 7 and 30 days.
	code, a, b := get(t, url, "from=2026-01-01&to=2026-01-31")
	if code != 200 || len(a.Days) != 31 || a.Days[30].Date != "2026-01-31" {
		t.Fatalf("31 days: %d %s", code, b)
	}
	for _, d := range a.Days {
		if !d.fetched() {
			t.Errorf("31 days: %s not fetched", d.Date)
		}
	}
	if got := e.datacube(); got != [2]int{5, 2} {
		t.Errorf("31 days: WeChat asked %v times, want [5 2]", got)
	}
	_, js, _ := get(t, url, "from="+prev+"&to="+e.date)
	code, _, b = get(t, url, "from="+prev+"&to="+e.date+"&format=csv")
	body, ok := bytes.CutPrefix(b, []byte("\uFEFF"))
	if code != 200 || !ok {
		t.Fatalf("CSV: %d, BOM %v: %s", code, ok, b)
	}
	rows, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
	if err != nil || len(rows) != 3 {
		t.Fatalf("CSV %q: %v", body, err)
	}
	// The header is the JSON's field names (the contract's, in its order),
	// the error's flattened.
	contract := []string{"date", "new_followers_by_qr", "wechat_new_user_qr", "wechat_cancel_user_qr", "callbacks", "fallbacks",
		"wechat_callback_count", "wechat_fail_count", "wechat_max_time_cost_ms"}
	if want := fmt.Sprint(append(contract, "wechat_error_errcode", "wechat_error_errmsg", "wechat_error_hint")); fmt.Sprint(rows[0]) != want {
		t.Errorf("CSV header %v, want %v", rows[0], want)
	}
	var fields map[string]any
	_ = json.Unmarshal(must(json.Marshal(Day{WeChatError: &WeChatError{}})), &fields)
	for _, f := range append(contract, "wechat_error") {
		if _, ok := fields[f]; !ok || len(fields) != len(contract)+1 {
			t.Errorf("JSON fields %v, want %v and wechat_error", fields, contract)
		}
	}
	for i, d := range js.Days {
		want := []string{d.Date, str(d.NewFollowersByQR), str(d.WeChatNewUserQR), str(d.WeChatCancelUserQR), str(d.Callbacks), str(d.Fallbacks),
			str(d.WeChatCallbackCount), str(d.WeChatFailCount), str(d.WeChatMaxTimeCostMS), "", "", ""}
		for j := range want {
			if want[j] == "null" {
				want[j] = ""
			}
		}
		if fmt.Sprint(rows[i+1]) != fmt.Sprint(want) {
			t.Errorf("CSV row %v, JSON %v", rows[i+1], want)
		}
	}
	if js.Days[1].WeChatNewUserQR == nil || *js.Days[1].WeChatNewUserQR != 12 {
		t.Errorf("the rows read back are not D's: %+v", js.Days)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
