package wechat

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Message types (MsgType) WeChat sends to an Official Account.
const (
	MsgText       = "text"
	MsgImage      = "image"
	MsgVoice      = "voice"
	MsgVideo      = "video"
	MsgShortVideo = "shortvideo"
	MsgLocation   = "location"
	MsgLink       = "link"
	MsgEvent      = "event"
)

// Events (Event, when MsgType is "event"). WeChat spells SCAN, LOCATION,
// CLICK and VIEW in capitals and subscribe/unsubscribe in lower case; the
// helpers here compare case-insensitively.
const (
	EventSubscribe   = "subscribe"
	EventUnsubscribe = "unsubscribe"
	EventScan        = "SCAN"
	EventLocation    = "LOCATION"
	EventClick       = "CLICK"
	EventView        = "VIEW"
)

// Scan kinds, as used in metrics and analytics.
const (
	KindSubscribe = "subscribe"
	KindScan      = "scan"
)

// ScenePrefix marks the EventKey of a subscribe that came through a QR code.
const ScenePrefix = "qrscene_"

// Limits on untrusted XML. WeChat's deepest message (pic_weixin events) nests
// four levels and carries a few dozen elements.
const (
	MaxDepth    = 16
	MaxElements = 1024
)

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("malformed message XML")

// Field is one element of a message, kept in document order. Nested elements
// are flattened with dotted names ("ScanCodeInfo.ScanResult") so that events
// this package does not model are still fully available.
type Field struct {
	Name  string
	Value string
}

// Message is one callback message or event. The typed fields cover every
// message and event WeChat documents for Official Accounts; Fields keeps all
// elements, including ones not modelled here.
type Message struct {
	ToUserName   string
	FromUserName string
	CreateTime   int64
	MsgType      string
	MsgID        string // MsgId (MsgID on the events that carry one): decimal, up to 64 bits

	Content      string // text
	PicURL       string // image
	MediaID      string // image, voice, video, shortvideo
	Format       string // voice
	Recognition  string // voice, when speech recognition is on
	ThumbMediaID string // video, shortvideo
	LocationX    string // location: Location_X
	LocationY    string // location: Location_Y
	Scale        string // location
	Label        string // location
	Title        string // link
	Description  string // link
	URL          string // link

	Event     string
	EventKey  string // qrscene_<scene> on subscribe, <scene> on SCAN, key on CLICK, URL on VIEW
	Ticket    string // QR ticket on subscribe/SCAN
	Latitude  string // LOCATION event
	Longitude string
	Precision string

	Encrypt string // safe mode envelope

	Fields []Field
}

// Parse reads a message from its XML. It rejects documents that are not
// well-formed, whose root is not <xml>, or that exceed MaxDepth or
// MaxElements. WeChat's usual flat messages take a fast path; anything else
// goes through encoding/xml, with the same result (FuzzParseFast).
func Parse(data []byte) (*Message, error) {
	m := &Message{}
	if parseFlat(data, m, false) {
		return m, nil
	}
	return parseXML(data)
}

// parseXML is Parse by encoding/xml, for any well-formed document.
func parseXML(data []byte) (*Message, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	m := &Message{}
	var (
		path     []string // element names below the root
		parents  []bool   // whether the element at that depth has children
		text     []byte
		elements int
		rooted   bool
	)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			if !rooted {
				return nil, fmt.Errorf("%w: no <xml> element", ErrMalformed)
			}
			return nil, fmt.Errorf("%w: unexpected end", ErrMalformed)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			elements++
			if elements > MaxElements {
				return nil, fmt.Errorf("%w: more than %d elements", ErrMalformed, MaxElements)
			}
			if !rooted {
				if t.Name.Local != "xml" {
					return nil, fmt.Errorf("%w: root element is <%s>, want <xml>", ErrMalformed, t.Name.Local)
				}
				rooted = true
				continue
			}
			if len(path) >= MaxDepth {
				return nil, fmt.Errorf("%w: nested deeper than %d", ErrMalformed, MaxDepth)
			}
			if len(parents) > 0 {
				parents[len(parents)-1] = true
			}
			path = append(path, t.Name.Local)
			parents = append(parents, false)
			text = text[:0]
		case xml.CharData:
			if len(path) > 0 {
				text = append(text, t...)
			}
		case xml.EndElement:
			if len(path) == 0 {
				// The root closed: anything after it is ignored, as WeChat's
				// own samples parse only the first document.
				return m, nil
			}
			if !parents[len(parents)-1] {
				name := path[0]
				if len(path) > 1 {
					name = strings.Join(path, ".")
				}
				m.set(name, string(text))
			}
			path = path[:len(path)-1]
			parents = parents[:len(parents)-1]
			text = text[:0]
		}
	}
}

// set records an element and fills the typed field it names.
func (m *Message) set(name, value string) {
	m.Fields = append(m.Fields, Field{Name: name, Value: value})
	m.assign(name, value)
}

// assign fills the typed field name names, if any.
func (m *Message) assign(name, value string) {
	trimmed := strings.TrimSpace(value)
	switch name {
	case "ToUserName":
		m.ToUserName = trimmed
	case "FromUserName":
		m.FromUserName = trimmed
	case "CreateTime":
		// A bad CreateTime is left at 0 rather than rejecting the message:
		// WeChat always sends digits, and 0 only weakens dedup of garbage.
		m.CreateTime, _ = strconv.ParseInt(trimmed, 10, 64)
	case "MsgType":
		m.MsgType = trimmed
	case "MsgId", "MsgID": // events that carry one spell it MsgID
		m.MsgID = trimmed
	case "Content":
		m.Content = value
	case "PicUrl":
		m.PicURL = trimmed
	case "MediaId":
		m.MediaID = trimmed
	case "Format":
		m.Format = trimmed
	case "Recognition":
		m.Recognition = value
	case "ThumbMediaId":
		m.ThumbMediaID = trimmed
	case "Location_X":
		m.LocationX = trimmed
	case "Location_Y":
		m.LocationY = trimmed
	case "Scale":
		m.Scale = trimmed
	case "Label":
		m.Label = value
	case "Title":
		m.Title = value
	case "Description":
		m.Description = value
	case "Url":
		m.URL = trimmed
	case "Event":
		m.Event = trimmed
	case "EventKey":
		// Not trimmed: the scene is the EventKey exactly as delivered.
		m.EventKey = value
	case "Ticket":
		m.Ticket = trimmed
	case "Latitude":
		m.Latitude = trimmed
	case "Longitude":
		m.Longitude = trimmed
	case "Precision":
		m.Precision = trimmed
	case "Encrypt":
		m.Encrypt = trimmed
	}
}

// Field returns the value of the named element ("ScanCodeInfo.ScanType"
// for nested ones) and whether it was present.
func (m *Message) Field(name string) (string, bool) {
	for _, f := range m.Fields {
		if f.Name == name {
			return f.Value, true
		}
	}
	return "", false
}

// IsEvent reports whether the message is an event rather than a message.
func (m *Message) IsEvent() bool { return strings.EqualFold(m.MsgType, MsgEvent) }

// IsEventType reports whether the message is the event named ev.
func (m *Message) IsEventType(ev string) bool {
	return m.IsEvent() && strings.EqualFold(m.Event, ev)
}

// Scene limits: WeChat's scene_str is 1 to 64 characters (a scene_id is at
// most 10 digits). Anything else in an EventKey did not come from a QR code
// WeChat issued, so it is not counted as a scene, and nothing derived from it
// (a subject, a KV key, a label) can grow with what a sender writes.
const MaxSceneChars = 64

// Reasons a scan's scene is refused (the reason label of
// wxgate_scene_rejected_total).
const (
	SceneEmpty       = "empty"
	SceneTooLong     = "too_long"
	SceneInvalidUTF8 = "invalid_utf8"
)

// SceneReasons lists every reason SceneProblem can return.
var SceneReasons = []string{SceneEmpty, SceneTooLong, SceneInvalidUTF8}

// SceneProblem returns why scene cannot be a scene, or "" when it can: it
// must be 1 to MaxSceneChars characters of valid UTF-8, whitespace included.
func SceneProblem(scene string) string {
	switch {
	case scene == "":
		return SceneEmpty
	case len(scene) > 4*MaxSceneChars:
		return SceneTooLong // more bytes than 64 characters can take
	case !utf8.ValidString(scene):
		return SceneInvalidUTF8
	case utf8.RuneCountInString(scene) > MaxSceneChars:
		return SceneTooLong
	}
	return ""
}

// SceneScan returns the QR scene of a parametric-code scan and its kind:
// a subscribe whose EventKey is qrscene_<scene> (a new follower) or a SCAN
// whose EventKey is <scene> (an existing one). Numeric scene_id and string
// scene_str values are returned alike, as the text WeChat sent. ok is false
// when the message is not a scan, or its scene is not valid (SceneProblem;
// SceneCandidate tells which).
func (m *Message) SceneScan() (scene, kind string, ok bool) {
	scene, kind, scan := m.SceneCandidate()
	if !scan || SceneProblem(scene) != "" {
		return "", "", false
	}
	return scene, kind, true
}

// SceneCandidate is SceneScan without the validity check: scan reports
// whether the message is a subscribe with a qrscene_ EventKey or a SCAN,
// whatever the scene it carries.
func (m *Message) SceneCandidate() (scene, kind string, scan bool) {
	switch {
	case m.IsEventType(EventSubscribe):
		if scene, ok := strings.CutPrefix(m.EventKey, ScenePrefix); ok {
			return scene, KindSubscribe, true
		}
	case m.IsEventType(EventScan):
		return m.EventKey, KindScan, true
	}
	return "", "", false
}

// Scene is SceneScan without the kind.
func (m *Message) Scene() (string, bool) {
	scene, _, ok := m.SceneScan()
	return scene, ok
}

// AppendXML appends the message as WeChat sends it: the typed fields that
// are set, strings in CDATA. It is the inverse of Parse for those fields;
// the simulator and tests build messages with it.
func (m *Message) AppendXML(dst []byte) []byte {
	dst = append(dst, "<xml>"...)
	str := func(name, v string) {
		if v != "" {
			dst = cdataElem(dst, name, v)
		}
	}
	num := func(name, v string) {
		if v != "" {
			dst = append(dst, '<')
			dst = append(dst, name...)
			dst = append(dst, '>')
			dst = appendText(dst, v)
			dst = append(dst, "</"...)
			dst = append(dst, name...)
			dst = append(dst, '>')
		}
	}
	str("ToUserName", m.ToUserName)
	str("FromUserName", m.FromUserName)
	num("CreateTime", strconv.FormatInt(m.CreateTime, 10))
	str("MsgType", m.MsgType)
	str("Content", m.Content)
	str("PicUrl", m.PicURL)
	str("MediaId", m.MediaID)
	str("Format", m.Format)
	if strings.EqualFold(m.MsgType, MsgVoice) {
		dst = cdataElem(dst, "Recognition", m.Recognition) // present even when empty, as WeChat sends it
	}
	str("ThumbMediaId", m.ThumbMediaID)
	num("Location_X", m.LocationX)
	num("Location_Y", m.LocationY)
	num("Scale", m.Scale)
	str("Label", m.Label)
	str("Title", m.Title)
	str("Description", m.Description)
	str("Url", m.URL)
	str("Event", m.Event)
	if m.IsEvent() && (m.IsEventType(EventSubscribe) || m.IsEventType(EventScan) || m.EventKey != "") {
		dst = cdataElem(dst, "EventKey", m.EventKey)
	}
	str("Ticket", m.Ticket)
	num("Latitude", m.Latitude)
	num("Longitude", m.Longitude)
	num("Precision", m.Precision)
	num("MsgId", m.MsgID)
	return append(dst, "</xml>"...)
}
