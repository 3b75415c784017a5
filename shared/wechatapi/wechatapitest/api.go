// Package wechatapitest is a fake of WeChat's API (api.weixin.qq.com),
// stateful where the real one is, for several AppIDs at once, each with its
// own secret, tokens, codes, windows, tags, figures and counters:
// stable_token with its rotation and overlap, qrcode/create with its action
// names, scene rules and permanent-code cap, message/custom/send with the
// per-person windows and counts of customer-service messages (the fake is
// told of each person's interactions by POST /wxsim/interaction), the user
// tags, the datacube's daily figures and the console's auto-replies (see
// data.go). Switches inject what production meets (a token invalidated, a
// quota spent, slow answers, dropped connections), and GET /wxsim/calls
// tells a test what the fake received, in all and per AppID. The tests, the README's quick start and the compose profile
// "fake-wechat" use it; the facts it follows are in WeChat's
// documentation (see the README).
package wechatapitest

import (
	"bytes"
	"cmp"
	"container/list"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/wxgate/wxgate/shared/admin"
)

// The APIs the fake serves, by the names wxgate's metrics use.
const (
	StableToken  = "stable_token"
	QRCodeCreate = "qrcode_create"
	CustomSend   = "custom_send"
)

// WeChat's limits the fake enforces.
const (
	MaxExpireSeconds = 2592000 // 30 days
	MaxTempSceneID   = 4294967295
	MaxPermSceneID   = 100000
	MaxSceneStr      = 64 // characters
	// DefaultExpireSeconds is what WeChat gives a temporary code sent
	// without expire_seconds.
	DefaultExpireSeconds = 30
)

// Options configure the fake.
type Options struct {
	// AppID and Secret are an app stable_token accepts (else 40013,
	// 40125); Apps adds more, AppID to AppSecret. The first app (AppID, or
	// the lowest AppID in Apps) is the default for what does not name one
	// (an interaction, a fault applies to every app).
	AppID, Secret string
	Apps          map[string]string
	// TokenTTL is an access_token's lifetime (WeChat: 7200 s). Whole
	// seconds, at least 2. Default 2h.
	TokenTTL time.Duration
	// Overlap is how long before its expiry a token is replaced by a new
	// one in normal mode, both staying valid meanwhile (WeChat: 5 minutes).
	// Default: 5m, or half of TokenTTL when that is shorter.
	Overlap time.Duration
	// PermanentCap is the most permanent codes an account may have
	// (WeChat: 100 000); past it, 45029.
	PermanentCap int
	// MessageWindow and MessageQuota are what a message from the person
	// opens: how long customer-service messages may be sent to them, and
	// how many (WeChat: 48h, 5). EventWindow and EventQuota are what a
	// subscribe, a SCAN or a menu click opens (WeChat: 1 minute, 3).
	// WeChat has changed these over time, hence settable. Defaults: those.
	MessageWindow, EventWindow time.Duration
	MessageQuota, EventQuota   int
	// NoWindows turns the windows off: every well-formed send is accepted,
	// interaction or not (for tests about something else).
	NoWindows bool
	// MaxPeople bounds how many people's windows the fake remembers per
	// app; past it, the one told of least recently is forgotten (and gets
	// 45015). Default 100 000.
	MaxPeople int
	// SendCheck, when set, may refuse a customer-service message with an
	// errcode before the windows are checked; 0 lets it through.
	SendCheck func(Message) (errcode int, errmsg string)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Logger gets a line per call; nil discards.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.TokenTTL <= 0 {
		o.TokenTTL = 2 * time.Hour
	}
	o.TokenTTL = max(o.TokenTTL.Truncate(time.Second), 2*time.Second)
	if o.Overlap <= 0 || o.Overlap >= o.TokenTTL {
		o.Overlap = min(5*time.Minute, o.TokenTTL/2)
	}
	if o.PermanentCap <= 0 {
		o.PermanentCap = 100000
	}
	if o.MessageWindow <= 0 {
		o.MessageWindow = 48 * time.Hour
	}
	if o.EventWindow <= 0 {
		o.EventWindow = time.Minute
	}
	if o.MessageQuota <= 0 {
		o.MessageQuota = 5
	}
	if o.EventQuota <= 0 {
		o.EventQuota = 3
	}
	if o.MaxPeople <= 0 {
		o.MaxPeople = 100000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is the fake; it is an http.Handler.
type Server struct {
	o   Options
	mux *http.ServeMux

	mu       sync.Mutex
	apps     map[string]*app
	first    string // the default app
	calls    map[string]int
	forced   int // stable_token calls with force_refresh: true
	errcodes map[string]map[string]int
	codes    []QRCode
	messages []Message
	faults   []Fault
}

// app is one AppID's state: WeChat keeps each account's apart.
type app struct {
	id, secret string
	tokens     []*token // issued, oldest first; the last is the current one
	forced     int
	calls      map[string]int
	errcodes   map[string]map[string]int
	perm       map[string]QRCode // permanent codes by action and scene

	people       map[string]*person // customer-service windows by OpenID
	lru          *list.List         // the OpenIDs in people, told of least recently first
	interactions map[string]int     // told, by kind

	data appData // tags, datacube figures, auto-replies (data.go)
}

type token struct {
	value   string
	expires time.Time
	invalid bool // invalidated before its time (a force_refresh, a fault)
}

// QRCode is a code the fake issued.
type QRCode struct {
	AppID         string `json:"appid"`
	ActionName    string `json:"action_name"`
	Scene         string `json:"scene"` // scene_id as text, or scene_str
	Ticket        string `json:"ticket"`
	URL           string `json:"url"`
	ExpireSeconds int64  `json:"expire_seconds,omitempty"`
}

// Message is a customer-service message the fake accepted.
type Message struct {
	AppID   string          `json:"appid"`
	ToUser  string          `json:"touser"`
	MsgType string          `json:"msgtype"`
	Content string          `json:"content,omitempty"` // text messages
	Body    json.RawMessage `json:"body"`
	At      time.Time       `json:"at"`
}

// Fault is a switch: the next Count calls of API (every API when empty) of
// AppID (every app when empty) are answered with Errcode, after Delay, or
// dropped. By default that happens instead of processing the call; with
// After, the call is processed and recorded first (a send is delivered, a
// code created), and only then is the answer delayed, replaced by Errcode
// or dropped: a test can kill the caller, or fail it, once WeChat has done
// the work. InvalidateToken invalidates the current access_token of AppID
// (of every app when empty) at once (its next use gets 40001; the next
// stable_token issues a new one).
type Fault struct {
	API             string `json:"api,omitempty"`
	AppID           string `json:"appid,omitempty"`
	Errcode         int    `json:"errcode,omitempty"`
	Errmsg          string `json:"errmsg,omitempty"`
	Delay           string `json:"delay,omitempty"` // a Go duration
	Drop            bool   `json:"drop,omitempty"`
	After           bool   `json:"after,omitempty"`
	Count           int    `json:"count,omitempty"` // default 1
	InvalidateToken bool   `json:"invalidate_token,omitempty"`
	delay           time.Duration
}

// Calls is what GET /wxsim/calls answers: the totals, and Apps the same
// counts per AppID (a call whose app the fake could not tell, a wrong
// AppID or an unknown token, is in the totals only).
type Calls struct {
	AppCalls
	QRCodes  []QRCode            `json:"qrcodes"`
	Messages []Message           `json:"messages"` // accepted customer-service messages
	Apps     map[string]AppCalls `json:"apps"`
}

// AppCalls are the counts of one app, or of all.
type AppCalls struct {
	Calls    map[string]int            `json:"calls"`    // requests received per API
	Errcodes map[string]map[string]int `json:"errcodes"` // errcodes answered per API
	// ForceRefresh counts stable_token calls that asked for force_refresh
	// (each one ends every other holder's token): wxgate sends none.
	ForceRefresh int `json:"force_refresh"`
	Tokens       int `json:"tokens"` // access_tokens issued (live ones only, per app)
	// Interactions are those the fake was told of, by kind.
	Interactions map[string]int `json:"interactions"`
	// Tagging is what batchtagging did (per app only).
	Tagging *Tagging `json:"tagging,omitempty"`
}

// New returns the fake.
func New(o Options) *Server {
	o.setDefaults()
	s := &Server{o: o, mux: http.NewServeMux()}
	s.reset()
	s.mux.HandleFunc("/cgi-bin/stable_token", s.api(StableToken, http.MethodPost, s.stableToken))
	s.mux.HandleFunc("/cgi-bin/qrcode/create", s.api(QRCodeCreate, http.MethodPost, s.withToken(s.qrcodeCreate)))
	s.mux.HandleFunc("/cgi-bin/message/custom/send", s.api(CustomSend, http.MethodPost, s.withToken(s.customSend)))
	s.routeData()
	s.mux.HandleFunc("POST /wxsim/fault", s.control(func(body []byte) error {
		var f Fault
		if err := admin.DecodeJSON(bytes.NewReader(body), &f); err != nil {
			return fmt.Errorf("bad fault: %w", err)
		}
		return s.Inject(f)
	}))
	s.mux.HandleFunc("POST /wxsim/interaction", s.control(func(body []byte) error {
		req, err := ParseInteraction(body)
		if err == nil {
			err = s.AppInteraction(req.AppID, req.OpenID, req.Kind, req.At)
		}
		return err
	}))
	s.mux.HandleFunc("GET /wxsim/calls", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.Calls()) })
	s.mux.HandleFunc("POST /wxsim/reset", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.reset()
		s.mu.Unlock()
		writeJSON(w, map[string]bool{"ok": true})
	})
	// What -healthcheck asks, as of every wxgate process.
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ready\n") })
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// WeChat answers unknown paths with a JSON errcode, not a 404 page.
		answer(w, 48001, "api unauthorized (the fake does not serve "+strconv.Quote(r.URL.Path)+")")
	})
	return s
}

func (s *Server) reset() {
	s.codes, s.messages, s.faults, s.forced = nil, nil, nil, 0
	s.calls, s.errcodes = map[string]int{}, map[string]map[string]int{}
	apps := maps.Clone(s.o.Apps)
	if apps == nil {
		apps = map[string]string{}
	}
	if s.o.AppID != "" {
		apps[s.o.AppID] = s.o.Secret
	}
	s.apps, s.first = map[string]*app{}, s.o.AppID
	for _, id := range slices.Sorted(maps.Keys(apps)) {
		s.apps[id] = &app{id: id, secret: apps[id], calls: map[string]int{}, errcodes: map[string]map[string]int{},
			perm: map[string]QRCode{}, people: map[string]*person{}, lru: list.New(), interactions: map[string]int{}, data: newAppData()}
		s.first = cmp.Or(s.first, id)
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// AppIDs are the apps the fake serves, the default first.
func (s *Server) AppIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := []string{s.first}
	for _, id := range slices.Sorted(maps.Keys(s.apps)) {
		if id != s.first {
			ids = append(ids, id)
		}
	}
	return ids
}

// Calls returns a copy of what the fake received.
func (s *Server) Calls() Calls {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := Calls{AppCalls: countsOf(s.calls, s.errcodes, s.forced, 0, nil), Apps: map[string]AppCalls{},
		QRCodes: append([]QRCode{}, s.codes...), Messages: append([]Message{}, s.messages...)}
	for id, a := range s.apps {
		ac := countsOf(a.calls, a.errcodes, a.forced, len(a.tokens), a.interactions)
		tg := a.data.taggingOf()
		ac.Tagging = &tg
		c.Apps[id] = ac
		c.Tokens += len(a.tokens)
		for k, n := range a.interactions {
			c.Interactions[k] += n
		}
	}
	return c
}

func countsOf(calls map[string]int, errcodes map[string]map[string]int, forced, tokens int, interactions map[string]int) AppCalls {
	c := AppCalls{Calls: map[string]int{StableToken: 0, QRCodeCreate: 0, CustomSend: 0}, Errcodes: map[string]map[string]int{},
		ForceRefresh: forced, Tokens: tokens, Interactions: map[string]int{KindMessage: 0, KindEvent: 0, KindUnsubscribe: 0}}
	maps.Copy(c.Calls, calls)
	maps.Copy(c.Interactions, interactions)
	for api, m := range errcodes {
		c.Errcodes[api] = maps.Clone(m)
	}
	return c
}

// Inject adds a fault, as POST /wxsim/fault does.
func (s *Server) Inject(f Fault) error {
	if f.Delay != "" {
		d, err := time.ParseDuration(f.Delay)
		if err != nil || d < 0 || d > 10*time.Minute {
			return errBadFault
		}
		f.delay = d
	}
	if f.Count <= 0 {
		f.Count = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.AppID != "" && s.apps[f.AppID] == nil {
		return faultError("bad fault: no app " + strconv.Quote(f.AppID))
	}
	if f.InvalidateToken {
		for _, a := range s.apps {
			if f.AppID == "" || f.AppID == a.id {
				for _, t := range a.tokens {
					t.invalid = true
				}
			}
		}
		f.InvalidateToken = false
	}
	if f.Errcode != 0 || f.delay > 0 || f.Drop {
		s.faults = append(s.faults, f)
	}
	return nil
}

type faultError string

func (e faultError) Error() string { return string(e) }

const errBadFault = faultError("bad fault: delay must be a Go duration up to 10m")

// answerFunc handles one API call of app a (nil: the fake cannot tell
// which, a wrong AppID or token) and returns the JSON answer. It is called
// without s.mu.
type answerFunc func(r *http.Request, a *app, body []byte) any

// methodCodes are WeChat's answers to a call with the wrong method.
var methodCodes = map[string]int{http.MethodPost: 43002, http.MethodGet: 43001}

// api counts the call, applies a pending fault, reads the body and answers.
// A fault applies before the call is processed (WeChat never saw it) or,
// with After, between processing and answering (WeChat did the work and
// the caller may never hear of it).
func (s *Server) api(name, method string, h answerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// The body is read before any delay: net/http notices a caller
		// going away (r.Context) only once the body has been read.
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			return // the caller went away before sending its body
		}
		s.mu.Lock()
		a := s.appOf(name, r, body)
		s.calls[name]++
		if a != nil {
			a.calls[name]++
		}
		if name == StableToken {
			// Counted whatever the answer, a fault's included: asking is
			// what a test rules out.
			if req, _ := ParseStableToken(body); req.ForceRefresh {
				s.forced++
				if a != nil {
					a.forced++
				}
			}
		}
		f, faulted := s.takeFault(name, a)
		s.mu.Unlock()
		if faulted && !f.After && s.applyFault(w, r, name, a, f) {
			return
		}
		var ans any
		if r.Method != method {
			ans = refuse(methodCodes[method])
		} else {
			ans = h(r, a, body)
		}
		if faulted && f.After && s.applyFault(w, r, name, a, f) {
			return
		}
		if e, ok := ans.(errAnswer); ok && e.Errcode != 0 {
			s.errcode(w, name, a, e.Errcode, e.Errmsg)
			return
		}
		s.o.Logger.Info("answered", "api", name)
		writeJSON(w, ans)
	}
}

// appOf is the app a call is for: stable_token's appid, else the owner of
// its access_token; nil when there is none. Called with s.mu held.
func (s *Server) appOf(name string, r *http.Request, body []byte) *app {
	if name == StableToken {
		req, _ := ParseStableToken(body)
		return s.apps[req.AppID]
	}
	if v := r.URL.Query().Get("access_token"); v != "" {
		for _, a := range s.apps {
			if slices.ContainsFunc(a.tokens, func(t *token) bool { return t.value == v }) {
				return a
			}
		}
	}
	return nil
}

// applyFault waits the fault's delay, then drops the connection or
// answers its errcode; it reports whether the call is over.
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, name string, a *app, f Fault) bool {
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			// Before processing, the call is lost; after, it is done
			// all the same: nothing is undone.
			s.o.Logger.Info("caller gone during the delay", "api", name, "after", f.After)
			return true
		}
	}
	if f.Drop {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
		}
		s.o.Logger.Info("dropped", "api", name, "after", f.After)
		return true
	}
	if f.Errcode != 0 {
		s.errcode(w, name, a, f.Errcode, cmp.Or(f.Errmsg, errmsgs[f.Errcode], "injected by wxsim"))
		return true
	}
	return false
}

// takeFault returns the first pending fault for api of app a and counts
// it down. Called with s.mu held.
func (s *Server) takeFault(api string, a *app) (Fault, bool) {
	for i, f := range s.faults {
		if (f.API != "" && f.API != api) || (f.AppID != "" && (a == nil || f.AppID != a.id)) {
			continue
		}
		if s.faults[i].Count--; s.faults[i].Count <= 0 {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
		return f, true
	}
	return Fault{}, false
}

type errAnswer struct {
	Errcode int    `json:"errcode"`
	Errmsg  string `json:"errmsg"`
}

func refuse(code int) errAnswer { return errAnswer{code, errmsgs[code]} }

// errmsgs are WeChat's texts for the codes the fake answers.
var errmsgs = map[int]string{
	-1:    "system error",
	40001: "invalid credential, access_token is invalid or not latest, could get access_token by getStableAccessToken",
	40002: "invalid grant_type",
	40003: "invalid openid",
	40008: "invalid message type",
	40013: "invalid appid",
	40014: "invalid access_token",
	40032: "invalid openid list size",
	40052: "invalid action name",
	40053: "invalid action info, please check document",
	40125: "invalid appsecret",
	40164: "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist",
	41001: "access_token missing",
	42001: "access_token expired",
	43001: "require GET method",
	43002: "require POST method",
	44004: "text content is empty",
	45009: "reach max api daily quota limit",
	45015: "response out of time limit or subscription is canceled",
	45029: "qrcode count out of limit",
	45047: "out of response count limit",
	45056: "too many tag now, no need to add new",
	45059: "can not tagging one user too much",
	45157: "invalid tag name",
	45158: "tag name too long",
	45159: "invalid tag id",
	47001: "data format error",
	48001: "api unauthorized",
	61500: "date format error",
	61501: "date range error",
	89503: "此次调用需要管理员确认，请耐心等候",
}

func (s *Server) errcode(w http.ResponseWriter, api string, a *app, code int, msg string) {
	s.mu.Lock()
	count := func(m map[string]map[string]int) {
		if m[api] == nil {
			m[api] = map[string]int{}
		}
		m[api][strconv.Itoa(code)]++
	}
	count(s.errcodes)
	if a != nil {
		count(a.errcodes)
	}
	s.mu.Unlock()
	s.o.Logger.Info("refused", "api", api, "errcode", code)
	answer(w, code, msg)
}

// answer writes an errcode as WeChat does: HTTP 200 with a JSON body.
func answer(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, errAnswer{code, msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; encoding=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}

// StableTokenRequest is the body of POST /cgi-bin/stable_token.
type StableTokenRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

// ParseStableToken decodes and checks a stable_token body; code is 0 when
// it is acceptable as to form (the credentials are checked apart).
func ParseStableToken(body []byte) (req StableTokenRequest, code int) {
	if json.Unmarshal(body, &req) != nil {
		return req, 47001
	}
	if req.GrantType != "client_credential" {
		return req, 40002
	}
	return req, 0
}

func (s *Server) stableToken(_ *http.Request, a *app, body []byte) any {
	req, code := ParseStableToken(body)
	switch {
	case code != 0:
		return refuse(code)
	case a == nil:
		return refuse(40013)
	case req.Secret != a.secret:
		return refuse(40125)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.o.Now()
	var cur *token
	if n := len(a.tokens); n > 0 {
		cur = a.tokens[n-1]
	}
	if req.ForceRefresh && cur != nil {
		cur.invalid = true // force_refresh ends the previous token at once
	}
	// Normal mode: the same token until the overlap before its expiry;
	// then a new one, the old staying valid until its own time.
	if cur == nil || cur.invalid || cur.expires.Sub(now) <= s.o.Overlap {
		cur = &token{value: "wxsim_" + randomHex(48), expires: now.Add(s.o.TokenTTL)}
		a.tokens = append(a.tokens, cur)
		a.dropDeadTokens(now)
	}
	return map[string]any{"access_token": cur.value, "expires_in": max(1, int64(cur.expires.Sub(now)/time.Second))}
}

// dropDeadTokens forgets tokens past their time, keeping the current one,
// so the list stays short however long the fake runs.
func (a *app) dropDeadTokens(now time.Time) {
	keep := a.tokens[:0]
	for i, t := range a.tokens {
		if i == len(a.tokens)-1 || now.Before(t.expires) {
			keep = append(keep, t)
		}
	}
	a.tokens = keep
}

// withToken checks the access_token query parameter first: h is called
// only with the app that owns a valid token.
func (s *Server) withToken(h answerFunc) answerFunc {
	return func(r *http.Request, a *app, body []byte) any {
		if code := s.checkToken(a, r.URL.Query().Get("access_token")); code != 0 {
			return refuse(code)
		}
		return h(r, a, body)
	}
}

func (s *Server) checkToken(a *app, v string) int {
	if v == "" {
		return 41001
	}
	if a == nil {
		return 40001
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range a.tokens {
		if t.value != v {
			continue
		}
		switch {
		case t.invalid:
			return 40001
		case !s.o.Now().Before(t.expires):
			return 42001
		}
		return 0
	}
	return 40001
}

// QRRequest is the body of POST /cgi-bin/qrcode/create.
type QRRequest struct {
	ExpireSeconds *int64 `json:"expire_seconds"`
	ActionName    string `json:"action_name"`
	ActionInfo    struct {
		Scene struct {
			SceneID  *json.Number `json:"scene_id"`
			SceneStr *string      `json:"scene_str"`
		} `json:"scene"`
	} `json:"action_info"`
}

// ParseQRRequest decodes and checks a qrcode/create body as WeChat does:
// the action name (40052), the scene for it and expire_seconds (40053).
// It returns the scene as text and the code's lifetime (0: permanent).
func ParseQRRequest(body []byte) (req QRRequest, scene string, expire int64, code int) {
	if json.Unmarshal(body, &req) != nil {
		return req, "", 0, 47001
	}
	sc := req.ActionInfo.Scene
	permanent := false
	switch req.ActionName {
	case "QR_SCENE", "QR_LIMIT_SCENE":
		permanent = req.ActionName == "QR_LIMIT_SCENE"
		hi := uint64(MaxTempSceneID)
		if permanent {
			hi = MaxPermSceneID
		}
		if sc.SceneID == nil {
			return req, "", 0, 40053
		}
		n, err := strconv.ParseUint(sc.SceneID.String(), 10, 64)
		if err != nil || n < 1 || n > hi {
			return req, "", 0, 40053
		}
		scene = strconv.FormatUint(n, 10)
	case "QR_STR_SCENE", "QR_LIMIT_STR_SCENE":
		permanent = req.ActionName == "QR_LIMIT_STR_SCENE"
		if sc.SceneStr == nil || *sc.SceneStr == "" || !utf8.ValidString(*sc.SceneStr) || utf8.RuneCountInString(*sc.SceneStr) > MaxSceneStr {
			return req, "", 0, 40053
		}
		scene = *sc.SceneStr
	default:
		return req, "", 0, 40052
	}
	if permanent {
		return req, scene, 0, 0
	}
	expire = DefaultExpireSeconds
	if req.ExpireSeconds != nil {
		// WeChat documents the bound, not its answer past it: the fake refuses.
		if *req.ExpireSeconds < 1 || *req.ExpireSeconds > MaxExpireSeconds {
			return req, "", 0, 40053
		}
		expire = *req.ExpireSeconds
	}
	return req, scene, expire, 0
}

func (s *Server) qrcodeCreate(_ *http.Request, a *app, body []byte) any {
	req, scene, expire, code := ParseQRRequest(body)
	if code != 0 {
		return refuse(code)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if expire == 0 { // permanent: one code per scene, and a cap on them
		key := req.ActionName + "\x00" + scene
		if c, ok := a.perm[key]; ok {
			return c
		}
		if len(a.perm) >= s.o.PermanentCap {
			return refuse(45029)
		}
		c := newCode(a.id, req.ActionName, scene, 0)
		a.perm[key] = c
		s.codes = append(s.codes, c)
		return c
	}
	c := newCode(a.id, req.ActionName, scene, expire)
	s.codes = append(s.codes, c)
	return c
}

// newCode makes a plausible ticket and url: the url is what the QR image
// encodes (http://, as WeChat's are), the ticket a base64 blob that embeds it.
func newCode(appID, action, scene string, expire int64) QRCode {
	u := "http://weixin.qq.com/q/" + base64.RawURLEncoding.EncodeToString(randomBytes(16))[:22]
	blob := append([]byte{0x08, 0x01, 0x12}, u...)
	blob = append(blob, randomBytes(8)...)
	return QRCode{AppID: appID, ActionName: action, Scene: scene, Ticket: "gQ" + base64.StdEncoding.EncodeToString(blob), URL: u, ExpireSeconds: expire}
}

// SendRequest is the part of a message/custom/send body the fake checks.
type SendRequest struct {
	ToUser  string `json:"touser"`
	MsgType string `json:"msgtype"`
	Text    *struct {
		Content string `json:"content"`
	} `json:"text"`
}

// msgTypes are the customer-service message types WeChat documents.
var msgTypes = map[string]bool{"text": true, "image": true, "voice": true, "video": true, "music": true, "news": true,
	"mpnews": true, "mpnewsarticle": true, "msgmenu": true, "wxcard": true, "miniprogrampage": true}

// ParseSend decodes and checks a message/custom/send body.
func ParseSend(body []byte) (m Message, code int) {
	var req SendRequest
	if json.Unmarshal(body, &req) != nil {
		return m, 47001
	}
	m = Message{ToUser: req.ToUser, MsgType: req.MsgType, Body: json.RawMessage(body)}
	switch {
	case req.ToUser == "" || len(req.ToUser) > 64:
		return m, 40003
	case !msgTypes[req.MsgType]:
		return m, 40008
	case req.MsgType == "text" && (req.Text == nil || req.Text.Content == ""):
		return m, 44004
	}
	if req.Text != nil {
		m.Content = req.Text.Content
	}
	return m, 0
}

// maxMessages bounds what the fake keeps: the newest are kept.
const maxMessages = 10000

func (s *Server) customSend(_ *http.Request, a *app, body []byte) any {
	m, code := ParseSend(body)
	if code != 0 {
		return refuse(code)
	}
	m.AppID, m.At = a.id, s.o.Now()
	if s.o.SendCheck != nil {
		if code, msg := s.o.SendCheck(m); code != 0 {
			return errAnswer{code, msg}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Checked and counted under the lock with the recording, so concurrent
	// sends cannot both take a window's last message.
	if !s.o.NoWindows {
		if code := a.useWindow(m.ToUser, m.At); code != 0 {
			return refuse(code)
		}
	}
	if len(s.messages) == maxMessages {
		s.messages = append(s.messages[:0:0], s.messages[maxMessages/2:]...)
	}
	s.messages = append(s.messages, m)
	return errAnswer{0, "ok"}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func randomHex(n int) string { return hex.EncodeToString(randomBytes(n)) }
