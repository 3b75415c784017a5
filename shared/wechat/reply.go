package wechat

import (
	"strconv"
	"unicode/utf8"
)

// Passive reply types.
const (
	ReplyText     = "text"
	ReplyImage    = "image"
	ReplyVoice    = "voice"
	ReplyVideo    = "video"
	ReplyMusic    = "music"
	ReplyNews     = "news"
	ReplyTransfer = "transfer_customer_service"
)

// Article is one item of a news reply.
type Article struct {
	Title       string
	Description string
	PicURL      string
	URL         string
}

// Reply is a passive reply. Type selects which fields are used:
// text: Content; image, voice: MediaID; video: MediaID, Title, Description;
// music: Title, Description, MusicURL, HQMusicURL, ThumbMediaID;
// news: Articles; transfer_customer_service: KfAccount (optional).
type Reply struct {
	Type         string
	Content      string
	MediaID      string
	Title        string
	Description  string
	MusicURL     string
	HQMusicURL   string
	ThumbMediaID string
	Articles     []Article
	KfAccount    string
}

// TextReply is a text reply with the given content.
func TextReply(content string) *Reply { return &Reply{Type: ReplyText, Content: content} }

// ReplyTo returns the reply's XML addressed back to the sender of m.
func (r *Reply) ReplyTo(m *Message, createTime int64) []byte {
	return r.AppendXML(nil, m.FromUserName, m.ToUserName, createTime)
}

// AppendXML appends the reply's XML to dst. The result is well-formed for any
// field values: text goes in CDATA with "]]>" split across sections, and
// characters XML 1.0 forbids (most control characters, invalid UTF-8) are
// dropped or replaced.
func (r *Reply) AppendXML(dst []byte, to, from string, createTime int64) []byte {
	dst = append(dst, "<xml>"...)
	dst = cdataElem(dst, "ToUserName", to)
	dst = cdataElem(dst, "FromUserName", from)
	dst = append(dst, "<CreateTime>"...)
	dst = strconv.AppendInt(dst, createTime, 10)
	dst = append(dst, "</CreateTime>"...)
	dst = cdataElem(dst, "MsgType", r.Type)
	switch r.Type {
	case ReplyText:
		dst = cdataElem(dst, "Content", r.Content)
	case ReplyImage:
		dst = append(dst, "<Image>"...)
		dst = cdataElem(dst, "MediaId", r.MediaID)
		dst = append(dst, "</Image>"...)
	case ReplyVoice:
		dst = append(dst, "<Voice>"...)
		dst = cdataElem(dst, "MediaId", r.MediaID)
		dst = append(dst, "</Voice>"...)
	case ReplyVideo:
		dst = append(dst, "<Video>"...)
		dst = cdataElem(dst, "MediaId", r.MediaID)
		dst = cdataElem(dst, "Title", r.Title)
		dst = cdataElem(dst, "Description", r.Description)
		dst = append(dst, "</Video>"...)
	case ReplyMusic:
		dst = append(dst, "<Music>"...)
		dst = cdataElem(dst, "Title", r.Title)
		dst = cdataElem(dst, "Description", r.Description)
		dst = cdataElem(dst, "MusicUrl", r.MusicURL)
		dst = cdataElem(dst, "HQMusicUrl", r.HQMusicURL)
		dst = cdataElem(dst, "ThumbMediaId", r.ThumbMediaID)
		dst = append(dst, "</Music>"...)
	case ReplyNews:
		dst = append(dst, "<ArticleCount>"...)
		dst = strconv.AppendInt(dst, int64(len(r.Articles)), 10)
		dst = append(dst, "</ArticleCount><Articles>"...)
		for _, a := range r.Articles {
			dst = append(dst, "<item>"...)
			dst = cdataElem(dst, "Title", a.Title)
			dst = cdataElem(dst, "Description", a.Description)
			dst = cdataElem(dst, "PicUrl", a.PicURL)
			dst = cdataElem(dst, "Url", a.URL)
			dst = append(dst, "</item>"...)
		}
		dst = append(dst, "</Articles>"...)
	case ReplyTransfer:
		if r.KfAccount != "" {
			dst = append(dst, "<TransInfo>"...)
			dst = cdataElem(dst, "KfAccount", r.KfAccount)
			dst = append(dst, "</TransInfo>"...)
		}
	}
	return append(dst, "</xml>"...)
}

// EncryptedReply is the safe-mode envelope around an encrypted reply.
func EncryptedReply(encrypt, msgSignature, timestamp, nonce string) []byte {
	dst := make([]byte, 0, len(encrypt)+len(msgSignature)+len(timestamp)+len(nonce)+160)
	dst = append(dst, "<xml>"...)
	dst = cdataElem(dst, "Encrypt", encrypt)
	dst = cdataElem(dst, "MsgSignature", msgSignature)
	dst = append(dst, "<TimeStamp>"...)
	dst = appendText(dst, timestamp)
	dst = append(dst, "</TimeStamp>"...)
	dst = cdataElem(dst, "Nonce", nonce)
	return append(dst, "</xml>"...)
}

func cdataElem(dst []byte, name, value string) []byte {
	dst = append(dst, '<')
	dst = append(dst, name...)
	dst = append(dst, "><![CDATA["...)
	dst = appendCDATA(dst, value)
	dst = append(dst, "]]></"...)
	dst = append(dst, name...)
	return append(dst, '>')
}

// appendCDATA appends s for use inside a CDATA section: characters outside
// XML 1.0's Char production are dropped (invalid UTF-8 becomes U+FFFD), and a
// '>' that would close the section after "]]" starts a new section instead.
// The check runs on the output, so dropped characters cannot form a "]]>".
func appendCDATA(dst []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < utf8.RuneSelf {
			if c == '>' && len(dst) >= 2 && dst[len(dst)-1] == ']' && dst[len(dst)-2] == ']' {
				dst = append(dst, "]]><![CDATA["...)
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size == 1:
			dst = utf8.AppendRune(dst, utf8.RuneError)
		case isXMLChar(r):
			dst = utf8.AppendRune(dst, r)
		}
	}
	return dst
}

// appendText appends s as escaped character data.
func appendText(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '<':
			dst = append(dst, "&lt;"...)
		case '>':
			dst = append(dst, "&gt;"...)
		case '&':
			dst = append(dst, "&amp;"...)
		default:
			if c < 0x20 {
				continue
			}
			dst = append(dst, c)
		}
	}
	return dst
}

func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		(r >= 0x20 && r <= 0xD7FF) ||
		(r >= 0xE000 && r <= 0xFFFD) ||
		(r >= 0x10000 && r <= 0x10FFFF)
}
