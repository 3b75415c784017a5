package wechat

import (
	"crypto/sha256"
	"encoding/hex"
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

// DefaultAccount is the id of the account the WECHAT_* variables define
// (accounts.DefaultID).
const DefaultAccount = "default"

// DedupKey returns what WeChat's retries of this message, sent to the
// account with id account, share, and nothing else does; body is the
// plaintext XML the message was read from. A retry is the identical body
// again, to the same account, so:
//   - a message with a MsgId is "msg.<MsgId>.<digest>", the digest binding the
//     MsgId to the account and the sender: a MsgId alone is chosen by whoever
//     signs the request, and must not hand one person's stored reply to
//     another;
//   - an event that carries its own MsgID or MsgId (TEMPLATESENDJOBFINISH,
//     MASSSENDJOBFINISH, ...) is "evm.<MsgID>.<digest>", bound the same way
//     and to the event;
//   - anything else is a digest of the whole body ("evt.<hex>"): two LOCATION
//     reports, two card events or two job reports in the same second that
//     differ in any field are two events. WeChat's own advice,
//     FromUserName+CreateTime, would merge them.
//
// The account id is in every digest but the default account's, whose keys
// are those of the versions before accounts: a retry that spans an upgrade
// is still known as one. Two accounts that get the same body (the same
// OpenIDs, the same ToUserName) get two keys.
//
// The key uses only [a-z0-9.] and is at most 53 bytes, whatever the sender
// sent, so it is valid as a Nats-Msg-Id header and as a JetStream KV key, and
// it carries no OpenID in the clear.
func (m *Message) DedupKey(account string, body []byte) string {
	var key [64]byte
	out := key[:0]
	// Hashed from a buffer on the stack; the key is built in one
	// allocation: every callback computes it.
	var buf [512]byte
	in := buf[:0]
	if account != DefaultAccount {
		in = append(append(in, account...), 0)
	}
	if isDigits(m.MsgID) {
		// Each field ends in a NUL, as the key of every earlier version
		// did: a message retry keeps its key across an upgrade.
		in = append(append(append(append(in, m.ToUserName...), 0), m.FromUserName...), 0)
		prefix := "msg."
		if m.IsEvent() {
			prefix = "evm."
			in = append(append(in, m.Event...), 0)
		}
		sum := sha256.Sum256(in)
		out = append(append(append(out, prefix...), m.MsgID...), '.')
		return string(hex.AppendEncode(out, sum[:8]))
	}
	var sum [sha256.Size]byte
	if len(in) == 0 {
		sum = sha256.Sum256(body)
	} else {
		h := sha256.New()
		h.Write(in)
		h.Write(body)
		h.Sum(sum[:0])
	}
	return string(hex.AppendEncode(append(out, "evt."...), sum[:16]))
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
