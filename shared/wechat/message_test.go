package wechat

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".xml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseSamples(t *testing.T) {
	tests := []struct {
		file, msgType, event, subject string
		scene, kind                   string
		dedupPrefix                   string
		check                         func(*Message) bool
	}{
		{"text", "text", "", "msg.text", "", "", "msg.24123456789012345", func(m *Message) bool { return m.Content == "你好, wxgate" }},
		{"image", "image", "", "msg.image", "", "", "msg.", func(m *Message) bool { return m.PicURL != "" && m.MediaID == "media_image_1" }},
		{"voice", "voice", "", "msg.voice", "", "", "msg.", func(m *Message) bool { return m.Recognition == "腾讯微信团队" && m.Format == "amr" }},
		{"voice_unrecognised", "voice", "", "msg.voice", "", "", "msg.", func(m *Message) bool { return m.Recognition == "" }},
		{"video", "video", "", "msg.video", "", "", "msg.", func(m *Message) bool { return m.ThumbMediaID == "thumb_1" }},
		{"shortvideo", "shortvideo", "", "msg.shortvideo", "", "", "msg.", func(m *Message) bool { return m.MediaID == "media_sv_1" }},
		{"location", "location", "", "msg.location", "", "", "msg.", func(m *Message) bool { return m.LocationX == "23.134521" && m.Label == "广州市天河区" }},
		{"link", "link", "", "msg.link", "", "", "msg.", func(m *Message) bool { return m.URL == "https://mp.weixin.qq.com/" && m.Title != "" }},
		{"subscribe", "event", "subscribe", "event.subscribe", "", "", "evt.", nil},
		{"subscribe_scene", "event", "subscribe", "event.subscribe", "123", KindSubscribe, "evt.", func(m *Message) bool { return m.Ticket != "" }},
		{"subscribe_scene_str", "event", "subscribe", "event.subscribe", "poster_a", KindSubscribe, "evt.", nil},
		{"unsubscribe", "event", "unsubscribe", "event.unsubscribe", "", "", "evt.", nil},
		{"scan", "event", "SCAN", "event.scan", "123", KindScan, "evt.", func(m *Message) bool { return m.Ticket != "" }},
		{"scan_str", "event", "SCAN", "event.scan", "store_counter_7", KindScan, "evt.", nil},
		{"location_event", "event", "LOCATION", "event.location", "", "", "evt.", func(m *Message) bool { return m.Latitude == "23.137466" && m.Precision != "" }},
		{"click", "event", "CLICK", "event.click", "", "", "evt.", func(m *Message) bool { return m.EventKey == "V1001_TODAY_MUSIC" }},
		{"view", "event", "VIEW", "event.view", "", "", "evt.", func(m *Message) bool { return m.EventKey == "https://www.qq.com/" }},
		{"scancode_push", "event", "scancode_push", "event.scancode_push", "", "", "evt.", func(m *Message) bool {
			v, ok := m.Field("ScanCodeInfo.ScanResult")
			_, container := m.Field("ScanCodeInfo")
			return ok && v == "1" && !container
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			m, err := Parse(readSample(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if m.MsgType != tt.msgType || m.Event != tt.event {
				t.Errorf("MsgType, Event = %q, %q; want %q, %q", m.MsgType, m.Event, tt.msgType, tt.event)
			}
			if m.ToUserName != "gh_7f083739789a" || m.FromUserName != "oia2TjjewbmiOUlr6X-1crbLOvLw" || m.CreateTime != 1700000000 {
				t.Errorf("header fields = %q %q %d", m.ToUserName, m.FromUserName, m.CreateTime)
			}
			if got := m.Subject(); got != tt.subject {
				t.Errorf("Subject = %q, want %q", got, tt.subject)
			}
			scene, kind, ok := m.SceneScan()
			if scene != tt.scene || kind != tt.kind || ok != (tt.scene != "") {
				t.Errorf("SceneScan = %q, %q, %v; want %q, %q", scene, kind, ok, tt.scene, tt.kind)
			}
			if got := m.DedupKey(DefaultAccount, readSample(t, tt.file)); !strings.HasPrefix(got, tt.dedupPrefix) {
				t.Errorf("DedupKey = %q, want prefix %q", got, tt.dedupPrefix)
			}
			if tt.check != nil && !tt.check(m) {
				t.Errorf("fields not as expected: %+v", m)
			}
		})
	}
}

func TestParseSafeEnvelope(t *testing.T) {
	m, err := Parse(readSample(t, "safe_envelope"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Encrypt != sampleEncrypt || m.ToUserName != "gh_10f6c3c3ac5a" {
		t.Errorf("envelope = %+v", m)
	}
}

func TestParseRejects(t *testing.T) {
	deep := strings.Repeat("<a>", MaxDepth+1) + strings.Repeat("</a>", MaxDepth+1)
	many := strings.Repeat("<a>1</a>", MaxElements)
	tests := map[string]string{
		"empty":        "",
		"not xml":      "hello",
		"wrong root":   "<root><MsgType>text</MsgType></root>",
		"unclosed":     "<xml><MsgType>text</MsgType>",
		"mismatched":   "<xml><MsgType>text</Event></xml>",
		"too deep":     "<xml>" + deep + "</xml>",
		"too many":     "<xml>" + many + "</xml>",
		"bad entity":   "<xml><Content>&foo;</Content></xml>",
		"gbk encoding": `<?xml version="1.0" encoding="GBK"?><xml></xml>`,
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if m, err := Parse([]byte(in)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse = %+v, %v; want ErrMalformed", m, err)
			}
		})
	}
}

func TestParseTrimsTypesNotText(t *testing.T) {
	// WeChat's own sample has whitespace around a CDATA MsgType.
	m, err := Parse([]byte("<xml><MsgType>  <![CDATA[text]]>\n</MsgType><Content><![CDATA[  two spaces ]]></Content></xml>"))
	if err != nil {
		t.Fatal(err)
	}
	if m.MsgType != "text" || m.Content != "  two spaces " {
		t.Errorf("MsgType=%q Content=%q", m.MsgType, m.Content)
	}
}

func TestAppendXMLRoundTrips(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.xml"))
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".xml")
		if name == "scancode_push" || name == "safe_envelope" { // nested / envelope: not modelled fields
			continue
		}
		m, err := Parse(readSample(t, name))
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(m.AppendXML(nil))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		m.Fields, back.Fields = nil, nil
		if !reflect.DeepEqual(m, back) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", name, *back, *m)
		}
	}
}

func TestSceneLimits(t *testing.T) {
	tests := []struct {
		name, event, key string
		scene, problem   string // problem "" means a valid scene
		scan             bool
	}{
		{"scan", "SCAN", "poster_a", "poster_a", "", true},
		{"subscribe", "subscribe", "qrscene_123", "123", "", true},
		{"whitespace kept", "SCAN", " a b ", " a b ", "", true},
		{"_other is a scene", "SCAN", "_other", "_other", "", true},
		{"64 characters", "SCAN", strings.Repeat("场", 64), strings.Repeat("场", 64), "", true},
		{"65 characters", "SCAN", strings.Repeat("a", 65), strings.Repeat("a", 65), SceneTooLong, true},
		{"1000 Chinese characters", "SCAN", strings.Repeat("场", 1000), strings.Repeat("场", 1000), SceneTooLong, true},
		{"not UTF-8", "SCAN", "a\xffb", "a\xffb", SceneInvalidUTF8, true},
		{"empty SCAN", "SCAN", "", "", SceneEmpty, true},
		{"empty qrscene", "subscribe", "qrscene_", "", SceneEmpty, true},
		{"plain follow", "subscribe", "", "", "", false},
		{"click", "CLICK", "k", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Message{MsgType: "event", Event: tt.event, EventKey: tt.key}
			scene, _, scan := m.SceneCandidate()
			if scan != tt.scan || scene != tt.scene {
				t.Fatalf("SceneCandidate = %q, %v; want %q, %v", scene, scan, tt.scene, tt.scan)
			}
			if !scan {
				return
			}
			if got := SceneProblem(scene); got != tt.problem {
				t.Fatalf("SceneProblem = %q, want %q", got, tt.problem)
			}
			if _, _, ok := m.SceneScan(); ok != (tt.problem == "") {
				t.Fatalf("SceneScan ok = %v with problem %q", ok, tt.problem)
			}
		})
	}
}
