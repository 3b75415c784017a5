package gateway_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
)

// BenchmarkCallback is the whole ingress handler for a signed text message:
// over an in-process NATS server to a worker (bus), and with the worker's
// logic called directly (local, the floor).
//
//	go test -run '^$' -bench Callback -benchmem ./ingress/gateway
func BenchmarkCallback(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{Name: "bench"})
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
	svc, err := reply.Start(reply.Options{Conn: connect(), Decider: reply.NewReplier(config.Defaults().Replies), Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Stop(context.Background())

	for _, mode := range []string{"bus", "local"} {
		b.Run(mode, func(b *testing.B) {
			o := gateway.Options{Token: token, ReplyTimeout: 4 * time.Second, Logger: quiet, Registerer: prometheus.NewRegistry()}
			if mode == "bus" {
				o.Conn = connect()
			} else {
				o.Local = svc.Handle
			}
			gw, err := gateway.New(o)
			if err != nil {
				b.Fatal(err)
			}
			h := gw.Handler()
			s := wechat.Sender{Token: token}
			msg := []byte(message("text", "<Content><![CDATA[benchmark]]></Content>"))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				req, _ := s.NewRequest("http://wxgate"+gateway.Path, msg, time.Now(), strconv.Itoa(i))
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK || w.Body.Len() < 50 {
					b.Fatalf("%d %q", w.Code, w.Body.String())
				}
			}
		})
	}
}
