package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/nettest"
	"github.com/wxgate/wxgate/shared/wait"
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
	check := func(t *testing.T, url string, workerAdmins ...string) {
		t.Helper()
		for i, scene := range longScenes {
			if code, body := post(t, s, url, scanXML("o_long", scene, 1700000000+int64(i))); code != 200 || body != "success" {
				t.Fatalf("scan of a %d-byte scene = %d %q, want success", len(scene), code, body)
			}
		}
		expectEcho(t, s, url, "still answered")
		var rejected float64
		for _, a := range workerAdmins {
			rejected += metricValue(t, a, `wxgate_scene_rejected_total{reason="too_long"}`)
		}
		if rejected != float64(len(longScenes)) {
			t.Errorf("scenes rejected as too long = %v, want %d", rejected, len(longScenes))
		}
		waitReady(t, workerAdmins...)
		expectEcho(t, s, url, "and again")
	}
	t.Run("distributed", func(t *testing.T) {
		ns := startNATS(t)
		w1, w2 := startWorker(t, ns.url), startWorker(t, ns.url)
		_, url, admin := startIngress(t, "NATS_URL="+ns.url)
		waitReady(t, admin, w1.admin, w2.admin)
		check(t, url, w1.admin, w2.admin)
		for _, w := range []worker{w1, w2} {
			if n := metricValue(t, w.admin, `wxgate_analytics_published_total`); n != 0 {
				t.Errorf("a worker stored %v records of scenes that are not scenes", n)
			}
		}
	})
	t.Run("standalone", func(t *testing.T) {
		p := start(t, "ingress", []string{"WECHAT_TOKEN=" + token, "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "DATA_DIR=" + t.TempDir()}, "-standalone", "-nats-listen", "")
		url := "http://" + p.listenAddr(t, "http") + "/wechat"
		admin := p.listenAddr(t, "admin")
		waitReady(t, admin)
		check(t, url, admin)
		if code := nettest.Status("http://" + admin + "/api/scenes/" + strings.Repeat("z", 3100)); code != 400 {
			t.Errorf("long admin path = %d, want 400", code)
		}
		expectEcho(t, s, url, "after the long path")
	})
}

// A poison record already in the stream, as an older version stored it (a
// scene of 5 000 bytes): it is quarantined to the dead-letter stream and
// counted once, the scans around it are counted exactly, and past the
// consumer's redelivery window it has not come back and the workers still
// answer.
func TestPoisonRecordInTheStream(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.url)
	_, url, admin := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, admin, w.admin)
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
	for i := 0; i < 3; i++ {
		if code, body := post(t, s, url, scanXML(fmt.Sprintf("o_before_%d", i), "poster", 1700000100+int64(i))); code != 200 || body == "success" {
			t.Fatalf("scan = %d %q", code, body)
		}
	}
	old, _ := json.Marshal(analytics.Record{Account: "gh_e2e", OpenID: "o_old", Scene: longScenes[0], Kind: analytics.KindScan,
		CreateTime: 1700000000, Received: time.Now(), DedupKey: "evt.0000000000000000000000000000poison"})
	if _, err := js.Publish(ctx, analytics.SubjectPrefix+analytics.KindScan, old, jetstream.WithMsgID("evt.poison")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if code, body := post(t, s, url, scanXML(fmt.Sprintf("o_after_%d", i), "poster", 1700000200+int64(i))); code != 200 || body == "success" {
			t.Fatalf("scan = %d %q", code, body)
		}
	}
	waitCounts(t, w.admin, map[string]int{"poster": 6})
	wait.For(t, wait.Long, wait.Every, func() error {
		if n := metricValue(t, w.admin, `wxgate_analytics_poison_total{reason="invalid_scene"}`); n != 1 {
			return fmt.Errorf("poison counted %v times, want 1", n)
		}
		return nil
	})

	// Past the consumer's redelivery window (30 s), a record it had merely
	// failed would be delivered again; a terminated one is not.
	time.Sleep(31 * time.Second) // the window itself is under test: nothing happens to wait for
	expectEcho(t, s, url, "after the redelivery window")
	if n := metricValue(t, w.admin, `wxgate_analytics_poison_total{reason="invalid_scene"}`); n != 1 {
		t.Errorf("poison counted %v times after the redelivery window, want 1", n)
	}
	if n := metricValue(t, w.admin, `wxgate_analytics_redeliveries_total`); n != 0 {
		t.Errorf("%v records redelivered", n)
	}
	dl, err := js.Stream(ctx, analytics.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dl.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("dead-letter stream holds %d records, want 1", info.State.Msgs)
	}
	m, err := dl.GetMsg(ctx, info.State.FirstSeq)
	if err != nil || m.Header.Get(analytics.HeaderPoisonReason) != analytics.PoisonInvalidScene {
		t.Errorf("dead letter = %v, %v", m, err)
	}
	waitReady(t, w.admin)
	waitCounts(t, w.admin, map[string]int{"poster": 6})
}

// What NATS can lose under a running deployment: the analytics consumer,
// the totals bucket, and at last everything (NATS restarted without its
// data). Each is noticed and rebuilt without a restart, /readyz says 503
// while it is not, and what is accepted afterwards is counted exactly.
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
			if code, body := post(t, s, url, msg); code != 200 || !strings.Contains(body, scene) {
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

	if err := js().DeleteConsumer(ctx, analytics.StreamName, analytics.ConsumerName); err != nil {
		t.Fatal(err)
	}
	w.waitLog(t, "analytics consumer lost; rebuilding", nil)
	scan("p2")
	scan("p2")
	waitCounts(t, w.admin, map[string]int{"p1": 1, "p2": 2})

	if err := js().DeleteKeyValue(ctx, analytics.BucketName); err != nil {
		t.Fatal(err)
	}
	// The totals went with the bucket; what comes after is counted.
	wait.For(t, wait.Long, wait.Every, func() error {
		if got := metricValue(t, w.admin, "wxgate_analytics_consumer_rebuilds_total"); got < 2 {
			return fmt.Errorf("%v rebuilds", got)
		}
		return nil
	})
	scan("p3")
	waitCounts(t, w.admin, map[string]int{"p3": 1})

	// NATS restarted on an empty store: the stream, the consumer and both
	// buckets are gone.
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
	waitCounts(t, w.admin, map[string]int{"p4": 2, "p5": 1})
	if got := metricValue(t, w.admin, "wxgate_component_ready{component=\"analytics\"}"); got != 1 {
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
