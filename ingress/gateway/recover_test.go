package gateway

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/accounts"
)

// A bug of ours that panics must still answer WeChat "success", logged with
// its stack, and never take the process down.
func TestRecoverAnswersSuccess(t *testing.T) {
	gin.SetMode(gin.TestMode)
	var logs strings.Builder
	accts, err := accounts.Start(accounts.Options{Default: accounts.Account{Token: "t"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{
		Accounts: accts, Conn: &nats.Conn{}, ReplyTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	g.engine.GET("/boom", func(*gin.Context) { panic("boom") })
	srv := httptest.NewServer(g.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/boom")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "success" {
		t.Errorf("panic answered %d %q, want 200 success", resp.StatusCode, body)
	}
	if got := testutil.ToFloat64(g.metrics.panics); got != 1 {
		t.Errorf("panics = %v", got)
	}
	if !strings.Contains(logs.String(), "panic in handler") || !strings.Contains(logs.String(), "stack=") {
		t.Errorf("panic not logged with its stack: %s", logs.String())
	}
}
