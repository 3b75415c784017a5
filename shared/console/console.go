// Package console is the /ui/ page of the admin listener, for the people
// who print the codes: which channel brings scans and followers in a
// period, against the period before; the codes, made one by one or from a
// CSV file, downloaded ready to print; the reply each code gives and the
// keyword replies. The server sends a shell (the language's strings) and a
// script that reads the JSON API the page is a client of: nothing is
// fetched from elsewhere (it must work on an intranet in China), and the
// Content-Security-Policy allows this origin only. With ADMIN_TOKEN set, a
// sign-in form sets a session cookie (HttpOnly, SameSite=Strict), which
// admin.RequireToken takes for the page's reads and its own same-origin
// JSON and CSV requests; wrong tokens are throttled per address.
package console

import (
	"bytes"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
)

//go:embed static
var static embed.FS

// langs are the page's languages, each one table of strings; the first is
// the default.
var langs = []string{"zh-CN", "en"}

// texts holds each language's table (static/<lang>.json), read once: the
// shell's words and, as JSON in the page, the script's.
var texts = func() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, l := range langs {
		var t map[string]string
		b, err := static.ReadFile("static/" + l + ".json")
		if err == nil {
			err = json.Unmarshal(b, &t)
		}
		if err != nil {
			panic("console: static/" + l + ".json: " + err.Error())
		}
		out[l] = t
	}
	return out
}()

var page = template.Must(template.New("page.html").ParseFS(static, "static/page.html"))

// Options configure the page. Logger is required.
type Options struct {
	// Token is ADMIN_TOKEN; empty, the page is open like the API.
	Token  string
	Logger *slog.Logger
	// Now is the clock of the sign-in throttle; nil: time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
}

func (o *Options) validate() error {
	if o.Logger == nil {
		return errors.New("console: Options.Logger is required")
	}
	return nil
}

// Handler serves /ui/ (the page, or the sign-in form), its script and
// style, and the posts /ui/login and /ui/logout.
func Handler(o Options) (http.Handler, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	u := &ui{o: o, fails: map[netip.Prefix]*failures{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui/{$}", u.show)
	for _, f := range []string{"app.js", "style.css"} {
		mux.HandleFunc("GET /ui/"+f, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "no-cache") // revalidated: a new binary's script at once
			http.ServeFileFS(w, r, static, "static/"+f)
		})
	}
	posts := http.NewServeMux()
	posts.HandleFunc("POST /ui/login", u.login)
	posts.HandleFunc("POST /ui/logout", u.logout)
	// Cross-origin posts (Sec-Fetch-Site, else Origin against Host) are
	// refused: no other site can sign a browser in or out.
	mux.Handle("POST /ui/", http.NewCrossOriginProtection().Handler(posts))
	return secureHeaders(mux), nil
}

// secureHeaders keeps the page to itself: its own script, styles, images
// and API only, no framing, no referrer to WeChat's URLs.
func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		h.ServeHTTP(w, r)
	})
}

type ui struct {
	o     Options
	mu    sync.Mutex
	fails map[netip.Prefix]*failures
}

// view is what the template renders.
type view struct {
	Lang, Other string            // this language and the other one
	T           map[string]string // this language's strings
	Login       bool
	SignOut     bool
	Error       string
}

// lang is the language a request asks for: ?lang=en, else Chinese.
func lang(r *http.Request) string {
	if l := r.FormValue("lang"); l == "en" {
		return "en"
	}
	return langs[0]
}

func (u *ui) authed(r *http.Request) bool {
	return u.o.Token == "" || admin.HasSession(r, u.o.Token)
}

func (u *ui) show(w http.ResponseWriter, r *http.Request) {
	if !u.authed(r) {
		u.render(w, r, http.StatusUnauthorized, view{Login: true})
		return
	}
	u.render(w, r, http.StatusOK, view{SignOut: u.o.Token != ""})
}

func (u *ui) render(w http.ResponseWriter, r *http.Request, code int, v view) {
	v.Lang = lang(r)
	v.Other = map[string]string{"en": langs[0], langs[0]: "en"}[v.Lang]
	if v.T == nil {
		v.T = texts[v.Lang]
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

// maxForm bounds a sign-in post: a token and a language.
const maxForm = 8 << 10

// The sign-in throttle: after maxFails wrong tokens from one address (an
// IPv6 /64) within failWindow, every try from it, right or wrong, is
// answered 429 until the window has passed. At most maxTracked addresses
// are remembered; while that many failed within the window, a new address
// is refused too (a flood of addresses cannot buy more guesses).
const (
	maxFails   = 5
	failWindow = time.Minute
	maxTracked = 10000
)

type failures struct {
	since time.Time // the window's start
	n     int
}

// client is the address a throttle counts: RemoteAddr, whose IPv6 /64 is
// one client (one host's share). Behind a proxy, every browser is the
// proxy's address: throttled together, never let through by a header.
func client(r *http.Request) netip.Prefix {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Prefix{}
	}
	a := ap.Addr().Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// wait is how long addr must wait before its next try; 0: it may try.
func (u *ui) wait(addr netip.Prefix, now time.Time) time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.fails[addr]
	if f == nil && len(u.fails) >= maxTracked {
		for a, f := range u.fails {
			if now.Sub(f.since) >= failWindow {
				delete(u.fails, a)
			}
		}
		if len(u.fails) >= maxTracked {
			return failWindow
		}
	}
	if f == nil || f.n < maxFails {
		return 0
	}
	return max(0, f.since.Add(failWindow).Sub(now))
}

// failed counts a wrong token from addr.
func (u *ui) failed(addr netip.Prefix, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.fails[addr]
	if f == nil || now.Sub(f.since) >= failWindow {
		f = &failures{since: now}
		u.fails[addr] = f
	}
	f.n++
}

func (u *ui) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	home := "/ui/"
	if lang(r) == "en" {
		home += "?lang=en"
	}
	if u.o.Token == "" {
		http.Redirect(w, r, home, http.StatusSeeOther)
		return
	}
	addr, now := client(r), u.o.Now()
	if d := u.wait(addr, now); d > 0 {
		secs := int((d + time.Second - 1) / time.Second)
		u.o.Logger.Warn("ui: sign-in throttled", "remote", addr.String(), "retry_after_seconds", secs)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		u.render(w, r, http.StatusTooManyRequests, view{Login: true, Error: strings.ReplaceAll(texts[lang(r)]["login_throttled"], "{n}", strconv.Itoa(secs))})
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(u.o.Token)) != 1 {
		u.failed(addr, now)
		u.o.Logger.Info("ui: sign-in refused: wrong token", "remote", addr.String())
		u.render(w, r, http.StatusUnauthorized, view{Login: true, Error: texts[lang(r)]["login_wrong"]})
		return
	}
	u.mu.Lock()
	delete(u.fails, addr)
	u.mu.Unlock()
	// The expiry is in the value and its MAC, and checked by the server;
	// Max-Age only tells the browser when to drop it.
	value, expires := admin.NewSession(u.o.Token, time.Now())
	http.SetCookie(w, &http.Cookie{Name: admin.SessionCookie, Value: value, Path: "/", Expires: expires,
		MaxAge: int(admin.SessionTTL.Seconds()), HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: viaHTTPS(r)})
	http.Redirect(w, r, home, http.StatusSeeOther)
}

// viaHTTPS reports whether the browser reached the page over TLS: here, or
// at a proxy in front that says so. Secure only narrows where the cookie
// goes, so trusting the header cannot widen anything.
func viaHTTPS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (u *ui) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: admin.SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: viaHTTPS(r)})
	home := "/ui/"
	if lang(r) == "en" {
		home += "?lang=en"
	}
	http.Redirect(w, r, home, http.StatusSeeOther)
}
