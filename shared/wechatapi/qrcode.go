package wechatapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// WeChat's QR-code limits.
const (
	MaxTempSceneID   = 4294967295 // temporary codes: a non-zero 32-bit scene_id
	MaxPermSceneID   = 100000     // permanent codes: scene_id 1 to 100 000
	MaxExpireSeconds = 2592000    // 30 days
)

// QRRequest is a qrcode/create body.
type QRRequest struct {
	ExpireSeconds int64  `json:"expire_seconds,omitempty"`
	ActionName    string `json:"action_name"`
	ActionInfo    struct {
		Scene QRScene `json:"scene"`
	} `json:"action_info"`
}

// QRScene is the scene of a code: a number or a string.
type QRScene struct {
	SceneID  uint64 `json:"scene_id,omitempty"`
	SceneStr string `json:"scene_str,omitempty"`
}

// NewQRRequest builds the request for a code of scene. A scene of digits
// without a leading zero whose value is in range for the kind of code
// (1–4294967295 temporary, 1–100000 permanent) goes as scene_id, which
// WeChat delivers back as the same text; any other as scene_str. expire is
// ignored for a permanent code. The scene's own rules (1–64 characters)
// are the caller's to check.
func NewQRRequest(scene string, permanent bool, expire int64) QRRequest {
	var r QRRequest
	hi := uint64(MaxTempSceneID)
	if permanent {
		hi = MaxPermSceneID
	}
	id, isID := sceneID(scene, hi)
	switch {
	case permanent && isID:
		r.ActionName = "QR_LIMIT_SCENE"
	case permanent:
		r.ActionName = "QR_LIMIT_STR_SCENE"
	case isID:
		r.ActionName = "QR_SCENE"
	default:
		r.ActionName = "QR_STR_SCENE"
	}
	if isID {
		r.ActionInfo.Scene.SceneID = id
	} else {
		r.ActionInfo.Scene.SceneStr = scene
	}
	if !permanent {
		r.ExpireSeconds = expire
	}
	return r
}

// sceneID reads scene as a scene_id in 1..hi: digits only, no leading zero.
func sceneID(scene string, hi uint64) (uint64, bool) {
	if scene == "" || scene[0] == '0' || len(scene) > 10 {
		return 0, false
	}
	for i := 0; i < len(scene); i++ {
		if scene[i] < '0' || scene[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(scene, 10, 64)
	return n, err == nil && n >= 1 && n <= hi
}

// QRCode is WeChat's answer: the ticket (to fetch WeChat's own image) and
// the url the code encodes.
type QRCode struct {
	Ticket        string `json:"ticket"`
	ExpireSeconds int64  `json:"expire_seconds"`
	URL           string `json:"url"`
}

// CreateQRCode calls qrcode/create with the shared access_token.
func (c *Client) CreateQRCode(ctx context.Context, req QRRequest) (QRCode, error) {
	var out QRCode
	if err := c.withToken(ctx, APIQRCodeCreate, http.MethodPost, "/cgi-bin/qrcode/create", req, &out); err != nil {
		return QRCode{}, err
	}
	if err := out.check(); err != nil {
		return QRCode{}, fmt.Errorf("wechat %s: unexpected answer: %w", APIQRCodeCreate, err)
	}
	return out, nil
}

// check bounds what WeChat answered before it is stored and rendered.
func (q QRCode) check() error {
	u, err := url.Parse(q.URL)
	switch {
	case q.Ticket == "" || len(q.Ticket) > 1024:
		return fmt.Errorf("ticket of %d bytes", len(q.Ticket))
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(q.URL) > 512:
		return fmt.Errorf("url %.64q", q.URL)
	}
	return nil
}

// CustomMessage is a message/custom/send body: the person, the message
// type and the object under that type's key (text: {"content": …}).
type CustomMessage struct {
	ToUser  string
	MsgType string
	Body    any
}

// MarshalJSON writes {"touser":…,"msgtype":T,T:Body}.
func (m CustomMessage) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{"touser": m.ToUser, "msgtype": m.MsgType, m.MsgType: m.Body})
}

// TextMessage is a text customer-service message.
func TextMessage(openid, content string) CustomMessage {
	return CustomMessage{ToUser: openid, MsgType: "text", Body: map[string]string{"content": content}}
}

// CustomSend sends a customer-service message with the shared access_token
// (the path late replies take). WeChat's refusals (45015 window closed,
// 45047 count used up, …) come back as *Error.
func (c *Client) CustomSend(ctx context.Context, msg CustomMessage) error {
	return c.withToken(ctx, APICustomSend, http.MethodPost, "/cgi-bin/message/custom/send", msg, nil)
}
