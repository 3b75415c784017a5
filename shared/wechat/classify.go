package wechat

import (
	"strings"
	"unicode/utf8"
)

// Classify reads just what the ingress needs to route a message (ToUserName,
// FromUserName, CreateTime, MsgType, MsgId, Event, EventKey, Encrypt) into m,
// without encoding/xml. It understands only the flat shape WeChat sends:
// <xml>, then elements holding plain text or one CDATA section, then </xml>.
// Anything else (a prolog, attributes, nesting, entities, comments, CR) makes
// it return false, and the caller uses Parse. When it returns true, Parse
// would succeed on the same input and set the same fields (FuzzClassify
// checks this on every input the fuzzer finds).
func Classify(data []byte, m *Message) bool { return parseFlat(data, m, true) }

// parseFlat reads WeChat's flat message shape without encoding/xml: all
// fields, or with headerOnly just those Classify promises.
func parseFlat(data []byte, m *Message, headerOnly bool) bool {
	*m = Message{}
	if !utf8.Valid(data) {
		return false
	}
	s := string(data) // one copy; the fields below are substrings of it
	i := skipSpace(s, 0)
	if !strings.HasPrefix(s[i:], "<xml>") {
		return false
	}
	i += len("<xml>")
	for elements := 1; ; elements++ {
		if elements > MaxElements {
			return false
		}
		i = skipSpace(s, i)
		if strings.HasPrefix(s[i:], "</xml>") {
			return true // what follows the root is ignored, as Parse does
		}
		// <Name>
		if i >= len(s) || s[i] != '<' {
			return false
		}
		nameEnd := i + 1
		for nameEnd < len(s) && isNameByte(s[nameEnd], nameEnd == i+1) {
			nameEnd++
		}
		if nameEnd == i+1 || nameEnd >= len(s) || s[nameEnd] != '>' {
			return false
		}
		name := s[i+1 : nameEnd]
		i = nameEnd + 1
		// value: spaces, then text or one CDATA section, then spaces
		var value string
		lead := skipSpace(s, i)
		if strings.HasPrefix(s[lead:], "<![CDATA[") {
			start := lead + len("<![CDATA[")
			end := strings.Index(s[start:], "]]>")
			if end < 0 {
				return false
			}
			trail := skipSpace(s, start+end+3)
			value = s[i:lead] + s[start:start+end] + s[start+end+3:trail]
			i = trail
		} else {
			end := strings.IndexByte(s[i:], '<')
			if end < 0 {
				return false
			}
			value = s[i : i+end]
			if strings.IndexByte(value, '&') >= 0 || strings.Contains(value, "]]>") {
				return false // entities, or text the parser refuses
			}
			i += end
		}
		if !plainChars(value) {
			return false
		}
		// </Name>
		if !strings.HasPrefix(s[i:], "</") || !strings.HasPrefix(s[i+2:], name) ||
			i+2+len(name) >= len(s) || s[i+2+len(name)] != '>' {
			return false
		}
		i += 2 + len(name) + 1
		switch {
		case !headerOnly:
			m.set(name, value)
		case isHeaderField(name):
			m.assign(name, value)
		}
	}
}

// isHeaderField reports whether Classify reads the element.
func isHeaderField(name string) bool {
	switch name {
	case "ToUserName", "FromUserName", "CreateTime", "MsgType", "MsgId", "MsgID", "Event", "EventKey", "Encrypt":
		return true
	}
	return false
}

func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n') {
		i++
	}
	return i
}

func isNameByte(c byte, first bool) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || (!first && c >= '0' && c <= '9')
}

// plainChars reports whether s has only characters XML allows and the
// parser passes through unchanged (no CR, which it would normalise).
func plainChars(s string) bool {
	for _, r := range s {
		if r == '\r' || !isXMLChar(r) {
			return false
		}
	}
	return true
}
