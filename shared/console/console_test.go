package console

import (
	"encoding/json"
	"fmt"
	"html"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	qr "github.com/piglig/go-qr"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/qrcodes"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// newClients are a process's clients of the fake at base, for a default
// account of appid and secret ("" : QR codes off).
func newClients(t *testing.T, nc *nats.Conn, base, appid, secret string) *wechatapi.Clients {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	reg, err := accounts.Start(accounts.Options{Default: accounts.Account{AppID: appid, AppSecret: secret}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := wechatapi.NewClients(wechatapi.Options{Base: base, Accounts: reg, Conn: nc, Logger: logger, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// session is a valid session cookie for "admin-token".
func session() *http.Cookie {
	v, _ := admin.NewSession("admin-token", time.Now())
	return &http.Cookie{Name: admin.SessionCookie, Value: v}
}

func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar}
}

// reader returns read(resp, err): the status and body of an answer.
func reader(t *testing.T) func(*http.Response, error) (int, string) {
	return func(resp *http.Response, err error) (int, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

// strings_ is the string table a page carries for its script.
var stringsJSON = regexp.MustCompile(`(?s)<script type="application/json" id="strings">(.*?)</script>`)

func pageStrings(t *testing.T, page string) map[string]string {
	t.Helper()
	m := stringsJSON.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no string table in the page:\n%s", page)
	}
	var out map[string]string
	if err := json.Unmarshal([]byte(m[1]), &out); err != nil {
		t.Fatalf("the string table is not JSON: %v\n%s", err, m[1])
	}
	return out
}

// Signing in through the form: the page (a shell and its script) only with
// the session; with it, the script's reads and its own same-origin JSON
// requests pass the API's token check, a cross-site one carrying the
// cookie does not, and signing out ends it.
func TestSignInAndTheAPI(t *testing.T) {
	read := reader(t)
	base := mounted(t, "admin-token")
	c := browser()

	code, body := read(c.Get(base + "/ui/"))
	if code != 401 || !strings.Contains(body, `name="token"`) || strings.Contains(body, "app.js") {
		t.Fatalf("signed out: %d, want the sign-in form and no script:\n%s", code, body)
	}
	if code, _ := read(c.Get(base + "/api/qrcodes")); code != 401 {
		t.Errorf("the API signed out: %d", code)
	}
	code, body = read(c.PostForm(base+"/ui/login", url.Values{"token": {"wrong"}}))
	if code != 401 || !strings.Contains(body, texts["zh-CN"]["login_wrong"]) {
		t.Fatalf("wrong token: %d\n%s", code, body)
	}
	code, body = read(c.PostForm(base+"/ui/login", url.Values{"token": {"admin-token"}}))
	if code != 200 || !strings.Contains(body, `<script src="/ui/app.js" defer></script>`) || !strings.Contains(body, `action="/ui/logout"`) {
		t.Fatalf("signed in: %d\n%s", code, body)
	}
	u, _ := url.Parse(base)
	i := slices.IndexFunc(c.Jar.Cookies(u), func(ck *http.Cookie) bool { return ck.Name == admin.SessionCookie })
	if i < 0 || c.Jar.Cookies(u)[i].Value == "admin-token" {
		t.Fatalf("session cookie %v", c.Jar.Cookies(u))
	}

	// What the page's script sends: reads, and same-origin JSON.
	if code, body := read(c.Get(base + "/api/qrcodes")); code != 200 || !strings.Contains(body, `"qrcodes"`) {
		t.Errorf("the script's read with the cookie: %d %s", code, body)
	}
	post := func(origin, site, scene string) int {
		req, _ := http.NewRequest("POST", base+"/api/qrcodes", strings.NewReader(`{"scene":"`+scene+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", origin)
		req.Header.Set("Sec-Fetch-Site", site)
		code, _ := read(c.Do(req))
		return code
	}
	if code := post(base, "same-origin", "from_the_page"); code != 201 {
		t.Errorf("the page's own POST with the cookie: %d, want 201", code)
	}
	if code := post("https://evil.example", "cross-site", "from_elsewhere"); code != 403 {
		t.Errorf("a cross-site POST carrying the cookie: %d, want 403", code)
	}
	_, list := read(c.Get(base + "/api/qrcodes"))
	if !strings.Contains(list, "from_the_page") || strings.Contains(list, "from_elsewhere") {
		t.Errorf("codes after the two posts: %s", list)
	}

	read(c.PostForm(base+"/ui/logout", nil))
	if code, _ := read(c.Get(base + "/api/qrcodes")); code != 401 {
		t.Errorf("the API after signing out: %d", code)
	}
	if code := post(base, "same-origin", "after_logout"); code != 401 {
		t.Errorf("the page's POST after signing out: %d", code)
	}
}

// Wrong tokens are throttled per address: the sixth wrong try within a
// minute, and every try after it (the right token too), gets 429 with
// Retry-After, until the minute has passed; another address is not
// slowed, an IPv6 /64 is one address, and the refusal is in the page's
// language.
func TestSignInThrottled(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	h, err := Handler(Options{Token: "admin-token", Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Handler(Options{}); err == nil {
		t.Error("a Handler without a Logger")
	}
	try := func(addr, token, lang string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/ui/login", strings.NewReader(url.Values{"token": {token}, "lang": {lang}}.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.RemoteAddr = addr
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	const a, b = "198.51.100.7:50000", "203.0.113.9:40000"
	for i := range maxFails {
		if w := try(a, fmt.Sprint("guess", i), ""); w.Code != 401 {
			t.Fatalf("wrong try %d: %d, want 401", i+1, w.Code)
		}
	}
	now = now.Add(10 * time.Second)
	w := try(a, "guess-again", "")
	if w.Code != 429 || w.Header().Get("Retry-After") != "50" || !strings.Contains(w.Body.String(), "50 秒后再试") {
		t.Fatalf("the sixth wrong try: %d Retry-After %q\n%s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if w := try(a, "admin-token", "en"); w.Code != 429 || !strings.Contains(w.Body.String(), "Try again in 50 seconds") || len(w.Result().Cookies()) != 0 {
		t.Errorf("the right token while throttled: %d %v, want 429 and no cookie", w.Code, w.Result().Cookies())
	}
	if w := try(b, "admin-token", ""); w.Code != 303 {
		t.Errorf("another address: %d, want 303", w.Code)
	}
	now = now.Add(50 * time.Second)
	if w := try(a, "admin-token", "en"); w.Code != 303 || w.Header().Get("Location") != "/ui/?lang=en" {
		t.Errorf("after the minute: %d %q, want 303 to the English page", w.Code, w.Header().Get("Location"))
	}

	const v6 = "[2001:db8:1:2::1]:443"
	for i := range maxFails {
		try(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+10), "guess", "")
	}
	if w := try(v6, "admin-token", ""); w.Code != 429 {
		t.Errorf("another address of the same IPv6 /64: %d, want 429", w.Code)
	}
	if w := try("[2001:db8:1:3::1]:443", "admin-token", ""); w.Code != 303 {
		t.Errorf("another /64: %d, want 303", w.Code)
	}
}

// The throttle remembers at most maxTracked addresses: while that many
// failed within the minute, a new address waits too (a flood of addresses
// buys no guesses); once the minute has passed, they are forgotten.
func TestThrottleBounded(t *testing.T) {
	u := &ui{fails: map[netip.Prefix]*failures{}}
	now := time.Unix(1_800_000_000, 0)
	for i := range maxTracked {
		u.failed(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32), now)
	}
	newcomer := netip.MustParsePrefix("192.0.2.1/32")
	if d := u.wait(newcomer, now.Add(30*time.Second)); d <= 0 {
		t.Errorf("a new address while %d are remembered: may try at once", maxTracked)
	}
	if d := u.wait(newcomer, now.Add(failWindow)); d != 0 || len(u.fails) != 0 {
		t.Errorf("after the minute: wait %v, %d addresses remembered", d, len(u.fails))
	}
}

// The page speaks Chinese unless asked for English (?lang=en), from one
// table of strings per language: both tables have the same keys, and
// every string the script names is in them.
func TestLanguage(t *testing.T) {
	read := reader(t)
	base := mounted(t, "")
	_, zh := read(http.Get(base + "/ui/"))
	_, en := read(http.Get(base + "/ui/?lang=en"))
	if !strings.Contains(zh, `<html lang="zh-CN">`) || !strings.Contains(zh, "<title>wxgate · 渠道二维码</title>") || !strings.Contains(zh, `href="/ui/?lang=en"`) {
		t.Errorf("the default page is not Chinese, or has no way to English:\n%s", zh)
	}
	if !strings.Contains(en, `<html lang="en">`) || !strings.Contains(en, `href="/ui/"`) {
		t.Errorf("?lang=en is not English, or has no way back:\n%s", en)
	}
	if s := pageStrings(t, zh); s["period_7d"] != "近7天" || s["kind_permanent"] != "永久码" {
		t.Errorf("the Chinese page carries %q, %q", s["period_7d"], s["kind_permanent"])
	}
	if s := pageStrings(t, en); s["period_7d"] != "Last 7 days" {
		t.Errorf("the English page carries %q", s["period_7d"])
	}
	for k := range texts["zh-CN"] {
		if _, ok := texts["en"][k]; !ok {
			t.Errorf("%q is Chinese only", k)
		}
	}
	for k := range texts["en"] {
		if _, ok := texts["zh-CN"][k]; !ok {
			t.Errorf("%q is English only", k)
		}
	}
	js, err := static.ReadFile("static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`\bt\('([a-z0-9_]+)'[,)]`).FindAllStringSubmatch(string(js), -1) {
		if _, ok := texts["zh-CN"][m[1]]; !ok {
			t.Errorf("app.js names %q, which no table has", m[1])
		}
	}
	// The sign-in form in English keeps its language through the post.
	base = mounted(t, "admin-token")
	_, login := read(http.Get(base + "/ui/?lang=en"))
	if !strings.Contains(login, "Access code") || !strings.Contains(login, `name="lang" value="en"`) {
		t.Errorf("the English sign-in form:\n%s", login)
	}
}

// The template escapes what it shows: a string of the table that holds
// markup stays text, in the page and in the JSON the script reads.
func TestTemplateEscapes(t *testing.T) {
	evil := `</script><script>alert(1)</script><b onload="x">&`
	u := &ui{o: Options{Logger: slog.New(slog.DiscardHandler)}}
	tt := map[string]string{}
	for k := range texts["en"] {
		tt[k] = evil
	}
	for _, v := range []view{{Login: true, Error: evil, T: tt}, {T: tt}} {
		w := httptest.NewRecorder()
		u.render(w, httptest.NewRequest("GET", "/ui/?lang=en", nil), 200, v)
		body := w.Body.String()
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "<b onload") {
			t.Errorf("markup from a string reached the page:\n%s", body)
		}
		if !v.Login {
			if s := pageStrings(t, body); s["title"] != evil {
				t.Errorf("the script's table reads %q, want %q", s["title"], evil)
			}
		} else if !strings.Contains(body, html.EscapeString(evil)) {
			t.Errorf("the error is not shown as text:\n%s", body)
		}
	}
}

// A sign-in form posted from another site is refused.
func TestCrossOriginPostRefused(t *testing.T) {
	read := reader(t)
	base := mounted(t, "admin-token")
	for _, h := range []map[string]string{{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}} {
		req, _ := http.NewRequest("POST", base+"/ui/login", strings.NewReader("token=admin-token"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := noRedirects.Do(req)
		if code, _ := read(resp, err); code != 403 || len(resp.Cookies()) != 0 {
			t.Errorf("%v: %d, want 403 and no cookie", h, code)
		}
	}
}

// The page keeps to itself: scripts, styles, images and requests of this
// origin only, and no inline script.
func TestHeadersAndFiles(t *testing.T) {
	read := reader(t)
	base := mounted(t, "")
	resp, err := http.Get(base + "/ui/")
	if code, _ := read(resp, err); code != 200 {
		t.Fatalf("/ui/: %d", code)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self';", "connect-src 'self';", "img-src 'self';"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("CSP %q, Cache-Control %q", csp, resp.Header.Get("Cache-Control"))
	}
	for file, typ := range map[string]string{"app.js": "text/javascript", "style.css": "text/css"} {
		resp, err := http.Get(base + "/ui/" + file)
		code, body := read(resp, err)
		if code != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), typ) || len(body) < 1000 {
			t.Errorf("%s: %d %q, %d bytes", file, code, resp.Header.Get("Content-Type"), len(body))
		}
	}
}

// noRedirects is a client that reports a redirect rather than follows it.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// pngURL GETs u and returns what its PNG decodes to.
func pngURL(t *testing.T, c *http.Client, u string) string {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("GET %s = %d %s %q", u, resp.StatusCode, resp.Header.Get("Location"), b)
		return ""
	}
	img, err := png.Decode(resp.Body)
	if err != nil {
		t.Errorf("GET %s: %v", u, err)
		return ""
	}
	got, err := qr.Decode(img)
	if err != nil {
		t.Errorf("GET %s: %v", u, err)
	}
	return got
}

// mounted is an admin listener as the binaries build it (admin.NewMux,
// then Mount), on a real port, with the fake WeChat API.
func mounted(t *testing.T, token string) string {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns, nats.Name("mounted"))
	fake := httptest.NewServer(wechatapitest.New(wechatapitest.Options{AppID: "wx_m", Secret: "m-secret"}))
	t.Cleanup(fake.Close)
	mux := admin.NewMux(admin.Options{Gatherer: prometheus.NewRegistry(), Token: token})
	logger := slog.New(slog.DiscardHandler)
	api, err := stats.API(stats.APIOptions{Store: stats.OpenOnUse(nc), Token: token, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/api/", api)
	client := newClients(t, nc, fake.URL, "wx_m", "m-secret")
	cfg := config.Config{AdminToken: token, AppSecret: "m-secret"}
	if _, err := Mount(mux, MountOptions{Conn: nc, Config: cfg, Scenes: stats.OpenOnUse(nc), WeChat: client, Logger: logger}); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL
}

// Every scene that is path syntax is reachable on the admin listener as
// the binaries build it: its image_url and its one-code URL answer 200 (no
// redirect to another resource), and the PNG decodes to the code's url.
func TestEveryScenePath(t *testing.T) {
	base := mounted(t, "")
	for _, scene := range []string{".", "..", "a/../b", "x/./y", "a/b", "%", "?x", "#h", "image", "../../metrics"} {
		body, _ := json.Marshal(map[string]string{"scene": scene})
		resp, err := http.Post(base+"/api/qrcodes", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		var c qrcodes.Code
		err = json.NewDecoder(resp.Body).Decode(&c)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 201 || c.Scene != scene {
			t.Fatalf("create %q: %d %+v %v", scene, resp.StatusCode, c, err)
		}
		if got := pngURL(t, noRedirects, base+c.ImageURL); got != c.URL {
			t.Errorf("%q: image_url %s decodes to %q, want %q", scene, c.ImageURL, got, c.URL)
		}
		one := strings.TrimSuffix(strings.SplitN(c.ImageURL, "?", 2)[0], "/image")
		resp, err = noRedirects.Get(base + one)
		if err != nil {
			t.Fatal(err)
		}
		var l qrcodes.Listed
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil || l.Scene != scene || l.Ticket != c.Ticket {
			t.Errorf("%q: GET %s = %d %+v %v", scene, one, resp.StatusCode, l, err)
		}
	}
	// The rest of the listener is the ServeMux's, cleaning as ever.
	if resp, err := noRedirects.Get(base + "/api/x/../scenes"); err != nil || resp.StatusCode/100 != 3 {
		t.Errorf("a dot segment elsewhere: %v %v", resp, err)
	}
}

// The login cookie carries its expiry, 12 hours on, under its MAC; the
// server refuses it once that is past, and it is Secure behind an HTTPS
// proxy.
func TestSessionCookie(t *testing.T) {
	base := mounted(t, "admin-token")
	login := func(proto string) *http.Cookie {
		req, _ := http.NewRequest("POST", base+"/ui/login", strings.NewReader("token=admin-token"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if proto != "" {
			req.Header.Set("X-Forwarded-Proto", proto)
		}
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for _, c := range resp.Cookies() {
			if c.Name == admin.SessionCookie {
				return c
			}
		}
		t.Fatalf("no session cookie: %d", resp.StatusCode)
		return nil
	}
	plain, proxied := login(""), login("https")
	if plain.Secure || !proxied.Secure || !proxied.HttpOnly || proxied.SameSite != http.SameSiteStrictMode {
		t.Errorf("Secure: plain %v, behind https %v", plain.Secure, proxied.Secure)
	}
	exp, _, ok := strings.Cut(plain.Value, ".")
	var secs int64
	if _, err := fmt.Sscan(exp, &secs); !ok || err != nil || time.Until(time.Unix(secs, 0)) < 12*time.Hour-time.Minute || time.Until(time.Unix(secs, 0)) > 12*time.Hour {
		t.Errorf("cookie %q: no 12-hour expiry in it", plain.Value)
	}
	page := func(c *http.Cookie) int {
		req, _ := http.NewRequest("GET", base+"/ui/", nil)
		req.AddCookie(c)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := page(plain); code != 200 {
		t.Errorf("with the fresh cookie: %d", code)
	}
	expired := &http.Cookie{Name: admin.SessionCookie, Value: admin.SessionValue("admin-token", time.Now().Add(-time.Minute))}
	if code := page(expired); code != 401 {
		t.Errorf("with an expired cookie: %d, want the sign-in page (401)", code)
	}
}
