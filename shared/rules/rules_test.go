package rules

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/wxgate/wxgate/shared/wechat"
)

var seed = Texts{Subscribe: "感谢您的关注！", SubscribeScene: "场景值:{scene}", Scan: "您扫描的场景值为：{scene}",
	VoiceUnrecognised: "未识别", Default: "您的消息已收到。"}

func event(ev, key string) *wechat.Message {
	return &wechat.Message{ToUserName: "gh_a", FromUserName: "o1", MsgType: "event", Event: ev, EventKey: key}
}

func msg(t, content string) *wechat.Message {
	m := &wechat.Message{ToUserName: "gh_a", FromUserName: "o1", MsgType: t}
	if t == "voice" {
		m.Recognition = content
	} else {
		m.Content = content
	}
	return m
}

func answer(t *testing.T, e *Engine, m *wechat.Message, labels Labels) string {
	t.Helper()
	in := InputOf(m)
	i := e.Match(in)
	if i < 0 {
		return "<none>"
	}
	r := e.Rule(i)
	switch r.Reply.Type {
	case ReplyHandler:
		return "handler:" + r.Reply.Subject
	}
	out := Render(&r.Reply, in, labels)
	if out == nil {
		return "<none>"
	}
	if out.Type == wechat.ReplyText {
		return out.Content
	}
	return out.Type
}

// The default rules answer exactly as the seed's replies did.
func TestDefaultsAreTheSeed(t *testing.T) {
	e, err := Compile(Defaults(seed))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		m    *wechat.Message
		want string
	}{
		{event("subscribe", "qrscene_123123"), "感谢您的关注！场景值:123123"},
		{event("subscribe", ""), "感谢您的关注！"},
		{event("subscribe", "qrscene_"+strings.Repeat("x", 65)), "感谢您的关注！"}, // not a scene
		{event("SCAN", "poster_a"), "您扫描的场景值为：poster_a"},
		{event("SCAN", ""), "<none>"},
		{event("unsubscribe", ""), "<none>"},
		{event("CLICK", "V1001"), "<none>"},
		{event("LOCATION", ""), "<none>"},
		{msg("text", "你好"), "你好"},
		{msg("text", "{scene} stays as written"), "{scene} stays as written"},
		{msg("text", ""), "<none>"},
		{msg("voice", "  "), "未识别"},
		{msg("voice", "你好"), "你好"},
		{msg("image", ""), "您的消息已收到。"},
		{msg("somethingnew", ""), "您的消息已收到。"},
	} {
		if got := answer(t, e, tt.m, nil); got != tt.want {
			t.Errorf("%s/%s %q: %q, want %q", tt.m.MsgType, tt.m.Event, tt.m.EventKey+tt.m.Content+tt.m.Recognition, got, tt.want)
		}
	}
	// No default reply: other messages get success.
	quiet := seed
	quiet.Default = ""
	e, _ = Compile(Defaults(quiet))
	if got := answer(t, e, msg("image", ""), nil); got != "<none>" {
		t.Errorf("REPLY_DEFAULT empty: %q", got)
	}
}

func parse(t testing.TB, js string) []Rule {
	t.Helper()
	var rs []Rule
	if err := json.Unmarshal([]byte(js), &rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestFirstMatchingRuleDecides(t *testing.T) {
	rs := parse(t, `[
		{"name":"store a","when":{"scene":"store_a"},"reply":{"type":"text","content":"欢迎光临{label}（{group}）"}},
		{"name":"stores","when":{"scene_prefix":"store_"},"reply":{"type":"text","content":"store {scene}"}},
		{"name":"new via poster","when":{"event":"subscribe","scene":"poster"},"reply":{"type":"text","content":"welcome"}},
		{"name":"hi","when":{"keyword":"Hi"},"reply":{"type":"text","content":"hello"}},
		{"name":"price","when":{"keyword":"价格","match":"contains"},"reply":{"type":"news","articles":[{"title":"价目表","url":"https://example.com/p"}]}},
		{"name":"order","when":{"keyword":"^order-[0-9]+$","match":"regex"},"reply":{"type":"handler","subject":"bots.orders"}},
		{"name":"menu","when":{"key":"V1001"},"reply":{"type":"image","media_id":"MEDIA1"}},
		{"name":"voice only","when":{"event":"voice","keyword":"帮助","match":"contains"},"reply":{"type":"text","content":"voice help"}},
		{"name":"quiet","when":{"event":"unsubscribe"},"reply":{"type":"none"}}
	]`)
	e, err := Compile(rs)
	if err != nil {
		t.Fatal(err)
	}
	labels := func(scene string) (string, string) {
		if scene == "store_a" {
			return "A店", "门店"
		}
		return "", ""
	}
	for _, tt := range []struct {
		m    *wechat.Message
		want string
	}{
		{event("subscribe", "qrscene_store_a"), "欢迎光临A店（门店）"}, // a scene rule covers subscribe…
		{event("SCAN", "store_a"), "欢迎光临A店（门店）"},              // …and SCAN
		{event("SCAN", "store_b"), "store store_b"},
		{event("subscribe", "qrscene_poster"), "welcome"},
		{event("SCAN", "poster"), "<none>"}, // narrowed to subscribe
		{msg("text", "  hI "), "hello"},     // exact ignores case and space
		{msg("text", "hi there"), "<none>"},
		{msg("text", "请问价格多少"), "news"},
		{msg("text", "order-42"), "handler:bots.orders"},
		{msg("text", "order-x"), "<none>"},
		{event("CLICK", "V1001"), "image"},
		{msg("voice", "我要帮助"), "voice help"},
		{msg("text", "我要帮助"), "<none>"},
		{event("unsubscribe", ""), "<none>"},
		{msg("image", ""), "<none>"}, // stored rules are the whole truth
	} {
		if got := answer(t, e, tt.m, labels); got != tt.want {
			t.Errorf("%s/%s %q: %q, want %q", tt.m.MsgType, tt.m.Event, tt.m.EventKey+tt.m.Content+tt.m.Recognition, got, tt.want)
		}
	}
	// Order decides even across the indexes: an earlier general rule wins
	// over a later exact one.
	e, _ = Compile(parse(t, `[
		{"name":"all text","when":{"event":"text"},"reply":{"type":"text","content":"first"}},
		{"name":"exact","when":{"keyword":"hi"},"reply":{"type":"text","content":"second"}}]`))
	if got := answer(t, e, msg("text", "hi"), nil); got != "first" {
		t.Errorf("order: %q, want the earlier rule", got)
	}
}

func TestValidateNamesRuleAndField(t *testing.T) {
	for _, tt := range []struct{ rules, want string }{
		{`[{"when":{},"reply":{"type":"text","content":"ok"}},{"when":{"keyword":"(","match":"regex"},"reply":{"type":"none"}}]`, "rules[1].when.keyword"},
		{`[{"when":{"keyword":"` + strings.Repeat("a", 257) + `","match":"regex"},"reply":{"type":"none"}}]`, "rules[0].when.keyword"},
		{`[{"when":{},"reply":{"type":"text","content":"` + strings.Repeat("a", 2049) + `"}}]`, "rules[0].reply.content"},
		{`[{"when":{},"reply":{"type":"news","articles":[]}}]`, "rules[0].reply.articles"},
		{`[{"when":{},"reply":{"type":"news","articles":[{"title":"t","url":"javascript:alert(1)"}]}}]`, "rules[0].reply.articles[0].url"},
		{`[{"when":{},"reply":{"type":"handler","subject":"msg.text"}}]`, "rules[0].reply.subject"},
		{`[{"when":{},"reply":{"type":"handler","subject":"bots.>"}}]`, "rules[0].reply.subject"},
		{`[{"when":{},"reply":{"type":"handler","subject":"a b"}}]`, "rules[0].reply.subject"},
		{`[{"when":{},"reply":{"type":"handler","subject":"bots.x","timeout_ms":999999}}]`, "rules[0].reply.timeout_ms"},
		{`[{"when":{},"reply":{"type":"gif"}}]`, "rules[0].reply.type"},
		{`[{"when":{"event":"SUBSCRIBE"},"reply":{"type":"none"}}]`, "rules[0].when.event"},
		{`[{"when":{"scene":"a","keyword":"b"},"reply":{"type":"none"}}]`, "rules[0].when"},
		{`[{"when":{"event":"text","scene":"a"},"reply":{"type":"none"}}]`, "rules[0].when.event"},
		{`[{"when":{},"reply":{"type":"none"},"actions":[{"tag":"` + strings.Repeat("标", 11) + `"}]}]`, "rules[0].actions[0].tag"},
	} {
		err := Validate(parse(t, tt.rules))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want+":") {
			t.Errorf("%.80s: %v, want an error naming %s", tt.rules, err, tt.want)
		}
	}
	many := make([]Rule, MaxRules+1)
	for i := range many {
		many[i] = Rule{Reply: Reply{Type: ReplyNone}}
	}
	if err := Validate(many); err == nil {
		t.Error("a list over MaxRules was accepted")
	}
}

func TestRequiredLiteral(t *testing.T) {
	for expr, want := range map[string]string{
		"^order-[0-9]+$":   "order-",
		"退款|退货":            "退", // factored: 退(款|货)
		"款|货":              "",
		"(?i)hello":        "",
		"^(订单)[0-9]{6}查询$": "订单",
		`\d+`:              "",
	} {
		if got := requiredLiteral(expr); got != want {
			t.Errorf("requiredLiteral(%q) = %q, want %q", expr, got, want)
		}
	}
}

// manyRules is the benchmark's list: 1 000 rules, 100 of them regexes,
// the rest scenes, prefixes, exact and contains keywords and menu keys.
func manyRules() []Rule {
	var rs []Rule
	s := func(v string) *string { return &v }
	for i := 0; len(rs) < 1000; i++ {
		reply := Reply{Type: ReplyText, Content: "r" + fmt.Sprint(i)}
		switch i % 10 {
		case 0:
			rs = append(rs, Rule{When: When{Keyword: s(fmt.Sprintf("^订单%d-[0-9]+$", i)), Match: MatchRegex}, Reply: reply})
		case 1, 2, 3:
			rs = append(rs, Rule{When: When{Scene: s(fmt.Sprintf("store_%d", i))}, Reply: reply})
		case 4:
			rs = append(rs, Rule{When: When{ScenePrefix: s(fmt.Sprintf("campaign_%d_", i))}, Reply: reply})
		case 5, 6:
			rs = append(rs, Rule{When: When{Keyword: s(fmt.Sprintf("关键词%d", i))}, Reply: reply})
		case 7, 8:
			rs = append(rs, Rule{When: When{Keyword: s(fmt.Sprintf("包含%d", i)), Match: MatchContains}, Reply: reply})
		default:
			rs = append(rs, Rule{When: When{Key: s(fmt.Sprintf("MENU_%d", i))}, Reply: reply})
		}
	}
	return rs
}

// BenchmarkMatch is a rule's matching cost: the benchmark mix (60 % text,
// 20 % SCAN, 15 % subscribe with a scene, 5 % image) against 1 000 rules, 100
// of them regexes, none of which matches the texts (the costliest case: every
// general rule is tried).
func BenchmarkMatch(b *testing.B) {
	e, err := Compile(manyRules())
	if err != nil {
		b.Fatal(err)
	}
	mix := []*wechat.Message{
		msg("text", "你好，请问今天营业吗"), msg("text", "hello"), msg("text", "订单查询 12345"),
		msg("text", "谢谢"), msg("text", "在吗"), msg("text", "好的"),
		event("SCAN", "store_11"), event("SCAN", "poster_a"),
		event("subscribe", "qrscene_campaign_14_x"), msg("image", ""),
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e.Match(InputOf(mix[i%len(mix)]))
	}
}
