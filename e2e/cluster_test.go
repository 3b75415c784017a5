package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

// clusterNode is one nats-server process of a three-node cluster.
type clusterNode struct {
	*natsServer
	name string
}

// startCluster runs three nats-server processes routed into one JetStream
// cluster on loopback, and waits until each reports itself healthy.
func startCluster(t *testing.T) []clusterNode {
	t.Helper()
	clusterPorts := []string{nettest.FreePort(t), nettest.FreePort(t), nettest.FreePort(t)}
	var routes []string
	for _, p := range clusterPorts {
		routes = append(routes, "nats://127.0.0.1:"+p)
	}
	nodes := make([]clusterNode, 3)
	for i := range nodes {
		name := fmt.Sprintf("n%d", i+1)
		ns := startNATSAt(t, "-1", filepath.Join(t.TempDir(), name), "-n", name, "--cluster_name", "wxgate",
			"--cluster", "nats://127.0.0.1:"+clusterPorts[i], "--routes", strings.Join(routes, ","))
		nodes[i] = clusterNode{ns, name}
	}
	for _, n := range nodes {
		// Healthy once the JetStream meta leader is known.
		wait.For(t, wait.Long, wait.Every, func() error { return nettest.CheckStatus(n.monitor+"/healthz", 200) })
	}
	return nodes
}

// Past one machine: a three-node NATS cluster with the streams, buckets and
// the analytics' snapshot store replicated three times. The node leading
// the event stream is killed -9 under load: replies continue, no accepted
// scan is lost, and replies stored before the loss still answer WeChat's
// retries.
func TestFaultClusterNodeLoss(t *testing.T) {
	nodes := startCluster(t)
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.url)
	}
	natsURL := strings.Join(urls, ",")
	env := []string{"JETSTREAM_REPLICAS=3", "DEDUP_TTL=5m"}
	w1, w2 := startWorker(t, natsURL, env...), startWorker(t, natsURL, env...)
	// Three nodes make a dozen replicated streams and buckets for three
	// processes at once: on a loaded 2-core machine that takes a while.
	for _, w := range []worker{w1, w2} {
		if _, err := w.WaitLog("analytics started", nil, 3*wait.Long); err != nil {
			t.Fatal(err)
		}
	}
	_, url, admin := startIngress(t, "NATS_URL="+natsURL)
	waitReady(t, admin, w1.admin, w2.admin)

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	info := func(name string) *jetstream.StreamInfo {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		i, err := s.Info(ctx)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		return i
	}
	tr := startTraffic(t, rate, fixed(url))
	tr.waitReplies("steady state", 200)
	for _, name := range []string{events.Stream, events.Unanswered, "KV_wxgate_scenes", "KV_wxgate_replies", "KV_wxgate_analytics", "OBJ_wxgate_analytics"} {
		if r := info(name).Config.Replicas; r != 3 {
			t.Fatalf("%s has %d replicas, want 3", name, r)
		}
	}

	leader := info(events.Stream).Cluster.Leader
	var victim clusterNode
	for _, n := range nodes {
		if n.name == leader {
			victim = n
		}
	}
	if victim.proc == nil {
		t.Fatalf("event stream leader %q is not one of ours", leader)
	}
	t.Logf("killing %s, leader of the event stream", leader)
	victim.kill(t)
	tr.waitReplies("after losing a node", 300)
	want := tr.finish()
	waitCounts(t, w1.admin, want)
	if l := info(events.Stream).Cluster.Leader; l == leader || l == "" {
		t.Fatalf("event stream leader after the loss: %q", l)
	}

	// WeChat retries of messages answered before the loss: answered with
	// the reply the answering worker kept, without running a handler.
	handledSum := func(series string) float64 {
		return metricValue(t, w1.admin, series) + metricValue(t, w2.admin, series)
	}
	handledBefore := handledSum(`wxgate_worker_handled_total{account="default",subject="event.scan"}`)
	storedBefore := handledSum("wxgate_worker_replies_from_store_total")
	for n := int64(1); n <= 20; n++ {
		msg, scene := scanMessage(n)
		code, body := post(t, tr.sender, url, msg)
		if code != 200 || !strings.Contains(body, scene) {
			t.Fatalf("retry of message %d: %d %q", n, code, body)
		}
	}
	if h := handledSum(`wxgate_worker_handled_total{account="default",subject="event.scan"}`); h != handledBefore {
		t.Fatalf("retries ran handlers: handled %v -> %v", handledBefore, h)
	}
	if s := handledSum("wxgate_worker_replies_from_store_total"); s != storedBefore+20 {
		t.Fatalf("replies from store %v -> %v, want +20", storedBefore, s)
	}
	waitCounts(t, w2.admin, want) // and the retries counted nothing twice
}
