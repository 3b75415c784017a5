package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/wxgate/wxgate/shared/wechat"
)

// HandlerRequest is what a handler rule sends its NATS service, as JSON:
// the message's fields a handler usually needs, and the whole XML for the
// rest. Any language with a NATS client can answer it.
type HandlerRequest struct {
	Account     string `json:"account"`
	OpenID      string `json:"openid"`
	MsgType     string `json:"msg_type"`
	Event       string `json:"event"`
	Scene       string `json:"scene"`
	Content     string `json:"content"`
	Recognition string `json:"recognition"`
	Key         string `json:"key"`
	CreateTime  int64  `json:"create_time"`
	RawXML      string `json:"raw_xml"`
}

// HandlerAnswer is what the service answers: {"reply":{…}}, the reply one
// of text, image, news or none.
type HandlerAnswer struct {
	Reply *Reply `json:"reply"`
}

// NewHandlerRequest is the request for message m (raw, its XML) to account.
func NewHandlerRequest(account string, m *wechat.Message, raw []byte) HandlerRequest {
	scene, _, _ := m.SceneScan()
	r := HandlerRequest{Account: account, OpenID: m.FromUserName, MsgType: m.MsgType, Event: m.Event, Scene: scene,
		Content: m.Content, Recognition: m.Recognition, CreateTime: m.CreateTime, RawXML: string(raw)}
	if m.IsEvent() && scene == "" {
		r.Key = m.EventKey
	}
	return r
}

// Errors of a handler call, for the count of their outcomes.
var (
	ErrNoHandler     = errors.New("no service answers the handler's subject")
	ErrHandlerFailed = errors.New("the handler answered an error")
	ErrBadAnswer     = errors.New("the handler's answer is not {\"reply\":{…}} with a text, image, news or none reply")
)

// CallHandler asks the service on subject and returns the reply it gives,
// checked as a stored rule's reply is (nil for none). ctx bounds the wait.
func CallHandler(ctx context.Context, nc *nats.Conn, subject string, req HandlerRequest) (*Reply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := nc.RequestWithContext(ctx, subject, b)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w: %s", ErrNoHandler, subject)
	case err != nil:
		return nil, fmt.Errorf("handler %s: %w", subject, err)
	}
	// A micro service's error answer carries its code in headers.
	if code := resp.Header.Get("Nats-Service-Error-Code"); code != "" {
		return nil, fmt.Errorf("%w: %s %s", ErrHandlerFailed, code, strconv.Quote(resp.Header.Get("Nats-Service-Error")))
	}
	var a HandlerAnswer
	if err := json.Unmarshal(resp.Data, &a); err != nil || a.Reply == nil {
		return nil, ErrBadAnswer
	}
	if a.Reply.Type == ReplyHandler {
		return nil, fmt.Errorf("%w: a handler cannot hand on to another", ErrBadAnswer)
	}
	if err := a.Reply.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	if a.Reply.Type == ReplyNone {
		return nil, nil
	}
	return a.Reply, nil
}
