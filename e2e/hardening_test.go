package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/analytics"
)

// The scenes that used to silence wxgate for good: longer than a NATS
// control line once base64-encoded into a key, in ASCII and in Chinese.
var longScenes = []string{strings.Repeat("z", 5000), strings.Repeat("场", 1000)}

func scanXML(openid, scene string, createTime int64) []byte {
	return []byte(fmt.Sprintf("<xml><ToUserName><![CDATA[gh_e2e]]></ToUserName><FromUserName><![CDATA[%s]]></FromUserName>"+
		"<CreateTime>%d</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event>"+
		"<EventKey><![CDATA[%s]]></EventKey></xml>", openid, createTime, scene))
}

// Long scenes through the real pipelines, distributed and standalone: each
// is answered, counted as rejected, never stored; the workers stay ready
// and keep answering.
func TestLongScenesThroughRealPipelines(t *testing.T) {
	s := wechat.Sender{Token: token}
	// ingress is the admin listener that counts rejected scenes; admins
	// are every process that must stay ready.
	check := func(t *testing.T, url, ingress, counts string, admins ...string) {
		t.Helper()
		for i, scene := range longScenes {
			if code, body := post(t, s, url, scanXML("o_long", scene, 1700000000+int64(i))); code != 200 || body != "success" {
				t.Fatalf("scan of a %d-byte scene = %d %q, want success", len(scene), code, body)
			}
		}
		expectEcho(t, s, url, "still answered")
		if n := metricValue(t, ingress, `wxgate_scene_rejected_total{account="default",reason="too_long"}`); n != float64(len(longScenes)) {
			t.Errorf("scenes rejected as too long = %v, want %d", n, len(longScenes))
		}
		waitReady(t, admins...)
		expectEcho(t, s, url, "and again")
		if code := nettest.Status("http://" + ingress + "/api/scenes/" + strings.Repeat("z", 3100)); code != 400 {
			t.Errorf("long admin path = %d, want 400", code)
		}
		expectEcho(t, s, url, "after the long path")
		// The leader got past the long scenes: a real one after them counts,
		// and they count for nothing.
		if code, body := post(t, s, url, scanXML("o_after", "after_long", 1700000100)); code != 200 || !strings.Contains(body, "after_long") {
			t.Fatalf("scan after the long scenes = %d %q", code, body)
		}
		waitCounts(t, counts, map[string]int{"after_long": 1})
	}
	t.Run("distributed", func(t *testing.T) {
		ns := startNATS(t)
		w1, w2 := startWorker(t, ns.url), startWorker(t, ns.url)
		_, url, admin := startIngress(t, "NATS_URL="+ns.url)
		waitReady(t, admin, w1.admin, w2.admin)
		check(t, url, admin, w1.admin, admin, w1.admin, w2.admin)
	})
	t.Run("standalone", func(t *testing.T) {
		p := start(t, "ingress", []string{"WECHAT_TOKEN=" + token, "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "DATA_DIR=" + t.TempDir()}, "-standalone", "-nats-listen", "")
		url := "http://" + p.listenAddr(t, "http") + "/wechat"
		admin := p.listenAddr(t, "admin")
		waitReady(t, admin)
		check(t, url, admin, admin, admin)
	})
}

// Poison already in the event stream, as an older ingress (or any
// publisher) could have stored it: an event that is not XML, and scans of
// scenes WeChat never issues. The first is quarantined to the dead-letter
// stream and counted once, the rest count for nothing, and every scan
// around them is counted exactly: by the leader that meets them, and by
// the one that takes over after it is killed -9 and replays from its
// snapshot.
func TestPoisonEventsInTheStream(t *testing.T) {
	ns := startNATS(t)
	w1 := startWorker(t, ns.url)
	_, url, admin := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, admin, w1.admin)
	s := wechat.Sender{Token: token}

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
	scan := func(openid string, i int64) {
		t.Helper()
		if code, body := post(t, s, url, scanXML(openid, "poster", 1700000100+i)); code != 200 || !strings.Contains(body, "poster") {
			t.Fatalf("scan = %d %q", code, body)
		}
	}
	for i := int64(0); i < 3; i++ {
		scan(fmt.Sprintf("o_before_%d", i), i)
	}
	poison := map[string][]byte{
		"garbage":    []byte("{not xml"),
		"long scene": scanXML("o_old", longScenes[0], 1700000000),
		"中文 scene":   scanXML("o_old", longScenes[1], 1700000001),
	}
	for name, data := range poison {
		if _, err := js.Publish(ctx, events.Subject("default", "event.scan"), data, jetstream.WithMsgID("poison."+name)); err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(0); i < 3; i++ {
		scan(fmt.Sprintf("o_after_%d", i), 10+i)
	}
	waitCounts(t, w1.admin, map[string]int{"poster": 6})
	wait.For(t, wait.Long, wait.Every, func() error {
		if n := metricValue(t, w1.admin, `wxgate_analytics_poison_total{reason="undecodable"}`); n != 1 {
			return fmt.Errorf("poison counted %v times, want 1", n)
		}
		return nil
	})
	waitReady(t, w1.admin)

	// A standby takes over from a leader killed -9, and replays from the
	// last snapshot: the poison comes again, its dead-letter copy does not.
	w2 := startWorker(t, ns.url)
	w1.kill(t)
	w2.waitLog(t, "analytics: leading", nil)
	scan("o_last", 20)
	waitCounts(t, w2.admin, map[string]int{"poster": 7})
	expectEcho(t, s, url, "after the takeover")
	dl, err := js.Stream(ctx, analytics.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dl.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("dead-letter stream holds %d events, want 1", info.State.Msgs)
	}
	m, err := dl.GetMsg(ctx, info.State.FirstSeq)
	if err != nil || m.Header.Get(analytics.HeaderPoisonReason) != analytics.PoisonUndecodable {
		t.Errorf("dead letter = %v, %v", m, err)
	}
	waitReady(t, w2.admin)
}

// What NATS can lose under a running deployment: the totals bucket, the
// event stream, and at last everything (NATS restarted without its data).
// Each is noticed and rebuilt without a restart, /readyz says 503 while it
// is not, the totals already counted are kept (the leader holds them), and
// what is accepted afterwards is counted exactly.
func TestRecoveryFromLostJetStreamState(t *testing.T) {
	port := nettest.FreePort(t)
	ns := startNATSAt(t, port, t.TempDir())
	w := startWorker(t, ns.url)
	ingress, url, admin := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, admin, w.admin)
	s := wechat.Sender{Token: token}
	n := int64(0)
	scan := func(scene string) {
		t.Helper()
		n++
		msg := scanXML(fmt.Sprintf("o_%d", n), scene, 1700000000+n)
		for retry := 0; retry < 2; retry++ { // each sent twice, as WeChat's retries
			if code, body := post(t, s, url, msg); code != 200 || (body != "success" && !strings.Contains(body, scene)) {
				t.Fatalf("scan of %s = %d %q", scene, code, body)
			}
		}
	}
	js := func() jetstream.JetStream {
		nc, err := nats.Connect(ns.url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		j, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	ctx := context.Background()
	scan("p1")
	waitCounts(t, w.admin, map[string]int{"p1": 1})

	if err := js().DeleteKeyValue(ctx, stats.BucketName); err != nil {
		t.Fatal(err)
	}
	w.waitLog(t, "analytics lost what it stands on; setting up again", nil)
	waitCounts(t, w.admin, map[string]int{"p1": 1})
	scan("p2")
	waitCounts(t, w.admin, map[string]int{"p1": 1, "p2": 1})

	if err := js().DeleteStream(ctx, events.Stream); err != nil {
		t.Fatal(err)
	}
	scan("p3")
	scan("p3")
	waitCounts(t, w.admin, map[string]int{"p1": 1, "p2": 1, "p3": 2})

	// NATS restarted on an empty store: streams and buckets are gone.
	if code := ns.terminate(t); code != 0 {
		t.Fatalf("nats-server exit %d", code)
	}
	waitNotReady(t, w.admin)
	ns = startNATSAt(t, port, t.TempDir())
	ingress.waitLog(t, "nats reconnected", nil)
	waitReady(t, admin, w.admin)
	scan("p4")
	scan("p4")
	scan("p5")
	waitCounts(t, w.admin, map[string]int{"p1": 1, "p2": 1, "p3": 2, "p4": 2, "p5": 1})
	if got := metricValue(t, w.admin, `wxgate_component_ready{component="analytics"}`); got != 1 {
		t.Errorf("analytics part ready = %v", got)
	}
}

// A connection NATS closes for good (here: the server restarted with new
// credentials, so every reconnect is refused) is not survived alive and
// deaf: the worker and the ingress exit non-zero, so that an orchestrator
// starts fresh ones, and say why.
func TestClosedConnectionExitsNonZero(t *testing.T) {
	port := nettest.FreePort(t)
	store := t.TempDir()
	ns := startNATSAt(t, port, store, "--auth", "first-token")
	url := "nats://first-token@127.0.0.1:" + port
	w := startWorker(t, url)
	ingress, _, admin := startIngress(t, "NATS_URL="+url)
	waitReady(t, admin, w.admin)

	if code := ns.terminate(t); code != 0 {
		t.Fatalf("nats-server exit %d", code)
	}
	startNATSAt(t, port, store, "--auth", "rotated-token")
	for _, p := range []*proc{w.proc, ingress} {
		select {
		case <-p.Exited():
		case <-time.After(wait.Long):
			t.Fatalf("%s still running with its connection refused for good", p.Name)
		}
		if code := p.ExitCode(); code == 0 {
			t.Errorf("%s exited 0, want non-zero", p.Name)
		}
		if !strings.Contains(p.Output(), "nats connection closed for good") {
			t.Errorf("%s did not say why it stopped", p.Name)
		}
	}
}
