package rules

import (
	"cmp"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/wxgate/wxgate/shared/wechat"
)

// Engine is a compiled rule list: safe for concurrent use. Rules that
// match one value exactly (a scene, a menu key, an exact keyword) are
// found through maps, so a long list costs a message little more than the
// rules that can match it; the others are tried in order.
type Engine struct {
	rules     []compiled
	byScene   map[string][]int32
	byKey     map[string][]int32
	byKeyword map[string][]int32 // exact keywords, folded
	prefixes  []int32            // scene prefixes
	// Contains keywords and the literals regexes need, by their first
	// rune: a text is scanned once, and only rules whose needle could be in
	// it are tried.
	contains map[rune][]int32
	literals map[rune][]int32
	anyRegex []int32 // regexes with no known literal
	general  []int32 // no scene, key or keyword: event alone, or nothing
}

type compiled struct {
	Rule
	keyword string // folded (exact, contains)
	match   string
	re      *regexp.Regexp
	literal string // a string every match of re contains ("" none known)
}

// Compile validates and compiles a rule list.
func Compile(rules []Rule) (*Engine, error) {
	if err := Validate(rules); err != nil {
		return nil, err
	}
	e := &Engine{rules: make([]compiled, len(rules)), byScene: map[string][]int32{}, byKey: map[string][]int32{},
		byKeyword: map[string][]int32{}, contains: map[rune][]int32{}, literals: map[rune][]int32{}}
	for i, r := range rules {
		c := compiled{Rule: r, match: cmp.Or(r.When.Match, MatchExact)}
		if r.When.Keyword != nil {
			if c.match == MatchRegex {
				c.re = regexp.MustCompile(*r.When.Keyword)
				c.literal = requiredLiteral(*r.When.Keyword)
			} else {
				c.keyword = fold(*r.When.Keyword)
			}
		}
		e.rules[i] = c
		idx, w := int32(i), r.When
		switch {
		case w.Scene != nil:
			e.byScene[*w.Scene] = append(e.byScene[*w.Scene], idx)
		case w.Key != nil:
			e.byKey[*w.Key] = append(e.byKey[*w.Key], idx)
		case w.ScenePrefix != nil:
			e.prefixes = append(e.prefixes, idx)
		case w.Keyword == nil:
			e.general = append(e.general, idx)
		case c.match == MatchExact:
			e.byKeyword[c.keyword] = append(e.byKeyword[c.keyword], idx)
		case c.match == MatchContains:
			r, _ := utf8.DecodeRuneInString(c.keyword)
			e.contains[r] = append(e.contains[r], idx)
		case c.literal != "":
			r, _ := utf8.DecodeRuneInString(c.literal)
			e.literals[r] = append(e.literals[r], idx)
		default:
			e.anyRegex = append(e.anyRegex, idx)
		}
	}
	return e, nil
}

// Rules returns the list the engine was compiled from.
func (e *Engine) Rules() []Rule {
	out := make([]Rule, len(e.rules))
	for i := range e.rules {
		out[i] = e.rules[i].Rule
	}
	return out
}

// Input is what the rules look at in a message, read once.
type Input struct {
	Event    string // lower case: the event, or the message type
	IsEvent  bool
	Scene    string // a valid scan scene, or ""
	HasScene bool
	Text     string // text content or voice recognition
	HasText  bool
	folded   string
	Key      string // a menu event's EventKey
	HasKey   bool
}

// InputOf reads what the rules look at in m.
func InputOf(m *wechat.Message) Input {
	in := Input{IsEvent: m.IsEvent()}
	if in.IsEvent {
		in.Event = strings.ToLower(m.Event)
		if scene, _, ok := m.SceneScan(); ok {
			in.Scene, in.HasScene = scene, true
		} else if in.Event != "subscribe" && in.Event != "scan" && m.EventKey != "" {
			in.Key, in.HasKey = m.EventKey, true
		}
		return in
	}
	in.Event = strings.ToLower(m.MsgType)
	switch in.Event {
	case wechat.MsgText:
		in.Text, in.HasText = m.Content, true
	case wechat.MsgVoice:
		in.Text, in.HasText = m.Recognition, true
	}
	if in.HasText {
		in.folded = fold(in.Text)
	}
	return in
}

// Match returns the index of the first rule whose condition holds, or -1.
// Each index list is in rule order, so a list is read only up to the best
// rule found so far.
func (e *Engine) Match(in Input) int {
	m := matcher{e: e, in: &in, best: len(e.rules)}
	if in.HasScene {
		m.first(e.byScene[in.Scene])
		m.first(e.prefixes)
	}
	if in.HasKey {
		m.first(e.byKey[in.Key])
	}
	if in.HasText {
		m.first(e.byKeyword[in.folded])
		for _, r := range in.folded {
			m.first(e.contains[r])
		}
		for _, r := range in.Text {
			m.first(e.literals[r])
		}
		m.first(e.anyRegex)
	}
	m.first(e.general)
	if m.best == len(e.rules) {
		return -1
	}
	return m.best
}

type matcher struct {
	e    *Engine
	in   *Input
	best int
}

func (m *matcher) first(list []int32) {
	for _, i := range list {
		if int(i) >= m.best {
			return
		}
		if m.e.rules[i].holds(m.in) {
			m.best = int(i)
			return
		}
	}
}

// Rule returns the i-th rule.
func (e *Engine) Rule(i int) *Rule { return &e.rules[i].Rule }

func (c *compiled) holds(in *Input) bool {
	w := &c.When
	switch {
	case w.Event != "" && w.Event != in.Event && !(w.Event == "message" && !in.IsEvent):
		return false
	case w.Scene != nil && (!in.HasScene || *w.Scene != in.Scene),
		w.ScenePrefix != nil && (!in.HasScene || !strings.HasPrefix(in.Scene, *w.ScenePrefix)),
		w.Key != nil && (!in.HasKey || *w.Key != in.Key),
		w.Keyword != nil && !in.HasText:
		return false
	case w.Keyword == nil:
		return true
	}
	switch c.match {
	case MatchExact:
		return in.folded == c.keyword
	case MatchContains:
		return strings.Contains(in.folded, c.keyword)
	default:
		if c.literal != "" && !strings.Contains(in.Text, c.literal) {
			return false // cheaper than the regex, which needs it anyway
		}
		return c.re.MatchString(in.Text)
	}
}

// fold is how exact and contains keywords compare: case and surrounding
// space ignored.
func fold(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// requiredLiteral returns the longest literal every match of the regex
// contains, "" when none is certain (an alternation, case folding, ...):
// checked with strings.Contains first, it spares most messages the regex.
func requiredLiteral(expr string) string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return ""
	}
	re = re.Simplify()
	var lits []string
	collect := func(r *syntax.Regexp) {
		if r.Op == syntax.OpLiteral && r.Flags&syntax.FoldCase == 0 {
			lits = append(lits, string(r.Rune))
		}
	}
	switch re.Op {
	case syntax.OpLiteral:
		collect(re)
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			collect(sub)
			if sub.Op == syntax.OpCapture && len(sub.Sub) == 1 {
				collect(sub.Sub[0])
			}
		}
	}
	if len(lits) == 0 {
		return ""
	}
	return slices.MaxFunc(lits, func(a, b string) int { return len(a) - len(b) })
}
