package inproc

import (
	"context"
	"encoding/xml"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/reply"
)

// slowDecider is slower than any deadline over a text saying "slow": it
// answers when the test releases it.
type slowDecider struct {
	*reply.Replier
	runs    atomic.Int32
	release chan struct{}
}

func (d *slowDecider) Decide(ctx context.Context, _ string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	d.runs.Add(1)
	if m.Content == "slow" {
		select {
		case <-d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return d.Reply(m), nil
}

func sumOver(regs []*prometheus.Registry, name, label, value string) float64 {
	var total float64
	for _, r := range regs {
		v, _ := metricstest.Lookup(r, name, labelsOf(label, value))
		total += v
	}
	return total
}

func labelsOf(label, value string) map[string]string {
	if label == "" {
		return nil
	}
	return map[string]string{label: value}
}

// waitWaiting waits until a delivery waits on a message's key in the
// replies store (it watches the key with a consumer of the bucket).
func waitWaiting(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	wait.For(t, wait.Short, wait.Every, func() error {
		s, err := js.Stream(context.Background(), "KV_"+dedup.Bucket)
		if err != nil {
			return err
		}
		info, err := s.Info(context.Background())
		if err == nil && info.State.Consumers == 0 {
			err = fmt.Errorf("no delivery waits on the key yet")
		}
		return err
	})
}

// WeChat's schedule, played against two ingress replicas with a handler
// slower than a delivery's deadline: the first delivery times out
// ("success" at its deadline), the retry reaches the other replica and
// waits for the handler still running, and is answered with its reply when
// it finishes. The handler runs once; a third delivery gets the reply from
// the store at once. (Time is the test's: the handler finishes when the
// retry waits for it, not 7 s after it began.)
func TestSlowHandlerAnswersTheSecondDelivery(t *testing.T) {
	d := &slowDecider{Replier: reply.NewReplier(config.Defaults().Replies), release: make(chan struct{})}
	c := newCluster(t, 100, time.Second, d)
	msg := `<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[o_slow]]></FromUserName>` +
		`<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[slow]]></Content>` +
		`<MsgId>7000000000000000001</MsgId></xml>`
	post := func(url, nonce string) string {
		code, body, err := c.sender.Post(http.DefaultClient, url, []byte(msg), time.Now(), nonce)
		if err != nil || code != 200 {
			t.Errorf("%s: status %d: %v", nonce, code, err)
		}
		return string(body)
	}

	if body := post(c.ingress[0], "first"); body != "success" {
		t.Fatalf("first delivery = %q, want success at the deadline", body)
	}
	second := make(chan string, 1)
	go func() { second <- post(c.ingress[1], "second") }()
	waitWaiting(t, c.js)
	close(d.release)
	body := <-second
	var r struct {
		MsgType, Content, ToUserName string
	}
	if err := xml.Unmarshal([]byte(body), &r); err != nil || r.MsgType != "text" || r.Content != "slow" || r.ToUserName != "o_slow" {
		t.Fatalf("second delivery = %q (%v), want the slow handler's reply", body, err)
	}
	if body3 := post(c.ingress[0], "third"); body3 != body {
		t.Fatalf("third delivery = %q", body3)
	}
	if n := d.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	for name, want := range map[string]float64{
		"wxgate_worker_duplicates_total":         2,
		"wxgate_worker_replies_from_store_total": 2,
		"wxgate_worker_claims_expired_total":     0,
	} {
		if got := sumOver(c.regs, name, "", ""); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := sumOver(c.regs, "wxgate_worker_handled_total", "subject", "msg.text"); got != 1 {
		t.Errorf("wxgate_worker_handled_total{msg.text} = %v, want 1", got)
	}
}
