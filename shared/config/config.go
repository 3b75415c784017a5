// Package config reads the configuration of wxgate's binaries (ingress and
// workers) from environment variables: every variable's meaning, default and
// check lives here, so both binaries refuse the same bad values.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // ANALYTICS_TIME_ZONE loads on any machine, a distroless image included

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Config is the configuration shared by the ingress and the workers; each
// uses the part it needs.
type Config struct {
	Token          string // WECHAT_TOKEN
	AppID          string // WECHAT_APPID
	EncodingAESKey string // WECHAT_ENCODING_AES_KEY; empty: plain mode only
	// PreviousEncodingAESKey is WECHAT_ENCODING_AES_KEY_PREVIOUS: during a
	// key change, tried when the current key does not decrypt.
	PreviousEncodingAESKey string
	Mode                   wechat.Mode   // WECHAT_MODE as given; empty: the default, see EffectiveMode
	TimestampSkew          time.Duration // WECHAT_TIMESTAMP_SKEW; 0 disables the check
	NATSURL                string        // NATS_URL, comma-separated
	ReplyTimeout           time.Duration // REPLY_TIMEOUT
	HTTPAddr               string        // HTTP_ADDR
	AdminAddr              string        // ADMIN_ADDR
	DataDir                string        // DATA_DIR (standalone)
	AdminToken             string        // ADMIN_TOKEN
	MaxBodyBytes           int64         // MAX_BODY_BYTES
	MaxConnections         int           // MAX_CONNECTIONS: open connections on the WeChat listener; past it, 503
	LogLevel               string        // LOG_LEVEL: debug, info, warn, error
	LogFormat              string        // LOG_FORMAT: json or text
	Replies                ReplyTexts

	AnalyticsMaxScenes int // ANALYTICS_MAX_SCENES: scene label values in metrics, per account
	// AnalyticsZone is the time zone whose days and hours the analytics
	// count (ANALYTICS_TIME_ZONE, an IANA name).
	AnalyticsZone *time.Location
	// EventsMaxAge is how long scene events stay in the event stream, from
	// which the analytics can be rebuilt (EVENTS_MAX_AGE; 0 keeps them).
	EventsMaxAge time.Duration
	// MessagesMaxAge is how long messages and other events stay there: they
	// are personal data (MESSAGES_MAX_AGE).
	MessagesMaxAge time.Duration
	// IntakeBuffer is how many events an ingress holds while JetStream
	// cannot take them (INTAKE_BUFFER).
	IntakeBuffer      int
	JetStreamReplicas int // JETSTREAM_REPLICAS: replicas of the stream and buckets
	// DedupTTL is how long a worker keeps a reply in its memory, so that
	// WeChat's retries, at any replica, get it without running the handler
	// again (DEDUP_TTL; 0 turns the replies store off: no memory, no marks,
	// every request runs its handler).
	DedupTTL time.Duration
	// DedupMemoryMB bounds, in MiB, the replies a worker keeps in its
	// memory for retries (DEDUP_MEMORY_MB).
	DedupMemoryMB int
	// HandlerTimeout bounds a reply handler; one slower than the request's
	// deadline still answers WeChat's next retry (HANDLER_TIMEOUT).
	HandlerTimeout time.Duration
	// WorkerRoles are what a workers process runs: "replies" (the reply
	// service and late replies) and "analytics" (the leader that counts the
	// scenes from the event stream, and the scene metrics). WORKER_ROLES,
	// comma-separated.
	WorkerRoles []string
	// ShutdownDelay is how long a terminating ingress keeps serving while it
	// reports not ready, so that load balancers stop sending to it before it
	// stops listening (SHUTDOWN_DELAY). Negative: the mode's default.
	ShutdownDelay time.Duration
	// Pprof serves /debug/pprof/ on the admin listener: PPROF=true.
	Pprof bool

	// AccountsSecretKey is ACCOUNTS_SECRET_KEY (32 bytes, base64): it seals
	// the secrets of the accounts kept in wxgate_accounts. A secret, never
	// logged or echoed; empty: accounts can be listed, not made or changed.
	AccountsSecretKey string
	// MaxAccounts bounds the accounts, the default included (MAX_ACCOUNTS),
	// and so every metric's account label.
	MaxAccounts int

	// AppSecret is WECHAT_APPSECRET: a secret, never logged or echoed. It
	// enables WeChat's API (QR codes, late replies); empty, those are off.
	AppSecret string
	// QRCaptionFont is QR_CAPTION_FONT: a TrueType/OpenType font (or
	// collection) with CJK glyphs for PNG captions; empty: the usual
	// system paths.
	QRCaptionFont string
	// APIBase is WECHAT_API_BASE, the base URL of WeChat's API (tests point
	// it at a fake); empty is WeChat's own, the API client's default.
	APIBase string
	// LateReply is LATE_REPLY as given; empty: the default, see
	// EffectiveLateReply.
	LateReply string
	// LateMessageWindow and LateEventWindow are how long after a person's
	// message, and after their subscribe, SCAN or menu click, WeChat takes
	// a customer-service message to them (LATE_MESSAGE_WINDOW,
	// LATE_EVENT_WINDOW): WeChat's rules, which have changed before.
	LateMessageWindow, LateEventWindow time.Duration
}

// LateSettle is how long after an event was received its late reply waits
// before it asks for the reply: by then a first delivery has reached a
// worker's hands, where the late reply finds it and waits for its reply
// instead of running the handler beside it. A late-reply window must be
// longer.
const LateSettle = 2 * time.Second

// WeChatRetrySpan is how long after a first delivery WeChat's last retry
// may come (three retries, about 5 s apart, and the ingress's deadline):
// a reply kept for retries must live that long.
const WeChatRetrySpan = 20 * time.Second

// The late-reply modes (LATE_REPLY).
const (
	LateReplyCustomerService = "customer_service" // through message/custom/send
	LateReplyOff             = "off"
)

// EffectiveLateReply is LATE_REPLY, or when it is empty, customer_service
// with an AppSecret (the API needs one) and off without.
func (c *Config) EffectiveLateReply() string {
	switch {
	case c.LateReply != "":
		return c.LateReply
	case c.AppSecret != "":
		return LateReplyCustomerService
	default:
		return LateReplyOff
	}
}

// EffectiveMode is the callback mode the ingress runs in: WECHAT_MODE, or
// when it is empty, safe with an AES key and plain without. An account that
// has a key is in safe mode unless told otherwise, so a plaintext POST
// cannot slip past msg_signature.
func (c *Config) EffectiveMode() wechat.Mode {
	switch {
	case c.Mode != "":
		return c.Mode
	case c.EncodingAESKey != "":
		return wechat.ModeSafe
	default:
		return wechat.ModePlain
	}
}

// HasRole reports whether the workers process runs role.
func (c *Config) HasRole(role string) bool {
	for _, r := range c.WorkerRoles {
		if r == role {
			return true
		}
	}
	return false
}

// ReplyTexts are the workers' reply texts; "{scene}" stands for the scene.
type ReplyTexts struct {
	Subscribe         string // REPLY_SUBSCRIBE
	SubscribeScene    string // REPLY_SUBSCRIBE_SCENE, appended to Subscribe as it is (no separator)
	Scan              string // REPLY_SCAN
	VoiceUnrecognised string // REPLY_VOICE_UNRECOGNISED
	Default           string // REPLY_DEFAULT, for other message types; empty: no reply
}

// A callback body travels as one NATS message, with its headers beside it.
const (
	// NATSMaxPayload is NATS's default max_payload.
	NATSMaxPayload = 1 << 20
	// NATSHeaderRoom is what the request's headers may take.
	NATSHeaderRoom = 16 << 10
	// MaxBodyBytesLimit is the largest MAX_BODY_BYTES accepted: a larger
	// body would be refused by the bus and every such callback lost. Check it
	// against the live connection's MaxPayload too, a server may lower it.
	MaxBodyBytesLimit = NATSMaxPayload - NATSHeaderRoom
)

// DefaultZone is ANALYTICS_TIME_ZONE's default.
const DefaultZone = "Asia/Shanghai"

func mustZone(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err) // the zone database is built in
	}
	return loc
}

// Defaults returns the documented defaults. AdminAddr is the ingress's; the
// workers binary overrides it before reading the environment.
func Defaults() Config {
	return Config{
		TimestampSkew:  5 * time.Minute,
		NATSURL:        "nats://127.0.0.1:4222",
		ReplyTimeout:   4 * time.Second,
		HTTPAddr:       ":8080",
		AdminAddr:      ":8081",
		DataDir:        "./data",
		MaxBodyBytes:   64 << 10,
		MaxConnections: 4096,
		LogLevel:       "info",
		LogFormat:      "json",

		AnalyticsMaxScenes: 100,
		AnalyticsZone:      mustZone(DefaultZone),
		EventsMaxAge:       events.DefaultMaxAge,
		MessagesMaxAge:     events.DefaultMessagesMaxAge,
		IntakeBuffer:       10_000,
		MaxAccounts:        1000,
		LateMessageWindow:  48 * time.Hour,
		LateEventWindow:    time.Minute,
		JetStreamReplicas:  1,
		DedupTTL:           30 * time.Second,
		DedupMemoryMB:      64,
		HandlerTimeout:     20 * time.Second,
		ShutdownDelay:      -1,
		WorkerRoles:        []string{"replies", "analytics"},
		Replies: ReplyTexts{
			Subscribe:         "感谢您的关注！",
			SubscribeScene:    "场景值:{scene}",
			Scan:              "您扫描的场景值为：{scene}",
			VoiceUnrecognised: "未识别",
			Default:           "您的消息已收到。",
		},
	}
}

// FromEnv overrides c with the variables that lookup finds (os.LookupEnv in
// the binaries, a map in tests). A variable set to the empty string counts
// as set, so REPLY_DEFAULT= turns the default reply off.
func (c *Config) FromEnv(lookup func(string) (string, bool)) error {
	var errs []error
	str := func(key string, dst *string) {
		if v, ok := lookup(key); ok {
			*dst = v
		}
	}
	dur := func(key string, dst *time.Duration) {
		if v, ok := lookup(key); ok {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("%s=%q: want a non-negative Go duration such as 4s", key, v))
				return
			}
			*dst = d
		}
	}
	// Compared with what arrives over HTTP, where a header's surrounding
	// spaces are trimmed and WeChat's console allows none: a value with
	// spaces or control characters could never match. Not echoed: secrets.
	sent := func(key string, dst *string) {
		if v, ok := lookup(key); ok {
			if !visibleASCII(v) {
				errs = append(errs, fmt.Errorf("%s has spaces, control or non-ASCII characters, so nothing sent over HTTP can ever match it: want visible ASCII characters only", key))
				return
			}
			*dst = v
		}
	}
	sent("WECHAT_TOKEN", &c.Token)
	sent("WECHAT_APPID", &c.AppID)
	str("WECHAT_ENCODING_AES_KEY", &c.EncodingAESKey)
	str("WECHAT_ENCODING_AES_KEY_PREVIOUS", &c.PreviousEncodingAESKey)
	if v, ok := lookup("ACCOUNTS_SECRET_KEY"); ok {
		c.AccountsSecretKey = strings.TrimSpace(v)
		if _, err := accounts.NewSealer(c.AccountsSecretKey); c.AccountsSecretKey != "" && err != nil {
			errs = append(errs, err) // names the variable, never the value
		}
	}
	if v, ok := lookup("WECHAT_MODE"); ok {
		if m := wechat.Mode(strings.ToLower(strings.TrimSpace(v))); m == "" || m.Known() {
			c.Mode = m
		} else {
			errs = append(errs, fmt.Errorf("WECHAT_MODE=%q: want plain, compat or safe (empty: safe with WECHAT_ENCODING_AES_KEY, plain without)", v))
		}
	}
	dur("WECHAT_TIMESTAMP_SKEW", &c.TimestampSkew)
	if c.TimestampSkew > events.Duplicates/2 {
		// A request is accepted from skew before its timestamp to skew
		// after it: a replay accepted after the stream forgot the original
		// (the duplicate window from its arrival) would be stored, and
		// counted, a second time.
		errs = append(errs, fmt.Errorf("WECHAT_TIMESTAMP_SKEW=%s: at most %s, half the event stream's duplicate window (0 turns the check off)", shortDuration(c.TimestampSkew), shortDuration(events.Duplicates/2)))
	}
	str("NATS_URL", &c.NATSURL)
	dur("REPLY_TIMEOUT", &c.ReplyTimeout)
	str("HTTP_ADDR", &c.HTTPAddr)
	str("ADMIN_ADDR", &c.AdminAddr)
	if str("DATA_DIR", &c.DataDir); strings.TrimSpace(c.DataDir) == "" {
		// An embedded server with no store directory has no JetStream.
		errs = append(errs, errors.New("DATA_DIR is empty: want the directory where standalone mode keeps JetStream's data"))
	}
	sent("ADMIN_TOKEN", &c.AdminToken) // empty: the admin API is open
	if v, ok := lookup("MAX_BODY_BYTES"); ok {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch {
		case err != nil || n < 1024:
			errs = append(errs, fmt.Errorf("MAX_BODY_BYTES=%q: want a byte count of at least 1024", v))
		case n > MaxBodyBytesLimit:
			errs = append(errs, fmt.Errorf("MAX_BODY_BYTES=%q: at most %d, what one NATS message carries (1 MiB max_payload less %d for headers)", v, MaxBodyBytesLimit, NATSHeaderRoom))
		default:
			c.MaxBodyBytes = n
		}
	}
	num := func(key string, lo, hi int, dst *int) {
		if v, ok := lookup(key); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < lo || n > hi {
				errs = append(errs, fmt.Errorf("%s=%q: want a whole number from %d to %d", key, v, lo, hi))
				return
			}
			*dst = n
		}
	}
	num("ANALYTICS_MAX_SCENES", 1, 10000, &c.AnalyticsMaxScenes)
	if v, ok := lookup("ANALYTICS_TIME_ZONE"); ok {
		// "" and Local would be UTC and this machine's zone: each process
		// could count other days.
		loc, err := time.LoadLocation(strings.TrimSpace(v))
		if err != nil || strings.TrimSpace(v) == "" || loc == time.Local {
			errs = append(errs, fmt.Errorf("ANALYTICS_TIME_ZONE=%q: want an IANA time zone name, such as %s", v, DefaultZone))
		} else {
			c.AnalyticsZone = loc
		}
	}
	num("MAX_CONNECTIONS", 1, 1<<20, &c.MaxConnections)
	num("JETSTREAM_REPLICAS", 1, 5, &c.JetStreamReplicas)
	num("DEDUP_MEMORY_MB", 1, 1<<20, &c.DedupMemoryMB)
	dur("EVENTS_MAX_AGE", &c.EventsMaxAge)
	if r := c.EventsMaxAge; r > 0 && r < events.Duplicates {
		errs = append(errs, fmt.Errorf("EVENTS_MAX_AGE=%s: must be 0 (keep) or at least %s, the duplicate window", shortDuration(r), shortDuration(events.Duplicates)))
	}
	dur("MESSAGES_MAX_AGE", &c.MessagesMaxAge)
	if r := c.MessagesMaxAge; r < events.Duplicates {
		errs = append(errs, fmt.Errorf("MESSAGES_MAX_AGE=%s: must be at least %s, the duplicate window", shortDuration(r), shortDuration(events.Duplicates)))
	}
	num("INTAKE_BUFFER", 1, 10_000_000, &c.IntakeBuffer)
	num("MAX_ACCOUNTS", 1, 100_000, &c.MaxAccounts)
	dur("DEDUP_TTL", &c.DedupTTL)
	if c.DedupTTL > 0 && c.DedupTTL < WeChatRetrySpan {
		errs = append(errs, fmt.Errorf("DEDUP_TTL=%s: at least %s, the span of WeChat's retries (0 turns the replies store off)", shortDuration(c.DedupTTL), shortDuration(WeChatRetrySpan)))
	}
	dur("LATE_MESSAGE_WINDOW", &c.LateMessageWindow)
	dur("LATE_EVENT_WINDOW", &c.LateEventWindow)
	for _, w := range []struct {
		key string
		d   time.Duration
	}{{"LATE_MESSAGE_WINDOW", c.LateMessageWindow}, {"LATE_EVENT_WINDOW", c.LateEventWindow}} {
		if w.d <= LateSettle {
			errs = append(errs, fmt.Errorf("%s=%s: more than %s, the time a late reply waits before it asks for the reply (every late reply would expire)", w.key, shortDuration(w.d), shortDuration(LateSettle)))
		}
	}
	dur("HANDLER_TIMEOUT", &c.HandlerTimeout)
	dur("SHUTDOWN_DELAY", &c.ShutdownDelay)
	if c.HandlerTimeout == 0 {
		errs = append(errs, errors.New("HANDLER_TIMEOUT: want a positive duration"))
	}
	if v, ok := lookup("PPROF"); ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			errs = append(errs, fmt.Errorf("PPROF=%q: want true or false", v))
		}
		c.Pprof = b
	}
	if v, ok := lookup("WORKER_ROLES"); ok {
		c.WorkerRoles = nil
		for _, r := range strings.Split(v, ",") {
			switch r = strings.TrimSpace(r); r {
			case "replies", "analytics":
				c.WorkerRoles = append(c.WorkerRoles, r)
			case "":
			default:
				errs = append(errs, fmt.Errorf("WORKER_ROLES: unknown role %q (want replies, analytics)", r))
			}
		}
		if len(c.WorkerRoles) == 0 {
			errs = append(errs, errors.New("WORKER_ROLES: name at least one of replies, analytics"))
		}
	}
	errs = append(errs, c.apiFromEnv(lookup)...)
	if c.EffectiveLateReply() == LateReplyCustomerService {
		if c.DedupTTL == 0 {
			errs = append(errs, errors.New("DEDUP_TTL=0 turns off the replies store, which late replies need to go once: set DEDUP_TTL, or LATE_REPLY=off"))
		}
		if kept := events.UnansweredConfig(c.Streams()).MaxAge; c.LateMessageWindow > kept {
			errs = append(errs, fmt.Errorf("LATE_MESSAGE_WINDOW=%s: at most %s, how long unanswered messages are kept for their late replies (MESSAGES_MAX_AGE, and never past 72h)", shortDuration(c.LateMessageWindow), shortDuration(kept)))
		}
	}
	str("LOG_LEVEL", &c.LogLevel)
	str("LOG_FORMAT", &c.LogFormat)
	str("REPLY_SUBSCRIBE", &c.Replies.Subscribe)
	str("REPLY_SUBSCRIBE_SCENE", &c.Replies.SubscribeScene)
	str("REPLY_SCAN", &c.Replies.Scan)
	str("REPLY_VOICE_UNRECOGNISED", &c.Replies.VoiceUnrecognised)
	str("REPLY_DEFAULT", &c.Replies.Default)
	return errors.Join(errs...)
}

// apiFromEnv reads the WeChat API settings. The AppSecret is never echoed.
func (c *Config) apiFromEnv(lookup func(string) (string, bool)) (errs []error) {
	if v, ok := lookup("WECHAT_APPSECRET"); ok {
		c.AppSecret = strings.TrimSpace(v)
	}
	if v, ok := lookup("QR_CAPTION_FONT"); ok {
		c.QRCaptionFont = strings.TrimSpace(v)
	}
	if v, ok := lookup("WECHAT_API_BASE"); ok {
		base := strings.TrimRight(strings.TrimSpace(v), "/")
		if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.User != nil {
			errs = append(errs, fmt.Errorf("WECHAT_API_BASE=%q: want an http or https URL (unset: WeChat's own API)", v))
		} else {
			c.APIBase = base
		}
	}
	if v, ok := lookup("LATE_REPLY"); ok {
		switch m := strings.ToLower(strings.TrimSpace(v)); m {
		case "", LateReplyCustomerService, LateReplyOff:
			c.LateReply = m
		default:
			errs = append(errs, fmt.Errorf("LATE_REPLY=%q: want customer_service or off (empty: customer_service with WECHAT_APPSECRET, off without)", v))
		}
	}
	if c.LateReply == LateReplyCustomerService && c.AppSecret == "" {
		errs = append(errs, errors.New("LATE_REPLY=customer_service needs WECHAT_APPSECRET (the customer-service API needs an access_token)"))
	}
	if c.AppSecret != "" && c.AppID == "" {
		errs = append(errs, errors.New("WECHAT_APPSECRET is set but WECHAT_APPID is not: the access_token is fetched for an AppID"))
	}
	return errs
}

// ValidateIngress checks what the ingress needs. Secrets are never echoed.
func (c *Config) ValidateIngress() error {
	var errs []error
	if c.Token == "" {
		errs = append(errs, errors.New("WECHAT_TOKEN is required"))
	}
	switch mode := c.EffectiveMode(); {
	case !mode.Known():
		errs = append(errs, fmt.Errorf("WECHAT_MODE=%q: want plain, compat or safe", mode))
	case mode == wechat.ModePlain:
		// The key, if set, goes unused: nothing encrypted is accepted.
	case c.EncodingAESKey == "":
		errs = append(errs, fmt.Errorf("WECHAT_MODE=%s needs WECHAT_ENCODING_AES_KEY (and WECHAT_APPID)", mode))
	case c.AppID == "":
		errs = append(errs, fmt.Errorf("WECHAT_APPID is required in %s mode (WECHAT_ENCODING_AES_KEY is set)", mode))
	}
	if c.PreviousEncodingAESKey != "" && c.EncodingAESKey == "" {
		errs = append(errs, errors.New("WECHAT_ENCODING_AES_KEY_PREVIOUS needs WECHAT_ENCODING_AES_KEY, the current key"))
	}
	if c.ReplyTimeout <= 0 {
		errs = append(errs, errors.New("REPLY_TIMEOUT must be positive"))
	} else if c.ReplyTimeout >= 5*time.Second {
		errs = append(errs, errors.New("REPLY_TIMEOUT must be under 5s, WeChat's own deadline"))
	}
	return errors.Join(errs...)
}

// visibleASCII reports whether s is printable ASCII with no space: what a
// token may be.
func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// shortDuration writes d as people do: 10m, not 10m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// DefaultAccount is the account the WECHAT_* variables define.
func (c *Config) DefaultAccount() accounts.Account {
	return accounts.Account{ID: accounts.DefaultID, AppID: c.AppID, Mode: string(c.Mode), Token: c.Token,
		EncodingAESKey: c.EncodingAESKey, PreviousEncodingAESKey: c.PreviousEncodingAESKey, AppSecret: c.AppSecret}
}

// Streams are the event streams' settings.
func (c *Config) Streams() events.Options {
	return events.Options{Replicas: c.JetStreamReplicas, MaxAge: c.EventsMaxAge, MessagesMaxAge: c.MessagesMaxAge}
}

// NATSServers splits NATS_URL into the server list nats.Connect takes.
func (c *Config) NATSServers() string {
	parts := strings.Split(c.NATSURL, ",")
	out := parts[:0]
	for _, p := range parts {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ",")
}
