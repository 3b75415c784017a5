package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
	"github.com/wxgate/wxgate/workers/tags"
)

// tagging is what the fake's batchtagging did.
func (f *fakeAPI) tagging(t *testing.T) wechatapitest.Tagging {
	t.Helper()
	if tg := f.calls(t).Apps[fakeAppID].Tagging; tg != nil {
		return *tg
	}
	return wechatapitest.Tagging{}
}

// The tag action's exactly once through real processes (issue 21): a
// scene rule tags whoever scans the store's code; 1 000 people scan it 1 to
// 3 times each, through two ingresses, with two worker processes and the
// fake refusing the first calls with 45159; one worker is killed -9 while
// WeChat works on its call (done, the answer held back). Each person
// carries the tag, no call names a person already tagged, none more than
// 50, and every request is done.
func TestTaggingOnceWhenAWorkerIsKilled(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	// The first three calls refused, the next two done and answered 10 s
	// later: one for each worker, as a worker calls for a tag one batch at
	// a time.
	fake.fault(t, wechatapitest.Fault{API: wechatapitest.TagsBatchTagging, Errcode: 45159, Count: 3})
	fake.fault(t, wechatapitest.Fault{API: wechatapitest.TagsBatchTagging, After: true, Delay: "10s", Count: 2})
	w1, w2 := startWorker(t, ns.url, fake.env()...), startWorker(t, ns.url, fake.env()...)
	_, url1, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url)...)
	_, url2, admin2 := startIngress(t, append(fake.env(), "NATS_URL="+ns.url)...)
	waitReady(t, w1.admin, w2.admin, admin, admin2)
	const people, tag = 1000, "门店客户"
	storeRules(t, admin, []map[string]any{{"name": "门店", "when": map[string]any{"scene": "store_bj"},
		"reply": map[string]any{"type": "text", "content": "欢迎光临"}, "actions": []any{map[string]any{"tag": tag}}}})
	s := wechat.Sender{Token: token}
	// Every worker applies the rule before the scans (within 2 s); the
	// probe is one more person tagged.
	wait.For(t, wait.Long, wait.Every, func() error {
		for i, u := range []string{url1, url2, url1, url2, url1, url2} {
			if _, body := post(t, s, u, scanXML("o_probe", "store_bj", 1600000000+int64(i))); !strings.Contains(body, "欢迎光临") {
				return fmt.Errorf("not answering with the rule yet: %q", body)
			}
		}
		return nil
	})
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		if err := wait.ForErr(wait.Long, wait.Every, func() error {
			if tg := fake.tagging(t); tg.Calls < 2 {
				return fmt.Errorf("%d calls done, want the two held back", tg.Calls)
			}
			return nil
		}); err != nil {
			t.Error(err)
			return
		}
		w1.kill(t)
	}()
	n := 0
	for i := range people {
		for k := range 1 + i%3 { // the person scans again, at either ingress
			u := url1
			if n++; n%2 == 0 {
				u = url2
			}
			if code, body := post(t, s, u, scanXML(fmt.Sprintf("o_%04d", i), "store_bj", 1700000000+int64(10*i+k))); code != 200 {
				t.Fatalf("scan %d of o_%04d: %d %q", k, i, code, body)
			}
		}
	}
	<-killed

	nc, err := nats.Connect(ns.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stream, err := js.Stream(ctx, tags.Stream)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, 2*wait.Long, wait.Every, func() error {
		info, err := stream.Info(ctx)
		if err == nil && info.State.Msgs != 0 {
			err = fmt.Errorf("%d requests not done", info.State.Msgs)
		}
		if tg := fake.tagging(t); err == nil && tg.People[tag] != people+1 {
			err = fmt.Errorf("%d people tagged", tg.People[tag])
		}
		return err
	})
	tg := fake.tagging(t)
	if tg.People[tag] != people+1 || tg.Retagged != 0 || tg.MaxBatch > 50 {
		t.Errorf("tagging = %+v; want %d people tagged, nobody twice, at most 50 a call", tg, people+1)
	}
	c := fake.calls(t).Apps[fakeAppID]
	if c.Errcodes[wechatapitest.TagsBatchTagging]["45159"] != 3 {
		t.Errorf("45159 answered %d times, want 3", c.Errcodes[wechatapitest.TagsBatchTagging]["45159"])
	}
	if c.Calls[wechatapitest.TagsGetIDList] == 0 {
		t.Error("the killed worker's people were not settled by getidlist")
	}
	if v := metricValue(t, w2.admin, `wxgate_tagging_total{account="default",outcome="tagged"}`); v == 0 {
		t.Error("the surviving worker counted nobody tagged")
	}
}
