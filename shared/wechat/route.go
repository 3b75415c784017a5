package wechat

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// Subject prefixes and the fallback token for types that cannot be a subject.
const (
	SubjectMsgPrefix   = "msg."
	SubjectEventPrefix = "event."
	SubjectUnknown     = "unknown"
	maxSubjectToken    = 64
)

// Subject returns the bus subject for the message: msg.<MsgType> or
// event.<Event>, lower-cased. The type comes from the sender, so only
// [a-z0-9_] may reach the subject; anything else maps to "unknown". This is
// what keeps a sender from choosing a subject outside msg.* and event.*.
func (m *Message) Subject() string { return SubjectFor(m.MsgType, m.Event) }

// SubjectFor is Subject for a bare MsgType and Event.
func SubjectFor(msgType, event string) string {
	if equalFoldASCII(msgType, MsgEvent) {
		return SubjectEventPrefix + subjectToken(event)
	}
	return SubjectMsgPrefix + subjectToken(msgType)
}

// subjectToken lower-cases s and returns it if it is a safe subject token.
// It allocates only when s has upper-case letters.
func subjectToken(s string) string {
	if len(s) == 0 || len(s) > maxSubjectToken {
		return SubjectUnknown
	}
	upper := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case c >= 'A' && c <= 'Z':
			upper = true
		default:
			return SubjectUnknown
		}
	}
	if !upper {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x >= 'A' && x <= 'Z' {
			x += 'a' - 'A'
		}
		if y >= 'A' && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// DedupKey returns what WeChat's retries of this message share, and nothing
// else does. For messages it is "msg.<MsgId>.<digest>", the digest binding
// the MsgId to the account and the sender: a MsgId alone is chosen by
// whoever signs the request, and must not hand one person's stored reply to
// another. For events, which carry no MsgId, it is a digest of the account,
// FromUserName, CreateTime, Event and EventKey ("evt.<hex>"). WeChat itself
// advises FromUserName+CreateTime, but LOCATION reports and unsubscribe can
// share those within one second, so the event fields go in.
//
// The key uses only [a-z0-9.] and is at most 53 bytes, whatever the sender
// sent, so it is valid as a Nats-Msg-Id header and as a JetStream KV key, and
// it carries no OpenID in the clear.
func (m *Message) DedupKey() string {
	// Every callback computes it, at the ingress and at the worker: the
	// fields are hashed from a buffer on the stack, and the key is built in
	// one allocation.
	var buf [512]byte
	in := buf[:0]
	add := func(fields ...string) {
		for _, f := range fields {
			in = append(in, f...)
			in = append(in, 0) // separator: ("ab","c") and ("a","bc") differ
		}
	}
	var key [64]byte
	out := key[:0]
	if !m.IsEvent() && isDigits(m.MsgID) {
		add(m.ToUserName, m.FromUserName)
		sum := sha256.Sum256(in)
		out = append(append(append(out, "msg."...), m.MsgID...), '.')
		return string(hex.AppendEncode(out, sum[:8]))
	}
	var created [20]byte
	kind, fields := "evt.", [...]string{m.ToUserName, m.FromUserName, string(strconv.AppendInt(created[:0], m.CreateTime, 10)), m.Event, m.EventKey}
	if !m.IsEvent() {
		// A message without a usable MsgId: fall back to the event recipe
		// with the type and whatever MsgId said.
		kind = "msh."
		fields[3], fields[4] = m.MsgType, m.MsgID
	}
	add(fields[:]...)
	sum := sha256.Sum256(in)
	return string(hex.AppendEncode(append(out, kind...), sum[:16]))
}

func isDigits(s string) bool {
	if len(s) == 0 || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
