// Package rules decides what an account answers, and what it does, as data:
// an ordered list of rules, each a condition on the message (event, scene,
// keyword, menu key), a reply (text, image, news, none, or a handler in any
// language behind a NATS subject) and actions (a WeChat user tag). The first
// rule whose condition holds decides. An account with no rules stored is
// answered by the default rules: the seed's replies, written as rules.
package rules

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/wxgate/wxgate/shared/wechat"
)

// Rule is one rule.
type Rule struct {
	Name    string   `json:"name"`
	When    When     `json:"when"`
	Reply   Reply    `json:"reply"`
	Actions []Action `json:"actions,omitempty"`
}

// When is a rule's condition: every field given must hold.
type When struct {
	// Event is the event (subscribe, scan, unsubscribe, click, view, ...)
	// or the message type (text, voice, image, ...), lower case; "message"
	// stands for any message that is not an event.
	Event string `json:"event,omitempty"`
	// Scene matches a parametric-code scan's scene exactly: a subscribe
	// through a code (qrscene_ removed) and a SCAN alike, unless Event
	// narrows it. ScenePrefix matches scenes that start with it ("" any
	// scene).
	Scene       *string `json:"scene,omitempty"`
	ScenePrefix *string `json:"scene_prefix,omitempty"`
	// Keyword matches a text's content or a voice message's recognition,
	// as Match says: exact (the default) and contains ignore case and
	// surrounding space; regex is RE2, at most 256 characters.
	Keyword *string `json:"keyword,omitempty"`
	Match   string  `json:"match,omitempty"`
	// Key matches a menu event's EventKey (click, and the scancode and
	// picture menus).
	Key *string `json:"key,omitempty"`
}

// Match modes of a keyword.
const (
	MatchExact    = "exact"
	MatchContains = "contains"
	MatchRegex    = "regex"
)

// Reply types.
const (
	ReplyText    = "text"
	ReplyImage   = "image"
	ReplyNews    = "news"
	ReplyNone    = "none"
	ReplyHandler = "handler"
)

// Reply is what a rule answers.
type Reply struct {
	Type string `json:"type"`
	// Content of a text reply; {scene}, {label}, {group} and {content}
	// (the message's text or recognition) are replaced.
	Content  string    `json:"content,omitempty"`
	MediaID  string    `json:"media_id,omitempty"` // image
	Articles []Article `json:"articles,omitempty"` // news: one to eight
	// Subject and TimeoutMS of a handler: a NATS service that answers a
	// JSON request with {"reply":{…}}.
	Subject   string `json:"subject,omitempty"`
	TimeoutMS int    `json:"timeout_ms,omitempty"`
}

// Article is one item of a news reply.
type Article struct {
	Title       string `json:"title"`
	Description string `json:"description,omitempty"`
	URL         string `json:"url,omitempty"`
	PicURL      string `json:"pic_url,omitempty"`
}

// Action is something done for the person a rule matched: for now, a
// WeChat user tag.
type Action struct {
	Tag string `json:"tag"`
}

// Bounds. MaxRules is the longest list an account may store: the matching
// cost is measured with 1 000 rules (BenchmarkMatch), and stays flat past
// it for the rules matched by index (scene, key, exact keyword).
const (
	MaxRules        = 2000
	MaxName         = 64   // characters
	MaxTextBytes    = 2048 // a text reply, in bytes of UTF-8: WeChat's limit for a text message
	MaxKeyword      = 256  // characters, regexes included
	MaxArticles     = 8
	MaxTitle        = 64  // characters
	MaxDescription  = 256 // characters
	MaxURL          = 1024
	MaxMediaID      = 128
	MaxSubject      = 128
	MaxActions      = 5
	MaxTagBytes     = 30 // WeChat's limit for a tag name (45158 beyond)
	DefaultTimeout  = 10000
	MaxTimeoutMS    = 60000
	minTimeoutMS    = 100
	maxKeyMenuBytes = 128
)

// Error names the rule (its index, from 0) and the field that is wrong.
type Error struct {
	Index int
	Field string
	Msg   string
}

func (e *Error) Error() string {
	if e.Index < 0 {
		return e.Field + ": " + e.Msg
	}
	return fmt.Sprintf("rules[%d].%s: %s", e.Index, e.Field, e.Msg)
}

var (
	tokenRE   = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)
	subjectRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// reservedSubjects are subjects a handler may not take: wxgate's own
// requests and streams, NATS's system and reply subjects.
var reservedSubjects = []string{"msg.", "event.", "wxgate.", "_INBOX.", "$"}

// Validate checks a rule list; the error names the rule and field.
func Validate(rules []Rule) error {
	if len(rules) > MaxRules {
		return &Error{Index: -1, Field: "rules", Msg: fmt.Sprintf("at most %d rules", MaxRules)}
	}
	for i := range rules {
		if err := rules[i].validate(); err != nil {
			err.(*Error).Index = i
			return err
		}
	}
	return nil
}

func bad(field, format string, args ...any) error {
	return &Error{Field: field, Msg: fmt.Sprintf(format, args...)}
}

func (r *Rule) validate() error {
	if !chars(r.Name, MaxName) {
		return bad("name", "at most %d characters of UTF-8", MaxName)
	}
	if err := r.When.validate(); err != nil {
		return err
	}
	if err := r.Reply.validate(); err != nil {
		return err
	}
	if len(r.Actions) > MaxActions {
		return bad("actions", "at most %d", MaxActions)
	}
	for i, a := range r.Actions {
		if a.Tag == "" || len(a.Tag) > MaxTagBytes || !utf8.ValidString(a.Tag) || hasControl(a.Tag) {
			return bad(fmt.Sprintf("actions[%d].tag", i), "a tag name of 1 to %d bytes of UTF-8 (WeChat's limit)", MaxTagBytes)
		}
	}
	return nil
}

func (w *When) validate() error {
	if w.Event != "" && !tokenRE.MatchString(w.Event) {
		return bad("when.event", "an event or message type in lower case: subscribe, scan, unsubscribe, click, view, text, voice, image, ... or message")
	}
	scene := w.Scene != nil || w.ScenePrefix != nil
	if n := btoi(scene) + btoi(w.Keyword != nil) + btoi(w.Key != nil); n > 1 {
		return bad("when", "a scene, a keyword and a menu key are in different messages: give one of them")
	}
	if w.Scene != nil && w.ScenePrefix != nil {
		return bad("when.scene_prefix", "give scene or scene_prefix, not both")
	}
	if w.Scene != nil {
		if wechat.SceneProblem(*w.Scene) != "" {
			return bad("when.scene", "a scene: 1 to %d characters of UTF-8", wechat.MaxSceneChars)
		}
	}
	if w.ScenePrefix != nil && !chars(*w.ScenePrefix, wechat.MaxSceneChars) {
		return bad("when.scene_prefix", "at most %d characters of UTF-8", wechat.MaxSceneChars)
	}
	if (w.Scene != nil || w.ScenePrefix != nil) && w.Event != "" && w.Event != "subscribe" && w.Event != "scan" {
		return bad("when.event", "a scene is only in subscribe and scan events")
	}
	switch w.Match {
	case "", MatchExact, MatchContains, MatchRegex:
	default:
		return bad("when.match", "exact, contains or regex")
	}
	if w.Match != "" && w.Keyword == nil {
		return bad("when.keyword", "match needs a keyword")
	}
	if w.Keyword != nil {
		k := *w.Keyword
		if !chars(k, MaxKeyword) {
			return bad("when.keyword", "at most %d characters of UTF-8", MaxKeyword)
		}
		if w.Match == MatchRegex {
			if _, err := regexp.Compile(k); err != nil {
				return bad("when.keyword", "not an RE2 regular expression: %v", err)
			}
		} else if w.Match == MatchContains && strings.TrimSpace(k) == "" {
			return bad("when.keyword", "contains needs some text")
		}
		if w.Event != "" && w.Event != "text" && w.Event != "voice" && w.Event != "message" {
			return bad("when.event", "a keyword is matched in text and voice messages only")
		}
	}
	if w.Key != nil {
		if *w.Key == "" || len(*w.Key) > maxKeyMenuBytes || !utf8.ValidString(*w.Key) {
			return bad("when.key", "a menu key of 1 to %d bytes", maxKeyMenuBytes)
		}
		if w.Event == "subscribe" || w.Event == "scan" || (w.Event != "" && !isEventName(w.Event)) {
			return bad("when.event", "a key is in menu events (click, scancode_push, ...)")
		}
	}
	return nil
}

func (r *Reply) validate() error {
	switch r.Type {
	case ReplyText:
		if r.Content == "" || len(r.Content) > MaxTextBytes || !utf8.ValidString(r.Content) {
			return bad("reply.content", "1 to %d bytes of UTF-8 (WeChat's limit for a text)", MaxTextBytes)
		}
	case ReplyImage:
		if r.MediaID == "" || len(r.MediaID) > MaxMediaID || !printable(r.MediaID) {
			return bad("reply.media_id", "a media_id of 1 to %d printable characters", MaxMediaID)
		}
	case ReplyNews:
		if len(r.Articles) < 1 || len(r.Articles) > MaxArticles {
			return bad("reply.articles", "1 to %d articles", MaxArticles)
		}
		for i, a := range r.Articles {
			f := fmt.Sprintf("reply.articles[%d].", i)
			switch {
			case a.Title == "" || !chars(a.Title, MaxTitle):
				return bad(f+"title", "1 to %d characters", MaxTitle)
			case !chars(a.Description, MaxDescription):
				return bad(f+"description", "at most %d characters", MaxDescription)
			case !webURL(a.URL):
				return bad(f+"url", "an http or https URL of at most %d bytes", MaxURL)
			case !webURL(a.PicURL):
				return bad(f+"pic_url", "an http or https URL of at most %d bytes", MaxURL)
			}
		}
	case ReplyNone:
	case ReplyHandler:
		if len(r.Subject) > MaxSubject || !subjectRE.MatchString(r.Subject) {
			return bad("reply.subject", "a NATS subject of letters, digits, '_' and '-' tokens separated by dots, at most %d bytes, no wildcards", MaxSubject)
		}
		for _, p := range reservedSubjects {
			if strings.HasPrefix(r.Subject+".", p) {
				return bad("reply.subject", "%s… is wxgate's or NATS's own", p)
			}
		}
		if r.TimeoutMS != 0 && (r.TimeoutMS < minTimeoutMS || r.TimeoutMS > MaxTimeoutMS) {
			return bad("reply.timeout_ms", "%d to %d", minTimeoutMS, MaxTimeoutMS)
		}
	default:
		return bad("reply.type", "text, image, news, none or handler")
	}
	if r.Type != ReplyText && r.Content != "" {
		return bad("reply.content", "only a text reply has content")
	}
	return nil
}

func isEventName(e string) bool {
	switch e {
	case "text", "voice", "image", "video", "shortvideo", "location", "link", "file", "message":
		return false
	}
	return true
}

// webURL reports an http or https URL, or none.
func webURL(s string) bool {
	if s == "" {
		return true
	}
	u, err := url.Parse(s)
	return len(s) <= MaxURL && err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// chars reports whether s is at most most characters of UTF-8.
func chars(s string, most int) bool { return utf8.ValidString(s) && utf8.RuneCountInString(s) <= most }

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
