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

// A worker's deadline is its own arrival time plus the wait the ingress
// still had when it sent the request (Wx-Timeout), less the answer's way
// back, and never past WeChat's 5 seconds: no clock of the ingress's host
// is read, so clocks set apart by any amount give the same time to answer.
// Without the header (an older ingress), a second, well inside its usual wait.
func TestDeadlineIsRelative(t *testing.T) {
	arrival := time.Now()
	for _, c := range []struct {
		name   string
		header string // Wx-Timeout
		want   time.Duration
	}{
		{"most of the wait left", "3900", 3800 * time.Millisecond},
		{"a little left", "150", 50 * time.Millisecond},
		{"under the margin", "60", 0},
		{"past WeChat's 5s", "60000", 5 * time.Second},
		{"none (an older ingress)", "", time.Second},
		{"not a number", "soon", time.Second},
		{"negative", "-5", time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := micro.Headers{}
			if c.header != "" {
				h[bus.HeaderTimeout] = []string{c.header}
			}
			if got := deadline(h, arrival).Sub(arrival); got != c.want {
				t.Errorf("deadline = arrival + %v, want + %v", got, c.want)
			}
		})
	}
}
