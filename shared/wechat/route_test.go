package wechat

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestSubjectFor(t *testing.T) {
	tests := []struct{ msgType, event, want string }{
		{"text", "", "msg.text"},
		{"TEXT", "", "msg.text"},
		{"shortvideo", "", "msg.shortvideo"},
		{"event", "subscribe", "event.subscribe"},
		{"event", "SCAN", "event.scan"},
		{"EVENT", "LOCATION", "event.location"},
		{"event", "scancode_push", "event.scancode_push"},
		{"event", "", "event.unknown"},
		{"", "", "msg.unknown"},
		{"text.>", "", "msg.unknown"},
		{"event", "scan.>", "event.unknown"},
		{"event", "a b", "event.unknown"},
		{"event", "*", "event.unknown"},
		{"te\x00xt", "", "msg.unknown"},
		{"tеxt", "", "msg.unknown"}, // Cyrillic е
		{"event", strings.Repeat("a", 65), "event.unknown"},
		{"event", strings.Repeat("a", 64), "event." + strings.Repeat("a", 64)},
	}
	for _, tt := range tests {
		if got := SubjectFor(tt.msgType, tt.event); got != tt.want {
			t.Errorf("SubjectFor(%q, %q) = %q, want %q", tt.msgType, tt.event, got, tt.want)
		}
	}
}

var dedupKeyRE = regexp.MustCompile(`^((msg|evm)\.[0-9]{1,20}\.[0-9a-f]{16}|evt\.[0-9a-f]{32})$`)

func TestDedupKey(t *testing.T) {
	key := func(m *Message) string { return m.DedupKey(DefaultAccount, m.AppendXML(nil)) }
	ev := func(from string, ct int64, event, key string) *Message {
		return &Message{MsgType: "event", FromUserName: from, CreateTime: ct, Event: event, EventKey: key}
	}
	base := ev("o1", 100, "subscribe", "qrscene_1")
	withTicket := *base
	withTicket.Ticket = "another ticket" // differs in a field: another event
	distinct := []*Message{
		base,
		&withTicket,
		ev("o2", 100, "subscribe", "qrscene_1"),
		ev("o1", 101, "subscribe", "qrscene_1"),
		ev("o1", 100, "unsubscribe", "qrscene_1"),
		ev("o1", 100, "subscribe", "qrscene_2"),
		ev("o1", 100, "subscribe", ""),
		ev("o1", 100, "subscribeq", "rscene_1"), // field boundaries matter
		{MsgType: "text", MsgID: "1234"},
		{MsgType: "text", MsgID: "1235"},
		{MsgType: "text", FromUserName: "o1", CreateTime: 100}, // no MsgId
		{MsgType: "text", MsgID: "12a4"},
		// The same MsgId from another person or to another account is
		// another message: it must never be answered with the first's reply.
		{MsgType: "text", MsgID: "1234", FromUserName: "o_attacker"},
		{MsgType: "text", MsgID: "1234", ToUserName: "gh_other"},
		{MsgType: "event", ToUserName: "gh_other", FromUserName: "o1", CreateTime: 100, Event: "subscribe", EventKey: "qrscene_1"},
		// An event's own MsgID keys it, bound to its kind.
		{MsgType: "event", Event: "TEMPLATESENDJOBFINISH", MsgID: "1234"},
		{MsgType: "event", Event: "MASSSENDJOBFINISH", MsgID: "1234"},
	}
	seen := map[string]int{}
	for i, m := range distinct {
		k := key(m)
		if !dedupKeyRE.MatchString(k) {
			t.Errorf("DedupKey %d = %q: not a safe header/KV key", i, k)
		}
		if j, dup := seen[k]; dup {
			t.Errorf("messages %d and %d share dedup key %q", j, i, k)
		}
		seen[k] = i
	}
	// A message's key is the one every earlier version gave it: a retry
	// that spans an upgrade is still known as one.
	if got := key(&Message{ToUserName: "gh_a", FromUserName: "o1", MsgType: "text", MsgID: "1234567"}); got != "msg.1234567.b70a46adedb4a5cb" {
		t.Errorf("message key = %q, want 8af83c1's msg.1234567.b70a46adedb4a5cb", got)
	}
	if got := key(&Message{MsgType: "text", MsgID: "6054768590064713728"}); !strings.HasPrefix(got, "msg.6054768590064713728.") {
		t.Errorf("message key = %q, want the MsgId in it", got)
	}
	if got := key(&Message{MsgType: "event", Event: "TEMPLATESENDJOBFINISH", MsgID: "200163836"}); !strings.HasPrefix(got, "evm.200163836.") {
		t.Errorf("job report key = %q, want its MsgID in it", got)
	}
	long := &Message{MsgType: "event", Event: "SCAN", EventKey: strings.Repeat("场", 5000), FromUserName: strings.Repeat("o", 5000)}
	if k := key(long); len(k) > 53 {
		t.Errorf("key of a huge event is %d bytes: it must stay bounded", len(k))
	}
	if k := key(base); strings.Contains(k, "o1") {
		t.Errorf("event key %q carries the OpenID in the clear", k)
	}
}

// Two accounts that get the same body (the same OpenIDs, even the same
// ToUserName) get two keys, of every kind: their retries, reply-once
// records and late replies stay apart. The default account's keys are
// the ones of the versions before accounts (TestDedupKey).
func TestDedupKeyPerAccount(t *testing.T) {
	for _, m := range []*Message{
		{MsgType: "text", ToUserName: "gh_a", FromUserName: "o1", MsgID: "1234"},
		{MsgType: "event", ToUserName: "gh_a", FromUserName: "o1", Event: "TEMPLATESENDJOBFINISH", MsgID: "1234"},
		{MsgType: "event", ToUserName: "gh_a", FromUserName: "o1", CreateTime: 100, Event: "SCAN", EventKey: "poster"},
	} {
		body := m.AppendXML(nil)
		seen := map[string]string{}
		for _, account := range []string{DefaultAccount, "shop", "shop-2", "defaul", "t"} {
			k := m.DedupKey(account, body)
			if !dedupKeyRE.MatchString(k) {
				t.Errorf("%s: key %q is not a safe key", account, k)
			}
			if other, dup := seen[k]; dup {
				t.Errorf("%s: accounts %s and %s share the key %q", m.Subject(), other, account, k)
			}
			seen[k] = account
			if again := m.DedupKey(account, append([]byte(nil), body...)); again != k {
				t.Errorf("%s: the same body again got another key", account)
			}
		}
	}
}

// TestSameSecondEventsAreTwo: events that share account, sender,
// CreateTime, Event and EventKey but differ elsewhere (job reports with
// another MsgID, cards taken or used, LOCATION reports, subscription
// message reports) are two events; the same body again is a retry.
func TestSameSecondEventsAreTwo(t *testing.T) {
	for _, pair := range []string{"template", "mass", "card_get", "card_use", "location", "subscribe_msg"} {
		t.Run(pair, func(t *testing.T) {
			var keys [2]string
			for i, side := range []string{"a", "b"} {
				body := readSample(t, filepath.Join("same_second", pair+"_"+side))
				m, err := Parse(body)
				if err != nil {
					t.Fatal(err)
				}
				var fast Message
				if Classify(body, &fast) && fast.DedupKey(DefaultAccount, body) != m.DedupKey(DefaultAccount, body) {
					t.Errorf("%s: Classify and Parse give different keys", side)
				}
				keys[i] = m.DedupKey(DefaultAccount, body)
				if again := m.DedupKey(DefaultAccount, append([]byte(nil), body...)); again != keys[i] {
					t.Errorf("%s: the same body again (a retry) got another key", side)
				}
			}
			if keys[0] == keys[1] {
				t.Errorf("two different events share the key %q", keys[0])
			}
		})
	}
}
