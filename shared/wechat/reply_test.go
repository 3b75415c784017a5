package wechat

import (
	"encoding/xml"
	"strings"
	"testing"
)

type replyDoc struct {
	XMLName      xml.Name `xml:"xml"`
	ToUserName   string
	FromUserName string
	CreateTime   int64
	MsgType      string
	Content      string
	Image        struct{ MediaId string }
	Voice        struct{ MediaId string }
	Video        struct{ MediaId, Title, Description string }
	Music        struct{ Title, Description, MusicUrl, HQMusicUrl, ThumbMediaId string }
	ArticleCount int
	Articles     struct {
		Item []struct{ Title, Description, PicUrl, Url string } `xml:"item"`
	}
	TransInfo struct{ KfAccount string }
}

func decodeReply(t *testing.T, b []byte) replyDoc {
	t.Helper()
	var d replyDoc
	if err := xml.Unmarshal(b, &d); err != nil {
		t.Fatalf("reply is not well-formed XML: %v\n%s", err, b)
	}
	return d
}

func TestReplyTypes(t *testing.T) {
	tests := []struct {
		r     Reply
		check func(replyDoc) bool
	}{
		{Reply{Type: ReplyText, Content: "你好"}, func(d replyDoc) bool { return d.Content == "你好" }},
		{Reply{Type: ReplyImage, MediaID: "m1"}, func(d replyDoc) bool { return d.Image.MediaId == "m1" }},
		{Reply{Type: ReplyVoice, MediaID: "m2"}, func(d replyDoc) bool { return d.Voice.MediaId == "m2" }},
		{Reply{Type: ReplyVideo, MediaID: "m3", Title: "t", Description: "d"}, func(d replyDoc) bool {
			return d.Video.MediaId == "m3" && d.Video.Title == "t" && d.Video.Description == "d"
		}},
		{Reply{Type: ReplyMusic, Title: "t", MusicURL: "u", HQMusicURL: "hq", ThumbMediaID: "th"}, func(d replyDoc) bool {
			return d.Music.MusicUrl == "u" && d.Music.HQMusicUrl == "hq" && d.Music.ThumbMediaId == "th"
		}},
		{Reply{Type: ReplyNews, Articles: []Article{{Title: "a", URL: "u1"}, {Title: "b", PicURL: "p2"}}}, func(d replyDoc) bool {
			return d.ArticleCount == 2 && len(d.Articles.Item) == 2 && d.Articles.Item[0].Url == "u1" && d.Articles.Item[1].PicUrl == "p2"
		}},
		{Reply{Type: ReplyTransfer}, func(d replyDoc) bool { return d.TransInfo.KfAccount == "" }},
		{Reply{Type: ReplyTransfer, KfAccount: "kf@test"}, func(d replyDoc) bool { return d.TransInfo.KfAccount == "kf@test" }},
	}
	for _, tt := range tests {
		t.Run(tt.r.Type, func(t *testing.T) {
			d := decodeReply(t, tt.r.AppendXML(nil, "openid", "gh_1", 42))
			if d.ToUserName != "openid" || d.FromUserName != "gh_1" || d.CreateTime != 42 || d.MsgType != tt.r.Type {
				t.Errorf("header = %+v", d)
			}
			if !tt.check(d) {
				t.Errorf("body = %+v", d)
			}
		})
	}
}

func TestReplyHostileContent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"a]]>b", "a]]>b"},
		{"]]>]]>", "]]>]]>"},
		{"]]]>", "]]]>"},
		{"<script>&amp;</script>", "<script>&amp;</script>"},
		{"bell\x07 nul\x00 esc\x1b", "bell nul esc"},
		{"tab\tnl\ncr\r", "tab\tnl\ncr\r"[:len("tab\tnl\ncr")] + "\n"}, // XML normalises CR to LF
		{"emoji 😀 4-byte 𠀀", "emoji 😀 4-byte 𠀀"},
		{"bad utf8 \xff\xfe", "bad utf8 \uFFFD\uFFFD"},
		{"noncharacter \uFFFE\uFFFF", "noncharacter "},
		{"lone ]] and >", "lone ]] and >"},
	}
	for _, tt := range tests {
		d := decodeReply(t, TextReply(tt.in).AppendXML(nil, "o]]>", "g<h", 1))
		if d.Content != tt.want {
			t.Errorf("content %q round-trips as %q, want %q", tt.in, d.Content, tt.want)
		}
		if d.ToUserName != "o]]>" || d.FromUserName != "g<h" {
			t.Errorf("names round-trip as %q, %q", d.ToUserName, d.FromUserName)
		}
	}
}

func TestReplyTo(t *testing.T) {
	m := &Message{ToUserName: "gh_account", FromUserName: "openid_1"}
	d := decodeReply(t, TextReply("x").ReplyTo(m, 7))
	if d.ToUserName != "openid_1" || d.FromUserName != "gh_account" {
		t.Errorf("ReplyTo addressed %q from %q", d.ToUserName, d.FromUserName)
	}
	if !strings.Contains(string(EncryptedReply("e", "s", "1<2", "n")), "<TimeStamp>1&lt;2</TimeStamp>") {
		t.Error("TimeStamp not escaped")
	}
}
