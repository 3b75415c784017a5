// Package console is the /ui/ page of the admin listener, for the people
// who print the codes: the scenes with their counts (a bar chart), the
// codes with their images and expiry, a form that creates one, and the PNG
// to download. It is server-rendered from embedded templates: no script, no
// build step, nothing fetched from elsewhere. With ADMIN_TOKEN set, a login
// form sets a session cookie (HttpOnly, SameSite=Strict), because a browser
// cannot add a bearer header to an <img> or a form; form posts are also
// refused when they come from another origin.
package console

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/qrcodes"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

//go:embed static
var static embed.FS

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"fmtTime": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	// withQuery adds parameters to a code's image_url, which has a query
	// (its ticket) already, or may not.
	"withQuery": func(u, params string) string {
		if strings.Contains(u, "?") {
			return u + "&" + params
		}
		return u + "?" + params
	},
}).ParseFS(static, "static/page.html"))

// Options configure the page. QR, Scenes and Logger are required.
type Options struct {
	QR *qrcodes.Service
	// Scenes opens the totals store the chart reads (what /api/scenes
	// serves).
	Scenes stats.StoreFunc
	// Token is ADMIN_TOKEN; empty, the page is open like the API.
	Token  string
	Logger *slog.Logger
}

// Handler serves /ui/ (the page), /ui/style.css, and the posts
// /ui/login, /ui/logout and /ui/qrcodes.
func Handler(o Options) http.Handler {
	u := &ui{o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui/{$}", u.show)
	mux.HandleFunc("GET /ui/style.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		http.ServeFileFS(w, r, static, "static/style.css")
	})
	posts := http.NewServeMux()
	posts.HandleFunc("POST /ui/login", u.login)
	posts.HandleFunc("POST /ui/logout", u.logout)
	posts.HandleFunc("POST /ui/qrcodes", u.create)
	// Cross-origin form posts (Sec-Fetch-Site, else Origin against Host)
	// are refused: with SameSite=Strict on the cookie, no other site can
	// make a signed-in browser create codes or sign it in as someone else.
	mux.Handle("POST /ui/", http.NewCrossOriginProtection().Handler(posts))
	return secureHeaders(mux)
}

// secureHeaders keeps the page to itself: its own styles and images only,
// no framing, no referrer to WeChat's URLs.
func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

type ui struct{ o Options }

// view is what the template renders.
type view struct {
	Login, LoggedIn, Enabled bool
	Notice, Error            string
	Form                     form
	Lifetimes                []lifetime
	Scenes                   []sceneBar
	ScenesError              string
	BarWidth                 int
	Codes                    []qrcodes.Listed
	CodesError               string
	// MoreCodes is how many codes exist beyond those shown.
	MoreCodes, MaxCodes int
}

type form struct {
	Scene, Label  string
	Permanent     bool
	ExpireSeconds int64
}

type lifetime struct {
	Name    string
	Seconds int64
}

var lifetimes = []lifetime{{"1 hour", 3600}, {"1 day", 86400}, {"7 days", 7 * 86400}, {"30 days (the most)", qrcodes.MaxExpireSeconds}}

type sceneBar struct {
	Scene                  string
	Scans, NewFollowers    int64
	ScansBar, FollowersBar int
}

// barWidth is the longest bar, in pixels.
const barWidth = 240

func (u *ui) authed(r *http.Request) bool {
	return u.o.Token == "" || admin.HasSession(r, u.o.Token)
}

func (u *ui) show(w http.ResponseWriter, r *http.Request) {
	if !u.authed(r) {
		u.render(w, r, http.StatusUnauthorized, view{Login: true})
		return
	}
	v := view{}
	if s := r.URL.Query().Get("created"); s != "" {
		v.Notice = "The code for scene “" + s + "” is ready: print it from the list below."
	}
	u.render(w, r, http.StatusOK, v)
}

// render fills in the lists and writes the page with status code.
func (u *ui) render(w http.ResponseWriter, r *http.Request, code int, v view) {
	v.LoggedIn = !v.Login && u.o.Token != ""
	v.Enabled = u.o.QR.Enabled(accounts.DefaultID)
	v.Lifetimes, v.BarWidth = lifetimes, barWidth
	if v.Form.ExpireSeconds == 0 {
		v.Form.ExpireSeconds = qrcodes.DefaultExpireSeconds
	}
	if !v.Login {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		var err error
		if v.Scenes, err = u.scenes(ctx); err != nil {
			u.o.Logger.Warn("ui: scene totals unavailable", "err", err)
			v.ScenesError = "The scene totals are unavailable right now."
		}
		if v.Enabled {
			if v.Codes, err = u.o.QR.List(ctx, accounts.DefaultID, nil); err != nil {
				u.o.Logger.Warn("ui: codes unavailable", "err", err)
				v.CodesError = "The codes are unavailable right now."
			}
			// The newest first: one image each, so the page stays a page.
			v.MaxCodes = MaxCodes
			if n := len(v.Codes); n > MaxCodes {
				v.Codes, v.MoreCodes = v.Codes[:MaxCodes], n-MaxCodes
			}
		}
	}
	var buf bytes.Buffer
	if err := page.Execute(&buf, v); err != nil {
		u.o.Logger.Error("ui: render", "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// MaxCodes is how many codes the page shows, the newest; GET /api/qrcodes
// lists them all.
const MaxCodes = 200

// maxBars is how many scenes the chart shows: the most scanned.
const maxBars = 20

// scenes reads the most scanned scenes from the totals store.
func (u *ui) scenes(ctx context.Context) ([]sceneBar, error) {
	store, err := u.o.Scenes(ctx)
	if err != nil {
		return nil, err
	}
	all, err := store.Scenes(ctx)
	if err != nil {
		return nil, err
	}
	// The order of GET /api/scenes?sort=scans&order=desc.
	slices.SortFunc(all, func(a, b stats.Totals) int {
		return cmp.Or(cmp.Compare(b.Scans, a.Scans), strings.Compare(b.Scene, a.Scene))
	})
	all = all[:min(len(all), maxBars)]
	var top int64 = 1
	for _, s := range all {
		top = max(top, s.Scans)
	}
	out := make([]sceneBar, 0, len(all))
	for _, s := range all {
		out = append(out, sceneBar{Scene: s.Scene, Scans: s.Scans, NewFollowers: s.NewFollowers,
			ScansBar: int(s.Scans * barWidth / top), FollowersBar: int(min(s.NewFollowers, s.Scans) * barWidth / top)})
	}
	return out, nil
}

// maxForm bounds a form post: a token, or a scene and a label.
const maxForm = 8 << 10

func (u *ui) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if u.o.Token == "" {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(u.o.Token)) != 1 {
		u.o.Logger.Info("ui: sign-in refused: wrong token")
		u.render(w, r, http.StatusUnauthorized, view{Login: true, Error: "That is not the admin token."})
		return
	}
	// The expiry is in the value and its MAC, and checked by the server;
	// Max-Age only tells the browser when to drop it.
	value, expires := admin.NewSession(u.o.Token, time.Now())
	http.SetCookie(w, &http.Cookie{Name: admin.SessionCookie, Value: value, Path: "/", Expires: expires,
		MaxAge: int(admin.SessionTTL.Seconds()), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: viaHTTPS(r)})
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

// viaHTTPS reports whether the browser reached the page over TLS: here, or
// at a proxy in front that says so. Secure only narrows where the cookie
// goes, so trusting the header cannot widen anything.
func viaHTTPS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (u *ui) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: admin.SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: viaHTTPS(r)})
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (u *ui) create(w http.ResponseWriter, r *http.Request) {
	if !u.authed(r) {
		u.render(w, r, http.StatusUnauthorized, view{Login: true})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	f := form{Scene: r.PostFormValue("scene"), Label: r.PostFormValue("label"), Permanent: r.PostFormValue("kind") == "permanent"}
	f.ExpireSeconds, _ = strconv.ParseInt(r.PostFormValue("expire_seconds"), 10, 64)
	// The same checks as the API's: the form is one more client of it.
	body, _ := json.Marshal(map[string]any{"scene": f.Scene, "label": f.Label, "permanent": f.Permanent, "expire_seconds": f.ExpireSeconds})
	req, err := qrcodes.ParseRequest(bytes.NewReader(body))
	if err != nil {
		u.o.Logger.Info("ui: code refused", "err", err)
		u.render(w, r, http.StatusBadRequest, view{Form: f, Error: strings.TrimPrefix(err.Error(), qrcodes.ErrBadRequest.Error()+": ")})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if _, _, err := u.o.QR.Create(ctx, accounts.DefaultID, req); err != nil {
		// The API's status and error, in words for the page.
		code, body := qrcodes.Problem(err)
		msg, _ := body["error"].(string)
		var we *wechatapi.Error
		if errors.As(err, &we) {
			msg = "WeChat refused: " + we.Error()
		}
		u.o.Logger.Warn("ui: code not created", "status", code, "err", err)
		u.render(w, r, code, view{Form: f, Error: msg})
		return
	}
	http.Redirect(w, r, "/ui/?created="+url.QueryEscape(req.Scene), http.StatusSeeOther)
}
