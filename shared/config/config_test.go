package config

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/wechat"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFromEnv(t *testing.T) {
	c := Defaults()
	err := c.FromEnv(env(map[string]string{
		"WECHAT_TOKEN":          "tok",
		"WECHAT_TIMESTAMP_SKEW": "0",
		"REPLY_TIMEOUT":         "1500ms",
		"NATS_URL":              " nats://a:4222 , ,nats://b:4222",
		"MAX_BODY_BYTES":        "131072",
		"REPLY_DEFAULT":         "",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != "tok" || c.TimestampSkew != 0 || c.ReplyTimeout != 1500*time.Millisecond || c.MaxBodyBytes != 131072 {
		t.Errorf("config = %+v", c)
	}
	if got := c.NATSServers(); got != "nats://a:4222,nats://b:4222" {
		t.Errorf("NATSServers = %q", got)
	}
	if c.Replies.Default != "" || c.Replies.Scan == "" {
		t.Errorf("an empty REPLY_DEFAULT must turn the default off and leave the others: %+v", c.Replies)
	}
	if c.HTTPAddr != ":8080" || c.AdminAddr != ":8081" || c.DataDir != "./data" {
		t.Errorf("defaults changed: %+v", c)
	}
}

func TestFromEnvErrors(t *testing.T) {
	c := Defaults()
	err := c.FromEnv(env(map[string]string{"REPLY_TIMEOUT": "soon", "WECHAT_TIMESTAMP_SKEW": "-1s", "MAX_BODY_BYTES": "12"}))
	for _, want := range []string{"REPLY_TIMEOUT", "WECHAT_TIMESTAMP_SKEW", "MAX_BODY_BYTES"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

// ACCOUNTS_SECRET_KEY is 32 bytes of base64, refused otherwise without
// echoing it; MAX_ACCOUNTS is a count from 1.
func TestAccountsFromEnv(t *testing.T) {
	const good = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJASM="
	c := Defaults()
	if err := c.FromEnv(env(map[string]string{"ACCOUNTS_SECRET_KEY": good, "MAX_ACCOUNTS": "20"})); err != nil || c.AccountsSecretKey != good || c.MaxAccounts != 20 {
		t.Fatalf("FromEnv = %v: key set %v, MAX_ACCOUNTS %d", err, c.AccountsSecretKey == good, c.MaxAccounts)
	}
	if Defaults().MaxAccounts != 1000 {
		t.Errorf("MAX_ACCOUNTS defaults to %d, want 1000", Defaults().MaxAccounts)
	}
	for _, bad := range []map[string]string{
		{"ACCOUNTS_SECRET_KEY": "c2VjcmV0LXNob3J0"}, // 12 bytes
		{"ACCOUNTS_SECRET_KEY": "not base64 at all!!"},
		{"MAX_ACCOUNTS": "0"},
	} {
		c := Defaults()
		err := c.FromEnv(env(bad))
		for k, v := range bad {
			if err == nil || !strings.Contains(err.Error(), k) || (k == "ACCOUNTS_SECRET_KEY" && strings.Contains(err.Error(), v)) {
				t.Errorf("%s=%q: error %v, want one naming the variable (and not a secret's value)", k, v, err)
			}
		}
	}
	c = Defaults()
	c.Token, c.AppID, c.EncodingAESKey, c.PreviousEncodingAESKey, c.AppSecret = "tok", "wx1", "cur", "prev", "sec"
	if a := c.DefaultAccount(); a.ID != "default" || a.Token != "tok" || a.PreviousEncodingAESKey != "prev" || a.AppSecret != "sec" || a.EffectiveMode() != "safe" {
		t.Errorf("DefaultAccount = %+v", a)
	}
}

func TestValidateIngress(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"ok", func(c *Config) {}, ""},
		{"no token", func(c *Config) { c.Token = "" }, "WECHAT_TOKEN"},
		{"aes without appid", func(c *Config) { c.EncodingAESKey = "k"; c.AppID = "" }, "WECHAT_APPID"},
		{"aes and appid: safe", func(c *Config) { c.EncodingAESKey, c.AppID = "k", "wx" }, ""},
		{"plain with aes, no appid", func(c *Config) { c.Mode, c.EncodingAESKey = wechat.ModePlain, "k" }, ""},
		{"safe without aes", func(c *Config) { c.Mode, c.AppID = wechat.ModeSafe, "wx" }, "WECHAT_ENCODING_AES_KEY"},
		{"compat without aes", func(c *Config) { c.Mode, c.AppID = wechat.ModeCompat, "wx" }, "WECHAT_ENCODING_AES_KEY"},
		{"safe without appid", func(c *Config) { c.Mode, c.EncodingAESKey = wechat.ModeSafe, "k" }, "WECHAT_APPID"},
		{"compat without appid", func(c *Config) { c.Mode, c.EncodingAESKey = wechat.ModeCompat, "k" }, "WECHAT_APPID"},
		{"compat", func(c *Config) { c.Mode, c.EncodingAESKey, c.AppID = wechat.ModeCompat, "k", "wx" }, ""},
		{"unknown mode", func(c *Config) { c.Mode = "strict" }, "WECHAT_MODE"},
		{"timeout past wechat deadline", func(c *Config) { c.ReplyTimeout = 5 * time.Second }, "REPLY_TIMEOUT"},
		{"previous key without a current one", func(c *Config) { c.PreviousEncodingAESKey = "k" }, "WECHAT_ENCODING_AES_KEY_PREVIOUS"},
		{"previous key beside the current", func(c *Config) { c.EncodingAESKey, c.PreviousEncodingAESKey, c.AppID = "k", "p", "wx" }, ""},
	}
	for _, tt := range tests {
		c := Defaults()
		c.Token = "secret-token"
		tt.mod(&c)
		if c.EncodingAESKey != "" {
			c.EncodingAESKey = "secret-aes-key"
		}
		err := c.ValidateIngress()
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: error = %v, want mention of %q", tt.name, err, tt.want)
		}
		if err != nil && (strings.Contains(err.Error(), "secret-token") || strings.Contains(err.Error(), "secret-aes-key")) {
			t.Errorf("%s: error leaks a secret", tt.name)
		}
	}
}

func TestMode(t *testing.T) {
	const key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	tests := []struct {
		name    string
		env     map[string]string
		want    wechat.Mode // EffectiveMode
		wantErr string      // in FromEnv's error
	}{
		{"unset, no key", map[string]string{}, wechat.ModePlain, ""},
		{"unset, key", map[string]string{"WECHAT_ENCODING_AES_KEY": key}, wechat.ModeSafe, ""},
		{"empty, key", map[string]string{"WECHAT_MODE": "", "WECHAT_ENCODING_AES_KEY": key}, wechat.ModeSafe, ""},
		{"plain with key", map[string]string{"WECHAT_MODE": "plain", "WECHAT_ENCODING_AES_KEY": key}, wechat.ModePlain, ""},
		{"compat", map[string]string{"WECHAT_MODE": "compat", "WECHAT_ENCODING_AES_KEY": key}, wechat.ModeCompat, ""},
		{"safe, spaces and case", map[string]string{"WECHAT_MODE": " Safe "}, wechat.ModeSafe, ""},
		{"unknown", map[string]string{"WECHAT_MODE": "aes"}, wechat.ModePlain, `WECHAT_MODE="aes"`},
		{"unknown with key", map[string]string{"WECHAT_MODE": "secure", "WECHAT_ENCODING_AES_KEY": key}, wechat.ModeSafe, "WECHAT_MODE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			err := c.FromEnv(env(tt.env))
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("FromEnv error = %v, want mention of %q", err, tt.wantErr)
			}
			if got := c.EffectiveMode(); got != tt.want {
				t.Errorf("EffectiveMode = %q, want %q", got, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), key) {
				t.Error("the error leaks the AES key")
			}
		})
	}
}

func TestFromEnvRefusesWhatCannotWork(t *testing.T) {
	tests := []struct {
		key, value string
		want       string // "" accepted
	}{
		{"EVENTS_MAX_AGE", "0", ""},
		{"EVENTS_MAX_AGE", "10m", ""},
		{"EVENTS_MAX_AGE", "720h", ""},
		{"EVENTS_MAX_AGE", "1m", "EVENTS_MAX_AGE=1m: must be 0 (keep) or at least 10m, the duplicate window"},
		{"EVENTS_MAX_AGE", "9m59s", "EVENTS_MAX_AGE=9m59s"},
		{"EVENTS_MAX_AGE", "1ns", "EVENTS_MAX_AGE=1ns"},
		{"MESSAGES_MAX_AGE", "48h", ""},
		{"MESSAGES_MAX_AGE", "0", "MESSAGES_MAX_AGE=0s: must be at least 10m"},
		{"INTAKE_BUFFER", "0", "INTAKE_BUFFER"},
		{"MAX_BODY_BYTES", strconv.Itoa(MaxBodyBytesLimit), ""},
		{"MAX_BODY_BYTES", strconv.Itoa(MaxBodyBytesLimit + 1), "MAX_BODY_BYTES"},
		{"MAX_BODY_BYTES", "4000000", "MAX_BODY_BYTES"},
		{"MAX_BODY_BYTES", "9223372036854775807", "MAX_BODY_BYTES"},
		{"REPLY_TIMEOUT", "4999ms", ""},
		{"WECHAT_TIMESTAMP_SKEW", "5m", ""},
		{"WECHAT_TIMESTAMP_SKEW", "0", ""},
		{"WECHAT_TIMESTAMP_SKEW", "6m", "WECHAT_TIMESTAMP_SKEW=6m: at most 5m, half the event stream's duplicate window"},
		{"ANALYTICS_TIME_ZONE", "Asia/Shanghai", ""},
		{"ANALYTICS_TIME_ZONE", "America/New_York", ""},
		{"ANALYTICS_TIME_ZONE", "UTC", ""},
		{"ANALYTICS_TIME_ZONE", "Asia/Beijing", `ANALYTICS_TIME_ZONE="Asia/Beijing": want an IANA time zone name, such as Asia/Shanghai`},
		{"ANALYTICS_TIME_ZONE", "", "ANALYTICS_TIME_ZONE"},
		{"ANALYTICS_TIME_ZONE", "Local", "ANALYTICS_TIME_ZONE"},
		{"ANALYTICS_TIME_ZONE", "../../etc/passwd", "ANALYTICS_TIME_ZONE"},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			c := Defaults()
			c.Token = "tok"
			err := errors.Join(c.FromEnv(env(map[string]string{tt.key: tt.value})), c.ValidateIngress())
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("error = %v, want mention of %q", err, tt.want)
			}
		})
	}
	if MaxBodyBytesLimit != 1<<20-16<<10 {
		t.Errorf("MaxBodyBytesLimit = %d", MaxBodyBytesLimit)
	}
}

func TestWeChatAPIFromEnv(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		wantErr   string // a variable the error must name; "" for none
		base      string
		lateReply string
	}{
		{"off by default", map[string]string{}, "", "", LateReplyOff},
		{"secret turns late replies on", map[string]string{"WECHAT_APPID": "wx1", "WECHAT_APPSECRET": "s3cret"}, "", "", LateReplyCustomerService},
		{"explicit off", map[string]string{"WECHAT_APPID": "wx1", "WECHAT_APPSECRET": "s3cret", "LATE_REPLY": "off"}, "", "", LateReplyOff},
		{"fake base, slash trimmed", map[string]string{"WECHAT_API_BASE": "http://127.0.0.1:8090/"}, "", "http://127.0.0.1:8090", LateReplyOff},
		{"bad base", map[string]string{"WECHAT_API_BASE": "ftp://x"}, "WECHAT_API_BASE", "", LateReplyOff},
		{"base with credentials", map[string]string{"WECHAT_API_BASE": "https://u:p@x"}, "WECHAT_API_BASE", "", LateReplyOff},
		{"unknown late reply", map[string]string{"LATE_REPLY": "sms"}, "LATE_REPLY", "", LateReplyOff},
		{"late reply without secret", map[string]string{"LATE_REPLY": "customer_service"}, "WECHAT_APPSECRET", "", LateReplyCustomerService},
		{"secret without appid", map[string]string{"WECHAT_APPSECRET": "s3cret"}, "WECHAT_APPID", "", LateReplyCustomerService},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			err := c.FromEnv(env(tt.env))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want one naming %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the error echoes the AppSecret: %v", err)
			}
			if c.APIBase != tt.base || c.EffectiveLateReply() != tt.lateReply {
				t.Errorf("base %q late reply %q, want %q %q", c.APIBase, c.EffectiveLateReply(), tt.base, tt.lateReply)
			}
		})
	}
}

// Tokens and the AppID are compared with what arrives over HTTP, where a
// header's surrounding spaces are trimmed and WeChat allows none: a value
// that could never match is refused at start, naming the variable and never
// echoing the value; an empty ADMIN_TOKEN leaves the admin API open.
func TestFromEnvRefusesTokensThatCannotMatch(t *testing.T) {
	tests := []struct {
		key, value string
		ok         bool
	}{
		{"ADMIN_TOKEN", "adm1n-tok", true},
		{"ADMIN_TOKEN", "b64+/token==", true},
		{"ADMIN_TOKEN", "", true},
		{"ADMIN_TOKEN", "adm1n-tok ", false},
		{"ADMIN_TOKEN", " adm1n-tok", false},
		{"ADMIN_TOKEN", "adm1n tok", false},
		{"ADMIN_TOKEN", "adm1n\ttok", false},
		{"ADMIN_TOKEN", "adm1n-tok\n", false},
		{"ADMIN_TOKEN", "adm1n\x00tok", false},
		{"ADMIN_TOKEN", "adm1n\x7ftok", false},
		{"ADMIN_TOKEN", "   ", false},
		{"ADMIN_TOKEN", "令牌adm1n", false},
		{"WECHAT_TOKEN", "Console0Token", true},
		{"WECHAT_TOKEN", "Console0Token ", false},
		{"WECHAT_TOKEN", "\tConsole0Token", false},
		{"WECHAT_APPID", "wx1234567890abcdef", true},
		{"WECHAT_APPID", "wx1234567890abcdef\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+strconv.Quote(tt.value), func(t *testing.T) {
			c := Defaults()
			err := c.FromEnv(env(map[string]string{tt.key: tt.value}))
			if tt.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("error = %v, want one naming %s", err, tt.key)
			}
			if strings.TrimSpace(tt.value) != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.value)) {
				t.Errorf("the error echoes the value: %v", err)
			}
		})
	}
}

// DATA_DIR set empty would give standalone mode an embedded NATS without
// JetStream: refused at start; its default stands otherwise.
func TestFromEnvRefusesEmptyDataDir(t *testing.T) {
	for _, v := range []string{"", " "} {
		c := Defaults()
		if err := c.FromEnv(env(map[string]string{"DATA_DIR": v})); err == nil || !strings.Contains(err.Error(), "DATA_DIR") {
			t.Errorf("DATA_DIR=%q: error = %v, want one naming DATA_DIR", v, err)
		}
	}
	c := Defaults()
	if err := c.FromEnv(env(nil)); err != nil || c.DataDir != "./data" {
		t.Errorf("default DATA_DIR: %q %v", c.DataDir, err)
	}
}

// Settings that each look fine and together cannot work are refused at
// start, naming the variable (finding N9): a late-reply window no longer
// than the late sender's settle time (every late reply would expire), a
// message window longer than unanswered messages are kept, replies kept
// for less than WeChat's retries, and late replies without the store that
// makes them go once.
func TestFromEnvRefusesPairsThatCannotWork(t *testing.T) {
	late := map[string]string{"WECHAT_APPID": "wx1", "WECHAT_APPSECRET": "s3cret"}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name string
		env  map[string]string
		want string // "" accepted
	}{
		{"defaults with late replies", late, ""},
		{"event window over the settle time", with(late, "LATE_EVENT_WINDOW", "3s"), ""},
		{"event window at the settle time", with(late, "LATE_EVENT_WINDOW", "2s"), "LATE_EVENT_WINDOW=2s: more than 2s"},
		{"event window under the settle time", with(nil, "LATE_EVENT_WINDOW", "1s"), "LATE_EVENT_WINDOW=1s"},
		{"message window under the settle time", with(late, "LATE_MESSAGE_WINDOW", "500ms"), "LATE_MESSAGE_WINDOW=500ms"},
		{"messages kept for the window", with(late, "MESSAGES_MAX_AGE", "48h"), ""},
		{"messages kept less than the window", with(late, "MESSAGES_MAX_AGE", "24h"), "LATE_MESSAGE_WINDOW=48h: at most 24h"},
		{"window past the unanswered stream's 72h", with(late, "LATE_MESSAGE_WINDOW", "96h", "MESSAGES_MAX_AGE", "720h"), "LATE_MESSAGE_WINDOW=96h: at most 72h"},
		{"short retention without late replies", with(nil, "MESSAGES_MAX_AGE", "24h"), ""},
		{"replies kept past the retries", with(nil, "DEDUP_TTL", "20s"), ""},
		{"replies kept less than the retries", with(nil, "DEDUP_TTL", "10s"), "DEDUP_TTL=10s: at least 20s"},
		{"store off without late replies", with(nil, "DEDUP_TTL", "0"), ""},
		{"store off with late replies", with(late, "DEDUP_TTL", "0"), "DEDUP_TTL=0 turns off the replies store"},
		{"store off, late replies off", with(late, "DEDUP_TTL", "0", "LATE_REPLY", "off"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			err := c.FromEnv(env(tt.env))
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("error = %v, want mention of %q", err, tt.want)
			}
		})
	}
}
