// Package reply decides what wxgate answers to each callback message and
// serves that decision on the bus as a horizontally scalable micro service.
package reply

import (
	"context"
	"strings"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
)

// A Decider decides the reply to a message sent to the account with id
// account (an accounts.ValidID; raw is the plaintext XML m was read from):
// nil when there is nothing to say. It may be slow (call other systems):
// ctx ends at the handler timeout, which outlasts WeChat's retries, not at
// one request's deadline.
type Decider interface {
	Decide(ctx context.Context, account string, m *wechat.Message, raw []byte) (*wechat.Reply, error)
}

// Replier holds the reply texts; it is safe for concurrent use.
type Replier struct {
	texts config.ReplyTexts
}

// NewReplier returns a Replier with the given texts ("{scene}" is replaced
// by the scene).
func NewReplier(texts config.ReplyTexts) *Replier { return &Replier{texts: texts} }

// Reply returns the passive reply to m, or nil when there is nothing to say
// (WeChat is then answered "success"):
//   - text: the content echoed; voice: the recognised text, or the
//     "unrecognised" text;
//   - subscribe: the thanks, followed directly by the scene text when it
//     came through a parametric QR code (the seed's exact
//     "感谢您的关注！场景值:<scene>", no separator); SCAN: the scene;
//   - other events: nothing; other messages: the default text, if any.
func (r *Replier) Reply(m *wechat.Message) *wechat.Reply {
	if m.IsEvent() {
		scene, kind, ok := m.SceneScan()
		switch {
		case m.IsEventType(wechat.EventSubscribe):
			text := r.texts.Subscribe
			if ok && r.texts.SubscribeScene != "" {
				text += withScene(r.texts.SubscribeScene, scene)
			}
			return textOrNil(text)
		case ok && kind == wechat.KindScan:
			return textOrNil(withScene(r.texts.Scan, scene))
		}
		return nil
	}
	switch strings.ToLower(m.MsgType) {
	case wechat.MsgText:
		return textOrNil(m.Content)
	case wechat.MsgVoice:
		if strings.TrimSpace(m.Recognition) == "" {
			return textOrNil(r.texts.VoiceUnrecognised)
		}
		return wechat.TextReply(m.Recognition)
	}
	return textOrNil(r.texts.Default)
}

// Decide is Reply as a Decider: the same texts for every account.
func (r *Replier) Decide(_ context.Context, _ string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	return r.Reply(m), nil
}

func withScene(tmpl, scene string) string { return strings.ReplaceAll(tmpl, "{scene}", scene) }

// textOrNil avoids sending an empty text reply, which WeChat shows as an
// error; no reply is "success" instead.
func textOrNil(s string) *wechat.Reply {
	if s == "" {
		return nil
	}
	return wechat.TextReply(s)
}
