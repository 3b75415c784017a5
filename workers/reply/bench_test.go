package reply_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/workers/reply"
)

// BenchmarkHandle is a worker's whole decision for one message: parse,
// choose the reply, build its XML.
//
//	go test -run '^$' -bench Handle -benchmem ./workers/reply
func BenchmarkHandle(b *testing.B) {
	srv := natstest.RunServer(b)
	svc, err := reply.Start(reply.Options{Conn: natstest.Connect(b, srv), Decider: reply.NewReplier(config.Defaults().Replies),
		Logger: quiet, Registerer: prometheus.NewRegistry(), Now: func() time.Time { return time.Unix(1700000000, 0) }})
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Stop(context.Background())
	for name, msg := range map[string]string{
		"text": "<xml><ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>1</MsgId></xml>",
		"scan": "<xml><ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[poster_a]]></EventKey><Ticket><![CDATA[t]]></Ticket></xml>",
	} {
		b.Run(name, func(b *testing.B) {
			data := []byte(msg)
			b.ReportAllocs()
			for b.Loop() {
				if body, err := svc.Handle("default", data); err != nil || len(body) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
}
