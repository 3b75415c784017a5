package qrcodes

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// Request is the body of POST /api/qrcodes.
type Request struct {
	Scene     string `json:"scene"`
	Permanent bool   `json:"permanent"`
	// ExpireSeconds is a temporary code's lifetime, 60 to 2592000
	// (default); ignored for a permanent code.
	ExpireSeconds int64  `json:"expire_seconds"`
	Label         string `json:"label"`
	// Group gathers codes (门店, 地铁, 线上): at most 32 characters.
	Group string `json:"group"`
}

// maxBody bounds a request body: a scene, a label, a group and two numbers.
const maxBody = 8 << 10

// ParseRequest reads and checks a create request. Its errors are the
// caller's mistakes (ErrBadRequest), and say which field is wrong.
func ParseRequest(r io.Reader) (Request, error) {
	b, err := readBody(r, maxBody)
	if err != nil {
		return Request{}, err
	}
	req := Request{ExpireSeconds: DefaultExpireSeconds}
	if err := admin.DecodeJSON(bytes.NewReader(b), &req); err != nil {
		return Request{}, fmt.Errorf("%w: want a JSON object {\"scene\",\"permanent\",\"expire_seconds\",\"label\",\"group\"}: %v", ErrBadRequest, err)
	}
	if p := wechat.SceneProblem(req.Scene); p != "" {
		return Request{}, fmt.Errorf("%w: scene must be 1 to 64 characters of UTF-8 (%s)", ErrBadRequest, p)
	}
	if req.Permanent {
		req.ExpireSeconds = 0
	} else if req.ExpireSeconds < MinExpireSeconds || req.ExpireSeconds > MaxExpireSeconds {
		return Request{}, fmt.Errorf("%w: expire_seconds must be %d to %d", ErrBadRequest, MinExpireSeconds, MaxExpireSeconds)
	}
	if err := checkText("label", req.Label, MaxLabelChars); err != nil {
		return Request{}, err
	}
	if err := checkText("group", req.Group, MaxGroupChars); err != nil {
		return Request{}, err
	}
	return req, nil
}

// readBody reads a body of at most limit bytes of UTF-8: the JSON decoder
// would turn bad bytes into U+FFFD, a scene the caller never wrote.
func readBody(r io.Reader, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: reading the body: %v", ErrBadRequest, err)
	case len(b) > limit:
		return nil, fmt.Errorf("%w: the body is over %d bytes", ErrBadRequest, limit)
	case !utf8.Valid(b):
		return nil, fmt.Errorf("%w: the body must be UTF-8", ErrBadRequest)
	}
	return b, nil
}

// checkText checks a label or a group: UTF-8, at most most characters, no
// control characters.
func checkText(field, v string, most int) error {
	if !utf8.ValidString(v) || utf8.RuneCountInString(v) > most {
		return fmt.Errorf("%w: %s must be at most %d characters of UTF-8", ErrBadRequest, field, most)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s must not contain control characters", ErrBadRequest, field)
		}
	}
	return nil
}

// Handler serves the API under /api/qrcodes, each route for the account
// ?account=<id> (default: default; unknown: 404):
//
//	POST /api/qrcodes                   create (201, or 200 for an existing permanent code)
//	POST /api/qrcodes/batch             create up to 1000 from JSON or CSV: a status per code
//	GET  /api/qrcodes[?group=G]         {"qrcodes":[…]} with each scene's counts
//	GET  /api/qrcodes/archive.zip       a ZIP of the codes' images [?group=G]
//	GET  /api/qrcodes/{scene}           the scene's latest code, or 404
//	GET  /api/qrcodes/{scene}/image     its latest code's image, as an attachment:
//	                                    ?format=png|svg&size=N&caption=1; &ticket=T: of
//	                                    the code with that ticket; an expired code is 410
//	                                    unless &expired=1
//
// {scene} is one escaped path segment, read from the path as sent: a
// scene may be ".", "..", "a/../b" or "image", which a cleaned path would
// change. So the handler must get requests before an http.ServeMux cleans
// them (admin.Mux.HandleUncleaned). SceneURL escapes a scene's dots, so
// the scene "archive.zip" is /api/qrcodes/archive%2Ezip, never the ZIP.
// An account without an AppSecret answers 503 on every route before its
// request is looked at. With token set, every route needs the bearer
// token or the /ui/ page's session cookie (admin.RequireToken).
func (s *Service) Handler(token string) http.Handler {
	return admin.RequireToken(token, http.HandlerFunc(s.route))
}

// Prefix is the path the handler serves, and everything under it.
const Prefix = "/api/qrcodes"

func (s *Service) route(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), Prefix)
	if !ok || (rest != "" && rest[0] != '/') {
		notFound(w, "not found")
		return
	}
	account := cmp.Or(r.URL.Query().Get("account"), accounts.DefaultID)
	if !accounts.ValidID(account) {
		// Checked before it becomes a KV key or a label.
		notFound(w, "no such account")
		return
	}
	if _, err := s.client(account); err != nil {
		// Unknown (404), or the feature is off (503): no answer about the
		// request itself.
		s.fail(w, r, "", err)
		return
	}
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case rest == "" && r.Method == http.MethodPost:
		s.create(w, r, account)
	case rest == "" && get:
		s.list(w, r, account)
	case rest == "":
		methodNotAllowed(w, "GET, HEAD, POST")
	case rest == "/batch" && r.Method == http.MethodPost:
		s.batch(w, r, account)
	case rest == "/archive.zip" && get:
		s.archive(w, r, account)
	default:
		s.scene(w, r, account, rest[1:])
	}
}

// scene serves GET /api/qrcodes/{scene}[/image].
func (s *Service) scene(w http.ResponseWriter, r *http.Request, account, rest string) {
	seg, sub, nested := strings.Cut(rest, "/")
	if seg == "" || (nested && sub != "image") {
		notFound(w, "not found")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	route := "GET /api/qrcodes/{scene}"
	if nested {
		route += "/image"
	}
	scene, err := url.PathUnescape(seg)
	if err == nil {
		if p := wechat.SceneProblem(scene); p != "" {
			err = fmt.Errorf("scene must be 1 to 64 characters of UTF-8 (%s)", p)
		}
	} else {
		err = errors.New("the scene is not a well-escaped path segment")
	}
	if err != nil {
		// Checked before it becomes a KV key: a path of any length must
		// not reach the bus.
		s.fail(w, r, route, fmt.Errorf("%w: %w", ErrBadRequest, err))
		return
	}
	if nested {
		s.image(w, r, account, route, scene)
	} else {
		s.get(w, r, account, route, scene)
	}
}

func notFound(w http.ResponseWriter, msg string) { admin.WriteError(w, http.StatusNotFound, msg) }

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	admin.WriteError(w, http.StatusMethodNotAllowed, "method not allowed; allowed: "+allow)
}

func (s *Service) create(w http.ResponseWriter, r *http.Request, account string) {
	const route = "POST /api/qrcodes"
	req, err := ParseRequest(r.Body)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	c, created, err := s.Create(ctx, account, req)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	admin.WriteJSON(w, code, c)
}

// groupParam is ?group=G: nil when absent (every group), else G ("" the
// codes without one).
func groupParam(r *http.Request) (*string, error) {
	q := r.URL.Query()
	if !q.Has("group") {
		return nil, nil
	}
	g := q.Get("group")
	return &g, checkText("group", g, MaxGroupChars)
}

func (s *Service) list(w http.ResponseWriter, r *http.Request, account string) {
	const route = "GET /api/qrcodes"
	group, err := groupParam(r)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	all, err := s.List(ctx, account, group)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"qrcodes": all})
}

func (s *Service) get(w http.ResponseWriter, r *http.Request, account, route, scene string) {
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	c, found, err := s.Latest(ctx, account, scene)
	switch {
	case err != nil:
		s.fail(w, r, route, err)
	case !found:
		notFound(w, "no QR code for this scene")
	default:
		admin.WriteJSON(w, http.StatusOK, c)
	}
}

// maxTicket bounds the ticket parameter: WeChat's are about 100 bytes,
// and a stored one at most 1024 (wechatapi checks).
const maxTicket = 1024

// imageParams reads format, size and caption, as the image and the ZIP
// take them; the caption is c's label, or its scene.
func imageParams(q url.Values) (Image, bool, error) {
	o := Image{Format: cmp.Or(q.Get("format"), FormatPNG), Size: DefaultSize}
	if o.Format != FormatPNG && o.Format != FormatSVG {
		return o, false, fmt.Errorf("%w: format must be png or svg", ErrBadRequest)
	}
	if v := q.Get("size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < MinSize || n > MaxSize {
			return o, false, fmt.Errorf("%w: size must be %d to %d pixels", ErrBadRequest, MinSize, MaxSize)
		}
		o.Size = n
	}
	switch v := q.Get("caption"); v {
	case "", "0", "1":
		return o, v == "1", nil
	}
	return o, false, fmt.Errorf("%w: caption must be 0 or 1", ErrBadRequest)
}

// name is what a code is called in a file name and a caption: its label,
// or its scene.
func (c Code) name() string { return cmp.Or(strings.TrimSpace(c.Label), c.Scene) }

func (s *Service) image(w http.ResponseWriter, r *http.Request, account, route, scene string) {
	q := r.URL.Query()
	o, caption, err := imageParams(q)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	ticket := q.Get("ticket")
	if q.Has("ticket") && (ticket == "" || len(ticket) > maxTicket) {
		s.fail(w, r, route, fmt.Errorf("%w: ticket must be 1 to %d bytes", ErrBadRequest, maxTicket))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	c, found, err := s.find(ctx, account, scene, ticket)
	switch {
	case err != nil:
		s.fail(w, r, route, err)
		return
	case !found && ticket != "":
		notFound(w, "this scene has no QR code with this ticket")
		return
	case !found:
		notFound(w, "no QR code for this scene")
		return
	case c.Expired(s.o.Now()) && q.Get("expired") != "1":
		// A dead code must not go to print by mistake (ux.md).
		admin.WriteJSON(w, http.StatusGone, map[string]any{"error": "this QR code expired at " + c.ExpiresAt.Format(time.RFC3339) +
			": scanning it does nothing; make a new one (a permanent one for print), or add &expired=1 to get its image anyway", "expires_at": c.ExpiresAt})
		return
	}
	if caption {
		o.Caption = c.name()
	}
	img, err := s.o.Fonts.Render(c.URL, o)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	w.Header().Set("Content-Type", contentTypes[o.Format])
	w.Header().Set("Content-Disposition", attachment(c.name(), "."+o.Format))
	if ticket != "" {
		// One code's image never changes: its URL names the code.
		w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
	} else {
		// The scene's latest code changes when a new one is made.
		w.Header().Set("Cache-Control", "no-cache")
	}
	_, _ = w.Write(img)
}

var contentTypes = map[string]string{FormatPNG: "image/png", FormatSVG: "image/svg+xml"}

// fileName is name made safe as a file name: no path separators or
// control characters, at most 100 characters.
func fileName(name string) string {
	var b strings.Builder
	n := 0
	for _, r := range strings.TrimSpace(name) {
		if n == 100 {
			break
		}
		if r == '/' || r == '\\' || unicode.IsControl(r) {
			r = '_'
		}
		b.WriteRune(r)
		n++
	}
	return cmp.Or(b.String(), "qr")
}

// attachment is a Content-Disposition that keeps a Chinese name (RFC 6266:
// filename* in UTF-8, as every browser reads it).
func attachment(name, ext string) string {
	name = fileName(name)
	return `attachment; filename*=UTF-8''` + pctEncode(name+ext)
}

// pctEncode writes s as RFC 5987's value-chars: attr-chars as they are,
// every other byte as %XX.
func pctEncode(s string) string {
	const attr = "!#$&+-.^_`|~"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(attr, c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// Problem is how err reaches a caller: the HTTP status and the JSON body.
// The caller's mistake is 400; WeChat's refusal 502 with its errcode; a
// wait on another process that ran out of time, and WeChat not answering,
// 502 with an error that says which; the feature off or the store away 503.
// The API and the /ui/ page's form share it.
func Problem(err error) (int, map[string]any) {
	var we *wechatapi.Error
	var ge *GlyphError
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, map[string]any{"error": err.Error()}
	case errors.As(err, &we):
		body := map[string]any{"error": "WeChat refused the request", "errcode": we.Code, "errmsg": we.Msg}
		if h := we.Hint(); h != "" {
			body["hint"] = h
		}
		return http.StatusBadGateway, body
	case errors.Is(err, ErrNoAccount):
		return http.StatusNotFound, map[string]any{"error": "no such account"}
	case errors.As(err, &ge) && ge.NoCJK, errors.Is(err, ErrFont):
		return http.StatusServiceUnavailable, map[string]any{"error": err.Error()}
	case errors.As(err, &ge):
		return http.StatusBadRequest, map[string]any{"error": err.Error()}
	case errors.Is(err, ErrOff):
		return http.StatusServiceUnavailable, map[string]any{"error": err.Error()}
	case errors.Is(err, ErrUnavailable), errors.Is(err, wechatapi.ErrStoreUnavailable):
		return http.StatusServiceUnavailable, map[string]any{"error": "QR code store unavailable"}
	case errors.Is(err, ErrWaitedTooLong):
		return http.StatusBadGateway, map[string]any{"error": "another wxgate process is still creating this permanent code (it holds the scene's reservation); try again"}
	case errors.Is(err, wechatapi.ErrTokenWait):
		return http.StatusBadGateway, map[string]any{"error": "another wxgate process is still refreshing the access_token; try again"}
	default:
		// WeChat did not answer (the call is logged and counted by the
		// client): a gateway error, with nothing a caller could misuse.
		return http.StatusBadGateway, map[string]any{"error": "WeChat's API did not answer"}
	}
}

// fail writes err's Problem and logs what the caller is not told.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, route string, err error) {
	code, body := Problem(err)
	switch {
	case code == http.StatusBadRequest:
		s.o.Logger.Info("qr request refused", "route", route, "err", err)
	case errors.Is(err, ErrOff), errors.Is(err, ErrNoAccount):
	case code >= 500 && body["errcode"] == nil:
		s.o.Logger.Warn("qr request failed", "route", route, "status", code, "err", err)
	}
	admin.WriteJSON(w, code, body)
}
