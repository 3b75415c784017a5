package intake

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/wechat"
)

func TestParsePubAck(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want pubAck
		err  error // errors.Is target; nil for success
		bad  bool  // any error
	}{
		{"stored", `{"stream":"WXGATE_EVENTS","seq":42}`, pubAck{Seq: 42}, nil, false},
		{"duplicate", `{"stream":"WXGATE_EVENTS","seq":42,"duplicate":true}`, pubAck{Seq: 42, Duplicate: true}, nil, false},
		{"duplicate as the server writes it", `{"stream":"WXGATE_EVENTS","seq":42,"duplicate": true}`, pubAck{Seq: 42, Duplicate: true}, nil, false},
		{"not a duplicate", `{"stream":"WXGATE_EVENTS","seq":42,"duplicate":false}`, pubAck{Seq: 42}, nil, false},
		{"domain", `{"stream":"WXGATE_EVENTS","domain":"hub","seq":7}`, pubAck{Seq: 7}, nil, false},
		{"spaces", `{ "stream": "WXGATE_EVENTS", "seq": 9, "duplicate": true }`, pubAck{Seq: 9, Duplicate: true}, nil, false},
		{"not found", `{"error":{"code":404,"err_code":10059,"description":"stream not found"}}`, pubAck{}, jetstream.ErrStreamNotFound, false},
		{"other error", `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, pubAck{}, nil, true},
		{"no sequence", `{"stream":"WXGATE_EVENTS"}`, pubAck{}, nil, true},
		{"not json", `+OK`, pubAck{}, nil, true},
		{"empty", ``, pubAck{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePubAck([]byte(tc.in))
			switch {
			case tc.err != nil && !errors.Is(err, tc.err):
				t.Fatalf("err = %v, want %v", err, tc.err)
			case tc.bad && err == nil:
				t.Fatalf("= %+v, want an error", got)
			case tc.err == nil && !tc.bad && err != nil:
				t.Fatalf("err = %v", err)
			}
			if got != tc.want {
				t.Errorf("= %+v, want %+v", got, tc.want)
			}
		})
	}
}

// The server's own acknowledgements, first and duplicate, read right; a
// stream found missing is created and the event stored.
func TestStoreReadsTheServersAcks(t *testing.T) {
	nc := natstest.Connect(t, natstest.RunServer(t))
	in, err := New(Options{Conn: nc, Streams: events.Defaults(), Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(context.Background())
	m := &wechat.Message{ToUserName: "gh", FromUserName: "o1", CreateTime: 1, MsgType: "text", Content: "hi", MsgID: "1"}
	first, err := in.Publish(m, m.DedupKey(m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil || first.Duplicate || first.Held || first.Seq == 0 {
		t.Fatalf("first = %+v, %v", first, err)
	}
	again, err := in.Publish(m, m.DedupKey(m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil || !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("again = %+v, %v; want a duplicate of seq %d", again, err, first.Seq)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(context.Background(), events.Stream); err != nil {
		t.Fatal(err)
	}
	m.MsgID = "2"
	r, err := in.Publish(m, m.DedupKey(m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil || r.Duplicate || r.Held || r.Seq != 1 {
		t.Fatalf("with the stream gone = %+v, %v; want it recreated and the event stored first", r, err)
	}
}
