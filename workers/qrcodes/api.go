package qrcodes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
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

// ErrTooLarge: the body is over 8 KiB (413).
var ErrTooLarge = fmt.Errorf("the body is over %d bytes", maxBody)

// ParseRequest reads and checks a create request. Its errors are the
// caller's mistakes (ErrBadRequest), and say which field is wrong.
func ParseRequest(r io.Reader) (Request, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return Request{}, fmt.Errorf("%w: reading the body: %v", ErrBadRequest, err)
	}
	if len(b) > maxBody {
		return Request{}, ErrTooLarge
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
//	GET  /api/qrcodes/{scene}/image?size=N  the PNG of its url
//
// With token set, every route needs the bearer token; the GET routes also
// take the /ui/ page's session cookie (for its <img> tags and downloads).
func (s *Service) Handler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/qrcodes", s.create)
	mux.HandleFunc("GET /api/qrcodes", s.list)
	mux.HandleFunc("GET /api/qrcodes/{scene}", s.get)
	mux.HandleFunc("GET /api/qrcodes/{scene}/image", s.image)
	return admin.RequireTokenOrSession(token, mux)
}

// callTimeout bounds a request: a WeChat call, KV reads and writes.
const callTimeout = 20 * time.Second

func (s *Service) create(w http.ResponseWriter, r *http.Request) {
	req, err := ParseRequest(r.Body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	c, created, err := s.Create(ctx, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	writeJSON(w, code, c)
}

func (s *Service) list(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	all, err := s.List(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"qrcodes": all})
}

// scene reads and checks the path's scene before it reaches a KV key.
func (s *Service) scene(w http.ResponseWriter, r *http.Request) (string, bool) {
	scene := r.PathValue("scene")
	if p := wechat.SceneProblem(scene); p != "" {
		s.fail(w, r, fmt.Errorf("%w: scene must be 1 to 64 characters of UTF-8 (%s)", ErrBadRequest, p))
		return "", false
	}
	return scene, true
}

func (s *Service) get(w http.ResponseWriter, r *http.Request) {
	scene, ok := s.scene(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	c, found, err := s.Latest(ctx, scene)
	switch {
	case err != nil:
		s.fail(w, r, err)
	case !found:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no QR code for this scene"})
	default:
		writeJSON(w, http.StatusOK, c)
	}
}

func (s *Service) image(w http.ResponseWriter, r *http.Request) {
	scene, ok := s.scene(w, r)
	if !ok {
		return
	}
	size := DefaultSize
	if v := r.URL.Query().Get("size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < MinSize || n > MaxSize {
			s.fail(w, r, fmt.Errorf("%w: size must be %d to %d pixels", ErrBadRequest, MinSize, MaxSize))
			return
		}
		size = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	c, found, err := s.latest(ctx, scene)
	switch {
	case err != nil:
		s.fail(w, r, err)
		return
	case !found:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no QR code for this scene"})
		return
	}
	img, err := PNG(c.URL, size)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "private, max-age=60")
	if r.URL.Query().Has("download") {
		w.Header().Set("Content-Disposition", `attachment; filename="`+sanitizeFilename(scene)+`"`)
	}
	_, _ = w.Write(img)
}

// fail maps an error to its status: the caller's mistake 400, WeChat's
// refusal 502 with its errcode, WeChat not answering 502, the feature off
// or the store away 503.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, err error) {
	var we *wechatapi.Error
	switch {
	case errors.Is(err, ErrTooLarge):
		s.o.Logger.Info("qr request refused", "route", r.Pattern, "err", err)
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": err.Error()})
	case errors.Is(err, ErrBadRequest):
		s.o.Logger.Info("qr request refused", "route", r.Pattern, "err", err)
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	case errors.As(err, &we):
		body := map[string]any{"error": "WeChat refused the request", "errcode": we.Code, "errmsg": we.Msg}
		if h := we.Hint(); h != "" {
			body["hint"] = h
		}
		writeJSON(w, http.StatusBadGateway, body)
	case errors.Is(err, ErrOff):
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	case errors.Is(err, ErrUnavailable), errors.Is(err, wechatapi.ErrStoreUnavailable):
		s.o.Logger.Warn("qr request failed", "route", r.Pattern, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "QR code store unavailable"})
	default:
		// WeChat did not answer (the call is logged and counted by the
		// client): a gateway error, with nothing a caller could misuse.
		s.o.Logger.Warn("qr request failed", "route", r.Pattern, "err", err)
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": "WeChat's API did not answer"})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
