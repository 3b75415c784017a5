package app_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// Standalone serves the QR-code API and /ui/ beside /api/scenes, against
// the fake WeChat API; without WECHAT_APPSECRET the QR routes answer 503
// and the process is ready all the same.
func TestStandaloneQRCodes(t *testing.T) {
	fake := httptest.NewServer(wechatapitest.New(wechatapitest.Options{AppID: "wx_app", Secret: "app-secret"}))
	t.Cleanup(fake.Close)
	for _, on := range []bool{true, false} {
		cfg := config.Defaults()
		cfg.Token = "app-test-token"
		if on {
			cfg.AppID, cfg.AppSecret, cfg.APIBase = "wx_app", "app-secret", fake.URL
		}
		a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})
		base := "http://" + a.AdminAddr()
		resp, err := http.Post(base+"/api/qrcodes", "application/json", strings.NewReader(`{"scene":"poster_a"}`))
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		want := 503
		if on {
			want = 201
		}
		if resp.StatusCode != want {
			t.Errorf("secret %v: POST /api/qrcodes = %d %v, want %d", on, resp.StatusCode, out, want)
		}
		if err := nettest.CheckStatus(base+"/ui/", 200); err != nil {
			t.Error(err)
		}
		// Parts set themselves up in the background (late replies' consumer
		// among them): ready comes, not at once.
		wait.For(t, wait.Short, wait.Every, func() error { return nettest.CheckStatus(base+"/readyz", 200) })
		if on {
			if v := metricstest.Scrape(t, base+"/metrics", `wxgate_wechat_api_calls_total{account="default",api="qrcode_create",outcome="ok"}`); v != 1 {
				t.Errorf("qrcode_create ok = %v", v)
			}
		}
	}
}
