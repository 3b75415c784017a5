package wechat

import (
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

var dedupKeyRE = regexp.MustCompile(`^(msg\.[0-9]{1,20}\.[0-9a-f]{16}|(evt|msh)\.[0-9a-f]{32})$`)

func TestDedupKey(t *testing.T) {
	ev := func(from string, ct int64, event, key string) *Message {
		return &Message{MsgType: "event", FromUserName: from, CreateTime: ct, Event: event, EventKey: key}
	}
	base := ev("o1", 100, "subscribe", "qrscene_1")
	distinct := []*Message{
		base,
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
	}
	seen := map[string]int{}
	for i, m := range distinct {
		k := m.DedupKey()
		if !dedupKeyRE.MatchString(k) {
			t.Errorf("DedupKey %d = %q: not a safe header/KV key", i, k)
		}
		if j, dup := seen[k]; dup {
			t.Errorf("messages %d and %d share dedup key %q", j, i, k)
		}
		seen[k] = i
	}
	// A retry is the identical message: the key must not depend on anything else.
	retry := *base
	retry.Ticket = "different ticket"
	if retry.DedupKey() != base.DedupKey() {
		t.Error("retry of the same event got a different key")
	}
	if got := (&Message{MsgType: "text", MsgID: "6054768590064713728"}).DedupKey(); !strings.HasPrefix(got, "msg.6054768590064713728.") {
		t.Errorf("message key = %q, want the MsgId in it", got)
	}
	long := &Message{MsgType: "event", Event: "SCAN", EventKey: strings.Repeat("场", 5000), FromUserName: strings.Repeat("o", 5000)}
	if k := long.DedupKey(); len(k) > 53 {
		t.Errorf("key of a huge event is %d bytes: it must stay bounded", len(k))
	}
	if k := base.DedupKey(); strings.Contains(k, "o1") {
		t.Errorf("event key %q carries the OpenID in the clear", k)
	}
}
