package e2e

import (
	"fmt"
	"maps"
	"strconv"
	"testing"

	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// The analytics consumer is killed -9 mid-stream while scans keep coming,
// then restarted; then the NATS server itself is restarted on its file
// store. Every count stays exact: nothing lost, nothing counted twice.
func TestAnalyticsSurvivesKillAndNATSRestart(t *testing.T) {
	port, store := nettest.FreePort(t), t.TempDir()
	ns := startNATSAt(t, port, store)

	replies := startRole(t, ns.url, "replies")
	consumer := startRole(t, ns.url, "analytics")
	ingress, url, admin := startIngress(t, "NATS_URL="+ns.url, "REPLY_TIMEOUT=2s")
	s := wechat.Sender{Token: token}
	waitReady(t, admin, replies.admin, consumer.admin)

	want := map[string]int{}
	n := 0
	burst := func(count int) {
		for i := 0; i < count; i++ {
			n++
			scene := "scene_" + strconv.Itoa(n%4)
			msg := fmt.Sprintf("<xml><ToUserName>gh_e2e</ToUserName><FromUserName>o%d</FromUserName><CreateTime>%d</CreateTime>"+
				"<MsgType>event</MsgType><Event>SCAN</Event><EventKey>%s</EventKey></xml>", n, 1700000000+n, scene)
			for copy := 0; copy <= n%3; copy++ { // 1-3 deliveries, as WeChat retries
				if code, body := post(t, s, url, []byte(msg)); code != 200 || body == "success" {
					t.Fatalf("scan %d: %d %q", n, code, body)
				}
			}
			want[scene]++
		}
	}

	burst(40)
	consumer.kill(t) // mid-stream: records are still being applied
	burst(40)        // the stream keeps them meanwhile
	consumer = startRole(t, ns.url, "analytics")
	burst(20)
	waitCounts(t, consumer.admin, want)

	// NATS restarts on its file store; everyone reconnects by themselves.
	if code := ns.terminate(t); code != 0 {
		t.Fatalf("nats-server exit %d", code)
	}
	ns = startNATSAt(t, port, store)
	for _, p := range []*proc{ingress, replies.proc, consumer.proc} {
		p.waitLog(t, "nats reconnected", nil)
	}
	waitReady(t, admin, replies.admin, consumer.admin)
	burst(20)
	waitCounts(t, consumer.admin, want)
}

func startRole(t *testing.T, natsURL, role string) worker {
	t.Helper()
	p := start(t, "workers", []string{"NATS_URL=" + natsURL, "ADMIN_ADDR=127.0.0.1:0", "WORKER_ROLES=" + role})
	admin := p.listenAddr(t, "admin")
	p.waitLog(t, "worker started", nil)
	if role == "analytics" {
		p.waitLog(t, "analytics started", nil)
	}
	return worker{p, admin}
}

// waitCounts waits until the API shows exactly want, and fails at once if
// any count goes past it.
func waitCounts(t *testing.T, admin string, want map[string]int) {
	t.Helper()
	// Two minutes: a leader stuck in a cluster gives up its lease after
	// 45 s of not turning.
	wait.For(t, 2*wait.Long, wait.Every, func() error {
		var page struct {
			Scenes []struct {
				Scene string `json:"scene"`
				Scans int    `json:"scans"`
			} `json:"scenes"`
		}
		if err := nettest.FetchJSON("http://"+admin+"/api/scenes?limit=1000", &page); err != nil {
			return err
		}
		got := map[string]int{}
		for _, sc := range page.Scenes {
			got[sc.Scene] = sc.Scans
			if sc.Scans > want[sc.Scene] {
				t.Fatalf("scene %s counted %d, want %d: double-counted", sc.Scene, sc.Scans, want[sc.Scene])
			}
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("counts %v, want %v", got, want)
		}
		return nil
	})
}
