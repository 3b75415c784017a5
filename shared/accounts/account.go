// Package accounts holds the Official Accounts one deployment serves: the
// account "default", defined by the WECHAT_* variables, and any number more
// kept as data in the KV bucket wxgate_accounts (created, changed and
// removed through /api/accounts, served by every replica within a moment of
// the change). Secrets (token, AES keys, AppSecret) are sealed with
// ACCOUNTS_SECRET_KEY before they are stored, and never leave the process in
// an API answer or a log line.
package accounts

import (
	"errors"
	"fmt"
	"regexp"
	"unicode/utf8"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/wechat"
)

// DefaultID is the account the WECHAT_* variables define; /wechat is
// /wechat/default.
const DefaultID = wechat.DefaultAccount

// The callback modes: the WeChat console's 明文, 兼容 and 安全 message
// encryption modes.
const (
	ModePlain  = "plain"  // plaintext callbacks only
	ModeCompat = "compat" // plaintext and encrypted: the switch-over
	ModeSafe   = "safe"   // encrypted callbacks only
)

// KnownMode reports whether m is a callback mode.
func KnownMode(m string) bool { return m == ModePlain || m == ModeCompat || m == ModeSafe }

// Account is one Official Account. The secrets have no JSON names: they are
// written only sealed (see Store) and read only from requests (Patch).
type Account struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	AppID      string `json:"appid"`
	OriginalID string `json:"original_id"` // the gh_… ToUserName; when set, other ToUserNames are refused
	Mode       string `json:"mode"`        // empty: safe with an AES key, plain without

	Token                  string `json:"-"`
	EncodingAESKey         string `json:"-"`
	PreviousEncodingAESKey string `json:"-"` // during a key change: tried when the current key fails
	AppSecret              string `json:"-"`
}

var (
	idRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
	tokenRE = regexp.MustCompile(`^[A-Za-z0-9]{3,32}$`)
)

// ValidID reports whether id is an account id: [a-z0-9][a-z0-9_-]{0,31}.
// Only such an id reaches a subject, a KV key or a metric label.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Unknown is the account label of what came for no account (an unknown
// id, a path trick): no account may take it.
const Unknown = "unknown"

func fieldErr(field, format string, args ...any) error {
	return &admin.FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// EffectiveMode is the account's mode, or its default: safe with an AES
// key, plain without, so that an account with a key never takes a
// plaintext POST unless told to.
func (a *Account) EffectiveMode() string {
	switch {
	case a.Mode != "":
		return a.Mode
	case a.EncodingAESKey != "":
		return ModeSafe
	default:
		return ModePlain
	}
}

// Validate checks the document; the error, an *admin.FieldError, names the
// first bad field. The secrets' values are never echoed.
func (a *Account) Validate() error {
	switch {
	case !ValidID(a.ID):
		return fieldErr("id", "want 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter or digit")
	case a.ID == Unknown:
		return fieldErr("id", "%q is taken: the metrics count requests for no account under it", Unknown)
	case utf8.RuneCountInString(a.Name) > 64 || !utf8.ValidString(a.Name):
		return fieldErr("name", "at most 64 characters of UTF-8")
	case len(a.AppID) > 64 || !printable(a.AppID):
		return fieldErr("appid", "at most 64 printable ASCII characters")
	case len(a.OriginalID) > 64 || !printable(a.OriginalID):
		return fieldErr("original_id", "at most 64 printable ASCII characters (the gh_… id)")
	case !tokenRE.MatchString(a.Token):
		return fieldErr("token", "WeChat's rule: 3 to 32 letters and digits")
	case a.Mode != "" && !KnownMode(a.Mode):
		return fieldErr("mode", "want plain, compat or safe")
	case len(a.AppSecret) > 128 || !printable(a.AppSecret):
		return fieldErr("appsecret", "at most 128 printable ASCII characters")
	}
	for _, k := range []struct{ field, key string }{
		{"encoding_aes_key", a.EncodingAESKey}, {"previous_encoding_aes_key", a.PreviousEncodingAESKey},
	} {
		if k.key == "" {
			continue
		}
		if _, err := wechat.NewCipher(k.key, a.AppID); err != nil {
			return fieldErr(k.field, "want WeChat's EncodingAESKey: 43 characters of base64")
		}
	}
	switch mode := a.EffectiveMode(); {
	case mode != ModePlain && a.EncodingAESKey == "":
		return fieldErr("encoding_aes_key", "mode %s needs it", mode)
	case mode != ModePlain && a.AppID == "":
		return fieldErr("appid", "mode %s needs it (it is checked inside every encrypted message)", mode)
	case a.PreviousEncodingAESKey != "" && a.EncodingAESKey == "":
		return fieldErr("encoding_aes_key", "a previous key needs a current one")
	case a.AppSecret != "" && a.AppID == "":
		return fieldErr("appid", "an AppSecret needs its AppID (the access_token is fetched for an AppID)")
	}
	return nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// View is an account as the API shows it: never a secret, only whether
// there is one.
type View struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	AppID        string `json:"appid"`
	OriginalID   string `json:"original_id"`
	Mode         string `json:"mode"`
	HasToken     bool   `json:"has_token"`
	HasAppSecret bool   `json:"has_appsecret"`
	AESKeys      int    `json:"aes_keys"` // 0, 1 or 2 (during a key change)
	// Source is "env" for the account the WECHAT_* variables define, "kv"
	// for one kept in wxgate_accounts.
	Source string `json:"source"`
	// Usable is false when this process cannot serve the account (its
	// secrets were sealed with another ACCOUNTS_SECRET_KEY); Problem says
	// why.
	Usable  bool   `json:"usable"`
	Problem string `json:"problem,omitempty"`
}

// View returns what the API shows of a.
func (a *Account) View() View {
	v := View{ID: a.ID, Name: a.Name, AppID: a.AppID, OriginalID: a.OriginalID, Mode: a.EffectiveMode(),
		HasToken: a.Token != "", HasAppSecret: a.AppSecret != "", Usable: true, Source: "kv"}
	if a.EncodingAESKey != "" {
		v.AESKeys++
	}
	if a.PreviousEncodingAESKey != "" {
		v.AESKeys++
	}
	if a.ID == DefaultID {
		v.Source = "env"
	}
	return v
}

// Patch is a PATCH body: the fields given change, the others stay. A
// secret field set to "" removes it (the AppSecret, the previous key). With
// the id, it is a POST body too.
type Patch struct {
	Name                   *string `json:"name"`
	AppID                  *string `json:"appid"`
	OriginalID             *string `json:"original_id"`
	Mode                   *string `json:"mode"`
	Token                  *string `json:"token"`
	EncodingAESKey         *string `json:"encoding_aes_key"`
	PreviousEncodingAESKey *string `json:"previous_encoding_aes_key"`
	AppSecret              *string `json:"appsecret"`
}

// Apply returns a with p's fields.
func (p Patch) Apply(a Account) Account {
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	set(&a.Name, p.Name)
	set(&a.AppID, p.AppID)
	set(&a.OriginalID, p.OriginalID)
	set(&a.Mode, p.Mode)
	set(&a.Token, p.Token)
	set(&a.EncodingAESKey, p.EncodingAESKey)
	set(&a.PreviousEncodingAESKey, p.PreviousEncodingAESKey)
	set(&a.AppSecret, p.AppSecret)
	return a
}

// ErrNotFound is an unknown account id.
var ErrNotFound = errors.New("no such account")
