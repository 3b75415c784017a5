package wechatapitest

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
)

// The APIs of this file, by the names wxgate's metrics use.
const (
	UserSummary      = "getusersummary"
	InterfaceSummary = "getinterfacesummary"
	TagsCreate       = "tags_create"
	TagsGet          = "tags_get"
	TagsBatchTagging = "tags_batchtagging"
	TagsGetIDList    = "tags_getidlist"
	AutoreplyInfo    = "get_current_autoreply_info"
)

// WeChat's limits on tags and the datacube, as its documentation states
// them (user tag management; getusersummary, getinterfacesummary).
const (
	MaxTags          = 100 // per account: 45056 past it
	MaxTagNameBytes  = 30  // 45158 past it
	MaxTagBatch      = 50  // OpenIDs per batchtagging call: 40032 past it
	MaxTagsPerPerson = 20  // 45059 past it
	FirstTagID       = 100 // 0, 1 and 2 are WeChat's own
	UserSummaryDays  = 7   // the longest span of one getusersummary call
	InterfaceDays    = 30  // of one getinterfacesummary call
	// SourceQRCode is getusersummary's user_source of follows through a
	// QR code (扫描二维码).
	SourceQRCode = 30
)

// appData is what an app keeps beside its tokens and codes.
type appData struct {
	tagNames  map[int]string
	nextTag   int
	tagsOf    map[string]map[int]bool // by OpenID
	tagging   Tagging
	users     map[string]map[int]UserRow
	callbacks map[string]InterfaceRow
	// unauthorized makes every datacube call 48001, as for an account
	// without the permission (an uncertified one).
	unauthorized bool
	autoreply    json.RawMessage
}

// Tagging is what batchtagging did for an app, in GET /wxsim/calls: what
// a test of a tagger checks (nobody tagged twice, batches within WeChat's
// limit, everybody tagged).
type Tagging struct {
	Calls    int `json:"calls"`     // calls that tagged (answered 0)
	MaxBatch int `json:"max_batch"` // the longest openid_list received, refused calls included
	// Retagged counts the OpenIDs that a call tagged with a tag they
	// already had: a tagger's duplicates, which WeChat accepts silently.
	Retagged int            `json:"retagged"`
	People   map[string]int `json:"people"` // people with each tag, by its name
}

// UserRow is one getusersummary row: a day's follows and unfollows by one
// source.
type UserRow struct {
	RefDate    string `json:"ref_date"`
	UserSource int    `json:"user_source"`
	NewUser    int64  `json:"new_user"`
	CancelUser int64  `json:"cancel_user"`
}

// InterfaceRow is one getinterfacesummary row: a day's callbacks.
type InterfaceRow struct {
	RefDate       string `json:"ref_date"`
	CallbackCount int64  `json:"callback_count"`
	FailCount     int64  `json:"fail_count"`
	TotalTimeCost int64  `json:"total_time_cost"`
	MaxTimeCost   int64  `json:"max_time_cost"`
}

// DatacubeFigures is the body of POST /wxsim/datacube: the figures WeChat
// will answer for the app (rows replace those of the same day and
// source), and Unauthorized, when given, switches the permission off or on.
type DatacubeFigures struct {
	AppID        string         `json:"appid,omitempty"`
	Users        []UserRow      `json:"user_summary,omitempty"`
	Callbacks    []InterfaceRow `json:"interface_summary,omitempty"`
	Unauthorized *bool          `json:"unauthorized,omitempty"`
}

// AutoreplySetting is the body of POST /wxsim/autoreply: what
// get_current_autoreply_info answers for the app, as WeChat's JSON.
type AutoreplySetting struct {
	AppID string          `json:"appid,omitempty"`
	Info  json.RawMessage `json:"info"`
}

// noAutoreply is what an account that set none has.
var noAutoreply = json.RawMessage(`{"is_add_friend_reply_open":0,"is_autoreply_open":0}`)

// china is WeChat's day: the datacube's dates are Beijing time, which has
// no daylight saving.
var china = time.FixedZone("CST", 8*3600)

func (s *Server) routeData() {
	s.mux.HandleFunc("/datacube/getusersummary", s.api(UserSummary, http.MethodPost, s.withToken(s.userSummary)))
	s.mux.HandleFunc("/datacube/getinterfacesummary", s.api(InterfaceSummary, http.MethodPost, s.withToken(s.interfaceSummary)))
	s.mux.HandleFunc("/cgi-bin/tags/create", s.api(TagsCreate, http.MethodPost, s.withToken(s.tagsCreate)))
	s.mux.HandleFunc("/cgi-bin/tags/get", s.api(TagsGet, http.MethodGet, s.withToken(s.tagsGet)))
	s.mux.HandleFunc("/cgi-bin/tags/members/batchtagging", s.api(TagsBatchTagging, http.MethodPost, s.withToken(s.batchTagging)))
	s.mux.HandleFunc("/cgi-bin/tags/getidlist", s.api(TagsGetIDList, http.MethodPost, s.withToken(s.tagIDList)))
	s.mux.HandleFunc("/cgi-bin/get_current_autoreply_info", s.api(AutoreplyInfo, http.MethodGet, s.withToken(s.autoreplyInfo)))
	s.mux.HandleFunc("POST /wxsim/datacube", s.control(func(body []byte) error {
		var f DatacubeFigures
		if err := admin.DecodeJSON(bytes.NewReader(body), &f); err != nil {
			return err
		}
		return s.SetDatacube(f)
	}))
	s.mux.HandleFunc("POST /wxsim/autoreply", s.control(func(body []byte) error {
		var a AutoreplySetting
		if err := admin.DecodeJSON(bytes.NewReader(body), &a); err != nil {
			return err
		}
		return s.SetAutoreply(a.AppID, a.Info)
	}))
}

// control serves a POST /wxsim/… switch: 400 with the reason, or ok.
func (s *Server) control(set func([]byte) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err == nil {
			err = set(body)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]bool{"ok": true})
	}
}

// app returns the app appid ("" the default); s.mu held.
func (s *Server) app(appid string) (*app, error) {
	a := s.apps[cmp.Or(appid, s.first)]
	if a == nil {
		return nil, fmt.Errorf("no app %q", appid)
	}
	return a, nil
}

func newAppData() appData {
	return appData{tagNames: map[int]string{}, nextTag: FirstTagID, tagsOf: map[string]map[int]bool{},
		users: map[string]map[int]UserRow{}, callbacks: map[string]InterfaceRow{}, autoreply: noAutoreply}
}

// SetDatacube sets figures, as POST /wxsim/datacube does.
func (s *Server) SetDatacube(f DatacubeFigures) error {
	for _, r := range f.Users {
		if _, err := time.Parse(time.DateOnly, r.RefDate); err != nil {
			return fmt.Errorf("user_summary: ref_date %q is not YYYY-MM-DD", r.RefDate)
		}
	}
	for _, r := range f.Callbacks {
		if _, err := time.Parse(time.DateOnly, r.RefDate); err != nil {
			return fmt.Errorf("interface_summary: ref_date %q is not YYYY-MM-DD", r.RefDate)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.app(f.AppID)
	if err != nil {
		return err
	}
	for _, r := range f.Users {
		if a.data.users[r.RefDate] == nil {
			a.data.users[r.RefDate] = map[int]UserRow{}
		}
		a.data.users[r.RefDate][r.UserSource] = r
	}
	for _, r := range f.Callbacks {
		a.data.callbacks[r.RefDate] = r
	}
	if f.Unauthorized != nil {
		a.data.unauthorized = *f.Unauthorized
	}
	return nil
}

// SetAutoreply sets what get_current_autoreply_info answers, as POST
// /wxsim/autoreply does.
func (s *Server) SetAutoreply(appid string, info json.RawMessage) error {
	var obj map[string]json.RawMessage
	if json.Unmarshal(info, &obj) != nil {
		return errors.New("bad autoreply: info must be a JSON object")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.app(appid)
	if err != nil {
		return err
	}
	a.data.autoreply = append(json.RawMessage{}, info...)
	return nil
}

// DateRange is a datacube request.
type DateRange struct {
	BeginDate string `json:"begin_date"`
	EndDate   string `json:"end_date"`
}

// days checks a datacube request as WeChat does: dates as YYYY-MM-DD
// (61500), in order, at most span days, and before today in Beijing
// (61501: WeChat has no figures for today yet). Figures for yesterday are
// published at 08:00: asked before, that day is left out of the list (the
// answer WeChat's community reports).
func (s *Server) days(body []byte, span int) ([]string, int) {
	var req DateRange
	if json.Unmarshal(body, &req) != nil {
		return nil, 47001
	}
	b, err1 := time.ParseInLocation(time.DateOnly, req.BeginDate, china)
	e, err2 := time.ParseInLocation(time.DateOnly, req.EndDate, china)
	if err1 != nil || err2 != nil {
		return nil, 61500
	}
	now := s.o.Now().In(china)
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, china)
	if e.Before(b) || !e.Before(today) || e.Sub(b) >= time.Duration(span)*24*time.Hour {
		return nil, 61501
	}
	published := today.AddDate(0, 0, -1)
	if now.Before(today.Add(8 * time.Hour)) {
		published = today.AddDate(0, 0, -2)
	}
	var out []string
	for d := b; !d.After(e) && !d.After(published); d = d.AddDate(0, 0, 1) {
		out = append(out, d.Format(time.DateOnly))
	}
	return out, 0
}

func (s *Server) userSummary(_ *http.Request, a *app, body []byte) any {
	return s.datacube(a, body, UserSummaryDays, func(d appData, day string) []any {
		rows := d.users[day]
		if len(rows) == 0 {
			return []any{UserRow{RefDate: day}}
		}
		var out []any
		for _, src := range slices.Sorted(maps.Keys(rows)) {
			out = append(out, rows[src])
		}
		return out
	})
}

func (s *Server) interfaceSummary(_ *http.Request, a *app, body []byte) any {
	return s.datacube(a, body, InterfaceDays, func(d appData, day string) []any {
		r, ok := d.callbacks[day]
		if !ok {
			r = InterfaceRow{RefDate: day}
		}
		return []any{r}
	})
}

func (s *Server) datacube(a *app, body []byte, span int, rows func(appData, string) []any) any {
	days, code := s.days(body, span)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case a.data.unauthorized:
		return refuse(48001)
	case code != 0:
		return refuse(code)
	}
	list := []any{}
	for _, day := range days {
		list = append(list, rows(a.data, day)...)
	}
	return map[string]any{"list": list}
}

// Tag is one of an account's user tags.
type Tag struct {
	ID    int    `json:"id"`
	Name  string `json:"name"`
	Count int    `json:"count,omitempty"`
}

func (s *Server) tagsCreate(_ *http.Request, a *app, body []byte) any {
	var req struct {
		Tag struct {
			Name string `json:"name"`
		} `json:"tag"`
	}
	if json.Unmarshal(body, &req) != nil {
		return refuse(47001)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := &a.data
	name := req.Tag.Name
	switch {
	case len(name) > MaxTagNameBytes:
		return refuse(45158)
	case name == "" || slices.Contains(slices.Collect(maps.Values(d.tagNames)), name):
		return refuse(45157)
	case len(d.tagNames) >= MaxTags:
		return refuse(45056)
	}
	id := d.nextTag
	d.nextTag++
	d.tagNames[id] = name
	return map[string]Tag{"tag": {ID: id, Name: name}}
}

func (s *Server) tagsGet(_ *http.Request, a *app, _ []byte) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	tags := []Tag{}
	for _, id := range slices.Sorted(maps.Keys(a.data.tagNames)) {
		n := 0
		for _, t := range a.data.tagsOf {
			if t[id] {
				n++
			}
		}
		tags = append(tags, Tag{ID: id, Name: a.data.tagNames[id], Count: n})
	}
	return map[string][]Tag{"tags": tags}
}

// batchTagging tags every person of the list or none: the list's size
// (40032), each OpenID (40003), the tag (45159) and each person's count of
// tags (45059) are checked first.
func (s *Server) batchTagging(_ *http.Request, a *app, body []byte) any {
	var req struct {
		OpenIDs []string `json:"openid_list"`
		TagID   int      `json:"tagid"`
	}
	if json.Unmarshal(body, &req) != nil {
		return refuse(47001)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := &a.data
	d.tagging.MaxBatch = max(d.tagging.MaxBatch, len(req.OpenIDs))
	if len(req.OpenIDs) == 0 || len(req.OpenIDs) > MaxTagBatch {
		return refuse(40032)
	}
	for _, o := range req.OpenIDs {
		if o == "" || len(o) > maxOpenID {
			return refuse(40003)
		}
	}
	if _, ok := d.tagNames[req.TagID]; !ok {
		return refuse(45159)
	}
	for _, o := range req.OpenIDs {
		if t := d.tagsOf[o]; !t[req.TagID] && len(t) >= MaxTagsPerPerson {
			return refuse(45059)
		}
	}
	d.tagging.Calls++
	for _, o := range req.OpenIDs {
		if d.tagsOf[o] == nil {
			d.tagsOf[o] = map[int]bool{}
		}
		if d.tagsOf[o][req.TagID] {
			d.tagging.Retagged++
		}
		d.tagsOf[o][req.TagID] = true
	}
	return errAnswer{0, "ok"}
}

func (s *Server) tagIDList(_ *http.Request, a *app, body []byte) any {
	var req struct {
		OpenID string `json:"openid"`
	}
	if json.Unmarshal(body, &req) != nil {
		return refuse(47001)
	}
	if req.OpenID == "" || len(req.OpenID) > maxOpenID {
		return refuse(40003)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return map[string][]int{"tagid_list": slices.Sorted(maps.Keys(a.data.tagsOf[req.OpenID]))}
}

func (s *Server) autoreplyInfo(_ *http.Request, a *app, _ []byte) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return a.data.autoreply
}

// taggingOf is the app's Tagging, its people counted now; s.mu held.
func (d *appData) taggingOf() Tagging {
	t := d.tagging
	t.People = map[string]int{}
	for _, tags := range d.tagsOf {
		for id := range tags {
			t.People[d.tagNames[id]]++
		}
	}
	return t
}

// TagsOf returns the tags of openid with app appid ("" the default): for
// a test to check what tagging did.
func (s *Server) TagsOf(appid, openid string) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.app(appid)
	if err != nil {
		return nil
	}
	return slices.Sorted(maps.Keys(a.data.tagsOf[openid]))
}
