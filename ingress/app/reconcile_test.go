package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// /api/reconciliation on both kinds of admin listener: standalone, whose
// workers run the daily fetch at start, unasked; and a distributed
// ingress, which completes the rows asked for itself. Two days ago is
// counted (no events: 0) and fetched (the fake's zeros).
func TestReconciliationServed(t *testing.T) {
	for _, standalone := range []bool{true, false} {
		fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_app", Secret: "app-secret"})
		ts := httptest.NewServer(fake)
		t.Cleanup(ts.Close)
		cfg := config.Defaults()
		cfg.Token, cfg.AppID, cfg.AppSecret, cfg.APIBase = "app-test-token", "wx_app", "app-secret", ts.URL
		if !standalone {
			srv := natstest.RunServer(t)
			cfg.NATSURL = "nats://" + srv.Token + "@" + strings.TrimPrefix(srv.ClientURL(), "nats://")
		}
		a := apptest.Start(t, app.Options{Config: cfg, Standalone: standalone})
		if standalone {
			wait.For(t, wait.Short, wait.Every, func() error {
				if c := fake.Calls().Calls; c[wechatapitest.UserSummary] != 1 || c[wechatapitest.InterfaceSummary] != 1 {
					return fmt.Errorf("the daily run at start: the datacube asked %v", c)
				}
				return nil
			})
		}
		day := time.Now().In(cfg.AnalyticsZone).AddDate(0, 0, -2).Format(time.DateOnly)
		base := "http://" + a.AdminAddr() + "/api/reconciliation?from=" + day + "&to=" + day
		var out struct {
			Days []map[string]any `json:"days"`
		}
		resp, err := http.Get(base)
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(out.Days) != 1 || out.Days[0]["callbacks"] != 0.0 || out.Days[0]["wechat_callback_count"] != 0.0 {
			t.Errorf("standalone %v: %d %v", standalone, resp.StatusCode, out)
		}
		if c := fake.Calls().Calls; c[wechatapitest.UserSummary] != 1 {
			t.Errorf("standalone %v: getusersummary asked %d times, want once", standalone, c[wechatapitest.UserSummary])
		}
		resp, err = http.Get(base + "&account=nope")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("standalone %v: unknown account %d", standalone, resp.StatusCode)
		}
	}
}
