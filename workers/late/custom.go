package late

import (
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// customMessage turns a passive reply (its XML, as a worker produced it)
// into the customer-service message that says the same to openid. ok is
// false for a reply with no customer-service form: a news reply of more
// than one article (WeChat takes one since 2018), a transfer to customer
// service, anything unknown.
func customMessage(openid string, reply []byte) (wechatapi.CustomMessage, bool) {
	r, err := wechat.Parse(reply)
	if err != nil {
		return wechatapi.CustomMessage{}, false
	}
	field := func(name string) string { v, _ := r.Field(name); return v }
	msg := func(t string, body any) (wechatapi.CustomMessage, bool) {
		return wechatapi.CustomMessage{ToUser: openid, MsgType: t, Body: body}, true
	}
	switch r.MsgType {
	case wechat.ReplyText:
		if r.Content == "" {
			return wechatapi.CustomMessage{}, false
		}
		return wechatapi.TextMessage(openid, r.Content), true
	case wechat.ReplyImage:
		return msg("image", map[string]string{"media_id": field("Image.MediaId")})
	case wechat.ReplyVoice:
		return msg("voice", map[string]string{"media_id": field("Voice.MediaId")})
	case wechat.ReplyVideo:
		return msg("video", map[string]string{"media_id": field("Video.MediaId"), "title": field("Video.Title"),
			"description": field("Video.Description")})
	case wechat.ReplyMusic:
		return msg("music", map[string]string{"title": field("Music.Title"), "description": field("Music.Description"),
			"musicurl": field("Music.MusicUrl"), "hqmusicurl": field("Music.HQMusicUrl"), "thumb_media_id": field("Music.ThumbMediaId")})
	case wechat.ReplyNews:
		var articles []map[string]string
		for _, f := range r.Fields {
			if f.Name == "Articles.item.Title" {
				articles = append(articles, map[string]string{"title": f.Value})
			}
		}
		if len(articles) != 1 {
			return wechatapi.CustomMessage{}, false
		}
		a := articles[0]
		a["description"], a["url"], a["picurl"] = field("Articles.item.Description"), field("Articles.item.Url"), field("Articles.item.PicUrl")
		return msg("news", map[string]any{"articles": articles})
	}
	return wechatapi.CustomMessage{}, false
}
