package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/testutil/wait"
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

// The tagger's exactly once through real processes (issue 21, without the
// rules: the requests are stored as a rule's action stores them): 1 000
// people asked for the store tag 1 to 3 times each, two worker processes,
// the fake refusing the first calls with 45159; one worker is killed -9
// while WeChat works on its call (done, the answer held back). Each person
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
	waitReady(t, w1.admin, w2.admin)

	nc, err := nats.Connect(ns.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const people, tag = 1000, "门店客户"
	ctx := context.Background()
	for i := range people {
		for range 1 + i%3 { // a scan and WeChat's retries of it, or scans again
			if _, err := js.PublishMsg(ctx, tags.Request("default", fmt.Sprintf("o_%04d", i), tag)); err != nil {
				t.Fatal(err)
			}
		}
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		if tg := fake.tagging(t); tg.Calls < 2 {
			return fmt.Errorf("%d calls done, want the two held back", tg.Calls)
		}
		return nil
	})
	w1.kill(t)

	stream, err := js.Stream(ctx, tags.Stream)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		info, err := stream.Info(ctx)
		if err == nil && info.State.Msgs != 0 {
			err = fmt.Errorf("%d requests not done", info.State.Msgs)
		}
		return err
	})
	tg := fake.tagging(t)
	if tg.People[tag] != people || tg.Retagged != 0 || tg.MaxBatch > 50 {
		t.Errorf("tagging = %+v; want %d people tagged, nobody twice, at most 50 a call", tg, people)
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
