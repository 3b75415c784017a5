package stats

import (
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Label is what a scene's QR code says of it.
type Label struct {
	Label string `json:"label"`
	Group string `json:"group"`
}

// Labeler gives the label and group of each of an account's scenes that
// has a code (shared/qrcodes does). The map is not changed by the caller.
type Labeler interface {
	Labels(ctx context.Context, account string) (map[string]Label, error)
}

// APIOptions configure the API. Store and Logger are required.
type APIOptions struct {
	Store StoreFunc
	// Token, when set, is required as "Authorization: Bearer <token>".
	Token string
	// Zone is ANALYTICS_TIME_ZONE: the dates of the API are its days.
	// Default Asia/Shanghai.
	Zone *time.Location
	// Labels puts codes' labels and groups beside scenes; nil: none, every
	// scene in the group "".
	Labels Labeler
	// Known reports whether an account exists (accounts.Registry); nil:
	// default, and any account with counts.
	Known  func(account string) bool
	Logger *slog.Logger
}

func (o *APIOptions) setDefaults() error {
	if o.Zone == nil {
		loc, err := time.LoadLocation(DefaultZone)
		if err != nil {
			return err
		}
		o.Zone = loc
	}
	return nil
}

func (o *APIOptions) validate() error {
	if o.Store == nil || o.Logger == nil {
		return errors.New("stats: APIOptions.Store and Logger are required")
	}
	return nil
}

// DefaultZone is ANALYTICS_TIME_ZONE's default.
const DefaultZone = "Asia/Shanghai"

// Limits of a period.
const (
	MaxDays     = 731 // a period, counted inclusive
	MaxHourDays = 31  // a period by the hour
)

// API serves the counts as JSON, or CSV with format=csv, every route
// with ?account=<id> (default default):
//
//	GET /api/scenes?from=&to=&compare=previous&sort=&order=&limit=&offset=&q=&group=
//	GET /api/scenes/{scene}                      all-time totals
//	GET /api/scenes/{scene}/series?from=&to=&step=day|hour
//	GET /api/series?from=&to=&step=day|hour      all the account's scenes
//	GET /api/groups?from=&to=&compare=previous
//	GET /api/analytics                           the leader's progress (Status)
//	POST /api/analytics/rebuild                  rebuild every count from the event stream
//
// The counts are read from the buckets (the totals and the recent days
// from the process's copy, kept current by watches), never from the
// leader: every process answers, with or without one.
func API(o APIOptions) (http.Handler, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if err := o.setDefaults(); err != nil {
		return nil, fmt.Errorf("stats: zone: %w", err)
	}
	a := api{o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/scenes", a.scenes)
	mux.HandleFunc("GET /api/scenes/{scene}", a.scene)
	mux.HandleFunc("GET /api/scenes/{scene}/series", a.series)
	mux.HandleFunc("GET /api/series", a.series)
	mux.HandleFunc("GET /api/groups", a.groups)
	mux.HandleFunc("GET /api/analytics", a.status)
	mux.HandleFunc("POST /api/analytics/rebuild", a.rebuild)
	return admin.RequireToken(o.Token, mux), nil
}

type api struct{ o APIOptions }

// ScenesPage is the /api/scenes answer.
type ScenesPage struct {
	Total    int      `json:"total"`
	Offset   int      `json:"offset"`
	Limit    int      `json:"limit"`
	Sort     string   `json:"sort"`
	Order    string   `json:"order"`
	From     string   `json:"from,omitempty"`
	To       string   `json:"to,omitempty"`
	TimeZone string   `json:"time_zone,omitempty"`
	Scenes   []Totals `json:"scenes"`
}

// SeriesPage is the answer of the series routes.
type SeriesPage struct {
	Scene    string  `json:"scene,omitempty"`
	TimeZone string  `json:"time_zone"`
	Step     string  `json:"step"`
	From     string  `json:"from"`
	To       string  `json:"to"`
	Points   []Point `json:"points"`
}

// Point is one step of a series.
type Point struct {
	Start string `json:"start"` // RFC 3339, with the zone's offset
	Counts
}

// GroupsPage is the /api/groups answer.
type GroupsPage struct {
	From     string        `json:"from"`
	To       string        `json:"to"`
	TimeZone string        `json:"time_zone"`
	Groups   []GroupCounts `json:"groups"`
}

// GroupCounts are a group's scenes' counts, each person once.
type GroupCounts struct {
	Group string `json:"group"`
	Counts
	Previous *Counts `json:"previous,omitempty"`
}

// sortKeys are the counts /api/scenes and /api/groups sort by.
var sortKeys = map[string]func(Counts) int64{
	"scans":           func(c Counts) int64 { return c.Scans },
	"subscribe_scans": func(c Counts) int64 { return c.SubscribeScans },
	"scan_scans":      func(c Counts) int64 { return c.ScanScans },
	"new_followers":   func(c Counts) int64 { return c.NewFollowers },
	"unique_people":   func(c Counts) int64 { return c.UniquePeople },
	"unfollows":       func(c Counts) int64 { return c.Unfollows },
	"net_followers":   func(c Counts) int64 { return c.NetFollowers },
}

// request is what every read route takes first: the account, the store,
// the format; ok is false once it has answered.
type request struct {
	ctx     context.Context
	account string
	store   *Store
	csv     bool
	q       url.Values
}

func (a api) begin(w http.ResponseWriter, r *http.Request) (req request, cancel context.CancelFunc, ok bool) {
	req.q = r.URL.Query()
	switch f := req.q.Get("format"); f {
	case "", "json":
	case "csv":
		req.csv = true
	default:
		a.fail(w, r, http.StatusBadRequest, "format must be json or csv")
		return req, nil, false
	}
	req.account = cmp.Or(req.q.Get("account"), accounts.DefaultID)
	if !accounts.ValidID(req.account) {
		// Checked before it reaches a key: a path trick never does.
		a.fail(w, r, http.StatusNotFound, "no such account")
		return req, nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	s, err := a.o.Store(ctx)
	if err != nil {
		cancel()
		a.fail(w, r, http.StatusServiceUnavailable, unavailable)
		return req, nil, false
	}
	req.ctx, req.store = ctx, s
	if known := a.o.Known; known != nil && !known(req.account) ||
		known == nil && req.account != accounts.DefaultID && !a.hasCounts(req) {
		cancel()
		a.fail(w, r, http.StatusNotFound, "no such account")
		return req, nil, false
	}
	return req, cancel, true
}

func (a api) hasCounts(req request) bool {
	v, err := req.store.readView(req.ctx)
	return err == nil && v.hasAccount(req.account)
}

// period is the days a request asks for, and the period before it of the
// same length when compare=previous.
type period struct {
	from, to Date
	set      bool
	compare  bool
}

func (p period) prev() (Date, Date) { n := p.to - p.from + 1; return p.from - n, p.from - 1 }

func parsePeriod(q url.Values, required bool) (p period, problem string) {
	from, to := q.Get("from"), q.Get("to")
	switch {
	case from == "" && to == "":
		if required {
			return p, "from and to are required (YYYY-MM-DD)"
		}
		if q.Has("compare") {
			return p, "compare needs a period: from and to"
		}
		return p, ""
	case from == "" || to == "":
		return p, "from and to go together"
	}
	var err error
	if p.from, err = ParseDate(from); err != nil {
		return p, "from: " + err.Error()
	}
	if p.to, err = ParseDate(to); err != nil {
		return p, "to: " + err.Error()
	}
	if p.from > p.to {
		return p, "from is after to"
	}
	if n := p.to - p.from + 1; n > MaxDays {
		return p, fmt.Sprintf("the period spans %d days; at most %d", n, MaxDays)
	}
	switch c := q.Get("compare"); c {
	case "":
	case "previous":
		p.compare = true
	default:
		return p, "compare must be previous"
	}
	p.set = true
	return p, ""
}

func (a api) labels(req request) map[string]Label {
	if a.o.Labels == nil {
		return nil
	}
	l, err := a.o.Labels.Labels(req.ctx, req.account)
	if err != nil {
		a.o.Logger.Warn("stats: labels not read", "err", err)
		return nil
	}
	return l
}

func (a api) scenes(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sortBy, order := cmp.Or(q.Get("sort"), "scans"), cmp.Or(q.Get("order"), "desc")
	key, ok := sortKeys[sortBy]
	if !ok && sortBy != "scene" {
		a.fail(w, r, http.StatusBadRequest, "sort must be scene or one of scans, subscribe_scans, scan_scans, new_followers, unique_people, unfollows, net_followers")
		return
	}
	if order != "asc" && order != "desc" {
		a.fail(w, r, http.StatusBadRequest, "order must be asc or desc")
		return
	}
	limit, err1 := intParam(q.Get("limit"), 50, 1, 1000)
	offset, err2 := intParam(q.Get("offset"), 0, 0, 1<<31-1)
	if err1 != nil || err2 != nil {
		a.fail(w, r, http.StatusBadRequest, "limit must be 1..1000 and offset 0 or more")
		return
	}
	p, problem := parsePeriod(q, false)
	if problem != "" {
		a.fail(w, r, http.StatusBadRequest, problem)
		return
	}
	req, cancel, ok := a.begin(w, r)
	if !ok {
		return
	}
	defer cancel()
	all, err := req.store.For(req.account).Scenes(req.ctx)
	if err != nil {
		a.fail(w, r, http.StatusServiceUnavailable, unavailable)
		return
	}
	labels := a.labels(req)
	// Scenes with a code and no scans yet are listed too: the stores that
	// never get a scan are what an operator looks for.
	for scene := range labels {
		if !slices.ContainsFunc(all, func(t Totals) bool { return t.Scene == scene }) {
			all = append(all, Totals{Scene: scene})
		}
	}
	search, group := strings.ToLower(q.Get("q")), q.Get("group")
	all = slices.DeleteFunc(all, func(t Totals) bool {
		l := labels[t.Scene]
		return (search != "" && !strings.Contains(strings.ToLower(t.Scene), search) && !strings.Contains(strings.ToLower(l.Label), search)) ||
			(q.Has("group") && l.Group != group)
	})
	for i := range all {
		all[i].Label, all[i].Group = labels[all[i].Scene].Label, labels[all[i].Scene].Group
	}
	if p.set {
		lo := p.from
		if p.compare {
			lo, _ = p.prev()
		}
		err := req.store.withDays(req.ctx, req.account, lo, p.to, "", func(ds daySet) {
			for i := range all {
				uid := SceneUID(all[i].Scene)
				t := Totals{Scene: all[i].Scene, Label: all[i].Label, Group: all[i].Group}
				t.setCounts(Sum(p.from, p.to, func(d Date) *Day { return ds.get(d, uid) }))
				if p.compare {
					from, to := p.prev()
					c := Sum(from, to, func(d Date) *Day { return ds.get(d, uid) })
					t.Previous = &c
				}
				all[i] = t
			}
		})
		if err != nil {
			a.fail(w, r, http.StatusServiceUnavailable, unavailable)
			return
		}
	}
	slices.SortFunc(all, func(a, b Totals) int {
		c := 0
		if key != nil {
			c = cmp.Compare(key(a.Counts()), key(b.Counts()))
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
	if p.set {
		page.From, page.To, page.TimeZone = p.from.String(), p.to.String(), a.o.Zone.String()
	}
	if req.csv && !q.Has("limit") {
		page.Limit = len(all) // a download is every scene, unless a page is asked for
	}
	if offset < len(all) {
		page.Scenes = all[offset:min(len(all), offset+page.Limit)]
	}
	if !req.csv {
		admin.WriteJSON(w, http.StatusOK, page)
		return
	}
	head := []string{"scene", "label", "group"}
	head = append(head, countsHead("", p.compare)...)
	if !p.set {
		head = append(head, "first_seq", "first_seen", "last_seen")
	}
	rows := [][]string{head}
	for _, t := range page.Scenes {
		row := append([]string{t.Scene, t.Label, t.Group}, countsRow(t.Counts(), t.Previous)...)
		if !p.set {
			row = append(row, strconv.FormatUint(t.FirstSeq, 10), t.FirstSeen.Format(time.RFC3339Nano), t.LastSeen.Format(time.RFC3339Nano))
		}
		rows = append(rows, row)
	}
	writeCSV(w, "scenes", rows)
}

func (a api) scene(w http.ResponseWriter, r *http.Request) {
	scene := r.PathValue("scene")
	if p := wechat.SceneProblem(scene); p != "" {
		// Checked before it becomes a KV key: a path of any length must
		// not reach the bus.
		a.fail(w, r, http.StatusBadRequest, "scene must be 1 to 64 characters of UTF-8 ("+p+")")
		return
	}
	req, cancel, ok := a.begin(w, r)
	if !ok {
		return
	}
	defer cancel()
	t, ok, err := req.store.For(req.account).Scene(req.ctx, scene)
	if ok {
		l := a.labels(req)[scene]
		t.Label, t.Group = l.Label, l.Group
	}
	a.respond(w, r, t, ok, err, "no scans recorded for this scene")
}

// series answers /api/scenes/{scene}/series and /api/series (the
// account's, over all its scenes).
func (a api) series(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	scene, uid := r.PathValue("scene"), AccountUID
	if r.Pattern != "GET /api/series" {
		if p := wechat.SceneProblem(scene); p != "" {
			a.fail(w, r, http.StatusBadRequest, "scene must be 1 to 64 characters of UTF-8 ("+p+")")
			return
		}
		uid = SceneUID(scene)
	}
	p, problem := parsePeriod(q, true)
	step := cmp.Or(q.Get("step"), "day")
	switch {
	case problem != "":
	case q.Has("compare"):
		problem = "compare is for /api/scenes and /api/groups"
	case step != "day" && step != "hour":
		problem = "step must be day or hour"
	case step == "hour" && p.to-p.from+1 > MaxHourDays:
		problem = fmt.Sprintf("step=hour spans at most %d days; this period has %d", MaxHourDays, p.to-p.from+1)
	}
	if problem != "" {
		a.fail(w, r, http.StatusBadRequest, problem)
		return
	}
	req, cancel, ok := a.begin(w, r)
	if !ok {
		return
	}
	defer cancel()
	page := SeriesPage{Scene: scene, TimeZone: a.o.Zone.String(), Step: step, From: p.from.String(), To: p.to.String(), Points: []Point{}}
	loc := a.o.Zone
	var err error
	if step == "day" {
		err = req.store.withDays(req.ctx, req.account, p.from, p.to, uid, func(ds daySet) {
			for d := p.from; d <= p.to; d++ {
				pt := Point{Start: d.Start(loc).Format(time.RFC3339)}
				if v := ds.get(d, uid); v != nil {
					pt.Counts = v.Counts()
				}
				page.Points = append(page.Points, pt)
			}
		})
	} else {
		var hours map[Date]*Hours
		hours, err = req.store.hours(req.ctx, req.account, p.from, p.to, uid)
		for d := p.from; d <= p.to && err == nil; d++ {
			start := d.Start(loc)
			for h := range d.Hours(loc) {
				pt := Point{Start: start.Add(time.Duration(h) * time.Hour).In(loc).Format(time.RFC3339)}
				if v := hours[d]; v != nil && h < len(v.H) {
					pt.Counts = v.H[h].Counts()
				}
				page.Points = append(page.Points, pt)
			}
		}
	}
	if err != nil {
		a.fail(w, r, http.StatusServiceUnavailable, unavailable)
		return
	}
	if !req.csv {
		admin.WriteJSON(w, http.StatusOK, page)
		return
	}
	rows := [][]string{append([]string{"start"}, countsHead("", false)...)}
	for _, pt := range page.Points {
		rows = append(rows, append([]string{pt.Start}, countsRow(pt.Counts, nil)...))
	}
	writeCSV(w, "series", rows)
}

func (a api) groups(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, problem := parsePeriod(q, true)
	if problem != "" {
		a.fail(w, r, http.StatusBadRequest, problem)
		return
	}
	req, cancel, ok := a.begin(w, r)
	if !ok {
		return
	}
	defer cancel()
	page := GroupsPage{From: p.from.String(), To: p.to.String(), TimeZone: a.o.Zone.String(), Groups: []GroupCounts{}}
	names := map[string]string{GroupUID(""): ""} // universe → group
	for _, l := range a.labels(req) {
		names[GroupUID(l.Group)] = l.Group
	}
	from := p.from
	if p.compare {
		from, _ = p.prev()
	}
	err := req.store.withDays(req.ctx, req.account, from, p.to, "", func(ds daySet) {
		for d := from; d <= p.to; d++ {
			for uid := range ds.at(d) {
				if g, ok := strings.CutPrefix(uid, "g"); ok {
					if name, err := b64Decode(g); err == nil {
						names[uid] = name
					}
				}
			}
		}
		for uid, name := range names {
			day := func(d Date) *Day { return ds.get(d, uid) }
			g := GroupCounts{Group: name, Counts: Sum(p.from, p.to, day)}
			if p.compare {
				pf, pt := p.prev()
				c := Sum(pf, pt, day)
				g.Previous = &c
			}
			page.Groups = append(page.Groups, g)
		}
	})
	if err != nil {
		a.fail(w, r, http.StatusServiceUnavailable, unavailable)
		return
	}
	slices.SortFunc(page.Groups, func(a, b GroupCounts) int {
		return cmp.Or(-cmp.Compare(a.Scans, b.Scans), strings.Compare(a.Group, b.Group))
	})
	if !req.csv {
		admin.WriteJSON(w, http.StatusOK, page)
		return
	}
	rows := [][]string{append([]string{"group"}, countsHead("", p.compare)...)}
	for _, g := range page.Groups {
		rows = append(rows, append([]string{g.Group}, countsRow(g.Counts, g.Previous)...))
	}
	writeCSV(w, "groups", rows)
}

func (a api) status(w http.ResponseWriter, r *http.Request) {
	req, cancel, ok := a.begin(w, r)
	if !ok {
		return
	}
	defer cancel()
	st, ok, err := req.store.Status(req.ctx)
	a.respond(w, r, st, ok, err, "no analytics leader has reported yet")
}

func (a api) rebuild(w http.ResponseWriter, r *http.Request) {
	req, cancel, ok := a.begin(w, r)
	if !ok {
		return
	}
	defer cancel()
	n, err := req.store.RequestRebuild(req.ctx)
	if err != nil {
		a.fail(w, r, http.StatusServiceUnavailable, "rebuild not requested: analytics bucket unavailable")
		return
	}
	admin.WriteJSON(w, http.StatusAccepted, map[string]any{
		"request": n,
		"status":  "the leader starts over from the event stream's first event, for every account; GET /api/analytics shows its progress",
	})
}

// respond answers a read of the store: v, or 404 with notFound when there
// was nothing to read, or 503 when the store could not be read.
func (a api) respond(w http.ResponseWriter, r *http.Request, v any, ok bool, err error, notFound string) {
	switch {
	case err != nil:
		a.fail(w, r, http.StatusServiceUnavailable, unavailable)
	case !ok:
		a.fail(w, r, http.StatusNotFound, notFound)
	default:
		admin.WriteJSON(w, http.StatusOK, v)
	}
}

// countsHead are the CSV columns of Counts, and of the previous period's
// (previous_<name>) with compare.
func countsHead(prefix string, previous bool) []string {
	names := []string{"scans", "subscribe_scans", "scan_scans", "new_followers", "unique_people", "unfollows", "net_followers"}
	out := make([]string, 0, 2*len(names))
	for _, n := range names {
		out = append(out, prefix+n)
	}
	if previous {
		out = append(out, countsHead("previous_", false)...)
	}
	return out
}

func countsRow(c Counts, previous *Counts) []string {
	out := make([]string, 0, 14)
	for _, n := range []int64{c.Scans, c.SubscribeScans, c.ScanScans, c.NewFollowers, c.UniquePeople, c.Unfollows, c.NetFollowers} {
		out = append(out, strconv.FormatInt(n, 10))
	}
	if previous != nil {
		out = append(out, countsRow(*previous, nil)...)
	}
	return out
}

// writeCSV answers rows as a CSV download: UTF-8 with a byte-order mark,
// so that Excel shows Chinese.
func writeCSV(w http.ResponseWriter, name string, rows [][]string) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.csv"`)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("\uFEFF"))
	cw := csv.NewWriter(w)
	_ = cw.WriteAll(rows)
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

func (a api) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if code < 500 {
		a.o.Logger.Info("stats: request refused", "route", r.Pattern, "status", code, "error", msg)
	} else {
		a.o.Logger.Warn("stats: request failed", "route", r.Pattern, "status", code, "error", msg)
	}
	admin.WriteJSON(w, code, map[string]string{"error": msg})
}
