package rules

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/wxgate/wxgate/shared/wechatapi"
)

// FromAutoreply converts the console's auto-replies (WeChat's
// get_current_autoreply_info) into rules: the follow reply first, then the
// keyword rules (contain/equal as contains/exact, one rule per keyword),
// the default reply last. A reply wxgate cannot give passively as it is
// (voice, video, a news item without a link) is left out, and so is a
// keyword rule left with no reply; only the first of a rule's replies is
// kept (WeChat's reply_all sends several, which a passive reply cannot).
// The result is a draft: it passes Validate.
func FromAutoreply(a wechatapi.Autoreply) []Rule {
	out := []Rule{}
	add := func(name string, w When, item *wechatapi.AutoreplyItem) {
		if item == nil {
			return
		}
		r, ok := replyOf(*item)
		if !ok {
			return
		}
		rule := Rule{Name: clip(name, MaxName), When: w, Reply: r}
		if rule.validate() == nil {
			out = append(out, rule)
		}
	}
	if a.FollowReplyOpen != 0 {
		add("关注回复", When{Event: "subscribe"}, a.FollowReply)
	}
	if a.AutoreplyOpen != 0 {
		for _, k := range a.KeywordAutoreply.List {
			if len(k.Replies) == 0 {
				continue
			}
			for _, kw := range k.Keywords {
				if kw.Type != "" && kw.Type != "text" {
					continue
				}
				match := MatchExact
				if kw.MatchMode == "contain" {
					match = MatchContains
				}
				keyword := kw.Content
				add(cmp.Or(strings.TrimSpace(k.Name), keyword), When{Keyword: &keyword, Match: match}, firstGivable(k.Replies))
			}
		}
		add("收到消息回复", When{Event: "message"}, a.DefaultReply)
	}
	return out
}

// firstGivable is the first reply of a keyword rule that a passive reply
// can carry.
func firstGivable(items []wechatapi.AutoreplyItem) *wechatapi.AutoreplyItem {
	for i := range items {
		if _, ok := replyOf(items[i]); ok {
			return &items[i]
		}
	}
	return nil
}

func replyOf(item wechatapi.AutoreplyItem) (Reply, bool) {
	switch item.Type {
	case "text":
		return Reply{Type: ReplyText, Content: item.Content}, item.Content != ""
	case "img":
		return Reply{Type: ReplyImage, MediaID: item.Content}, item.Content != ""
	case "news":
		if item.NewsInfo == nil {
			return Reply{}, false
		}
		r := Reply{Type: ReplyNews}
		for _, n := range item.NewsInfo.List {
			if len(r.Articles) == MaxArticles {
				break
			}
			r.Articles = append(r.Articles, Article{Title: clip(n.Title, MaxTitle), Description: clip(n.Digest, MaxDescription),
				URL: n.ContentURL, PicURL: n.CoverURL})
		}
		return r, len(r.Articles) > 0
	}
	return Reply{}, false
}

// clip shortens s to at most n characters.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n])
}

// ImportFrom is APIOptions.Import through the account's client of WeChat's
// API.
func ImportFrom(wx *wechatapi.Clients) func(ctx context.Context, account string) ([]Rule, error) {
	return func(ctx context.Context, account string) ([]Rule, error) {
		api, err := wx.For(account)
		if err != nil {
			return nil, err
		}
		a, err := api.AutoreplyInfo(ctx)
		if err != nil {
			return nil, fmt.Errorf("get_current_autoreply_info: %w", err)
		}
		return FromAutoreply(a), nil
	}
}
