package rules

import (
	"encoding/json"
	"testing"

	"github.com/wxgate/wxgate/shared/wechatapi"
)

// The console's auto-replies become a draft: the follow reply first, a
// rule per keyword (contain/equal as contains/exact), the default reply
// last; what a passive reply cannot carry is left out.
func TestFromAutoreply(t *testing.T) {
	info := `{"is_add_friend_reply_open":1,"is_autoreply_open":1,"add_friend_autoreply_info":{"type":"text","content":"欢迎关注"},` +
		`"message_default_autoreply_info":{"type":"img","content":"MEDIA_1"},"keyword_autoreply_info":{"list":[` +
		`{"rule_name":"价格","reply_mode":"reply_all","keyword_list_info":[{"type":"text","match_mode":"contain","content":"价格"},{"type":"text","match_mode":"equal","content":"多少钱"}],` +
		`"reply_list_info":[{"type":"voice","content":"VOICE"},{"type":"news","news_info":{"list":[{"title":"价目表","digest":"d","cover_url":"http://mmbiz.qpic.cn/x","content_url":"http://mp.weixin.qq.com/s?x"}]}}]},` +
		`{"rule_name":"语音","keyword_list_info":[{"type":"text","match_mode":"equal","content":"听"}],"reply_list_info":[{"type":"voice","content":"V"}]}]}}`
	var a wechatapi.Autoreply
	if err := json.Unmarshal([]byte(info), &a); err != nil {
		t.Fatal(err)
	}
	got := FromAutoreply(a)
	if err := Validate(got); err != nil {
		t.Fatal(err)
	}
	type row struct{ event, keyword, match, reply string }
	want := []row{{"subscribe", "", "", "text:欢迎关注"}, {"", "价格", "contains", "news:价目表"}, {"", "多少钱", "exact", "news:价目表"}, {"message", "", "", "image:MEDIA_1"}}
	if len(got) != len(want) {
		t.Fatalf("%d rules, want %d: %+v", len(got), len(want), got)
	}
	for i, r := range got {
		g := row{event: r.When.Event, match: r.When.Match, reply: r.Reply.Type + ":" + r.Reply.Content + r.Reply.MediaID}
		if r.When.Keyword != nil {
			g.keyword = *r.When.Keyword
		}
		if r.Reply.Type == ReplyNews {
			g.reply += r.Reply.Articles[0].Title
		}
		if g != want[i] {
			t.Errorf("rule %d: %+v, want %+v", i, g, want[i])
		}
	}
	// Turned off in the console: nothing to import.
	a.FollowReplyOpen, a.AutoreplyOpen = 0, 0
	if got := FromAutoreply(a); len(got) != 0 {
		t.Errorf("switched off: %+v", got)
	}
}
