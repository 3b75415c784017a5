package reply

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/wxgate/wxgate/shared/bus"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
)

func TestReplier(t *testing.T) {
	texts := config.Defaults().Replies
	custom := texts
	custom.Scan = "scan {scene} / {scene}"
	custom.Default = ""
	custom.SubscribeScene = ""
	tests := []struct {
		name  string
		texts config.ReplyTexts
		m     wechat.Message
		want  string // "" means no reply
	}{
		{"text", texts, wechat.Message{MsgType: "text", Content: "hi"}, "hi"},
		{"empty text", texts, wechat.Message{MsgType: "text", Content: ""}, ""},
		{"voice", texts, wechat.Message{MsgType: "voice", Recognition: "识别"}, "识别"},
		{"voice unrecognised", texts, wechat.Message{MsgType: "voice", Recognition: " "}, "未识别"},
		{"image gets default", texts, wechat.Message{MsgType: "image"}, "您的消息已收到。"},
		{"default off", custom, wechat.Message{MsgType: "image"}, ""},
		{"subscribe", texts, wechat.Message{MsgType: "event", Event: "subscribe"}, "感谢您的关注！"},
		{"subscribe scene", texts, wechat.Message{MsgType: "event", Event: "subscribe", EventKey: "qrscene_42"}, "感谢您的关注！场景值:42"},
		{"subscribe scene text off", custom, wechat.Message{MsgType: "event", Event: "subscribe", EventKey: "qrscene_42"}, "感谢您的关注！"},
		{"SCAN", texts, wechat.Message{MsgType: "event", Event: "SCAN", EventKey: "42"}, "您扫描的场景值为：42"},
		{"scan lower-case", texts, wechat.Message{MsgType: "event", Event: "scan", EventKey: "42"}, "您扫描的场景值为：42"},
		{"scan template", custom, wechat.Message{MsgType: "event", Event: "SCAN", EventKey: "a"}, "scan a / a"},
		{"SCAN without key", texts, wechat.Message{MsgType: "event", Event: "SCAN"}, ""},
		{"scene with spaces kept", texts, wechat.Message{MsgType: "event", Event: "SCAN", EventKey: " a b "}, "您扫描的场景值为： a b "},
		{"SCAN with a scene too long", texts, wechat.Message{MsgType: "event", Event: "SCAN", EventKey: strings.Repeat("场", 65)}, ""},
		{"subscribe with a scene too long", texts, wechat.Message{MsgType: "event", Event: "subscribe", EventKey: "qrscene_" + strings.Repeat("z", 65)}, "感谢您的关注！"},
		{"SCAN with invalid UTF-8", texts, wechat.Message{MsgType: "event", Event: "SCAN", EventKey: "a\xffb"}, ""},
		{"SCAN of 64 characters", texts, wechat.Message{MsgType: "event", Event: "SCAN", EventKey: strings.Repeat("场", 64)}, "您扫描的场景值为：" + strings.Repeat("场", 64)},
		{"click", texts, wechat.Message{MsgType: "event", Event: "CLICK", EventKey: "k"}, ""},
		{"unsubscribe", texts, wechat.Message{MsgType: "event", Event: "unsubscribe"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReplier(tt.texts).Reply(&tt.m)
			switch {
			case tt.want == "" && r != nil:
				t.Fatalf("reply %+v, want none", r)
			case tt.want != "" && (r == nil || r.Type != wechat.ReplyText || r.Content != tt.want):
				t.Fatalf("reply %+v, want text %q", r, tt.want)
			}
		})
	}
}

// A worker takes the ingress's deadline as a budget (deadline minus
// received, both the ingress's clock) counted from its own now: clocks
// apart by any amount give the same time to answer.
// A first delivery is timed by the ingress's durations from when it
// arrived here, whatever this worker's clock says of the ingress's: a
// clock ahead does not make every request arrive past its deadline, and
// one behind does not stretch the wait beyond WeChat's 5 seconds.
func TestFirstDeliveryTimingIsRelative(t *testing.T) {
	arrival := time.Now()
	for _, c := range []struct {
		name         string
		skew         time.Duration // the ingress host's clock minus this worker's
		queued       time.Duration // between the ingress's send and the arrival here
		budget       time.Duration // Wx-Deadline minus Wx-Sent, by the ingress's clock
		wantDeadline time.Duration // from arrival
	}{
		{"same clock", 0, 0, 4 * time.Second, 3900 * time.Millisecond},
		{"worker 10s ahead", -10 * time.Second, 0, 4 * time.Second, 3900 * time.Millisecond},
		{"worker 10s behind", 10 * time.Second, 0, 4 * time.Second, 3900 * time.Millisecond},
		{"worker a day behind", 24 * time.Hour, 0, 4 * time.Second, 3900 * time.Millisecond},
		{"budget past WeChat's", 0, 0, time.Minute, 5 * time.Second},
		{"budget spent", 0, 0, 50 * time.Millisecond, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			sent := arrival.Add(c.skew - c.queued)
			received := sent.Add(-300 * time.Millisecond) // the ingress's own work before the request
			h := micro.Headers{
				bus.HeaderReceived: []string{bus.FormatTime(received)},
				bus.HeaderSent:     []string{bus.FormatTime(sent)},
				bus.HeaderDeadline: []string{bus.FormatTime(sent.Add(c.budget))},
			}
			since, deadline := timing(h, arrival)
			if got := deadline.Sub(arrival); got != c.wantDeadline {
				t.Errorf("deadline = arrival + %v, want + %v", got, c.wantDeadline)
			}
			// since is when the ingress received it, on this clock: at least
			// the ingress's 300ms before arrival, never after arrival.
			if since.After(arrival.Add(-300 * time.Millisecond)) {
				t.Errorf("since = arrival %+v, want at least 300ms before", since.Sub(arrival))
			}
		})
	}
	since, deadline := timing(micro.Headers{}, arrival)
	if !since.Equal(arrival) || deadline.Sub(arrival) != 5*time.Second {
		t.Errorf("without headers: since %v, deadline + %v; want arrival, + 5s", since.Sub(arrival), deadline.Sub(arrival))
	}
}

// A request without Wx-Sent (an older ingress) is timed from Wx-Received,
// with the same clock-independence.
func TestTimingWithoutSentIsRelative(t *testing.T) {
	for _, skew := range []time.Duration{0, 10 * time.Second, -10 * time.Second, 24 * time.Hour} {
		received := time.Now().Add(skew) // the ingress host's clock
		h := micro.Headers{
			bus.HeaderReceived: []string{bus.FormatTime(received)},
			bus.HeaderDeadline: []string{bus.FormatTime(received.Add(4 * time.Second))},
		}
		_, d := timing(h, time.Now())
		if left := time.Until(d); left < 3*time.Second || left > 4*time.Second {
			t.Errorf("skew %v: %v left, want about 4s", skew, left)
		}
	}
}
