package app_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
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

// Standalone's late reply: a message answered "success" without its reply
// (REPLY_TIMEOUT too short for any) gets it through the customer-service
// API.
func TestStandaloneLateReply(t *testing.T) {
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_app", Secret: "app-secret", NoWindows: true})
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	cfg := config.Defaults()
	cfg.Token, cfg.AppID, cfg.AppSecret, cfg.APIBase = "app-test-token", "wx_app", "app-secret", ts.URL
	cfg.ReplyTimeout = time.Nanosecond
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})

	s := wechat.Sender{Token: cfg.Token}
	msg := fmt.Sprintf(`<xml><ToUserName>gh</ToUserName><FromUserName>o_late</FromUserName><CreateTime>%d</CreateTime><MsgType>text</MsgType><Content>late one</Content><MsgId>42</MsgId></xml>`, time.Now().Unix())
	code, body, err := s.Post(http.DefaultClient, "http://"+a.HTTPAddr()+"/wechat", []byte(msg), time.Now(), "n")
	if err != nil || code != 200 || string(body) != "success" {
		t.Fatalf("POST = %d %q %v, want success", code, body, err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if m := fake.Calls().Messages; len(m) != 1 || m[0].ToUser != "o_late" || !strings.Contains(m[0].Content, "late one") {
			return fmt.Errorf("customer-service messages %v, want the reply to o_late", m)
		}
		return nil
	})
}
