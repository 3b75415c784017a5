package app_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Standalone mode in process (under the race detector, unlike the e2e
// binaries): embedded NATS, workers and both listeners from one Start.
func TestStandaloneInProcess(t *testing.T) {
	cfg := config.Defaults()
	cfg.Token = "app-test-token"
	cfg.EncodingAESKey, cfg.AppID = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx_app_test"
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})

	cipher, _ := wechat.NewCipher(cfg.EncodingAESKey, cfg.AppID)
	s := wechat.Sender{Token: cfg.Token, Cipher: cipher}
	msg := `<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_7</EventKey></xml>`
	code, plain, err := s.Post(http.DefaultClient, "http://"+a.HTTPAddr()+"/wechat", []byte(msg), time.Now(), "n")
	if err != nil || code != 200 || !strings.Contains(string(plain), "场景值:7") {
		t.Fatalf("safe-mode subscribe = %d %q %v", code, plain, err)
	}
	// The workers were asked in process: their service on the bus
	// counted no request.
	subject, err := micro.ControlSubject(micro.StatsVerb, bus.ServiceName, "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := a.WorkerConn().Request(subject, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(resp.Data, &stats); err != nil {
		t.Fatal(err)
	}
	for _, e := range stats.Endpoints {
		if e.NumRequests != 0 {
			t.Errorf("endpoint %s served %d requests over the bus, want 0 (asked in process)", e.Name, e.NumRequests)
		}
	}

	if err := a.Ready(); err != nil {
		t.Errorf("not ready: %v", err)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := config.Defaults()
	cfg.HTTPAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	if _, err := app.Start(app.Options{Config: cfg, Logger: logger}); err == nil || !strings.Contains(err.Error(), "WECHAT_TOKEN") {
		t.Errorf("no token: %v", err)
	}
	cfg.Token, cfg.EncodingAESKey, cfg.AppID = "t", "too-short", "wx"
	if _, err := app.Start(app.Options{Config: cfg, Logger: logger}); err == nil || !strings.Contains(err.Error(), "WECHAT_ENCODING_AES_KEY") {
		t.Errorf("bad key: %v", err)
	}
}

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}
