package analytics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/natstest"
	"github.com/wxgate/wxgate/shared/wait"
)

// BenchmarkConsumer measures how fast the analytics consumer drains a
// pre-filled stream into the totals, on a real JetStream (file storage):
//
//	go test -run '^$' -bench BenchmarkConsumer -benchtime 20000x ./workers/analytics
func BenchmarkConsumer(b *testing.B) {
	for _, scenes := range []int{10, 1000} {
		b.Run(fmt.Sprintf("scenes=%d", scenes), func(b *testing.B) {
			srv := natstest.RunServer(b)
			nc := natstest.Connect(b, srv)
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := EnsureStream(ctx, js, StreamOptions{}); err != nil {
				b.Fatal(err)
			}
			// Fill the stream with b.N distinct scans before timing.
			futures := make([]jetstream.PubAckFuture, 0, b.N)
			for i := 0; i < b.N; i++ {
				r := Record{Account: "gh", OpenID: "o" + strconv.Itoa(i%5000), Scene: "scene_" + strconv.Itoa(i%scenes),
					Kind: KindScan, CreateTime: int64(i), Received: time.Unix(1700000000, 0), DedupKey: "k" + strconv.Itoa(i)}
				f, err := js.PublishMsgAsync(&nats.Msg{Subject: r.Subject(), Data: r.marshal()}, jetstream.WithMsgID(r.DedupKey))
				if err != nil {
					b.Fatal(err)
				}
				futures = append(futures, f)
			}
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			start := time.Now()
			c, err := StartConsumer(ctx, ConsumerOptions{Conn: nc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			// Polling the server's view of the consumer, often: the interval
			// bounds the timing's error. The bound allows 1,000 records/s,
			// far below any real run.
			wait.For(b, wait.Long+time.Duration(b.N)*time.Millisecond, 5*time.Millisecond, func() error {
				pending, ackPending, err := c.Lag(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if pending != 0 || ackPending != 0 {
					return fmt.Errorf("not drained: %d pending, %d ack pending", pending, ackPending)
				}
				return nil
			})
			elapsed := time.Since(start)
			b.StopTimer()
			c.Stop()
			all, err := c.Store().Scenes(ctx)
			if err != nil {
				b.Fatal(err)
			}
			var total int64
			for _, t := range all {
				total += t.Scans
			}
			if total != int64(b.N) {
				b.Fatalf("counted %d scans, want %d", total, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
		})
	}
}
