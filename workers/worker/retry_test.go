package worker_test

import (
	"context"
	"encoding/xml"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
)

// slowDecider takes 7 s over a text saying "slow": longer than one
// delivery's 4 s deadline, shorter than WeChat's retries.
type slowDecider struct {
	*reply.Replier
	runs atomic.Int32
}

func (d *slowDecider) Decide(ctx context.Context, m *wechat.Message) (*wechat.Reply, error) {
	d.runs.Add(1)
	if m.Content == "slow" {
		select {
		case <-time.After(7 * time.Second): // the slow handler under test
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

// WeChat's schedule, played against two ingress replicas: the first
// delivery times out ("success" at 4 s), the retry 5 s later reaches the
// other replica and is answered with the handler's reply when it finishes
// at 7 s. The handler runs once.
func TestSlowHandlerAnswersTheSecondDelivery(t *testing.T) {
	d := &slowDecider{Replier: reply.NewReplier(config.Defaults().Replies)}
	c := newCluster(t, 100, d)
	msg := `<xml><ToUserName><![CDATA[gh_acct]]></ToUserName><FromUserName><![CDATA[o_slow]]></FromUserName>` +
		`<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[slow]]></Content>` +
		`<MsgId>7000000000000000001</MsgId></xml>`
	post := func(url, nonce string) (string, time.Duration) {
		start := time.Now()
		code, body, err := c.sender.Post(http.DefaultClient, url, []byte(msg), time.Now(), nonce)
		if err != nil || code != 200 {
			t.Fatalf("%s: status %d: %v", nonce, code, err)
		}
		return string(body), time.Since(start)
	}

	first := time.Now()
	if body, _ := post(c.ingress[0], "first"); body != "success" {
		t.Fatalf("first delivery = %q, want success at the deadline", body)
	}
	// WeChat retries about 5 s after the first delivery.
	time.Sleep(time.Until(first.Add(5 * time.Second)))
	body, took := post(c.ingress[1], "second")
	var r struct {
		MsgType, Content, ToUserName string
	}
	if err := xml.Unmarshal([]byte(body), &r); err != nil || r.MsgType != "text" || r.Content != "slow" || r.ToUserName != "o_slow" {
		t.Fatalf("second delivery = %q (%v), want the slow handler's reply", body, err)
	}
	t.Logf("second delivery answered after %v (handler started %v before it)", took, 5*time.Second)

	// A third delivery is answered from the store at once.
	if body3, _ := post(c.ingress[0], "third"); body3 != body {
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
