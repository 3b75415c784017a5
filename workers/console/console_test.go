package console

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/natstest"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/workers/analytics"
	"github.com/wxgate/wxgate/workers/qrcodes"
	"github.com/wxgate/wxgate/wxsim/api"
)

type noCounts struct{}

func (noCounts) Scene(context.Context, string) (analytics.Totals, bool, error) {
	return analytics.Totals{}, false, nil
}

// scenesAPI answers GET /api/scenes as the analytics API does.
var scenesAPI = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer admin-token" {
		w.WriteHeader(401)
		return
	}
	_, _ = io.WriteString(w, `{"total":2,"scenes":[{"scene":"poster_a","scans":12,"new_followers":4},{"scene":"<b>bold</b>","scans":3,"new_followers":0}]}`)
})

// server is the page on a real listener, with its QR API beside it as the
// admin mux has them; off leaves WECHAT_APPSECRET unset.
func server(t *testing.T, off bool) string {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns, nats.Name("console-test"))
	fake := api.New(api.Options{AppID: "wx_c", Secret: "c-secret"})
	fs := httptest.NewServer(fake)
	t.Cleanup(fs.Close)
	logger := slog.New(slog.DiscardHandler)
	var client *wechatapi.Client
	if !off {
		var err error
		if client, err = wechatapi.New(wechatapi.Options{Base: fs.URL, AppID: "wx_c", Secret: "c-secret", Conn: nc, Logger: logger, Registerer: prometheus.NewRegistry()}); err != nil {
			t.Fatal(err)
		}
	}
	qr := qrcodes.New(qrcodes.Options{Conn: nc, Client: client, Logger: logger,
		Scenes: func(context.Context) (qrcodes.Totals, error) { return noCounts{}, nil }})
	mux := http.NewServeMux()
	mux.Handle("/api/scenes", scenesAPI)
	mux.Handle("/api/qrcodes/", qr.Handler("admin-token"))
	mux.Handle("/ui/", Handler(Options{QR: qr, API: mux, Token: "admin-token", Logger: logger}))
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL
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

	scene := `<script>alert("x")</script>`
	code, body = read(c.PostForm(base+"/ui/qrcodes", url.Values{"scene": {scene}, "label": {"Spring & <posters>"}, "kind": {"temporary"}, "expire_seconds": {"86400"}}))
	if code != 200 || strings.Contains(body, scene) || !strings.Contains(body, "&lt;script&gt;") || !strings.Contains(body, "Spring &amp; &lt;posters&gt;") {
		t.Fatalf("after create: %d\n%s", code, body)
	}
	if !strings.Contains(body, `src="/api/qrcodes/%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E/image?size=160"`) {
		t.Errorf("no image for the code:\n%s", body)
	}
	// The image loads with the cookie, as the browser's <img> would.
	resp, err = c.Get(base + "/api/qrcodes/" + url.PathEscape(scene) + "/image?size=160")
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
		req.AddCookie(&http.Cookie{Name: admin.SessionCookie, Value: admin.SessionValue("admin-token")})
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
	req.AddCookie(&http.Cookie{Name: admin.SessionCookie, Value: admin.SessionValue("admin-token")})
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
