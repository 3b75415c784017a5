package qrcodes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

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
}

// maxBody bounds a request body: a scene, a label and two numbers.
const maxBody = 8 << 10

// ParseRequest reads and checks a create request. Its errors are the
// caller's mistakes (ErrBadRequest), and say which field is wrong.
func ParseRequest(r io.Reader) (Request, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return Request{}, fmt.Errorf("%w: reading the body: %v", ErrBadRequest, err)
	}
	if len(b) > maxBody {
		// A bad body like any other: the contract's 400.
		return Request{}, fmt.Errorf("%w: the body is over %d bytes", ErrBadRequest, maxBody)
	}
	if !utf8.Valid(b) {
		// The decoder would turn the bad bytes into U+FFFD: a scene the
		// caller never wrote.
		return Request{}, fmt.Errorf("%w: the body must be UTF-8", ErrBadRequest)
	}
	var in struct {
		Scene         *string `json:"scene"`
		Permanent     bool    `json:"permanent"`
		ExpireSeconds *int64  `json:"expire_seconds"`
		Label         string  `json:"label"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // a misspelt field must not pass as a default
	if err := dec.Decode(&in); err != nil {
		return Request{}, fmt.Errorf("%w: want a JSON object {\"scene\",\"permanent\",\"expire_seconds\",\"label\"}: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return Request{}, fmt.Errorf("%w: one JSON object only", ErrBadRequest)
	}
	req := Request{Permanent: in.Permanent, Label: in.Label, ExpireSeconds: DefaultExpireSeconds}
	if in.Scene == nil {
		return Request{}, fmt.Errorf("%w: scene is required", ErrBadRequest)
	}
	req.Scene = *in.Scene
	if p := wechat.SceneProblem(req.Scene); p != "" {
		return Request{}, fmt.Errorf("%w: scene must be 1 to 64 characters of UTF-8 (%s)", ErrBadRequest, p)
	}
	if in.ExpireSeconds != nil && !in.Permanent {
		if *in.ExpireSeconds < MinExpireSeconds || *in.ExpireSeconds > MaxExpireSeconds {
			return Request{}, fmt.Errorf("%w: expire_seconds must be %d to %d", ErrBadRequest, MinExpireSeconds, MaxExpireSeconds)
		}
		req.ExpireSeconds = *in.ExpireSeconds
	}
	if req.Permanent {
		req.ExpireSeconds = 0
	}
	if err := checkLabel(req.Label); err != nil {
		return Request{}, err
	}
	return req, nil
}

func checkLabel(l string) error {
	if !utf8.ValidString(l) || utf8.RuneCountInString(l) > MaxLabelChars {
		return fmt.Errorf("%w: label must be at most %d characters of UTF-8", ErrBadRequest, MaxLabelChars)
	}
	for _, r := range l {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: label must not contain control characters", ErrBadRequest)
		}
	}
	return nil
}

// Handler serves the API under /api/qrcodes:
//
//	POST /api/qrcodes                       create (201, or 200 for an existing permanent code)
//	GET  /api/qrcodes                       {"qrcodes":[…]} with each scene's counts
//	GET  /api/qrcodes/{scene}               the scene's latest code, or 404
//	GET  /api/qrcodes/{scene}/image?size=N  the PNG of its latest code's url;
//	                                        &ticket=T: of the code with that ticket
//
// {scene} is one escaped path segment, read from the path as sent: a
// scene may be ".", "..", "a/../b" or "image", which a cleaned path would
// change. So the handler must get requests before an http.ServeMux cleans
// them (admin.Mux.HandleUncleaned). Without WECHAT_APPSECRET every route
// answers 503 before looking at the request. With token set, every route
// needs the bearer token; the GET routes also take the /ui/ page's session
// cookie (for its <img> tags and downloads).
func (s *Service) Handler(token string) http.Handler {
	return admin.RequireTokenOrSession(token, http.HandlerFunc(s.route))
}

// Prefix is the path the handler serves, and everything under it.
const Prefix = "/api/qrcodes"

func (s *Service) route(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), Prefix)
	if !ok || (rest != "" && rest[0] != '/') {
		admin.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
		return
	}
	if !s.Enabled() {
		// The feature is off: no answer about the request itself.
		s.fail(w, r, "", ErrOff)
		return
	}
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	if rest == "" {
		switch {
		case r.Method == http.MethodPost:
			s.create(w, r)
		case get:
			s.list(w, r)
		default:
			methodNotAllowed(w, "GET, HEAD, POST")
		}
		return
	}
	seg, sub, nested := strings.Cut(rest[1:], "/")
	if seg == "" || (nested && sub != "image") {
		admin.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "not found"})
		return
	}
	if !get {
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
		s.image(w, r, route, scene)
	} else {
		s.get(w, r, route, scene)
	}
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	admin.WriteJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed; allowed: " + allow})
}

func (s *Service) create(w http.ResponseWriter, r *http.Request) {
	const route = "POST /api/qrcodes"
	req, err := ParseRequest(r.Body)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	c, created, err := s.Create(ctx, req)
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

func (s *Service) list(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	all, err := s.List(ctx)
	if err != nil {
		s.fail(w, r, "GET /api/qrcodes", err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"qrcodes": all})
}

func (s *Service) get(w http.ResponseWriter, r *http.Request, route, scene string) {
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	c, found, err := s.Latest(ctx, scene)
	switch {
	case err != nil:
		s.fail(w, r, route, err)
	case !found:
		admin.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "no QR code for this scene"})
	default:
		admin.WriteJSON(w, http.StatusOK, c)
	}
}

// maxTicket bounds the ticket parameter: WeChat's are about 100 bytes,
// and a stored one at most 1024 (wechatapi checks).
const maxTicket = 1024

func (s *Service) image(w http.ResponseWriter, r *http.Request, route, scene string) {
	q := r.URL.Query()
	size := DefaultSize
	if v := q.Get("size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < MinSize || n > MaxSize {
			s.fail(w, r, route, fmt.Errorf("%w: size must be %d to %d pixels", ErrBadRequest, MinSize, MaxSize))
			return
		}
		size = n
	}
	ticket := q.Get("ticket")
	if q.Has("ticket") && (ticket == "" || len(ticket) > maxTicket) {
		s.fail(w, r, route, fmt.Errorf("%w: ticket must be 1 to %d bytes", ErrBadRequest, maxTicket))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.RequestTimeout)
	defer cancel()
	c, found, err := s.find(ctx, scene, ticket)
	switch {
	case err != nil:
		s.fail(w, r, route, err)
		return
	case !found && ticket != "":
		admin.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "this scene has no QR code with this ticket"})
		return
	case !found:
		admin.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "no QR code for this scene"})
		return
	}
	img, err := PNG(c.URL, size)
	if err != nil {
		s.fail(w, r, route, err)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	if ticket != "" {
		// One code's image never changes: its URL names the code.
		w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
	} else {
		// The scene's latest code changes when a new one is made.
		w.Header().Set("Cache-Control", "no-cache")
	}
	if q.Has("download") {
		w.Header().Set("Content-Disposition", `attachment; filename="`+sanitizeFilename(scene)+`"`)
	}
	_, _ = w.Write(img)
}

// Problem is how err reaches a caller: the HTTP status and the JSON body.
// The caller's mistake is 400; WeChat's refusal 502 with its errcode; a
// wait on another process that ran out of time, and WeChat not answering,
// 502 with an error that says which; the feature off or the store away 503.
// The API and the /ui/ page's form share it.
func Problem(err error) (int, map[string]any) {
	var we *wechatapi.Error
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, map[string]any{"error": err.Error()}
	case errors.As(err, &we):
		body := map[string]any{"error": "WeChat refused the request", "errcode": we.Code, "errmsg": we.Msg}
		if h := we.Hint(); h != "" {
			body["hint"] = h
		}
		return http.StatusBadGateway, body
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
	case errors.Is(err, ErrOff):
	case code >= 500 && body["errcode"] == nil:
		s.o.Logger.Warn("qr request failed", "route", route, "status", code, "err", err)
	}
	admin.WriteJSON(w, code, body)
}
