package rules

import (
	"strings"

	"github.com/wxgate/wxgate/shared/wechat"
)

// Texts are the seed's reply texts (REPLY_* variables), from which the
// default rules are made.
type Texts struct {
	Subscribe         string // to a new follower
	SubscribeScene    string // appended when the follow came through a code; {scene} is the scene
	Scan              string // to a follower's scan; {scene}
	VoiceUnrecognised string // to a voice message with no recognition
	Default           string // to other messages; empty: no reply
}

// Defaults are the rules an account without rules of its own answers with:
// the seed's replies. Texts left empty give no reply ("success").
func Defaults(t Texts) []Rule {
	any, empty := "", ""
	text := func(s string) Reply {
		if s == "" {
			return Reply{Type: ReplyNone}
		}
		return Reply{Type: ReplyText, Content: s}
	}
	return []Rule{
		{Name: "关注(扫码)", When: When{Event: "subscribe", ScenePrefix: &any}, Reply: text(t.Subscribe + t.SubscribeScene)},
		{Name: "关注", When: When{Event: "subscribe"}, Reply: text(t.Subscribe)},
		{Name: "扫码", When: When{Event: "scan", ScenePrefix: &any}, Reply: text(t.Scan)},
		{Name: "文字(回显)", When: When{Event: "text"}, Reply: text("{content}")},
		{Name: "语音(未识别)", When: When{Event: "voice", Keyword: &empty, Match: MatchExact}, Reply: text(t.VoiceUnrecognised)},
		{Name: "语音(识别文字)", When: When{Event: "voice"}, Reply: text("{content}")},
		{Name: "其他消息", When: When{Event: "message"}, Reply: text(t.Default)},
	}
}

// Labels tells what the account's QR code of a scene is called: its label
// and group ("" when it has none).
type Labels func(scene string) (label, group string)

// Render returns the passive reply a text, image or news rule gives to the
// message (in), nil for none (and for a text that comes out empty).
func Render(r *Reply, in Input, labels Labels) *wechat.Reply {
	switch r.Type {
	case ReplyText:
		content := r.Content
		if strings.IndexByte(content, '{') >= 0 {
			var label, group string
			// Labels are read only for a text that quotes them: the
			// seed's {scene} texts never wait on the codes' bucket.
			if in.HasScene && labels != nil && (strings.Contains(content, "{label}") || strings.Contains(content, "{group}")) {
				label, group = labels(in.Scene)
			}
			content = expand(content, in.Scene, label, group, in.Text)
		}
		if content == "" {
			return nil
		}
		return wechat.TextReply(content)
	case ReplyImage:
		return &wechat.Reply{Type: wechat.ReplyImage, MediaID: r.MediaID}
	case ReplyNews:
		out := &wechat.Reply{Type: wechat.ReplyNews, Articles: make([]wechat.Article, len(r.Articles))}
		for i, a := range r.Articles {
			out.Articles[i] = wechat.Article{Title: a.Title, Description: a.Description, URL: a.URL, PicURL: a.PicURL}
		}
		return out
	}
	return nil
}

// expand fills in a text's placeholders in one pass over the template, so
// that what a person wrote is never itself expanded. (A strings.Replacer
// built per message was 5 % of standalone's CPU.)
func expand(t, scene, label, group, content string) string {
	var b strings.Builder
	b.Grow(len(t) + len(scene) + len(label) + len(group) + len(content))
	for {
		i := strings.IndexByte(t, '{')
		if i < 0 {
			b.WriteString(t)
			return b.String()
		}
		b.WriteString(t[:i])
		t = t[i:]
		switch {
		case strings.HasPrefix(t, "{scene}"):
			b.WriteString(scene)
			t = t[len("{scene}"):]
		case strings.HasPrefix(t, "{label}"):
			b.WriteString(label)
			t = t[len("{label}"):]
		case strings.HasPrefix(t, "{group}"):
			b.WriteString(group)
			t = t[len("{group}"):]
		case strings.HasPrefix(t, "{content}"):
			b.WriteString(content)
			t = t[len("{content}"):]
		default:
			b.WriteByte('{')
			t = t[1:]
		}
	}
}
