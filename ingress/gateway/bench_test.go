package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/reply"
)

// BenchmarkCallback is the whole ingress handler for a signed text message,
// each a new one: with the worker's logic called directly (local, the
// floor), over an in-process NATS server to a worker (bus), and as
// production runs it (bus+intake: the event stored in JetStream first, the
// worker's reply kept for retries), and as standalone mode runs it
// (ask+intake: the same, the worker asked in process). Requests run 64 at
// a time; cpu-µs/op is the process's CPU per request, the embedded
// server's included.
//
//	go test -run '^$' -bench Callback -benchmem ./ingress/gateway
func BenchmarkCallback(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Name: "bench", StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	connect := func() *nats.Conn {
		nc, err := nats.Connect("", srv.ConnectOptions()...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		return nc
	}
	wnc := connect()
	js, err := jetstream.New(wnc)
	if err != nil {
		b.Fatal(err)
	}
	store, err := dedup.Open(js, "bench", dedup.Options{Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	svc, err := reply.Start(reply.Options{Conn: wnc, Dedup: store, Decider: reply.NewReplier(config.Defaults().Replies), Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Stop(context.Background())

	for _, mode := range []string{"local", "bus", "bus+intake", "ask+intake"} {
		b.Run(mode, func(b *testing.B) {
			o := gateway.Options{Accounts: defaultOnly(b, accounts.Account{Token: token}), ReplyTimeout: 4 * time.Second, Logger: quiet, Registerer: prometheus.NewRegistry()}
			switch mode {
			case "local":
				o.Local = svc.Handle
			case "bus":
				o.Conn = connect()
			case "bus+intake", "ask+intake":
				o.Conn = connect()
				if mode == "ask+intake" {
					o.Ask = svc.Ask
				}
				in, err := intake.New(intake.Options{Conn: o.Conn, Streams: events.Defaults(), Logger: quiet, Registerer: o.Registerer})
				if err != nil {
					b.Fatal(err)
				}
				defer in.Close(context.Background())
				o.Intake = in
			}
			gw, err := gateway.New(o)
			if err != nil {
				b.Fatal(err)
			}
			h := gw.Handler()
			s := wechat.Sender{Token: token}
			b.ReportAllocs()
			// 64 requests in flight, as under load; the process's CPU
			// (the embedded server's included) per request is reported.
			b.SetParallelism(32)
			var n atomic.Int64
			cpu := processCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					msg := []byte(message("text", "<Content><![CDATA[benchmark]]></Content>"))
					req, _ := s.NewRequest("http://wxgate"+gateway.Path, msg, time.Now(), strconv.FormatInt(i, 10))
					w := httptest.NewRecorder()
					h.ServeHTTP(w, req)
					if w.Code != http.StatusOK || w.Body.Len() < 50 {
						b.Errorf("%d %q", w.Code, w.Body.String())
						return
					}
				}
			})
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N)/1e3, "cpu-µs/op")
		})
	}
}

// processCPU is the CPU time the process has used (user and system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
