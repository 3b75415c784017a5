package app_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// awaitClosed reads from c until the server closes it, and fails if that
// takes longer than limit: a request the server gave up on must not hang.
func awaitClosed(t *testing.T, c net.Conn, limit time.Duration) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return string(b)
}

// The WeChat listener refuses what a well-behaved client never sends:
// oversized headers, headers or bodies trickled in (slow-loris), more
// connections than configured. Each is refused cleanly and promptly.
func TestListenerLimits(t *testing.T) {
	cfg := config.Defaults()
	cfg.Token, cfg.MaxConnections = "limits-token", 4
	a := apptest.Start(t, app.Options{Config: cfg, NoBus: true})
	url := "http://" + a.HTTPAddr() + "/wechat"
	sender := wechat.Sender{Token: cfg.Token}
	msg := []byte(`<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>`)

	t.Run("oversized headers", func(t *testing.T) {
		req, _ := sender.NewRequest(url, msg, time.Now(), "n")
		req.Header.Set("X-Padding", strings.Repeat("a", 128<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", resp.StatusCode)
		}
	})

	t.Run("slow headers", func(t *testing.T) {
		if testing.Short() {
			t.Skip("waits out ReadHeaderTimeout")
		}
		c, err := net.Dial("tcp", a.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "POST /wechat HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		// The header is never finished: ReadHeaderTimeout (2s) closes it.
		awaitClosed(t, c, 15*time.Second)
	})

	t.Run("slow body", func(t *testing.T) {
		if testing.Short() {
			t.Skip("waits out ReadTimeout")
		}
		c, err := net.Dial("tcp", a.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req, _ := sender.NewRequest(url, msg, time.Now(), "n")
		if _, err := io.WriteString(c, "POST "+req.URL.RequestURI()+" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<xml>"); err != nil {
			t.Fatal(err)
		}
		// The body never completes: ReadTimeout (5s) ends it with a 4xx
		// or a closed connection, never a 5xx.
		out := awaitClosed(t, c, 20*time.Second)
		if strings.HasPrefix(out, "HTTP/1.1 5") {
			t.Fatalf("answered %q", out)
		}
	})

	t.Run("too many connections", func(t *testing.T) {
		// The connections above are closed by the server as it sees fit;
		// start from none.
		open := func() float64 {
			return metricstest.Scrape(t, "http://"+a.AdminAddr()+"/metrics", "wxgate_ingress_open_connections")
		}
		// The server closes them on its own schedule.
		wait.For(t, wait.Short, wait.Every, func() error {
			if n := open(); n != 0 {
				return fmt.Errorf("%v connections still open", n)
			}
			return nil
		})
		// Four clients each keep an idle keep-alive connection open.
		var clients []*http.Client
		for i := 0; i < cfg.MaxConnections; i++ {
			c := &http.Client{Transport: &http.Transport{}}
			clients = append(clients, c)
			if code := post(t, c, sender, url, msg); code != 200 {
				t.Fatalf("client %d: %d", i, code)
			}
		}
		fifth := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		if code := post(t, fifth, sender, url, msg); code != http.StatusServiceUnavailable {
			t.Fatalf("fifth connection: %d, want 503", code)
		}
		if got := metricstest.Scrape(t, "http://"+a.AdminAddr()+"/metrics", "wxgate_ingress_connections_refused_total"); got != 1 {
			t.Fatalf("refused connections = %v, want 1", got)
		}
		if got := open(); got != float64(cfg.MaxConnections) {
			t.Fatalf("open connections = %v, want %d", got, cfg.MaxConnections)
		}
		// One client goes away: its slot frees and the next is served.
		clients[0].CloseIdleConnections()
		// The server learns of the close asynchronously.
		wait.For(t, wait.Short, wait.Every, func() error {
			if code := post(t, fifth, sender, url, msg); code != 200 {
				return fmt.Errorf("a freed connection slot was not reused: %d", code)
			}
			return nil
		})
	})
}

func post(t *testing.T, c *http.Client, s wechat.Sender, url string, msg []byte) int {
	t.Helper()
	req, err := s.NewRequest(url, msg, time.Now(), "n")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// The admin listener and the WeChat listener serve apart: WeChat's side has
// no metrics or API, the admin side no callback.
func TestListenersAreSeparate(t *testing.T) {
	cfg := config.Defaults()
	cfg.Token = "sep-token"
	a := apptest.Start(t, app.Options{Config: cfg, NoBus: true})
	for _, c := range []struct {
		url  string
		want int
	}{
		{"http://" + a.HTTPAddr() + "/metrics", 404},
		{"http://" + a.HTTPAddr() + "/api/scenes", 404},
		{"http://" + a.HTTPAddr() + "/debug/pprof/", 404},
		{"http://" + a.AdminAddr() + "/wechat", 404},
		{"http://" + a.AdminAddr() + "/metrics", 200},
	} {
		resp, err := http.Get(c.url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET %s = %d, want %d", c.url, resp.StatusCode, c.want)
		}
	}
}

// At the default level nothing sensitive is logged: not the token or the
// AES key, not people's OpenIDs or messages, whether requests succeed or
// are refused.
func TestDefaultLogsHoldNoSecrets(t *testing.T) {
	var mu sync.Mutex
	var logs bytes.Buffer
	cfg := config.Defaults()
	cfg.Token = "tok-SECRET-9f1c"
	cfg.EncodingAESKey, cfg.AppID = "SECRETkeyabcdefghijklmnopqrstuvwxyz01234567", "wx_secret_test"
	logger := slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true, Logger: logger})
	url := "http://" + a.HTTPAddr() + "/wechat"
	cipher, err := wechat.NewCipher(cfg.EncodingAESKey, cfg.AppID)
	if err != nil {
		t.Fatal(err)
	}
	good := wechat.Sender{Token: cfg.Token, Cipher: cipher}
	msg := []byte(`<xml><ToUserName>gh_acct</ToUserName><FromUserName>o_SECRET_OPENID</FromUserName><CreateTime>1</CreateTime>` +
		`<MsgType>text</MsgType><Content>SECRET-MESSAGE-TEXT</Content><MsgId>42</MsgId></xml>`)
	if code, body, err := good.Post(http.DefaultClient, url, msg, time.Now(), "n"); err != nil || code != 200 || !strings.Contains(string(body), "SECRET-MESSAGE-TEXT") {
		t.Fatalf("echo = %d %q %v", code, body, err)
	}
	scan := []byte(`<xml><ToUserName>gh_acct</ToUserName><FromUserName>o_SECRET_OPENID</FromUserName><CreateTime>2</CreateTime>` +
		`<MsgType>event</MsgType><Event>SCAN</Event><EventKey>7</EventKey></xml>`)
	if code, _, err := good.Post(http.DefaultClient, url, scan, time.Now(), "n"); err != nil || code != 200 {
		t.Fatalf("scan = %d %v", code, err)
	}
	bad := wechat.Sender{Token: "wrong-token", Cipher: cipher}
	if code, _, _ := bad.Post(http.DefaultClient, url, msg, time.Now(), "n"); code != 403 {
		t.Fatalf("bad signature = %d", code)
	}
	otherApp, _ := wechat.NewCipher(cfg.EncodingAESKey, "wx_other")
	if code, _, _ := (wechat.Sender{Token: cfg.Token, Cipher: otherApp}).Post(http.DefaultClient, url, msg, time.Now(), "n"); code != 400 {
		t.Fatalf("wrong appid = %d", code)
	}

	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if !strings.Contains(out, `"reason":"signature"`) || !strings.Contains(out, `"reason":"decrypt"`) {
		t.Fatalf("rejections not logged:\n%s", out)
	}
	for _, secret := range []string{cfg.Token, cfg.EncodingAESKey, "o_SECRET_OPENID", "SECRET-MESSAGE-TEXT"} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs contain %q", secret)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// With ADMIN_TOKEN set, the JSON API needs it as a bearer token, while the
// scrape and probe endpoints stay open.
func TestAdminToken(t *testing.T) {
	cfg := config.Defaults()
	cfg.Token, cfg.AdminToken = "api-token-test", "s3cret-admin"
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})
	base := "http://" + a.AdminAddr()
	get := func(path, auth string) int {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, auth string
		want       int
	}{
		{"/api/scenes", "", 401},
		{"/api/scenes", "Bearer wrong", 401},
		{"/api/scenes", "s3cret-admin", 401}, // not as a bearer token
		{"/api/scenes", "Bearer s3cret-admin-and-more", 401},
		{"/api/scenes/poster", "", 401},
		{"/api/scenes", "Bearer s3cret-admin", 200},
		{"/metrics", "", 200},
		{"/healthz", "", 200},
		{"/readyz", "", 200},
	} {
		if got := get(c.path, c.auth); got != c.want {
			t.Errorf("GET %s with %q = %d, want %d", c.path, c.auth, got, c.want)
		}
	}
}
