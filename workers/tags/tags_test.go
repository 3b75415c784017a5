package tags

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

var quiet = slog.New(slog.DiscardHandler)

const (
	appID  = "wx_tags"
	secret = "tags-secret"
	store  = "门店客户"
)

type fixture struct {
	t    *testing.T
	url  string // NATS
	auth nats.Option
	fake *wechatapitest.Server
	base string // the fake's
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := natstest.RunServer(t)
	f := &fixture{t: t, url: srv.ClientURL(), auth: srv.AuthOption(), fake: wechatapitest.New(wechatapitest.Options{AppID: appID, Secret: secret})}
	ts := httptest.NewServer(f.fake)
	t.Cleanup(ts.Close)
	f.base = ts.URL
	return f
}

// tagger is one worker's tagger, with its connection and metrics.
type tagger struct {
	*Tagger
	nc  *nats.Conn
	reg *prometheus.Registry
	api *wechatapi.Client
}

// start starts a tagger on its own connection and waits until it takes
// requests; mod changes its options.
func (f *fixture) start(mod func(*Options)) tagger {
	f.t.Helper()
	nc, err := nats.Connect(f.url, f.auth, nats.MaxReconnects(-1))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	tg := tagger{nc: nc, reg: prometheus.NewRegistry()}
	o := Options{Conn: nc, WeChat: f.clients(nc, tg.reg, secret), Logger: quiet, Registerer: tg.reg,
		Linger: 50 * time.Millisecond, AckWait: 2 * time.Second, Lease: 2 * time.Second, RetryBase: 20 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	if tg.api, err = o.WeChat.For(accounts.DefaultID); err != nil {
		f.t.Fatal(err)
	}
	if tg.Tagger, err = Start(o); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = tg.Stop(context.Background()) })
	wait.For(f.t, wait.Short, wait.Every, tg.Check)
	return tg
}

func (f *fixture) clients(nc *nats.Conn, reg prometheus.Registerer, secret string) *wechatapi.Clients {
	f.t.Helper()
	accts, err := accounts.Start(accounts.Options{Default: accounts.Account{AppID: appID, AppSecret: secret}, Logger: quiet})
	if err != nil {
		f.t.Fatal(err)
	}
	cs, err := wechatapi.NewClients(wechatapi.Options{Base: f.base, Accounts: accts, Conn: nc, Logger: quiet, Registerer: reg})
	if err != nil {
		f.t.Fatal(err)
	}
	return cs
}

func people(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return out
}

func (tg tagger) enqueue(t *testing.T, openids ...string) {
	t.Helper()
	for _, o := range openids {
		if err := tg.Enqueue(context.Background(), accounts.DefaultID, o, store); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *fixture) tagging() wechatapitest.Tagging { return *f.fake.Calls().Apps[appID].Tagging }

// waitTagged waits until n people have the tag.
func (f *fixture) waitTagged(n int) {
	f.t.Helper()
	wait.For(f.t, wait.Short, wait.Every, func() error {
		if got := f.tagging(); got.People[store] != n {
			return fmt.Errorf("%d people tagged, want %d (%+v)", got.People[store], n, got)
		}
		return nil
	})
}

// outcome sums an outcome over taggers.
func outcome(t *testing.T, out string, tgs ...tagger) (n float64) {
	for _, tg := range tgs {
		v, _ := metricstest.Lookup(tg.reg, "wxgate_tagging_total", map[string]string{"account": accounts.DefaultID, "outcome": out})
		n += v
	}
	return n
}

// queued is how many requests the stream still holds.
func (tg tagger) queued(t *testing.T) uint64 {
	t.Helper()
	s, err := tg.js.Stream(context.Background(), Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// 120 people waiting when a tagger starts: three calls (50, 50, 20), the
// tag created once; requests repeated within the duplicate window are one.
func TestBatches(t *testing.T) {
	f := newFixture(t)
	a := f.start(nil)
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	all := people(120, "o")
	a.enqueue(t, all...)
	a.enqueue(t, all[:30]...) // the same scans again: deduplicated by the stream
	b := f.start(nil)
	f.waitTagged(120)
	c := f.fake.Calls().Apps[appID]
	if tg := *c.Tagging; tg.Calls != 3 || tg.MaxBatch != 50 || tg.Retagged != 0 {
		t.Errorf("batchtagging: %+v, want 3 calls of at most 50, nobody twice", tg)
	}
	if c.Calls[wechatapitest.TagsCreate] != 1 || c.Calls[wechatapitest.TagsGet] != 1 {
		t.Errorf("tags/create %d, tags/get %d: want the tag looked up and made once", c.Calls[wechatapitest.TagsCreate], c.Calls[wechatapitest.TagsGet])
	}
	for _, o := range []string{all[0], all[119]} {
		if got := f.fake.TagsOf(appID, o); !slices.Equal(got, []int{wechatapitest.FirstTagID}) {
			t.Errorf("%s has tags %v", o, got)
		}
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if n := outcome(t, Tagged, b); n != 120 {
			return fmt.Errorf("tagged counted %v, want 120", n)
		}
		return nil
	})
	wait.For(t, wait.Short, wait.Every, func() error {
		if n := b.queued(t); n != 0 {
			return fmt.Errorf("%d requests left in the stream", n)
		}
		return nil
	})
}

// WeChat's refusals: 45159 on the first calls is retried (the tag's id read
// again), 45009 keeps the requests queued until the quota is back, 45059
// is one person's: the others of the call are tagged, that one counted
// once and not retried.
func TestRefusals(t *testing.T) {
	t.Run("45159", func(t *testing.T) {
		f := newFixture(t)
		a := f.start(nil)
		_ = f.fake.Inject(wechatapitest.Fault{API: wechatapitest.TagsBatchTagging, Errcode: wechatapi.CodeInvalidTagID, Count: 3})
		a.enqueue(t, people(60, "p")...)
		f.waitTagged(60)
		c := f.fake.Calls().Apps[appID]
		if c.Errcodes[wechatapitest.TagsBatchTagging]["45159"] != 3 || c.Tagging.Retagged != 0 || c.Calls[wechatapitest.TagsCreate] != 1 {
			t.Errorf("calls: %+v %+v", c.Errcodes, c.Tagging)
		}
		if c.Calls[wechatapitest.TagsGet] < 2 {
			t.Errorf("tags/get %d times: the id is read again after 45159", c.Calls[wechatapitest.TagsGet])
		}
		if outcome(t, Retried, a) == 0 {
			t.Error("retries not counted")
		}
	})
	t.Run("45009", func(t *testing.T) {
		f := newFixture(t)
		a := f.start(func(o *Options) { o.RetryBase = 10 * time.Millisecond }) // the quota's waits: 600 ms, 1.2 s
		_ = f.fake.Inject(wechatapitest.Fault{API: wechatapitest.TagsBatchTagging, Errcode: wechatapi.CodeDailyQuota, Count: 2})
		a.enqueue(t, people(10, "q")...)
		wait.For(t, wait.Short, wait.Every, func() error {
			if outcome(t, Quota, a) == 0 {
				return errors.New("no quota refusal yet")
			}
			return nil
		})
		if n := a.queued(t); n != 10 {
			t.Errorf("%d requests queued while the quota is spent, want 10", n)
		}
		f.waitTagged(10)
		if got := outcome(t, Failed, a); got != 0 {
			t.Errorf("%v failed", got)
		}
	})
	t.Run("45059", func(t *testing.T) {
		f := newFixture(t)
		a := f.start(nil)
		// full has 20 tags already.
		ctx := context.Background()
		for i := 0; i < wechatapi.MaxTagsPerPerson; i++ {
			tag, err := a.api.CreateTag(ctx, fmt.Sprint("t", i))
			if err == nil {
				err = a.api.TagUsers(ctx, tag.ID, []string{"full"})
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		before := f.tagging().Calls
		if err := a.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		all := append(people(9, "r"), "full")
		slices.Reverse(all)
		a.enqueue(t, all...) // one batch for the next tagger
		a = f.start(nil)
		f.waitTagged(9)
		wait.For(t, wait.Short, wait.Every, func() error {
			if n := outcome(t, Limit, a); n != 1 {
				return fmt.Errorf("limit counted %v, want 1", n)
			}
			return nil
		})
		wait.For(t, wait.Short, wait.Every, func() error { // acknowledged: the limit is not retried
			if n := a.queued(t); n != 0 {
				return fmt.Errorf("%d requests left", n)
			}
			return nil
		})
		c := f.fake.Calls().Apps[appID]
		// Halves until full is alone: 4 calls refused (10, 5, 2, 1), 3
		// that tag the others (5, 3, 1).
		if refused := c.Errcodes[wechatapitest.TagsBatchTagging]["45059"]; refused != 4 || c.Tagging.Calls-before != 3 || c.Tagging.Retagged != 0 {
			t.Errorf("refused %d (%+v)", refused, c.Tagging)
		}
		if slices.Contains(f.fake.TagsOf(appID, "full"), 100+wechatapi.MaxTagsPerPerson) {
			t.Error("the person at the limit was tagged")
		}
	})
}

// A worker killed between its record and its call, and one killed after
// the call before its record said so (simulated: a record "sending" by a
// holder that no longer renews it, WeChat's state either way): the next
// tagger waits until the lease is stale, asks WeChat (getidlist), and
// calls only for the person WeChat did not tag.
func TestDeadWorkersRecord(t *testing.T) {
	f := newFixture(t)
	a := f.start(nil)
	ctx := context.Background()
	tag, err := a.api.CreateTag(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.api.TagUsers(ctx, tag.ID, []string{"called"}); err != nil { // the dead worker's call
		t.Fatal(err)
	}
	kv, err := a.js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"called", "not-called"} {
		if _, err := kv.Create(ctx, accounts.DefaultID+"."+digest(accounts.DefaultID, store, o), []byte(`{"state":"sending","by":"dead"}`)); err != nil {
			t.Fatal(err)
		}
	}
	a.enqueue(t, "called", "not-called")
	f.waitTagged(2)
	wait.For(t, wait.Short, wait.Every, func() error {
		if n := outcome(t, Tagged, a); n != 2 {
			return fmt.Errorf("tagged counted %v, want 2", n)
		}
		return nil
	})
	c := f.fake.Calls().Apps[appID]
	if c.Tagging.Calls != 2 || c.Tagging.Retagged != 0 || c.Calls[wechatapitest.TagsGetIDList] != 2 {
		t.Errorf("calls %v, tagging %+v: want one getidlist each and a call for not-called only", c.Calls, c.Tagging)
	}
	for _, o := range []string{"called", "not-called"} {
		if e, err := kv.Get(ctx, accounts.DefaultID+"."+digest(accounts.DefaultID, store, o)); err != nil || !isTagged(e.Value()) {
			t.Errorf("%s: record %v %v", o, e, err)
		}
	}
}

// Two taggers at once, the fake refusing the first calls with 45159, some
// requests stored twice (past the duplicate window): everybody tagged,
// nobody twice, batches of at most 50, one tag; then one tagger's
// process is lost while WeChat works on its call (its connection closed:
// its records not finished, its requests not acknowledged): the other
// settles them by asking, and calls for nobody WeChat tagged.
func TestTwoTaggers(t *testing.T) {
	f := newFixture(t)
	a, b := f.start(nil), f.start(nil)
	_ = f.fake.Inject(wechatapitest.Fault{API: wechatapitest.TagsBatchTagging, Errcode: wechatapi.CodeInvalidTagID, Count: 3})
	all := people(400, "s")
	for i, o := range all {
		[]tagger{a, b}[i%2].enqueue(t, o)
	}
	// The same request stored again, as after the duplicate window.
	for _, o := range all[:100] {
		m := Request(accounts.DefaultID, o, store)
		m.Header.Del(jetstream.MsgIDHeader)
		if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	f.waitTagged(400)
	wait.For(t, wait.Short, wait.Every, func() error {
		if tagged, already := outcome(t, Tagged, a, b), outcome(t, Already, a, b); tagged != 400 || already != 100 {
			return fmt.Errorf("tagged %v, already %v; want 400 and 100", tagged, already)
		}
		return nil
	})
	if tg := f.tagging(); tg.Retagged != 0 || tg.MaxBatch > 50 || len(tg.People) != 1 {
		t.Errorf("tagging: %+v", tg)
	}

	// A tagger's process goes while WeChat works on its call (done, its
	// answer held back): its records are not finished, its requests not
	// acknowledged.
	for _, tg := range []tagger{a, b} {
		if err := tg.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	more := people(30, "k")
	a.enqueue(t, more...)
	_ = f.fake.Inject(wechatapitest.Fault{API: wechatapitest.TagsBatchTagging, After: true, Delay: "8s"})
	d := f.start(func(o *Options) { o.Lease = 20 * time.Second }) // its call waits out the 8 s
	f.waitTagged(430)
	d.nc.Close()
	calls := f.tagging().Calls
	c := f.start(nil)
	wait.For(t, wait.Long, wait.Every, func() error {
		if n := outcome(t, Tagged, c); n != 30 {
			return fmt.Errorf("the next tagger counted %v tagged, want 30", n)
		}
		return nil
	})
	if tg := f.tagging(); tg.Retagged != 0 || tg.People[store] != 430 || tg.Calls != calls {
		t.Errorf("tagging: %+v; want no call after the lost one (%d)", tg, calls)
	}
	if n := f.fake.Calls().Apps[appID].Calls[wechatapitest.TagsGetIDList]; n != 30 {
		t.Errorf("getidlist %d times, want once for each of the lost worker's people", n)
	}
}

// Enqueue refuses what cannot be a request, and an account that cannot
// tag (counted failed); the tagger is ready only with JetStream.
func TestEnqueueAndReadiness(t *testing.T) {
	f := newFixture(t)
	a := f.start(nil)
	ctx := context.Background()
	for name, err := range map[string]error{
		"bad account": a.Enqueue(ctx, "../x", "o1", store),
		"bad openid":  a.Enqueue(ctx, accounts.DefaultID, "o 1", store),
		"long tag":    a.Enqueue(ctx, accounts.DefaultID, "o1", "一二三四五六七八九十一"),
	} {
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := a.Enqueue(ctx, "other", "o1", store); !errors.Is(err, wechatapi.ErrUnknownAccount) {
		t.Errorf("unknown account: %v", err)
	}
	// One stored by a tool, unchecked, is dropped, not tried for ever.
	if _, err := a.js.PublishMsg(ctx, Request(accounts.DefaultID, "o1", "一二三四五六七八九十一")); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if n := a.queued(t); n != 0 {
			return fmt.Errorf("%d requests queued", n)
		}
		return nil
	})
	if n := f.fake.Calls().Apps[appID].Calls[wechatapitest.TagsCreate]; n != 0 {
		t.Errorf("tags/create called %d times for a bad name", n)
	}

	r := natstest.NewRestartable(t)
	nc := r.Connect()
	reg := prometheus.NewRegistry()
	r.Stop()
	wait.For(t, wait.Short, wait.Every, func() error {
		if bus.Ready(nc) == nil {
			return errors.New("still connected")
		}
		return nil
	})
	off, err := Start(Options{Conn: nc, WeChat: f.clients(nc, reg, ""), Logger: quiet, Registerer: reg, Linger: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = off.Stop(context.Background()) })
	if off.Check() == nil {
		t.Error("ready without NATS")
	}
	r.Start()
	wait.For(t, wait.Short, wait.Every, off.Check)
	if err := off.Enqueue(ctx, accounts.DefaultID, "o1", store); !errors.Is(err, wechatapi.ErrOff) {
		t.Errorf("no AppSecret: %v", err)
	}
	if n, _ := metricstest.Lookup(reg, "wxgate_tagging_total", map[string]string{"account": accounts.DefaultID, "outcome": Failed}); n != 1 {
		t.Errorf("failed counted %v, want 1", n)
	}
}
