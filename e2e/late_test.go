package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// interaction tells the fake what a person did, as WeChat knows it: it
// opens the window in which a customer-service message reaches them.
func (f *fakeAPI) interaction(t *testing.T, openid, kind string) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"openid": openid, "kind": kind})
	resp, err := http.Post(f.base+"/wxsim/interaction", "application/json", bytes.NewReader(b))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("interaction %s %s: %v %v", openid, kind, resp, err)
	}
	resp.Body.Close()
}

// waitMessages waits until the fake has accepted n customer-service
// messages, and returns them.
func (f *fakeAPI) waitMessages(t *testing.T, n int) []wechatapitest.Message {
	t.Helper()
	var msgs []wechatapitest.Message
	wait.For(t, wait.Long, wait.Every, func() error {
		if msgs = f.calls(t).Messages; len(msgs) < n {
			return fmt.Errorf("%d of %d customer-service messages", len(msgs), n)
		}
		return nil
	})
	return msgs
}

func lateText(openid, content string, id int64) []byte {
	m := &wechat.Message{ToUserName: "gh_e2e", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "text", Content: content, MsgID: fmt.Sprint(9_000_000 + id)}
	return m.AppendXML(nil)
}

func lateScan(openid, scene string) []byte {
	m := &wechat.Message{ToUserName: "gh_e2e", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "event", Event: "SCAN", EventKey: scene}
	return m.AppendXML(nil)
}

// No worker runs: a text message and a SCAN are answered "success". When
// workers start, each reply reaches the person exactly once through the
// customer-service API, with the right content.
func TestLateRepliesWhenWorkersReturn(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	_, url, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url)...)
	waitReady(t, admin)
	s := wechat.Sender{Token: token}
	fake.interaction(t, "o_late_text", "message")
	if code, body := post(t, s, url, lateText("o_late_text", "hello, anyone?", 1)); code != 200 || body != "success" {
		t.Fatalf("text without workers = %d %q", code, body)
	}
	fake.interaction(t, "o_late_scan", "event")
	if code, body := post(t, s, url, lateScan("o_late_scan", "poster_late")); code != 200 || body != "success" {
		t.Fatalf("SCAN without workers = %d %q", code, body)
	}
	w := startWorker(t, ns.url, fake.env()...)
	msgs := fake.waitMessages(t, 2)
	want := map[string]string{"o_late_text": "hello, anyone?", "o_late_scan": "您扫描的场景值为：poster_late"}
	got := map[string]string{}
	for _, m := range msgs {
		if _, dup := got[m.ToUser]; dup {
			t.Errorf("%s got the reply twice", m.ToUser)
		}
		got[m.ToUser] = m.Content
	}
	for openid, content := range want {
		if got[openid] != content {
			t.Errorf("late reply to %s = %q, want %q (all: %v)", openid, got[openid], content, got)
		}
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		if v := metricValue(t, w.admin, `wxgate_late_replies_total{account="default",outcome="sent"}`); v != 2 {
			return fmt.Errorf("sent = %v, want 2", v)
		}
		return nil
	})
	if n := len(fake.calls(t).Messages); n != 2 {
		t.Errorf("%d messages, want 2", n)
	}
}

// A SCAN answered "success" whose workers come back after its window: the
// late reply is counted expired and nothing is sent.
func TestLateReplyPastTheWindowExpires(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t, "-event-window", "3s")
	_, url, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url)...)
	waitReady(t, admin)
	s := wechat.Sender{Token: token}
	fake.interaction(t, "o_expired", "event")
	if code, body := post(t, s, url, lateScan("o_expired", "poster_gone")); code != 200 || body != "success" {
		t.Fatalf("SCAN without workers = %d %q", code, body)
	}
	time.Sleep(3500 * time.Millisecond) // the window closing is what is under test
	w := startWorker(t, ns.url, append(fake.env(), "LATE_EVENT_WINDOW=3s")...)
	wait.For(t, wait.Long, wait.Every, func() error {
		if v := metricValue(t, w.admin, `wxgate_late_replies_total{account="default",outcome="expired"}`); v != 1 {
			return fmt.Errorf("expired = %v, want 1", v)
		}
		return nil
	})
	// Not even tried: a send the fake refused (45015) would be counted
	// expired too.
	if c := fake.calls(t); len(c.Messages) != 0 || c.Calls[wechatapitest.CustomSend] != 0 {
		t.Errorf("sent past the window: %d custom_send calls, messages %+v", c.Calls[wechatapitest.CustomSend], c.Messages)
	}
}

// A handler slower than the ingress's deadline: WeChat is answered
// "success" in time, and the reply reaches the person afterwards, once;
// the handler runs once.
func TestSlowHandlerReplyArrivesLate(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	w := worker{}
	p := start(t, "slowworker", append(fake.env(), "NATS_URL="+ns.url, "ADMIN_ADDR=127.0.0.1:0", "SLOW_REPLY_DELAY=2s"))
	w.proc, w.admin = p, p.listenAddr(t, "admin")
	_, url, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url, "REPLY_TIMEOUT=1s")...)
	waitReady(t, admin, w.admin)
	s := wechat.Sender{Token: token}
	fake.interaction(t, "o_slow", "message")
	start := time.Now()
	code, body := post(t, s, url, lateText("o_slow", "slow thinking", 2))
	if took := time.Since(start); code != 200 || body != "success" || took > 2*time.Second {
		t.Fatalf("slow handler = %d %q after %v, want success at the 1s deadline", code, body, took)
	}
	msgs := fake.waitMessages(t, 1)
	if msgs[0].ToUser != "o_slow" || msgs[0].Content != "slow thinking" {
		t.Errorf("late reply = %+v", msgs[0])
	}
	// A scan whose every worker is slower than the deadline: answered
	// success, counted once, and its reply sent late.
	fake.interaction(t, "o_slowscan", "event")
	if code, body := post(t, s, url, scanXML("o_slowscan", "slow_poster", 1700000100)); code != 200 || body != "success" {
		t.Fatalf("slow scan = %d %q, want success at the deadline", code, body)
	}
	waitCounts(t, w.admin, map[string]int{"slow_poster": 1})
	msgs = fake.waitMessages(t, 2)
	if msgs[1].ToUser != "o_slowscan" || !strings.Contains(msgs[1].Content, "slow_poster") {
		t.Errorf("late reply to the scan = %+v", msgs[1])
	}
	if h := handled(t, w.admin); h != 1 {
		t.Errorf("text handler ran %v times, want 1", h)
	}
	if h := metricValue(t, w.admin, `wxgate_worker_handled_total{account="default",subject="event.scan"}`); h != 1 {
		t.Errorf("scan handler ran %v times, want 1", h)
	}
	if n := len(fake.calls(t).Messages); n != 2 {
		t.Errorf("%d messages, want 2", n)
	}
}

// The worker sending a late reply is killed -9 right after WeChat took
// it, before it recorded it: the worker that takes the event over finds
// the send's mark, and the person still gets the reply exactly once.
func TestLateReplyOnceWhenTheSenderIsKilled(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	_, url, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url)...)
	waitReady(t, admin)
	s := wechat.Sender{Token: token}
	fake.interaction(t, "o_killed", "message")
	if code, body := post(t, s, url, lateText("o_killed", "are you there", 3)); code != 200 || body != "success" {
		t.Fatalf("text without workers = %d %q", code, body)
	}
	// WeChat takes the message, then answers slowly: the sender dies in
	// between.
	fake.fault(t, wechatapitest.Fault{API: wechatapitest.CustomSend, Delay: "30s", After: true})
	w1 := startWorker(t, ns.url, fake.env()...)
	fake.waitMessages(t, 1)
	w1.kill(t)
	w2 := startWorker(t, ns.url, append(fake.env(), "LOG_LEVEL=debug")...)
	w2.waitLog(t, "late reply already settled", nil)
	msgs := fake.calls(t).Messages
	if len(msgs) != 1 || msgs[0].ToUser != "o_killed" || !strings.Contains(msgs[0].Content, "are you there") {
		t.Errorf("messages = %+v, want the one reply, once", msgs)
	}
}

// JetStream switched off by a configuration reload while core NATS stays up
// (finding N1, as the review reproduced it): the ingress holds the event
// and asks as for a possible retry; the worker cannot mark its reply, so it
// answers the error the ingress turns into a fallback (bus_down) and a
// record of the unanswered event, never "success" as if delivered. With
// JetStream back, the late reply reaches the person, once.
func TestJetStreamReloadedOffLeavesTheReplyToTheLateReply(t *testing.T) {
	dir, conf := t.TempDir(), filepath.Join(t.TempDir(), "nats.conf")
	port := nettest.FreePort(t)
	write := func(jetstream bool) {
		t.Helper()
		c := "listen: 127.0.0.1:" + port + "\nhttp: 127.0.0.1:-1\n"
		if jetstream {
			c += "jetstream { store_dir: " + strconv.Quote(dir) + " }\n"
		}
		if err := os.WriteFile(conf, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(true)
	ns := start(t, "nats-server", nil, "-c", conf)
	ns.waitLine(t, "readiness", func(l string) bool { return strings.Contains(l, "Server is ready") })
	url := "nats://127.0.0.1:" + port
	fake := startFakeAPI(t)
	w := startWorker(t, url, fake.env()...)
	_, callback, admin := startIngress(t, append(fake.env(), "NATS_URL="+url)...)
	waitReady(t, admin, w.admin)

	write(false)
	if err := ns.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ns.waitLine(t, "JetStream off", func(l string) bool { return strings.Contains(l, "Reloaded server configuration") })
	s := wechat.Sender{Token: token}
	fake.interaction(t, "o_reload", "message")
	if code, body := post(t, s, callback, lateText("o_reload", "during the outage", 4)); code != 200 || body != "success" {
		t.Fatalf("reply during the outage = %d %q, want success (a fallback)", code, body)
	}
	if v := metricValue(t, admin, `wxgate_ingress_fallbacks_total{account="default",reason="bus_down"}`); v != 1 {
		t.Errorf("bus_down fallbacks = %v, want 1", v)
	}
	if v := metricValue(t, admin, `wxgate_ingress_requests_total{account="default",outcome="empty"}`); v != 0 {
		t.Errorf("empty answers = %v, want 0: a reply was answered as nothing to say", v)
	}

	write(true)
	if err := ns.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	msgs := fake.waitMessages(t, 1)
	if msgs[0].ToUser != "o_reload" || msgs[0].Content != "during the outage" {
		t.Errorf("late reply = %+v", msgs[0])
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		if v := metricValue(t, admin, "wxgate_intake_unanswered_total"); v != 1 {
			return fmt.Errorf("events recorded as unanswered = %v, want 1", v)
		}
		return nil
	})
	if v := metricValue(t, w.admin, `wxgate_late_replies_total{account="default",outcome="sent"}`); v != 1 {
		t.Errorf("late replies sent = %v, want 1", v)
	}
	if n := len(fake.calls(t).Messages); n != 1 {
		t.Errorf("%d customer-service messages, want 1", n)
	}
	waitReady(t, w.admin) // the replies store is set up again
}
