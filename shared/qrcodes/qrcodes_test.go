package qrcodes

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	qr "github.com/piglig/go-qr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/clocktest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// counts is a Totals with fixed numbers.
type counts map[string]stats.Totals

func (c counts) Scene(_ context.Context, scene string) (stats.Totals, bool, error) {
	t, ok := c[scene]
	return t, ok, nil
}

type env struct {
	ns     *bus.Embedded
	fake   *wechatapitest.Server
	base   string
	clock  *clocktest.Clock
	counts counts // the default account's
}

// The fake's apps: the default account's, and one for a second account.
const (
	appQ, secretQ = "wx_q", "q-secret"
	appR, secretR = "wx_r", "r-secret"
)

var secretKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

func newEnv(t *testing.T) *env {
	t.Helper()
	fake := wechatapitest.New(wechatapitest.Options{AppID: appQ, Secret: secretQ, Apps: map[string]string{appR: secretR}, PermanentCap: 10})
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	return &env{ns: natstest.RunServer(t), fake: fake, base: ts.URL, clock: clocktest.New(time.Now()), counts: counts{}}
}

// process is one process: its accounts registry and its QR service.
type process struct {
	*Service
	reg *accounts.Registry
}

// service is one process's QR service; off means without WECHAT_APPSECRET.
func (e *env) service(t *testing.T, name string, off bool, mod ...func(*Options)) *Service {
	t.Helper()
	return e.process(t, name, off, mod...).Service
}

func (e *env) process(t *testing.T, name string, off bool, mod ...func(*Options)) process {
	t.Helper()
	nc := natstest.Connect(t, e.ns, nats.Name(name))
	logger := slog.New(slog.DiscardHandler)
	def := accounts.Account{AppID: appQ, AppSecret: secretQ}
	if off {
		def.AppSecret = ""
	}
	reg, err := accounts.Start(accounts.Options{Conn: nc, Default: def, SecretKey: secretKey, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	cs, err := wechatapi.NewClients(wechatapi.Options{Base: e.base, Accounts: reg, Conn: nc, Logger: logger, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Conn: nc, Clients: cs.For, Logger: logger, Now: e.clock.Now,
		Scenes: func(_ context.Context, account string) (Totals, error) {
			if account != accounts.DefaultID {
				return counts{}, nil
			}
			return e.counts, nil
		}}
	for _, m := range mod {
		m(&o)
	}
	svc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return process{svc, reg}
}

// get GETs target (kept as written: its escapes and dot segments reach
// the handler as a client sends them) and returns the answer.
func get(h http.Handler, target string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", target, nil))
	return w
}

// decodes checks that a PNG answer decodes to want.
func decodes(t *testing.T, w *httptest.ResponseRecorder, want string) {
	t.Helper()
	if w.Code != 200 || w.Header().Get("Content-Type") != "image/png" {
		t.Errorf("image: %d %s %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
		return
	}
	img, err := png.Decode(w.Body)
	if err != nil {
		t.Error(err)
		return
	}
	if got, err := qr.Decode(img); err != nil || got != want {
		t.Errorf("the PNG decodes to %q (%v), want %q", got, err, want)
	}
}

// do sends a request to h and decodes a JSON answer into out (when not nil).
func do(t *testing.T, h http.Handler, method, path, body string, out any, mod ...func(*http.Request)) int {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	for _, m := range mod {
		m(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if out != nil {
		if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, w.Code, w.Body.String(), err)
		}
	}
	return w.Code
}

func TestCreateListGetImage(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	e.counts["poster_a"] = stats.Totals{Scene: "poster_a", Scans: 7, NewFollowers: 3}

	var c Code
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"poster_a","label":"Spring <posters>"}`, &c); code != 201 {
		t.Fatalf("create = %d %+v", code, c)
	}
	if c.Scene != "poster_a" || c.Label != "Spring <posters>" || c.Permanent || c.Ticket == "" || !strings.HasPrefix(c.URL, "http://weixin.qq.com/q/") ||
		c.ExpiresAt == nil || c.ExpiresAt.Sub(c.CreatedAt) != DefaultExpireSeconds*time.Second || c.ImageURL != "/api/qrcodes/poster_a/image?ticket="+url.QueryEscape(c.Ticket) || c.Group != "" {
		t.Errorf("code = %+v", c)
	}
	// The JSON names of the contract.
	var raw map[string]any
	do(t, h, "GET", "/api/qrcodes/poster_a", "", &raw)
	for _, k := range []string{"scene", "label", "group", "permanent", "ticket", "url", "expires_at", "expiring_soon", "created_at", "image_url", "scans", "new_followers"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("GET lacks %q: %v", k, raw)
		}
	}
	var list struct{ QRCodes []Listed }
	if code := do(t, h, "GET", "/api/qrcodes", "", &list); code != 200 || len(list.QRCodes) != 1 || list.QRCodes[0].Scans != 7 || list.QRCodes[0].NewFollowers != 3 || list.QRCodes[0].Expired {
		t.Fatalf("list = %d %+v", code, list)
	}

	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/api/qrcodes/poster_a/image?size=300", nil))
	if w.Code != 200 || w.Header().Get("Content-Type") != "image/png" {
		t.Fatalf("image = %d %s", w.Code, w.Header())
	}
	img, err := png.Decode(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := qr.Decode(img); err != nil || got != c.URL || img.Bounds().Dx() != 300 {
		t.Errorf("the PNG decodes to %q (%v), %dpx; want %q, 300px", got, err, img.Bounds().Dx(), c.URL)
	}

	// A newer code is the scene's latest; past its time it shows as
	// expired, and its scans still count.
	e.clock.Add(time.Minute)
	var c2 Code
	do(t, h, "POST", "/api/qrcodes", `{"scene":"poster_a","expire_seconds":60}`, &c2)
	var l Listed
	if do(t, h, "GET", "/api/qrcodes/poster_a", "", &l); l.Ticket != c2.Ticket || l.Expired {
		t.Errorf("latest = %+v, want the second code", l)
	}
	e.clock.Add(61 * time.Second)
	if do(t, h, "GET", "/api/qrcodes/poster_a", "", &l); !l.Expired || l.Scans != 7 {
		t.Errorf("after its time: %+v, want expired with its scans", l)
	}
	do(t, h, "GET", "/api/qrcodes", "", &list)
	if len(list.QRCodes) != 2 || list.QRCodes[0].Ticket != c2.Ticket || !list.QRCodes[0].Expired || list.QRCodes[1].Expired {
		t.Errorf("list, newest first = %+v", list.QRCodes)
	}
}

// Two processes create the same permanent code at once: WeChat is asked
// once, one answer is 201 and the other 200, with the same code; asked
// again, 200.
func TestPermanentCreatedOnce(t *testing.T) {
	e := newEnv(t)
	hs := []http.Handler{e.service(t, "a", false).Handler(""), e.service(t, "b", false).Handler("")}
	for round := 0; round < 3; round++ {
		var wg sync.WaitGroup
		codes := make([]int, 6)
		got := make([]Code, 6)
		for i := range codes {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				codes[i] = do(t, hs[i%2], "POST", "/api/qrcodes", fmt.Sprintf(`{"scene":"perm_%d","permanent":true}`, round), &got[i])
			}(i)
		}
		wg.Wait()
		created := 0
		for i, code := range codes {
			switch {
			case code == 201:
				created++
			case code != 200:
				t.Fatalf("round %d: %d", round, code)
			}
			if got[i].Ticket != got[0].Ticket || !got[i].Permanent || got[i].ExpiresAt != nil {
				t.Errorf("round %d: %+v differs from %+v", round, got[i], got[0])
			}
		}
		if created != 1 {
			t.Errorf("round %d: %d answers 201, want 1", round, created)
		}
	}
	if n := e.fake.Calls().Calls[wechatapitest.QRCodeCreate]; n != 3 {
		t.Errorf("qrcode/create asked %d times for 3 permanent codes", n)
	}
	// All-digit scenes in range go as scene_id.
	var c Code
	do(t, hs[0], "POST", "/api/qrcodes", `{"scene":"100000","permanent":true}`, &c)
	if q := e.fake.Calls().QRCodes; q[len(q)-1].ActionName != "QR_LIMIT_SCENE" {
		t.Errorf("100000 went as %s", q[len(q)-1].ActionName)
	}
}

// A permanent code WeChat refused leaves no reservation behind.
func TestPermanentRefusedThenMade(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: 45029})
	var refused map[string]any
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"p1","permanent":true}`, &refused); code != 502 || refused["errcode"] != 45029.0 || refused["errmsg"] == "" {
		t.Fatalf("= %d %v", code, refused)
	}
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"p1","permanent":true}`, nil); code != 201 {
		t.Fatalf("after the refusal: %d", code)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"empty body", "POST", "/api/qrcodes", ``, 400},
		{"not JSON", "POST", "/api/qrcodes", `scene=a`, 400},
		{"no scene", "POST", "/api/qrcodes", `{"label":"x"}`, 400},
		{"empty scene", "POST", "/api/qrcodes", `{"scene":""}`, 400},
		{"65 characters", "POST", "/api/qrcodes", `{"scene":"` + strings.Repeat("码", 65) + `"}`, 400},
		{"not UTF-8", "POST", "/api/qrcodes", "{\"scene\":\"a\xff\"}", 400},
		{"misspelt field", "POST", "/api/qrcodes", `{"scene":"a","expires_seconds":60}`, 400},
		{"two objects", "POST", "/api/qrcodes", `{"scene":"a"}{"scene":"b"}`, 400},
		{"expire too short", "POST", "/api/qrcodes", `{"scene":"a","expire_seconds":59}`, 400},
		{"expire too long", "POST", "/api/qrcodes", `{"scene":"a","expire_seconds":2592001}`, 400},
		{"expire not a number", "POST", "/api/qrcodes", `{"scene":"a","expire_seconds":"1h"}`, 400},
		{"label too long", "POST", "/api/qrcodes", `{"scene":"a","label":"` + strings.Repeat("x", 201) + `"}`, 400},
		{"label with a newline", "POST", "/api/qrcodes", `{"scene":"a","label":"a\nb"}`, 400},
		{"body too large", "POST", "/api/qrcodes", `{"scene":"a","label":"` + strings.Repeat("x", 9000) + `"}`, 400},
		{"long path scene", "GET", "/api/qrcodes/" + strings.Repeat("z", 5000), "", 400},
		{"long image scene", "GET", "/api/qrcodes/" + strings.Repeat("z", 5000) + "/image", "", 400},
		{"unknown scene", "GET", "/api/qrcodes/nobody", "", 404},
		{"unknown image", "GET", "/api/qrcodes/nobody/image", "", 404},
		{"size too small", "GET", "/api/qrcodes/a/image?size=63", "", 400},
		{"size too large", "GET", "/api/qrcodes/a/image?size=4097", "", 400},
		{"unknown format", "GET", "/api/qrcodes/a/image?format=gif", "", 400},
		{"caption not 0 or 1", "GET", "/api/qrcodes/a/image?caption=yes", "", 400},
		{"group too long", "POST", "/api/qrcodes", `{"scene":"a","group":"` + strings.Repeat("组", 33) + `"}`, 400},
		{"group with a tab", "POST", "/api/qrcodes", `{"scene":"a","group":"a\tb"}`, 400},
		{"list: group too long", "GET", "/api/qrcodes?group=" + strings.Repeat("g", 33), "", 400},
		{"unknown account", "GET", "/api/qrcodes?account=nobody", "", 404},
		{"account a path trick", "GET", "/api/qrcodes?account=..%2F", "", 404},
		{"account too long", "POST", "/api/qrcodes?account=" + strings.Repeat("a", 33), `{"scene":"a"}`, 404},
		{"archive: bad size", "GET", "/api/qrcodes/archive.zip?size=1", "", 400},
		{"archive: none", "GET", "/api/qrcodes/archive.zip?group=none", "", 404},
		{"GET the batch route", "GET", "/api/qrcodes/batch", "", 404},
		{"size not a number", "GET", "/api/qrcodes/a/image?size=big", "", 400},
		{"empty ticket", "GET", "/api/qrcodes/a/image?ticket=", "", 400},
		{"long ticket", "GET", "/api/qrcodes/a/image?ticket=" + strings.Repeat("t", 1025), "", 400},
		{"unknown ticket", "GET", "/api/qrcodes/pp/image?ticket=nope", "", 404},
		{"escaped long scene", "GET", "/api/qrcodes/" + strings.Repeat("%7A", 65), "", 400},
		{"below image", "GET", "/api/qrcodes/a/image/x", "", 404},
		{"another subpath", "GET", "/api/qrcodes/a/thumb", "", 404},
		{"no scene", "GET", "/api/qrcodes/", "", 404},
		{"not under the prefix", "GET", "/api/qrcodesx", "", 404},
		{"DELETE a code", "DELETE", "/api/qrcodes/a", "", 405},
		{"PUT the list", "PUT", "/api/qrcodes", "", 405},
		{"permanent ignores expire", "POST", "/api/qrcodes", `{"scene":"pp","permanent":true,"expire_seconds":1}`, 201},
	}
	for _, tt := range tests {
		if code := do(t, h, tt.method, tt.path, tt.body, nil); code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, code, tt.want)
		}
	}
	if n := e.fake.Calls().Calls[wechatapitest.QRCodeCreate]; n != 1 {
		t.Errorf("WeChat was asked %d times, want once (bad requests never reach it)", n)
	}
}

// WeChat's refusals reach the caller as 502 with the errcode (and a hint
// where an operator can act); no answer at all is 502 with an error only.
func TestRefusalsAre502(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	for _, tt := range []struct {
		code int
		hint bool
	}{{45009, true}, {40164, true}, {48001, true}, {89503, true}, {40053, false}, {40052, false}, {-1, false}} {
		_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: tt.code})
		var out map[string]any
		if got := do(t, h, "POST", "/api/qrcodes", `{"scene":"s"}`, &out); got != 502 || out["errcode"] != float64(tt.code) || out["error"] == "" || out["errmsg"] == "" {
			t.Errorf("errcode %d: %d %v", tt.code, got, out)
		}
		if hint, _ := out["hint"].(string); (hint != "") != tt.hint {
			t.Errorf("errcode %d: hint %q", tt.code, hint)
		}
	}
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Drop: true})
	var out map[string]any
	if got := do(t, h, "POST", "/api/qrcodes", `{"scene":"s"}`, &out); got != 502 || out["error"] != "WeChat's API did not answer" || out["errcode"] != nil {
		t.Errorf("dropped: %d %v", got, out)
	}
	// A refusal of stable_token (a wrong AppID or AppSecret) is one too.
	for _, code := range []int{40013, 40125} {
		e := newEnv(t)
		_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.StableToken, Errcode: code})
		var out map[string]any
		got := do(t, e.service(t, "p", false).Handler(""), "POST", "/api/qrcodes", `{"scene":"s"}`, &out)
		if hint, _ := out["hint"].(string); got != 502 || out["errcode"] != float64(code) || !strings.Contains(hint, "WECHAT_APPSECRET") {
			t.Errorf("stable_token %d: %d %v", code, got, out)
		}
	}
}

// Without WECHAT_APPSECRET every route answers 503, whatever the request:
// the feature is off before anything is checked.
func TestOffWithoutSecret(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", true).Handler("")
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/api/qrcodes", `{"scene":"a"}`},
		{"GET", "/api/qrcodes", ""},
		{"GET", "/api/qrcodes/a", ""},
		{"GET", "/api/qrcodes/a/image", ""},
		{"POST", "/api/qrcodes", `not json`},
		{"POST", "/api/qrcodes", `{"scene":""}`},
		{"POST", "/api/qrcodes", `{"scene":"a","label":"` + strings.Repeat("x", 9000) + `"}`},
		{"GET", "/api/qrcodes/" + strings.Repeat("z", 65), ""},
		{"GET", "/api/qrcodes/a/image?size=1", ""},
	} {
		var out map[string]string
		if code := do(t, h, r.method, r.path, r.body, &out); code != 503 || !strings.Contains(out["error"], "WECHAT_APPSECRET") {
			t.Errorf("%s %.60s %.40s = %d %v", r.method, r.path, r.body, code, out)
		}
	}
}

func TestTokenAndSession(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("admin-secret")
	bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer admin-secret") }
	cookie := func(r *http.Request) {
		v, _ := admin.NewSession("admin-secret", time.Now())
		r.AddCookie(&http.Cookie{Name: admin.SessionCookie, Value: v})
	}
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"a/b c"}`, nil); code != 401 {
		t.Errorf("no token: %d", code)
	}
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"a/b c"}`, nil, cookie); code != 401 {
		t.Errorf("a POST with the cookie only: %d", code)
	}
	var c Code
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"a/b c"}`, &c, bearer); code != 201 {
		t.Fatalf("with the token: %d", code)
	}
	// A scene with a slash and a space: its image URL is one path segment.
	if c.ImageURL != "/api/qrcodes/a%2Fb%20c/image?ticket="+url.QueryEscape(c.Ticket) {
		t.Errorf("image_url = %q", c.ImageURL)
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", c.ImageURL+"&download=1", nil)
	cookie(r)
	h.ServeHTTP(w, r)
	if w.Code != 200 || !strings.Contains(w.Header().Get("Content-Disposition"), `filename*=UTF-8''a_b%20c.png`) {
		t.Errorf("image with the cookie: %d %v", w.Code, w.Header())
	}
}

// PNG renders a QR code of text as a size×size PNG without a caption.
func PNG(text string, size int) ([]byte, error) {
	return (*Fonts)(nil).Render(text, Image{Format: FormatPNG, Size: size})
}

func TestPNG(t *testing.T) {
	urls := []string{"http://weixin.qq.com/q/02abcdEfGh1e31000000007s", "http://weixin.qq.com/q/" + strings.Repeat("x", 120)}
	for _, u := range urls {
		for _, size := range []int{96, 128, 512, 2048} {
			b, err := PNG(u, size)
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if img.Bounds().Dx() != size || img.Bounds().Dy() != size {
				t.Errorf("%d: %v", size, img.Bounds())
			}
			if got, err := qr.Decode(img); err != nil || got != u {
				t.Errorf("%d px: decodes to %q, %v", size, got, err)
			}
		}
	}
	// Too dense for the size asked: larger, never unreadable.
	b, _ := PNG("http://weixin.qq.com/q/"+strings.Repeat("y", 300), MinSize)
	img, _ := png.Decode(bytes.NewReader(b))
	if img.Bounds().Dx() < MinSize {
		t.Errorf("dense code: %v", img.Bounds())
	}
}

func BenchmarkPNG(b *testing.B) {
	for b.Loop() {
		if _, err := PNG("http://weixin.qq.com/q/02abcdEfGh1e31000000007s", DefaultSize); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"scene":"poster_a","permanent":false,"expire_seconds":2592000,"label":"Spring posters"}`))
	f.Add([]byte(`{"scene":"123","permanent":true}`))
	f.Add([]byte(`{"scene":"a","expire_seconds":1e99}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRequest(bytes.NewReader(body))
		if err != nil {
			return
		}
		if req.Scene == "" || len(req.Scene) > 256 || (!req.Permanent && (req.ExpireSeconds < MinExpireSeconds || req.ExpireSeconds > MaxExpireSeconds)) ||
			(req.Permanent && req.ExpireSeconds != 0) || checkText("label", req.Label, MaxLabelChars) != nil || checkText("group", req.Group, MaxGroupChars) != nil {
			t.Errorf("accepted %+v", req)
		}
	})
}

// Many codes of one scene at once are each stored (keys never collide).
func TestSameSceneAtOnce(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"same"}`, nil); code != 201 {
				t.Errorf("create: %d", code)
			}
		}()
	}
	wg.Wait()
	var list struct{ QRCodes []Listed }
	if do(t, h, "GET", "/api/qrcodes", "", &list); len(list.QRCodes) != 20 {
		t.Errorf("%d codes stored, want 20", len(list.QRCodes))
	}
}

// Scenes whose text is path syntax: each has its own code, its one-code URL
// and image_url reach it, and nothing else.
func TestEveryScene(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	scenes := []string{".", "..", "a/../b", "x/./y", "a/b", "%", "?x", "#h", "image", "a.b", "%2E", "码 space"}
	codes := map[string]Code{}
	for _, scene := range scenes {
		body, _ := json.Marshal(map[string]string{"scene": scene})
		var c Code
		if code := do(t, h, "POST", "/api/qrcodes", string(body), &c); code != 201 || c.Scene != scene {
			t.Fatalf("create %q: %d %+v", scene, code, c)
		}
		codes[scene] = c
	}
	for _, scene := range scenes {
		c := codes[scene]
		path, query, _ := strings.Cut(c.ImageURL, "?")
		if seg := strings.TrimSuffix(strings.TrimPrefix(path, "/api/qrcodes/"), "/image"); strings.ContainsAny(seg, "/.?#") {
			t.Errorf("%q: image_url %q: the segment is not escaped", scene, c.ImageURL)
		}
		if query != "ticket="+url.QueryEscape(c.Ticket) {
			t.Errorf("%q: image_url %q", scene, c.ImageURL)
		}
		decodes(t, get(h, c.ImageURL), c.URL)
		decodes(t, get(h, path), c.URL) // the latest, without the ticket
		one := strings.TrimSuffix(path, "/image")
		if one != SceneURL(scene) {
			t.Errorf("%q: %s is not SceneURL's %s", scene, one, SceneURL(scene))
		}
		var l Listed
		if w := get(h, one); w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &l) != nil || l.Scene != scene || l.Ticket != c.Ticket {
			t.Errorf("%q: GET %s = %d %s", scene, one, w.Code, w.Body.String())
		}
	}
	// A dot segment sent as such is that scene too (a client that does
	// not clean paths, as Go's).
	var l Listed
	if w := get(h, "/api/qrcodes/.."); w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &l) != nil || l.Scene != ".." {
		t.Errorf("GET /api/qrcodes/.. = %d %s", w.Code, w.Body.String())
	}
	decodes(t, get(h, "/api/qrcodes/./image"), codes["."].URL)
}

// Each code's image_url names that code: two codes of one scene have two
// images, each cacheable for good; the scene's URL without a ticket is its
// latest code, revalidated every time.
func TestImageOfEachCode(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	var first, second, other Code
	do(t, h, "POST", "/api/qrcodes", `{"scene":"poster_a"}`, &first)
	e.clock.Add(time.Second)
	do(t, h, "POST", "/api/qrcodes", `{"scene":"poster_a","expire_seconds":3600}`, &second)
	do(t, h, "POST", "/api/qrcodes", `{"scene":"poster_b"}`, &other)
	if first.ImageURL == second.ImageURL {
		t.Fatalf("two codes of one scene share image_url %s", first.ImageURL)
	}
	for _, c := range []Code{first, second} {
		w := get(h, c.ImageURL+"&size=200")
		decodes(t, w, c.URL)
		if cc := w.Header().Get("Cache-Control"); !strings.Contains(cc, "immutable") || !strings.Contains(cc, "max-age=31536000") {
			t.Errorf("%s: Cache-Control %q", c.ImageURL, cc)
		}
	}
	w := get(h, "/api/qrcodes/poster_a/image")
	decodes(t, w, second.URL)
	if cc := w.Header().Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("the latest: Cache-Control %q", cc)
	}
	// Another scene's ticket is not this scene's code.
	if w := get(h, "/api/qrcodes/poster_a/image?ticket="+url.QueryEscape(other.Ticket)); w.Code != 404 {
		t.Errorf("another scene's ticket: %d", w.Code)
	}
	// Every answer carries each code's own image_url.
	var list struct{ QRCodes []Listed }
	do(t, h, "GET", "/api/qrcodes", "", &list)
	for _, l := range list.QRCodes {
		if l.ImageURL != ImageURL(accounts.DefaultID, l.Scene, l.Ticket) {
			t.Errorf("listed %s: image_url %s", l.Ticket, l.ImageURL)
		}
	}
	var l Listed
	if do(t, h, "GET", "/api/qrcodes/poster_a", "", &l); l.ImageURL != second.ImageURL {
		t.Errorf("GET one: image_url %s, want %s", l.ImageURL, second.ImageURL)
	}
	// A permanent code asked again comes back with its own image_url.
	var p1, p2 Code
	do(t, h, "POST", "/api/qrcodes", `{"scene":"perm","permanent":true}`, &p1)
	if do(t, h, "POST", "/api/qrcodes", `{"scene":"perm","permanent":true}`, &p2); p2.ImageURL != ImageURL(accounts.DefaultID, "perm", p1.Ticket) {
		t.Errorf("permanent again: image_url %s", p2.ImageURL)
	}
}

// A temporary code's record goes 7 days after its expiry: listed as
// expired until then, deleted from the bucket by the next read after.
// Permanent codes and codes still inside the 7 days stay.
func TestExpiredCodesDeleted(t *testing.T) {
	e := newEnv(t)
	svc := e.service(t, "p", false)
	h := svc.Handler("")
	var old, recent, perm Code
	do(t, h, "POST", "/api/qrcodes", `{"scene":"old","expire_seconds":60}`, &old)
	do(t, h, "POST", "/api/qrcodes", `{"scene":"perm","permanent":true}`, &perm)
	e.clock.Add(2 * 24 * time.Hour)
	do(t, h, "POST", "/api/qrcodes", `{"scene":"old","expire_seconds":60}`, &recent)
	e.clock.Add(Retention - 24*time.Hour + 2*time.Minute) // old: 7 d 1 min past; recent: 5 d
	kv, err := svc.bucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	keys := func() []string {
		lister, err := kv.ListKeys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for k := range lister.Keys() {
			out = append(out, k)
		}
		return out
	}
	if n := len(keys()); n != 3 {
		t.Fatalf("%d keys before the list, want 3", n)
	}
	var list struct{ QRCodes []Listed }
	do(t, h, "GET", "/api/qrcodes", "", &list)
	if len(list.QRCodes) != 2 || list.QRCodes[0].Ticket != recent.Ticket || !list.QRCodes[0].Expired || list.QRCodes[1].Ticket != perm.Ticket {
		t.Errorf("list = %+v, want the recent expired code and the permanent one", list.QRCodes)
	}
	if k := keys(); len(k) != 2 || !slices.Contains(k, permKey(accounts.DefaultID, "perm")) {
		t.Errorf("keys after the list: %v, want the old code's gone", k)
	}
	if w := get(h, "/api/qrcodes/old/image?ticket="+url.QueryEscape(old.Ticket)); w.Code != 404 {
		t.Errorf("the deleted code's image: %d", w.Code)
	}
	// A month on, the recent one goes too; the permanent code stays.
	e.clock.Add(30 * 24 * time.Hour)
	var l Listed
	if code := do(t, h, "GET", "/api/qrcodes/old", "", &l); code != 404 {
		t.Errorf("GET old = %d %+v", code, l)
	}
	if k := keys(); len(k) != 1 {
		t.Errorf("keys: %v, want the permanent code only", k)
	}
}

// Before any analytics ran (no totals bucket), the codes are listed with
// zero counts, not refused.
func TestCountsWithoutTotalsBucket(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false, func(o *Options) { o.Scenes = FromStore(stats.OpenOnUse(o.Conn)) }).Handler("")
	var c Code
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"first"}`, &c); code != 201 {
		t.Fatalf("create: %d", code)
	}
	var list struct{ QRCodes []Listed }
	if code := do(t, h, "GET", "/api/qrcodes", "", &list); code != 200 || len(list.QRCodes) != 1 || list.QRCodes[0].Scans != 0 {
		t.Errorf("list = %d %+v", code, list)
	}
	var l Listed
	if code := do(t, h, "GET", "/api/qrcodes/first", "", &l); code != 200 || l.Ticket != c.Ticket {
		t.Errorf("GET one = %d %+v", code, l)
	}
}

// A permanent code reserved by another process that does not finish in
// the request's time: 502 that says so, not that WeChat did not answer.
func TestWaitOnReservationTimesOut(t *testing.T) {
	e := newEnv(t)
	svc := e.service(t, "p", false, func(o *Options) { o.RequestTimeout = 200 * time.Millisecond })
	h := svc.Handler("")
	kv, err := svc.bucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pending, _ := json.Marshal(record{Code: Code{Scene: "held", Permanent: true}, Pending: true, Holder: "elsewhere"})
	if _, err := kv.Create(context.Background(), permKey(accounts.DefaultID, "held"), pending); err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	code := do(t, h, "POST", "/api/qrcodes", `{"scene":"held","permanent":true}`, &out)
	msg, _ := out["error"].(string)
	if code != 502 || !strings.Contains(msg, "another wxgate process") || strings.Contains(msg, "did not answer") {
		t.Errorf("= %d %v", code, out)
	}
	if n := e.fake.Calls().Calls[wechatapitest.QRCodeCreate]; n != 0 {
		t.Errorf("WeChat asked %d times", n)
	}
}

// Finding N6: a reservation left by a host whose clock ran ahead ("until"
// 2027, as an older version wrote it) is taken over once it has not moved
// for Reservation on this process's clock, and the code is made.
func TestReservationOfAClockAheadN6(t *testing.T) {
	e := newEnv(t)
	svc := e.service(t, "p", false, func(o *Options) { o.Reservation = 300 * time.Millisecond })
	kv, err := svc.bucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	planted := `{"scene":"held","permanent":true,"pending":true,"holder":"wxgate-worker/DEADHOST","until":"2027-12-05T00:00:00Z"}`
	if _, err := kv.Create(context.Background(), permKey(accounts.DefaultID, "held"), []byte(planted)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var c Code
	if code := do(t, svc.Handler(""), "POST", "/api/qrcodes", `{"scene":"held","permanent":true}`, &c); code != 201 || c.Ticket == "" {
		t.Fatalf("= %d %+v, want the code made", code, c)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("made after %v, while the reservation still held", took)
	}
	if n := e.fake.Calls().Calls[wechatapitest.QRCodeCreate]; n != 1 {
		t.Errorf("WeChat asked %d times", n)
	}
}

// Options are checked: a service without its connection, totals or logger
// is refused when made, not when first used.
func TestNewValidates(t *testing.T) {
	e := newEnv(t)
	nc := natstest.Connect(t, e.ns)
	scenes := func(context.Context, string) (Totals, error) { return e.counts, nil }
	clients := func(string) (*wechatapi.Client, error) { return nil, wechatapi.ErrOff }
	for name, o := range map[string]Options{
		"no Conn":    {Clients: clients, Scenes: scenes, Logger: slog.New(slog.DiscardHandler)},
		"no Clients": {Conn: nc, Scenes: scenes, Logger: slog.New(slog.DiscardHandler)},
		"no Scenes":  {Conn: nc, Clients: clients, Logger: slog.New(slog.DiscardHandler)},
		"no Logger":  {Conn: nc, Clients: clients, Scenes: scenes},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
