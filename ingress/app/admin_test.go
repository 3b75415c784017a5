package app_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// The review's reproductions against standalone without ADMIN_TOKEN (the
// quick start's setup), with the headers a browser sends on a cross-site
// form post: a text/plain POST that would create a permanent code, a
// rebuild, a /ui/ form; and a name a page could make resolve here. Each is
// refused and creates nothing; curl's and the page's own posts go through.
func TestAdminRefusesWhatAPageCanSend(t *testing.T) {
	fake := httptest.NewServer(wechatapitest.New(wechatapitest.Options{AppID: "wx_app", Secret: "app-secret"}))
	t.Cleanup(fake.Close)
	cfg := config.Defaults()
	cfg.Token = "app-test-token"
	cfg.AppID, cfg.AppSecret, cfg.APIBase = "wx_app", "app-secret", fake.URL
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})
	base := "http://" + a.AdminAddr()
	crossSite := map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
	post := func(path, contentType, body string, headers map[string]string, host string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		name, path, contentType, body string
		headers                       map[string]string
		host                          string
		want                          int
	}{
		{"cross-site text/plain POST /api/qrcodes", "/api/qrcodes", "text/plain", `{"scene":"csrf_evil","permanent":true,"label":"a=b"}` + "\r\n", crossSite, "", 403},
		{"cross-site rebuild", "/api/analytics/rebuild", "text/plain", "", crossSite, "", 403},
		{"cross-site /ui/ form", "/ui/qrcodes", "application/x-www-form-urlencoded", "scene=ui_csrf&expire_seconds=3600", crossSite, "", 403},
		{"an old browser's text/plain POST /api/qrcodes", "/api/qrcodes", "text/plain", `{"scene":"plain_text"}`, map[string]string{"User-Agent": "Mozilla/4.0"}, "", 415},
		{"DNS rebinding", "/api/qrcodes", "application/json", `{"scene":"rebound"}`, nil, "rebind.evil.example", 403},
		{"same-origin browser POST", "/api/qrcodes", "application/json", `{"scene":"same_origin"}`, map[string]string{"Origin": base, "Sec-Fetch-Site": "same-origin"}, "", 201},
		{"curl POST", "/api/qrcodes", "application/json", `{"scene":"curl"}`, nil, "", 201},
		{"curl rebuild", "/api/analytics/rebuild", "", "", nil, "", 202},
	} {
		if code := post(tt.path, tt.contentType, tt.body, tt.headers, tt.host); code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, code, tt.want)
		}
	}
	if v := metricstest.Scrape(t, base+"/metrics", `wxgate_wechat_api_calls_total{account="default",api="qrcode_create",outcome="ok"}`); v != 2 {
		t.Errorf("codes created = %v, want 2 (curl's and the page's own)", v)
	}
}
