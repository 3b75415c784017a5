package wechatapi

import "fmt"

// The errcodes wxgate treats on purpose. WeChat answers every call with
// HTTP 200; a non-zero errcode is its refusal.
const (
	CodeSystemBusy        = -1    // system busy
	CodeInvalidCredential = 40001 // access_token invalid or not the latest
	CodeInvalidAppID      = 40013
	CodeInvalidToken      = 40014 // access_token invalid
	CodeOpenIDListSize    = 40032 // batchtagging: 0 or more than 50 OpenIDs
	CodeInvalidActionName = 40052 // qrcode/create: action_name
	CodeInvalidActionInfo = 40053 // qrcode/create: the scene
	CodeInvalidSecret     = 40125
	CodeIPNotWhitelisted  = 40164 // the caller's IP is not in the console's whitelist
	CodeTokenExpired      = 42001 // access_token expired
	CodeDailyQuota        = 45009 // the API's daily quota is spent
	CodeOutOfResponseTime = 45015 // custom/send: the person's window is closed
	CodePermanentCap      = 45029 // too many permanent QR codes
	CodeOutOfResponses    = 45047 // custom/send: the window's count is used up
	CodeTooManyTags       = 45056 // tags/create: the account has 100 tags
	CodePersonTagLimit    = 45059 // batchtagging: a person has 20 tags
	CodeTagNameInvalid    = 45157 // tags/create: empty or another tag's name
	CodeTagNameTooLong    = 45158 // tags/create: over 30 bytes
	CodeInvalidTagID      = 45159 // batchtagging: the tag (also answered now and then for a good one)
	CodeUnauthorized      = 48001 // the account may not call this API (not certified, a 订阅号)
	CodeDateFormat        = 61500 // datacube: a date is not YYYY-MM-DD
	CodeDateRange         = 61501 // datacube: the range is too long, out of order or not published yet
	CodeRiskyIP           = 89503 // the IP needs an administrator's approval
)

// Error is WeChat's refusal of a call: its errcode and errmsg. The errmsg
// never carries the access_token or the AppSecret (both are redacted).
type Error struct {
	API  string // stable_token, qrcode_create, custom_send, …
	Code int
	Msg  string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("wechat %s: errcode %d: %s", e.API, e.Code, e.Msg)
	if h := e.Hint(); h != "" {
		s += " (" + h + ")"
	}
	return s
}

// TokenRejected reports whether WeChat refused the access_token itself
// (40001, 40014, 42001): the token is expired and the call retried once.
func (e *Error) TokenRejected() bool {
	switch e.Code {
	case CodeInvalidCredential, CodeInvalidToken, CodeTokenExpired:
		return true
	}
	return false
}

// Definite reports whether the refusal will stand if asked again soon:
// every errcode but -1 (system busy), which WeChat answers when it is
// momentarily overloaded. A definite refusal of stable_token is shared by
// every process for FailBackoff; -1, like no answer at all, is not.
func (e *Error) Definite() bool { return e.Code != CodeSystemBusy }

// Hint says what an operator can do about a refusal no retry mends.
func (e *Error) Hint() string {
	switch e.Code {
	case CodeIPNotWhitelisted:
		return "add this server's egress IP to the console's IP whitelist (设置与开发 → 基本配置 → IP白名单)"
	case CodeUnauthorized:
		return "the account may not call this API: QR codes, tags and the datacube need a certified account (认证服务号)"
	case CodeRiskyIP:
		return "an administrator must approve this IP in the WeChat console"
	case CodeDailyQuota:
		return "the API's daily quota is spent; it resets at midnight Beijing time"
	case CodeInvalidAppID, CodeInvalidSecret:
		return "check WECHAT_APPID and WECHAT_APPSECRET"
	case CodePermanentCap:
		return "the account has 100 000 permanent codes; use temporary ones"
	case CodeTooManyTags:
		return "the account has 100 user tags, WeChat's most; delete some in the console"
	case CodePersonTagLimit:
		return "a person has 20 tags, WeChat's most; the others of the call were not tagged either"
	}
	return ""
}
