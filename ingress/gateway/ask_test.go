package gateway_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/reply"
)

// scripted replies as the built-in texts do, except to "fail" (an error)
// and "slow" (held until released); it counts its runs.
type scripted struct {
	*reply.Replier
	runs    atomic.Int32
	release chan struct{}
}

func (d *scripted) Decide(_ context.Context, _ string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	d.runs.Add(1)
	switch m.Content {
	case "fail":
		return nil, errors.New("scripted failure")
	case "slow":
		<-d.release
	}
	return d.Reply(m), nil
}

// Standalone mode asks its workers in process (reply.Service.Ask): the
// ingress gets the same answers as by request-reply through the server.
// The in-process worker is on a server of its own, where no request of
// the gateway's could reach it: what it answers came past the bus.
func TestAskInProcessAnswersAsRequestReply(t *testing.T) {
	const timeout = 3 * time.Second
	for _, inProcess := range []bool{false, true} {
		name := map[bool]string{false: "request-reply", true: "in process"}[inProcess]
		t.Run(name, func(t *testing.T) {
			quiet := slog.New(slog.DiscardHandler)
			gwSrv := natstest.RunServer(t)
			workerSrv := gwSrv
			if inProcess {
				workerSrv = natstest.RunServer(t)
			}
			gnc := natstest.Connect(t, gwSrv)
			// The intake's stream says which delivery is a retry.
			in, err := intake.New(intake.Options{Conn: gnc, Logger: quiet, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = in.Close(context.Background()) })
			wnc := natstest.Connect(t, workerSrv)
			js, err := jetstream.New(wnc)
			if err != nil {
				t.Fatal(err)
			}
			store, err := dedup.Open(js, "w", dedup.Options{Logger: quiet, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			wait.For(t, wait.Short, wait.Every, store.Check)
			d := &scripted{Replier: reply.NewReplier(config.Defaults().Replies), release: make(chan struct{})}
			svc, err := reply.Start(reply.Options{Conn: wnc, Dedup: store, Decider: d, Logger: quiet, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			var released, stopped sync.Once
			release := func() { released.Do(func() { close(d.release) }) }
			stop := func() {
				stopped.Do(func() {
					release()
					if err := svc.Stop(context.Background()); err != nil {
						t.Error(err)
					}
				})
			}
			t.Cleanup(stop)
			o := opts{noWorker: true, conn: gnc, intake: in, replyTimeout: timeout}
			if inProcess {
				o.ask = svc.Ask
			}
			h := newHarness(t, o)

			// A first delivery gets the handler's reply.
			msg := message("text", "<Content><![CDATA[once]]></Content>")
			code, first := h.post(msg)
			if code != 200 || !strings.Contains(first, "once") {
				t.Fatalf("first delivery = %d %q, want the reply", code, first)
			}
			// Its retry (Wx-Retry: 1, the stream had it) gets the same
			// reply; the handler does not run again.
			if code, body := h.post(msg); code != 200 || body != first {
				t.Errorf("retry = %d %q, want the first's %q", code, body, first)
			}
			if n := d.runs.Load(); n != 1 {
				t.Errorf("handler ran %d times for a delivery and its retry, want 1", n)
			}
			// A worker's error is a fallback: "success", counted.
			if code, body := h.post(message("text", "<Content>fail</Content>")); code != 200 || body != "success" {
				t.Errorf("worker error = %d %q, want 200 success", code, body)
			}
			if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "worker_error"); got != 1 {
				t.Errorf("fallbacks{worker_error} = %v, want 1", got)
			}
			// A handler past the deadline: "success" at the deadline, a
			// timeout fallback; its answer, when it comes, goes nowhere.
			start := time.Now()
			if code, body := h.post(message("text", "<Content>slow</Content>")); code != 200 || body != "success" {
				t.Errorf("slow handler = %d %q, want 200 success", code, body)
			}
			if elapsed := time.Since(start); elapsed < timeout-200*time.Millisecond || elapsed > timeout+2*time.Second {
				t.Errorf("slow handler answered after %v, want at the %v deadline", elapsed, timeout)
			}
			if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "timeout"); got != 1 {
				t.Errorf("fallbacks{timeout} = %v, want 1", got)
			}
			// A stopped service has no responders.
			stop()
			if err := wnc.Flush(); err != nil { // its unsubscribe reached the server
				t.Fatal(err)
			}
			if code, body := h.post(message("text", "<Content>late</Content>")); code != 200 || body != "success" {
				t.Errorf("stopped service = %d %q, want 200 success", code, body)
			}
			if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "no_responders"); got != 1 {
				t.Errorf("fallbacks{no_responders} = %v, want 1", got)
			}
			if got := h.counter("wxgate_ingress_requests_total", "outcome", "reply"); got != 2 {
				t.Errorf("requests{reply} = %v, want 2", got)
			}
		})
	}
}
