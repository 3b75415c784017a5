package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestEndpoints(t *testing.T) {
	var readyErr error
	reg := NewRegistry()
	srv := httptest.NewServer(NewMux(Options{Gatherer: reg, Ready: func() error { return readyErr }}))
	defer srv.Close()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d while ready", code)
	}
	readyErr = errors.New("nats: RECONNECTING")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "RECONNECTING") {
		t.Errorf("/readyz = %d %q while not ready", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Errorf("/metrics = %d, missing runtime or process metrics", code)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestProbe(t *testing.T) {
	var readyErr error
	srv := httptest.NewServer(NewMux(Options{Gatherer: NewRegistry(), Ready: func() error { return readyErr }}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if err := Probe(addr, time.Second); err != nil {
		t.Errorf("ready process: %v", err)
	}
	readyErr = errors.New("nats: CLOSED")
	if err := Probe(addr, time.Second); err == nil || !strings.Contains(err.Error(), "CLOSED") {
		t.Errorf("unready process: %v", err)
	}
	srv.Close()
	if err := Probe(addr, time.Second); err == nil {
		t.Error("closed port probed healthy")
	}
	if err := Probe("nonsense", time.Second); err == nil {
		t.Error("bad address accepted")
	}
}

func TestPprofOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		srv := httptest.NewServer(NewMux(Options{Gatherer: NewRegistry(), Pprof: on}))
		resp, err := http.Get(srv.URL + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if (resp.StatusCode == 200) != on {
			t.Errorf("pprof=%v: /debug/pprof/ = %d", on, resp.StatusCode)
		}
		srv.Close()
	}
}

// RequireToken takes the bearer token, or the page's session cookie on a
// read or on a change the page's own script sends (same-origin, a JSON or
// CSV body); a cross-site request carrying the cookie is refused.
func TestRequireToken(t *testing.T) {
	h := RequireToken("s3cret", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	now := time.Now()
	valid, expires := NewSession("s3cret", now)
	if d := expires.Sub(now); d < SessionTTL-time.Second || d > SessionTTL {
		t.Errorf("a session lasts %v, want %v", d, SessionTTL)
	}
	cookie := func(v string) *http.Cookie { return &http.Cookie{Name: SessionCookie, Value: v} }
	exp, mac, _ := strings.Cut(valid, ".")
	// The v1 cookie: a constant HMAC of the token, valid forever.
	v1 := hmac.New(sha256.New, []byte("s3cret"))
	v1.Write([]byte("wxgate admin session v1"))
	jsonType, csv, text := "application/json; charset=utf-8", "text/csv", "text/plain"
	same := map[string]string{"Sec-Fetch-Site": "same-origin"}
	tests := []struct {
		name, method string
		bearer       string
		cookie       *http.Cookie
		contentType  string
		headers      map[string]string
		want         int
	}{
		{"bearer", "POST", "s3cret", nil, text, nil, 204},
		{"cookie on GET", "GET", "", cookie(valid), "", nil, 204},
		{"cookie on HEAD", "HEAD", "", cookie(valid), "", nil, 204},
		{"cookie on a POST that says nothing of its origin", "POST", "", cookie(valid), jsonType, nil, 401},
		{"cookie on the page's JSON POST", "POST", "", cookie(valid), jsonType, same, 204},
		{"cookie on the page's JSON PUT, by Origin", "PUT", "", cookie(valid), jsonType, map[string]string{"Origin": "http://example.com"}, 204},
		{"cookie on the page's CSV POST", "POST", "", cookie(valid), csv, same, 204},
		{"cookie on a same-origin text/plain POST", "POST", "", cookie(valid), text, same, 401},
		{"cookie on a same-origin form POST", "POST", "", cookie(valid), "application/x-www-form-urlencoded", same, 401},
		{"cookie on a cross-site JSON POST", "POST", "", cookie(valid), jsonType, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 401},
		{"cookie on a same-site JSON POST (another origin)", "POST", "", cookie(valid), jsonType, map[string]string{"Sec-Fetch-Site": "same-site"}, 401},
		{"cookie with another Origin", "POST", "", cookie(valid), jsonType, map[string]string{"Origin": "http://evil.example"}, 401},
		{"cookie, Fetch metadata cross-site but Origin faked", "POST", "", cookie(valid), jsonType, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://example.com"}, 401},
		{"wrong token's cookie", "GET", "", cookie(SessionValue("other", expires)), "", nil, 401},
		{"wrong token's cookie on the page's POST", "POST", "", cookie(SessionValue("other", expires)), jsonType, same, 401},
		{"the token as cookie", "GET", "", cookie("s3cret"), "", nil, 401},
		{"expired a second ago", "GET", "", cookie(SessionValue("s3cret", now.Add(-time.Second))), "", nil, 401},
		{"expiry moved later, same MAC", "GET", "", cookie(strconv.FormatInt(now.Add(48*time.Hour).Unix(), 10) + "." + mac), "", nil, 401},
		{"MAC of another expiry", "GET", "", cookie(exp + "." + sessionMAC("s3cret", "1")), "", nil, 401},
		{"no expiry", "GET", "", cookie(mac), "", nil, 401},
		{"the old constant cookie", "GET", "", cookie(hex.EncodeToString(v1.Sum(nil))), "", nil, 401},
		{"nothing", "GET", "", nil, "", nil, 401},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, "http://example.com/api/qrcodes", strings.NewReader("{}"))
		if tt.bearer != "" {
			r.Header.Set("Authorization", "Bearer "+tt.bearer)
		}
		if tt.cookie != nil {
			r.AddCookie(tt.cookie)
		}
		if tt.contentType != "" {
			r.Header.Set("Content-Type", tt.contentType)
		}
		for k, v := range tt.headers {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, w.Code, tt.want)
		}
	}
	if strings.Contains(valid, "s3cret") {
		t.Error("the session value holds the token")
	}
}

// Routes added with HandleUncleaned get the path as sent: dot segments,
// escaped dots and slashes reach them, and the ServeMux neither cleans
// nor redirects them; every other path is the ServeMux's.
func TestUncleanedRoutes(t *testing.T) {
	mux := NewMux(Options{Gatherer: NewRegistry()})
	mux.HandleUncleaned("/api/things", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "raw "+r.URL.EscapedPath())
	}))
	mux.HandleFunc("GET /api/things2", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "mux") })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tt := range []struct{ path, want string }{
		{"/api/things", "raw /api/things"},
		{"/api/things/", "raw /api/things/"},
		{"/api/things/./image", "raw /api/things/./image"},
		{"/api/things/../image", "raw /api/things/../image"},
		{"/api/things/%2E/image", "raw /api/things/%2E/image"},
		{"/api/things/a%2F..%2Fb", "raw /api/things/a%2F..%2Fb"},
		{"/api/things//x", "raw /api/things//x"},
		{"/api/things2", "mux"},
		{"/healthz", "ok\n"},
	} {
		resp, err := c.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != tt.want {
			t.Errorf("GET %s = %d %q, want 200 %q", tt.path, resp.StatusCode, b, tt.want)
		}
	}
}

// An admin API open to other hosts without a token is said at start; on
// loopback, or with a token, nothing is.
func TestWarnIfOpen(t *testing.T) {
	for _, c := range []struct {
		addr, token string
		warn        bool
	}{
		{":8081", "", true},
		{"0.0.0.0:8081", "", true},
		{"10.0.0.5:8081", "", true},
		{"127.0.0.1:8081", "", false},
		{"localhost:8081", "", false},
		{"[::1]:8081", "", false},
		{":8081", "secret-admin-token", false},
	} {
		var buf strings.Builder
		WarnIfOpen(slog.New(slog.NewTextHandler(&buf, nil)), c.addr, c.token)
		if got := strings.Contains(buf.String(), "ADMIN_TOKEN is not set"); got != c.warn {
			t.Errorf("%s with token %q: warned %v, want %v (%q)", c.addr, c.token, got, c.warn, buf.String())
		}
		if c.token != "" && strings.Contains(buf.String(), c.token) {
			t.Errorf("the token is in the log: %q", buf.String())
		}
	}
}

// The routes callers add are guarded against what a web page can make a
// browser send (the review's reproductions: a cross-site text/plain form
// to POST /api/qrcodes, a cross-site rebuild, a cross-site /ui/ form, and
// DNS rebinding); the probes stay open to every Host; curl and scripts,
// and the page's own same-origin requests, pass.
func TestGuardedRoutes(t *testing.T) {
	var logs strings.Builder
	routes := func(token string) *Mux {
		mux := NewMux(Options{Gatherer: NewRegistry(), Pprof: true, Token: token, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		api := http.NewServeMux()
		api.HandleFunc("GET /api/scenes", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) })
		api.HandleFunc("POST /api/analytics/rebuild", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(202) })
		mux.Handle("/api/", RequireToken(token, api))
		// Mounted ahead of the ServeMux, as the QR codes are.
		mux.HandleUncleaned("/api/qrcodes", RequireToken(token, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(201) })))
		ui := http.NewServeMux()
		ui.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(200) })
		ui.HandleFunc("POST /ui/qrcodes", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(303) })
		mux.Handle("/ui/", ui)
		return mux
	}
	const self = "127.0.0.1:8081"
	crossSite := map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
	session, _ := NewSession("s3cret", time.Now())
	withCookie := func(h map[string]string) map[string]string {
		out := map[string]string{"Cookie": SessionCookie + "=" + session}
		maps.Copy(out, h)
		return out
	}
	sameOrigin := map[string]string{"Origin": "http://" + self, "Sec-Fetch-Site": "same-origin"}
	type req struct {
		name, method, path, host, body, contentType string
		headers                                     map[string]string
		bearer                                      bool
		want                                        int
	}
	open := []req{
		{"cross-site text/plain form to /api/qrcodes", "POST", "/api/qrcodes", self, `{"scene":"csrf_evil","permanent":true,"label":"a=b"}` + "\r\n", "text/plain", crossSite, false, 403},
		{"cross-site rebuild, no body", "POST", "/api/analytics/rebuild", self, "", "text/plain", crossSite, false, 403},
		{"cross-site /ui/ form", "POST", "/ui/qrcodes", self, "scene=ui_csrf", "application/x-www-form-urlencoded", crossSite, false, 403},
		{"cross-site by Origin alone", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "application/json", map[string]string{"Origin": "https://evil.example"}, false, 403},
		// An old browser that sends no Origin or Fetch metadata still sends
		// its agent: a simple body from it is refused.
		{"old browser, text/plain body", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "text/plain", map[string]string{"User-Agent": "Mozilla/5.0 (X11)"}, false, 415},
		{"old browser, form body", "POST", "/api/qrcodes", self, "scene=a", "application/x-www-form-urlencoded", map[string]string{"User-Agent": "Mozilla/4.0"}, false, 415},
		{"a page's Referer, no Content-Type", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "", map[string]string{"Referer": "https://evil.example/x"}, false, 415},
		// Scripts and curl -d send no browser's headers: their bodies pass.
		{"curl -d (a form's type)", "POST", "/api/qrcodes", self, `{"scene":"b"}`, "application/x-www-form-urlencoded", map[string]string{"User-Agent": "curl/8.5.0"}, false, 201},
		{"a script, no Content-Type", "POST", "/api/qrcodes", self, `{"scene":"c"}`, "", nil, false, 201},
		{"a CSV body", "POST", "/api/qrcodes", self, `{"scene":"d"}`, "text/csv", map[string]string{"User-Agent": "Mozilla/5.0"}, false, 201},
		{"same-origin browser POST", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "application/json", sameOrigin, false, 201},
		{"same-origin /ui/ form", "POST", "/ui/qrcodes", self, "scene=a", "application/x-www-form-urlencoded", sameOrigin, false, 303},
		{"curl POST, application/json", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "application/json; charset=utf-8", nil, false, 201},
		{"curl rebuild, no body", "POST", "/api/analytics/rebuild", self, "", "", nil, false, 202},
		{"cross-site GET (changes nothing; the browser hides the answer)", "GET", "/api/scenes", self, "", "", crossSite, false, 200},
		{"DNS rebinding: the API by name", "GET", "/api/scenes", "rebind.evil.example:8081", "", "", nil, false, 403},
		{"DNS rebinding: the page by name", "GET", "/ui/", "rebind.evil.example", "", "", nil, false, 403},
		{"DNS rebinding: pprof by name", "GET", "/debug/pprof/", "rebind.evil.example:8081", "", "", nil, false, 403},
		{"an unknown route by name", "GET", "/nothing", "rebind.evil.example:8081", "", "", nil, false, 403},
		{"metrics by name", "GET", "/metrics", "prometheus-target:8081", "", "", nil, false, 200},
		{"healthz by name", "GET", "/healthz", "ingress:8081", "", "", nil, false, 200},
		{"readyz by name", "GET", "/readyz", "ingress:8081", "", "", nil, false, 200},
		{"localhost", "GET", "/api/scenes", "localhost:8081", "", "", nil, false, 200},
		{"LOCALHOST, no port", "GET", "/ui/", "LOCALHOST", "", "", nil, false, 200},
		{"IPv6 loopback", "GET", "/api/scenes", "[::1]:8081", "", "", nil, false, 200},
		{"a private address", "GET", "/debug/pprof/", "10.0.0.5:8081", "", "", nil, false, 200},
	}
	withToken := []req{
		{"by name with the token", "GET", "/api/scenes", "admin.example:8081", "", "", nil, true, 200},
		{"by name without the token", "GET", "/api/scenes", "admin.example:8081", "", "", nil, false, 401},
		{"curl POST with the token, application/json", "POST", "/api/qrcodes", "admin.example:8081", `{"scene":"a"}`, "application/json", nil, true, 201},
		{"curl POST with the token, text/plain", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "text/plain", nil, true, 201},
		{"a browser with the token, text/plain", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "text/plain", map[string]string{"User-Agent": "Mozilla/5.0"}, true, 415},
		{"cross-site POST even with the token", "POST", "/api/analytics/rebuild", self, "", "", crossSite, true, 403},
		{"the page's JSON POST with its cookie", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "application/json", withCookie(sameOrigin), false, 201},
		{"the page's cookie, cross-site JSON POST", "POST", "/api/qrcodes", self, `{"scene":"a"}`, "application/json", withCookie(crossSite), false, 403},
		{"the page's cookie, same-origin text/plain", "POST", "/api/analytics/rebuild", self, `x`, "text/plain", withCookie(sameOrigin), false, 415},
		{"the page's cookie, a script's POST", "POST", "/api/analytics/rebuild", self, "", "", withCookie(nil), false, 401},
		{"the page's cookie on a read", "GET", "/api/scenes", self, "", "", withCookie(nil), false, 200},
	}
	for token, cases := range map[string][]req{"": open, "s3cret": withToken} {
		mux := routes(token)
		for _, tt := range cases {
			logs.Reset()
			r := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			r.Host = tt.host
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			for k, v := range tt.headers {
				r.Header.Set(k, v)
			}
			if tt.bearer {
				r.Header.Set("Authorization", "Bearer "+token)
			}
			w := httptest.NewRecorder()
			mux.ServeHTTP(w, r)
			if w.Code != tt.want {
				t.Errorf("token %q, %s: %s %s = %d %s, want %d", token, tt.name, tt.method, tt.path, w.Code, w.Body, tt.want)
				continue
			}
			if w.Code == 403 || w.Code == 415 {
				var body struct{ Error string }
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error == "" {
					t.Errorf("%s: refused with %q, want a JSON error", tt.name, w.Body)
				}
				if strings.Contains(tt.name, "DNS rebinding") && !strings.Contains(body.Error, "ADMIN_TOKEN") {
					t.Errorf("%s: %q does not say to set ADMIN_TOKEN", tt.name, body.Error)
				}
				if !strings.Contains(logs.String(), "request refused") {
					t.Errorf("%s: refused without a log line", tt.name)
				}
			}
		}
	}
}
