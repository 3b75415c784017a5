// Package e2e runs wxgate's real binaries against a real nats-server
// process and talks to them over loopback HTTP, as WeChat would.
package e2e

import (
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

const token = "e2e-token"

var seq atomic.Int64

func textMessage(content string) []byte {
	n := seq.Add(1)
	return []byte(fmt.Sprintf("<xml><ToUserName><![CDATA[gh_e2e]]></ToUserName><FromUserName><![CDATA[openid_%d]]></FromUserName>"+
		"<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[%s]]></Content><MsgId>%d</MsgId></xml>",
		n, time.Now().Unix(), content, 5000+n))
}

// post sends a signed callback and returns the status and the opened reply.
func post(t *testing.T, s wechat.Sender, url string, msg []byte) (int, string) {
	t.Helper()
	code, body, err := s.Post(http.DefaultClient, url, msg, time.Now(), "n"+strconv.FormatInt(seq.Add(1), 10))
	if err != nil {
		t.Fatal(err)
	}
	return code, string(body)
}

// expectEcho posts a text message and checks it comes back as the reply.
func expectEcho(t *testing.T, s wechat.Sender, url, content string) {
	t.Helper()
	code, body := post(t, s, url, textMessage(content))
	var d struct{ Content string }
	if code != 200 || xml.Unmarshal([]byte(body), &d) != nil || d.Content != content {
		t.Fatalf("echo of %q = %d %q", content, code, body)
	}
}

// metricValue reads one series from a process's admin listener.
func metricValue(t *testing.T, admin, series string) float64 {
	t.Helper()
	return metricstest.Scrape(t, "http://"+admin+"/metrics", series)
}

// handled is how many text messages a worker has handled.
func handled(t *testing.T, admin string) float64 {
	t.Helper()
	return metricValue(t, admin, `wxgate_worker_handled_total{account="default",subject="msg.text"}`)
}

// waitReady waits until every admin listener's /readyz answers 200.
func waitReady(t *testing.T, admins ...string) {
	t.Helper()
	for _, a := range admins {
		wait.For(t, wait.Long, wait.Every, func() error { return nettest.CheckStatus("http://"+a+"/readyz", 200) })
	}
}

// waitNotReady waits until an admin listener's /readyz answers 503.
func waitNotReady(t *testing.T, admin string) {
	t.Helper()
	wait.For(t, wait.Long, wait.Every, func() error { return nettest.CheckStatus("http://"+admin+"/readyz", 503) })
}

type worker struct {
	*proc
	admin string
}

func startWorker(t *testing.T, natsURL string, env ...string) worker {
	t.Helper()
	p := start(t, "workers", append([]string{"NATS_URL=" + natsURL, "ADMIN_ADDR=127.0.0.1:0"}, env...))
	admin := p.listenAddr(t, "admin")
	p.waitLog(t, "worker started", nil)
	return worker{p, admin}
}

// startIngress runs a distributed ingress. It stops at once on SIGTERM:
// a test of draining passes SHUTDOWN_DELAY itself (the last one wins).
func startIngress(t *testing.T, env ...string) (p *proc, url, admin string) {
	t.Helper()
	p = start(t, "ingress", append([]string{"SHUTDOWN_DELAY=0", "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "WECHAT_TOKEN=" + token}, env...))
	url = "http://" + p.listenAddr(t, "http") + "/wechat"
	admin = p.listenAddr(t, "admin")
	return p, url, admin
}

// The distributed shape: a nats-server process, the ingress and two worker
// processes. Both workers serve; with one killed -9, every request is still
// answered correctly by the other.
func TestDistributed(t *testing.T) {
	ns := startNATS(t)
	w1, w2 := startWorker(t, ns.url), startWorker(t, ns.url)
	_, url, admin := startIngress(t, "NATS_URL="+ns.url, "REPLY_TIMEOUT=2s")
	waitReady(t, admin)
	s := wechat.Sender{Token: token}

	const first = 40
	for i := 0; i < first; i++ {
		expectEcho(t, s, url, fmt.Sprintf("before %d", i))
	}
	h1, h2 := handled(t, w1.admin), handled(t, w2.admin)
	if h1+h2 != first || h1 == 0 || h2 == 0 {
		t.Fatalf("workers handled %v and %v of %d: want both serving, each request once", h1, h2, first)
	}

	w1.kill(t)
	// The server drops the dead worker's interest when it sees its socket
	// close; from then on no request can be routed to it.
	wait.For(t, wait.Long, wait.Every, func() error {
		n, err := ns.connections()
		if err == nil && n != 2 {
			err = fmt.Errorf("nats-server has %d client connections, want 2", n)
		}
		return err
	})
	const after = 20
	for i := 0; i < after; i++ {
		expectEcho(t, s, url, fmt.Sprintf("after %d", i))
	}
	if got := handled(t, w2.admin); got != h2+after {
		t.Errorf("surviving worker handled %v, want %v", got, h2+after)
	}

	// NATS gone: the ingress says it is not ready and still answers WeChat.
	ns.kill(t)
	waitNotReady(t, admin)
	if code, body := post(t, s, url, textMessage("bus down")); code != 200 || body != "success" {
		t.Errorf("with NATS down = %d %q, want 200 success", code, body)
	}
}

// SIGTERM on the ingress: in-flight requests finish with their reply, the
// connection drains, and the process exits 0.
func TestIngressGracefulShutdown(t *testing.T) {
	ns := startNATS(t)
	ingress, url, admin := startIngress(t, "NATS_URL="+ns.url, "REPLY_TIMEOUT=4s", "SHUTDOWN_DELAY=5s") // the default
	waitReady(t, admin)

	// A worker in the test that holds the request until told to answer.
	nc, err := nats.Connect(ns.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	held := make(chan *nats.Msg, 1)
	if _, err := nc.QueueSubscribe(bus.MessagesSubject, bus.QueueGroup, func(m *nats.Msg) { held <- m }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	httpReq, err := wechat.Sender{Token: token}.NewRequest(url, textMessage("in flight"), time.Now(), "inflight")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		resp, err := http.DefaultClient.Do(httpReq)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(b), err}
	}()
	var req *nats.Msg
	select {
	case req = <-held:
	case <-time.After(wait.Long):
		t.Fatal("request never reached the bus")
	}
	if req.Header.Get(bus.HeaderDedupKey) == "" || req.Header.Get(bus.HeaderAccount) != "gh_e2e" || req.Header.Get(bus.HeaderReceived) == "" {
		t.Errorf("request headers = %v", req.Header)
	}
	_ = ingress.Signal(syscall.SIGTERM)
	ingress.waitLog(t, "shutting down", nil)
	reply := wechat.TextReply("finished after SIGTERM").AppendXML(nil, "openid", "gh_e2e", 1)
	if err := req.Respond(reply); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.code != 200 || !strings.Contains(r.body, "finished after SIGTERM") {
		t.Errorf("in-flight request = %d %q %v, want the worker's reply", r.code, r.body, r.err)
	}
	if code := ingress.terminate(t); code != 0 {
		t.Errorf("ingress exit code %d, want 0", code)
	}
}

// Standalone: one process, embedded NATS, workers in process.
func TestStandalone(t *testing.T) {
	p := start(t, "ingress", []string{"HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "DATA_DIR=" + t.TempDir()}, "-standalone", "-nats-listen", "")
	url := "http://" + p.listenAddr(t, "http") + "/wechat"
	admin := p.listenAddr(t, "admin")
	s := wechat.Sender{Token: "wxgate-dev-token"} // the documented dev token

	req, err := s.NewVerifyRequest(url, "echo-standalone", time.Now(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "echo-standalone" {
		t.Fatalf("signed GET = %d %q", resp.StatusCode, b)
	}
	expectEcho(t, s, url, "standalone works")
	code, body := post(t, s, url, []byte(`<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>SCAN</Event><EventKey>poster_a</EventKey></xml>`))
	if code != 200 || !strings.Contains(body, "您扫描的场景值为：poster_a") {
		t.Errorf("SCAN = %d %q", code, body)
	}
	if nettest.Status("http://"+admin+"/readyz") != 200 || nettest.Status("http://"+admin+"/healthz") != 200 {
		t.Error("standalone admin endpoints not healthy")
	}
	// The container healthcheck: the binary probes its own admin listener.
	for bin, want := range map[string]int{"ingress": 0, "workers": 0} {
		hc := exec.Command(filepath.Join(binDir, bin), "-healthcheck")
		hc.Env = []string{"ADMIN_ADDR=" + admin}
		if err := hc.Run(); hc.ProcessState.ExitCode() != want {
			t.Errorf("%s -healthcheck against a ready process: %v", bin, err)
		}
	}
	if code := p.terminate(t); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	hc := exec.Command(filepath.Join(binDir, "ingress"), "-healthcheck")
	hc.Env = []string{"ADMIN_ADDR=" + admin}
	if err := hc.Run(); err == nil {
		t.Error("-healthcheck passed with the process gone")
	}
}
