package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/wxgate/wxgate/shared/wechat"
)

// No worker runs: every scan is answered "success" at once (no
// responders), and WeChat never sends it again. The ingress stored each
// before answering, so once workers start every one is counted, exactly
// once, and each is recorded as answered without its reply.
func TestScansAnsweredWithoutWorkersAreCounted(t *testing.T) {
	ns := startNATS(t)
	_, url, admin := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, admin)
	s := wechat.Sender{Token: token}
	want := map[string]int{}
	for i := int64(0); i < 40; i++ {
		scene := fmt.Sprintf("s%d", i%3)
		if code, body := post(t, s, url, scanXML(fmt.Sprintf("o_%d", i), scene, 1700000000+i)); code != 200 || body != "success" {
			t.Fatalf("scan %d without workers = %d %q, want success", i, code, body)
		}
		want[scene]++
	}
	if v := metricValue(t, admin, `wxgate_ingress_fallbacks_total{account="default",reason="no_responders"}`); v != 40 {
		t.Errorf("no_responders fallbacks = %v, want 40", v)
	}
	w := startWorker(t, ns.url)
	waitCounts(t, w.admin, want)
	if v := metricValue(t, admin, "wxgate_intake_unanswered_total"); v != 40 {
		t.Errorf("events recorded as answered without their reply = %v, want 40", v)
	}
	if v := metricValue(t, admin, `wxgate_intake_events_total{result="stored"}`); v != 40 {
		t.Errorf("events stored = %v, want 40", v)
	}
}

// WeChat's retry of an answered message reaches the other ingress
// replica (the first connection broke after the answer): the stream says
// it is a retry, the handler does not run again, and the retry gets the
// first reply.
func TestRetryAtTheOtherReplicaGetsTheFirstReply(t *testing.T) {
	ns := startNATS(t)
	w1, w2 := startWorker(t, ns.url), startWorker(t, ns.url)
	_, urlA, adminA := startIngress(t, "NATS_URL="+ns.url)
	_, urlB, adminB := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, adminA, adminB, w1.admin, w2.admin)
	s := wechat.Sender{Token: token}
	msg := textMessage("once only")
	code, first := post(t, s, urlA, msg)
	if code != 200 || !strings.Contains(first, "once only") {
		t.Fatalf("first delivery = %d %q", code, first)
	}
	// The reply is kept in the answering worker's memory before it is sent:
	// a retry, however soon, finds it by asking the workers.
	code, retry := post(t, s, urlB, msg)
	if code != 200 || retry != first {
		t.Fatalf("retry at the other replica = %d %q, want the first reply %q", code, retry, first)
	}
	if h := handled(t, w1.admin) + handled(t, w2.admin); h != 1 {
		t.Errorf("handler ran %v times, want 1", h)
	}
	stored := metricValue(t, w1.admin, "wxgate_worker_replies_from_store_total") + metricValue(t, w2.admin, "wxgate_worker_replies_from_store_total")
	if stored != 1 {
		t.Errorf("replies from the store = %v, want 1", stored)
	}
	if v := metricValue(t, adminB, `wxgate_intake_events_total{result="duplicate"}`); v != 1 {
		t.Errorf("the other replica saw %v duplicates, want 1", v)
	}
}
