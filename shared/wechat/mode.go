package wechat

// Mode is which callbacks an account accepts: the WeChat console's message
// encryption modes (明文, 兼容, 安全), WECHAT_MODE.
type Mode string

const (
	// ModePlain accepts plaintext only; an encrypted POST is refused.
	ModePlain Mode = "plain"
	// ModeCompat accepts both, for the switch-over in the WeChat console.
	ModeCompat Mode = "compat"
	// ModeSafe accepts encrypted POSTs only. signature does not cover the
	// body; msg_signature does, so a plaintext POST, which anyone who saw
	// one callback URL could forge, is refused.
	ModeSafe Mode = "safe"
)

// Known reports whether m is one of the three modes.
func (m Mode) Known() bool { return m == ModePlain || m == ModeCompat || m == ModeSafe }
