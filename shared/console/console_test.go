package console

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	qr "github.com/piglig/go-qr"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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

type noCounts struct{}

func (noCounts) Scene(context.Context, string) (stats.Totals, bool, error) {
	return stats.Totals{}, false, nil
}

// withScenes stores two scenes' totals, as the analytics leader writes
// them, and returns the store.
func withScenes(t *testing.T, nc *nats.Conn) stats.StoreFunc {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	store, err := stats.OpenStore(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, tot := range []stats.Totals{{Scene: "<b>bold</b>", Scans: 3}, {Scene: "poster_a", Scans: 12, NewFollowers: 4}} {
		b, _ := json.Marshal(stats.SceneDoc{Totals: tot})
		if _, err := store.KV.Put(ctx, stats.TotalsKey("default", tot.Scene), b); err != nil {
			t.Fatal(err)
		}
	}
	return func(context.Context) (*stats.Store, error) { return store, nil }
}

// server is the page on a real listener, with its QR API beside it as the
// admin mux has them; off leaves WECHAT_APPSECRET unset.
func server(t *testing.T, off bool) string {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns, nats.Name("console-test"))
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_c", Secret: "c-secret"})
	fs := httptest.NewServer(fake)
	t.Cleanup(fs.Close)
	logger := slog.New(slog.DiscardHandler)
	secret := "c-secret"
	if off {
		secret = ""
	}
	clients := newClients(t, nc, fs.URL, "wx_c", secret)
	qr, err := qrcodes.New(qrcodes.Options{Conn: nc, Clients: clients.For, Logger: logger,
		Scenes: func(context.Context, string) (qrcodes.Totals, error) { return noCounts{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/qrcodes/", qr.Handler("admin-token"))
	mux.Handle("/ui/", Handler(Options{QR: qr, Scenes: withScenes(t, nc), Token: "admin-token", Logger: logger}))
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL
}

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

func browser(t *testing.T) *http.Client {
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

func TestLoginCreateAndShow(t *testing.T) {
	read := reader(t)
	base := server(t, false)
	c := browser(t)

	code, body := read(c.Get(base + "/ui/"))
	if code != 401 || !strings.Contains(body, `name="token"`) {
		t.Fatalf("signed out: %d, want the login form", code)
	}
	code, body = read(c.PostForm(base+"/ui/login", url.Values{"token": {"wrong"}}))
	if code != 401 || !strings.Contains(body, "not the admin token") {
		t.Fatalf("wrong token: %d", code)
	}
	resp, err := c.PostForm(base+"/ui/login", url.Values{"token": {"admin-token"}})
	code, body = read(resp, err)
	if code != 200 || !strings.Contains(body, "New QR code") {
		t.Fatalf("signed in: %d %s", code, body)
	}
	u, _ := url.Parse(base)
	var session *http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == admin.SessionCookie {
			session = ck
		}
	}
	if session == nil || session.Value == "admin-token" {
		t.Fatalf("session cookie %v", session)
	}
	// The chart: scenes escaped, bars drawn.
	if !strings.Contains(body, "&lt;b&gt;bold&lt;/b&gt;") || strings.Contains(body, "<b>bold</b>") || !strings.Contains(body, `<rect width="240"`) {
		t.Errorf("chart not rendered or not escaped:\n%s", body)
	}
	if a, b := strings.Index(body, `<td class="scene">poster_a<`), strings.Index(body, `<td class="scene">&lt;b&gt;bold`); a < 0 || a > b {
		t.Errorf("the chart does not show the most scanned scene first:\n%s", body)
	}

	scene := `<script>alert("x")</script>`
	code, body = read(c.PostForm(base+"/ui/qrcodes", url.Values{"scene": {scene}, "label": {"Spring & <posters>"}, "kind": {"temporary"}, "expire_seconds": {"86400"}}))
	if code != 200 || strings.Contains(body, scene) || !strings.Contains(body, "&lt;script&gt;") || !strings.Contains(body, "Spring &amp; &lt;posters&gt;") {
		t.Fatalf("after create: %d\n%s", code, body)
	}
	srcs := imgSrcs(body)
	if len(srcs) != 1 || !strings.HasPrefix(srcs[0], "/api/qrcodes/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E/image?ticket=") || !strings.HasSuffix(srcs[0], "&size=160&expired=1") {
		t.Errorf("no image for the code: %q\n%s", srcs, body)
	}
	// The image loads with the cookie, as the browser's <img> would.
	resp, err = c.Get(base + srcs[0])
	if code, _ := read(resp, err); code != 200 || resp.Header.Get("Content-Type") != "image/png" {
		t.Errorf("image with the session: %d", code)
	}

	code, body = read(c.PostForm(base+"/ui/qrcodes", url.Values{"scene": {strings.Repeat("x", 65)}}))
	if code != 400 || !strings.Contains(body, "1 to 64 characters") {
		t.Errorf("a long scene: %d", code)
	}

	// Signed out, the form does nothing.
	read(c.PostForm(base+"/ui/logout", nil))
	code, _ = read(c.PostForm(base+"/ui/qrcodes", url.Values{"scene": {"sneaky"}}))
	if code != 401 {
		t.Errorf("create signed out: %d", code)
	}
}

// A form posted from another site is refused, even with the cookie.
func TestCrossOriginPostRefused(t *testing.T) {
	read := reader(t)
	base := server(t, false)
	for _, h := range []map[string]string{{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}} {
		req, _ := http.NewRequest("POST", base+"/ui/qrcodes", strings.NewReader("scene=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(session())
		for k, v := range h {
			req.Header.Set(k, v)
		}
		if code, _ := read(http.DefaultClient.Do(req)); code != 403 {
			t.Errorf("%v: %d, want 403", h, code)
		}
	}
}

func TestHeadersAndOff(t *testing.T) {
	read := reader(t)
	base := server(t, true)
	req, _ := http.NewRequest("GET", base+"/ui/", nil)
	req.AddCookie(session())
	resp, err := http.DefaultClient.Do(req)
	code, body := read(resp, err)
	if code != 200 || !strings.Contains(body, "Creating codes is off") || !strings.Contains(body, "poster_a") {
		t.Errorf("off: %d\n%s", code, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
	if code, css := read(http.Get(base + "/ui/style.css")); code != 200 || !strings.Contains(css, "body") {
		t.Errorf("style.css: %d", code)
	}
}

var imgSrc = regexp.MustCompile(`<img src="([^"]*)"`)

// imgSrcs returns the page's image URLs, unescaped as a browser reads them.
func imgSrcs(page string) []string {
	var out []string
	for _, m := range imgSrc.FindAllStringSubmatch(page, -1) {
		out = append(out, html.UnescapeString(m[1]))
	}
	return out
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

// Each row of the page shows its own code's image, not the scene's latest.
func TestRowsShowTheirOwnCode(t *testing.T) {
	read := reader(t)
	base := mounted(t, "")
	var made []qrcodes.Code
	for _, body := range []string{`{"scene":"poster_a"}`, `{"scene":"poster_a","expire_seconds":3600}`, `{"scene":"poster_b"}`} {
		resp, err := http.Post(base+"/api/qrcodes", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var c qrcodes.Code
		_ = json.NewDecoder(resp.Body).Decode(&c)
		resp.Body.Close()
		made = append(made, c)
	}
	_, page := read(http.Get(base + "/ui/"))
	srcs := imgSrcs(page)
	if len(srcs) != 3 {
		t.Fatalf("%d images, want 3: %q", len(srcs), srcs)
	}
	got := map[string]bool{}
	for _, src := range srcs {
		got[pngURL(t, http.DefaultClient, base+src)] = true
	}
	for _, c := range made {
		if !got[c.URL] {
			t.Errorf("no row shows the code %s (%s); the rows show %v", c.Ticket, c.URL, got)
		}
	}
}

// The page shows the newest 200 codes and says how many more there are;
// the API lists them all.
func TestPageBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 203 codes")
	}
	read := reader(t)
	base := mounted(t, "")
	for i := 0; i < MaxCodes+3; i++ {
		resp, err := http.Post(base+"/api/qrcodes", "application/json", strings.NewReader(fmt.Sprintf(`{"scene":"s%d"}`, i)))
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("create %d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	_, page := read(http.Get(base + "/ui/"))
	if n := len(imgSrcs(page)); n != MaxCodes {
		t.Errorf("%d images on the page, want %d", n, MaxCodes)
	}
	if !strings.Contains(page, "The newest 200 codes are shown; 3 older ones are not") {
		t.Errorf("the page does not say more codes exist")
	}
	if strings.Contains(page, `data-scene="s0"`) || !strings.Contains(page, fmt.Sprintf(`data-scene="s%d"`, MaxCodes+2)) {
		t.Errorf("not the newest shown")
	}
	var list struct{ QRCodes []qrcodes.Listed }
	_, all := read(http.Get(base + "/api/qrcodes"))
	if err := json.Unmarshal([]byte(all), &list); err != nil || len(list.QRCodes) != MaxCodes+3 {
		t.Errorf("the API lists %d codes (%v), want %d", len(list.QRCodes), err, MaxCodes+3)
	}
}

// The login cookie carries its expiry, 12 hours on, under its MAC; the
// server refuses it once that is past, and it is Secure behind an HTTPS
// proxy.
func TestSessionCookie(t *testing.T) {
	base := server(t, false)
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
		t.Errorf("with an expired cookie: %d, want the login page (401)", code)
	}
}
