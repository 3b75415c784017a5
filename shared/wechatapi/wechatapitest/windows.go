package wechatapitest

import (
	"bytes"
	"container/list"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
)

// Interaction kinds, as POST /wxsim/interaction and Server.Interaction
// take them. WeChat lets an account send customer-service messages to a
// person only for a while after the person did something, and only so
// many (wechat-api.md, section 3).
const (
	// KindMessage: the person sent a message (text, voice, image...). It
	// opens MessageWindow for MessageQuota sends.
	KindMessage = "message"
	// KindEvent: a subscribe, a SCAN or a menu click. It opens EventWindow
	// for EventQuota sends.
	KindEvent = "event"
	// KindUnsubscribe: the person unfollowed. Every window closes, as
	// WeChat then answers 45015 ("... or subscription is canceled").
	KindUnsubscribe = "unsubscribe"
)

// InteractionKind is the kind of interaction a callback is, by its
// MsgType and Event; "" for one that opens no window (a LOCATION report,
// a VIEW click, a template-send report...). Menu clicks count only for the
// click types WeChat names: CLICK, scancode_push and scancode_waitmsg.
func InteractionKind(msgType, event string) string {
	switch {
	case msgType == "":
		return ""
	case !strings.EqualFold(msgType, "event"):
		return KindMessage
	}
	switch strings.ToLower(event) {
	case "subscribe", "scan", "click", "scancode_push", "scancode_waitmsg":
		return KindEvent
	case "unsubscribe":
		return KindUnsubscribe
	}
	return ""
}

// InteractionRequest is the body of POST /wxsim/interaction.
type InteractionRequest struct {
	// AppID is the account the person acted on; empty is the default app.
	AppID  string `json:"appid,omitempty"`
	OpenID string `json:"openid"`
	Kind   string `json:"kind"`
	// At is when the person acted (RFC 3339); zero is now. A time after
	// the fake's now is taken as now: nothing can be sent before the
	// interaction, and a skewed clock should not open a window early.
	At time.Time `json:"at,omitzero"`
}

// maxOpenID is the longest OpenID the fake takes (WeChat's are 28
// characters; touser is refused past 64 too).
const maxOpenID = 64

// ParseInteraction decodes and checks a POST /wxsim/interaction body: one
// JSON object, no unknown field (a misspelt "open_id" must not pass as an
// empty one), a known kind.
func ParseInteraction(body []byte) (InteractionRequest, error) {
	var req InteractionRequest
	if err := admin.DecodeJSON(bytes.NewReader(body), &req); err != nil {
		return req, fmt.Errorf("bad interaction: %w", err)
	}
	return req, checkInteraction(req.OpenID, req.Kind)
}

func checkInteraction(openid, kind string) error {
	if openid == "" || len(openid) > maxOpenID {
		return fmt.Errorf("bad interaction: openid must be 1 to %d bytes, got %d", maxOpenID, len(openid))
	}
	switch kind {
	case KindMessage, KindEvent, KindUnsubscribe:
		return nil
	}
	return fmt.Errorf("bad interaction: kind %q is not %q, %q or %q", kind, KindMessage, KindEvent, KindUnsubscribe)
}

// window is what one interaction allows.
type window struct {
	opened, closes time.Time
	quota, sent    int
}

// person is one OpenID's windows (with one app), oldest opened first. Only windows that
// may still be used are kept: a window closing no later than one opened
// after it never is (the later one is open whenever it is), so closing
// times strictly decrease along the slice, and there are at most as many
// windows as distinct window lengths (two).
type person struct {
	windows []window
	elem    *list.Element // in app.lru
}

// Interaction tells the fake that the person openid did something (kind
// KindMessage, KindEvent or KindUnsubscribe) with the default app at the
// time at (zero: now), as POST /wxsim/interaction does.
func (s *Server) Interaction(openid, kind string, at time.Time) error {
	return s.AppInteraction("", openid, kind, at)
}

// AppInteraction is Interaction with the app appid ("" the default).
func (s *Server) AppInteraction(appid, openid, kind string, at time.Time) error {
	if err := checkInteraction(openid, kind); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.app(appid)
	if err != nil {
		return fmt.Errorf("bad interaction: %w", err)
	}
	a.interactions[kind]++
	p := a.people[openid]
	if kind == KindUnsubscribe {
		if p != nil {
			a.lru.Remove(p.elem)
			delete(a.people, openid)
		}
		return nil
	}
	if now := s.o.Now(); at.IsZero() || at.After(now) {
		at = now
	}
	w := window{opened: at, closes: at.Add(s.o.MessageWindow), quota: s.o.MessageQuota}
	if kind == KindEvent {
		w.closes, w.quota = at.Add(s.o.EventWindow), s.o.EventQuota
	}
	if p == nil {
		p = &person{elem: a.lru.PushBack(openid)}
		a.people[openid] = p
		// Bounded memory: forget whoever was told of least recently.
		if a.lru.Len() > s.o.MaxPeople {
			delete(a.people, a.lru.Remove(a.lru.Front()).(string))
		}
	} else {
		a.lru.MoveToBack(p.elem)
	}
	p.windows = addWindow(p.windows, w)
	return nil
}

// addWindow inserts w by opening time (after any opened at the same
// instant: told later is later) and drops the windows it makes useless.
func addWindow(ws []window, w window) []window {
	i := len(ws)
	for i > 0 && ws[i-1].opened.After(w.opened) {
		i--
	}
	all := make([]window, 0, len(ws)+1)
	all = append(append(append(all, ws[:i]...), w), ws[i:]...)
	keep := all[:0:0]
	for j, x := range all {
		outlived := slices.ContainsFunc(all[j+1:], func(y window) bool { return !y.closes.Before(x.closes) })
		if !outlived {
			keep = append(keep, x)
		}
	}
	return keep
}

// useWindow counts a send to openid at now against the latest opened of
// its open windows. WeChat documents each trigger's window but not how
// they combine; the fake takes the strict reading (the latest interaction
// sets the terms), so a SCAN after a message limits sends to 3 until its
// minute is over. The code is 0 when the send is allowed, else 45015 (no
// open window) or 45047 (its count used). Called with s.mu held.
func (a *app) useWindow(openid string, now time.Time) int {
	p := a.people[openid]
	if p == nil {
		return 45015
	}
	for i := len(p.windows) - 1; i >= 0; i-- {
		w := &p.windows[i]
		if !now.Before(w.closes) {
			continue
		}
		if w.sent >= w.quota {
			return 45047
		}
		w.sent++
		return 0
	}
	return 45015
}
