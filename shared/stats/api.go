package stats

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/wechat"
)

// sortKeys are the totals /api/scenes can sort by.
var sortKeys = map[string]func(Totals) int64{
	"scans":           func(t Totals) int64 { return t.Scans },
	"subscribe_scans": func(t Totals) int64 { return t.SubscribeScans },
	"scan_scans":      func(t Totals) int64 { return t.ScanScans },
	"new_followers":   func(t Totals) int64 { return t.NewFollowers },
	"unique_people":   func(t Totals) int64 { return t.UniquePeople },
	"unfollows":       func(t Totals) int64 { return t.Unfollows },
}

// ScenesPage is the /api/scenes answer.
type ScenesPage struct {
	Total  int      `json:"total"`
	Offset int      `json:"offset"`
	Limit  int      `json:"limit"`
	Sort   string   `json:"sort"`
	Order  string   `json:"order"`
	Scenes []Totals `json:"scenes"`
}

// StoreFunc returns the store, or an error while it cannot be opened yet
// (NATS or JetStream not reachable).
type StoreFunc func(context.Context) (*Store, error)

// API serves the totals as JSON:
//
//	GET /api/scenes?sort=scans&order=desc&limit=50&offset=0
//	GET /api/scenes/{scene}
//	GET /api/analytics            the leader's progress (Status)
//	POST /api/analytics/rebuild   rebuild the totals from the event stream
//
// The totals are read from the store on every request. When token is not
// empty the routes require "Authorization: Bearer <token>".
func API(store StoreFunc, token string) http.Handler {
	a := api{store}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/scenes", a.scenes)
	mux.HandleFunc("GET /api/scenes/{scene}", a.scene)
	mux.HandleFunc("GET /api/analytics", a.status)
	mux.HandleFunc("POST /api/analytics/rebuild", a.rebuild)
	return admin.RequireToken(token, mux)
}

type api struct{ store StoreFunc }

func (a api) scenes(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sortBy := cmp.Or(q.Get("sort"), "scans")
	order := cmp.Or(q.Get("order"), "desc")
	key, ok := sortKeys[sortBy]
	if !ok && sortBy != "scene" {
		apiError(w, http.StatusBadRequest, "sort must be scene or one of scans, subscribe_scans, scan_scans, new_followers, unique_people, unfollows")
		return
	}
	if order != "asc" && order != "desc" {
		apiError(w, http.StatusBadRequest, "order must be asc or desc")
		return
	}
	limit, err1 := intParam(q.Get("limit"), 50, 1, 1000)
	offset, err2 := intParam(q.Get("offset"), 0, 0, 1<<31-1)
	if err1 != nil || err2 != nil {
		apiError(w, http.StatusBadRequest, "limit must be 1..1000 and offset 0 or more")
		return
	}
	ctx, s, cancel, ok := a.open(w, r)
	if !ok {
		return
	}
	defer cancel()
	all, err := s.Scenes(ctx)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, unavailable)
		return
	}
	slices.SortFunc(all, func(a, b Totals) int {
		c := 0
		if key != nil {
			c = cmp.Compare(key(a), key(b))
		}
		if c == 0 {
			c = strings.Compare(a.Scene, b.Scene)
		}
		if order == "desc" {
			c = -c
		}
		return c
	})
	page := ScenesPage{Total: len(all), Offset: offset, Limit: limit, Sort: sortBy, Order: order, Scenes: []Totals{}}
	if offset < len(all) {
		page.Scenes = all[offset:min(len(all), offset+limit)]
	}
	admin.WriteJSON(w, http.StatusOK, page)
}

func (a api) scene(w http.ResponseWriter, r *http.Request) {
	scene := r.PathValue("scene")
	if p := wechat.SceneProblem(scene); p != "" {
		// Checked before it becomes a KV key: a path of any length must
		// not reach the bus.
		apiError(w, http.StatusBadRequest, "scene must be 1 to 64 characters of UTF-8 ("+p+")")
		return
	}
	ctx, s, cancel, ok := a.open(w, r)
	if !ok {
		return
	}
	defer cancel()
	t, ok, err := s.Scene(ctx, scene)
	respond(w, t, ok, err, "no scans recorded for this scene")
}

func (a api) status(w http.ResponseWriter, r *http.Request) {
	ctx, s, cancel, ok := a.open(w, r)
	if !ok {
		return
	}
	defer cancel()
	st, ok, err := s.Status(ctx)
	respond(w, st, ok, err, "no analytics leader has reported yet")
}

func (a api) rebuild(w http.ResponseWriter, r *http.Request) {
	ctx, s, cancel, ok := a.open(w, r)
	if !ok {
		return
	}
	defer cancel()
	req, err := s.RequestRebuild(ctx)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, "rebuild not requested: analytics bucket unavailable")
		return
	}
	admin.WriteJSON(w, http.StatusAccepted, map[string]any{
		"request": req,
		"status":  "the leader starts over from the event stream's first event; GET /api/analytics shows its progress",
	})
}

// respond answers a read of the store: v, or 404 with notFound when there
// was nothing to read, or 503 when the store could not be read.
func respond(w http.ResponseWriter, v any, ok bool, err error, notFound string) {
	switch {
	case err != nil:
		apiError(w, http.StatusServiceUnavailable, unavailable)
	case !ok:
		apiError(w, http.StatusNotFound, notFound)
	default:
		admin.WriteJSON(w, http.StatusOK, v)
	}
}

// open opens the store for one request, within 10 seconds; when it cannot,
// it answers 503 and ok is false.
func (a api) open(w http.ResponseWriter, r *http.Request) (ctx context.Context, s *Store, cancel context.CancelFunc, ok bool) {
	ctx, cancel = context.WithTimeout(r.Context(), 10*time.Second)
	s, err := a.store(ctx)
	if err != nil {
		cancel()
		apiError(w, http.StatusServiceUnavailable, unavailable)
		return nil, nil, nil, false
	}
	return ctx, s, cancel, true
}

func intParam(s string, def, lo, hi int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, strconv.ErrRange
	}
	return n, nil
}

// unavailable is the error of a 503: NATS or JetStream out of reach.
const unavailable = "analytics store unavailable"

func apiError(w http.ResponseWriter, code int, msg string) {
	admin.WriteJSON(w, code, map[string]string{"error": msg})
}
