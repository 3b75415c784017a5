package app_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/ingress/app/apptest"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func scanMsg(openid, scene string) string {
	return "<xml><ToUserName><![CDATA[gh]]></ToUserName><FromUserName><![CDATA[" + openid + "]]></FromUserName>" +
		"<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[SCAN]]></Event>" +
		"<EventKey><![CDATA[" + scene + "]]></EventKey></xml>"
}

// A scene longer than WeChat allows, in ASCII and in Chinese (1 000
// characters are 3 000 bytes), and a 3 100-character admin path: each is
// answered, none becomes a key or subject, and the process keeps serving,
// ready, with its connection open.
func TestLongScenesAndPathsDoNotSilence(t *testing.T) {
	cfg := config.Defaults()
	cfg.Token = "hardening-token"
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})
	s := wechat.Sender{Token: cfg.Token}
	url := "http://" + a.HTTPAddr() + "/wechat"
	for i, scene := range []string{strings.Repeat("z", 5000), strings.Repeat("场", 1000), strings.Repeat("场", 65)} {
		code, body, err := s.Post(http.DefaultClient, url, []byte(scanMsg("o_long", scene)), time.Now(), "n"+string(rune('a'+i)))
		if err != nil || code != 200 || string(body) != "success" {
			t.Fatalf("scan of a %d-byte scene = %d %q %v, want success", len(scene), code, body, err)
		}
	}
	admin := "http://" + a.AdminAddr()
	if code, body := get(t, admin+"/api/scenes/"+strings.Repeat("z", 3100)); code != 400 {
		t.Errorf("long admin path = %d %q, want 400", code, body)
	}
	if code, _ := get(t, admin+"/api/scenes/%ff"); code != 400 {
		t.Errorf("non-UTF-8 admin path = %d, want 400", code)
	}
	// Still serving: a valid scan is counted, a text is echoed.
	code, body, err := s.Post(http.DefaultClient, url, []byte(scanMsg("o_ok", "poster")), time.Now(), "n-ok")
	if err != nil || code != 200 || !strings.Contains(string(body), "poster") {
		t.Fatalf("scan after = %d %q %v", code, body, err)
	}
	text := "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>"
	if code, body, err := s.Post(http.DefaultClient, url, []byte(text), time.Now(), "n-text"); err != nil || code != 200 || !strings.Contains(string(body), "hi") {
		t.Fatalf("text after = %d %q %v", code, body, err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if code, body := get(t, admin+"/api/scenes/poster"); code != 200 || !strings.Contains(body, `"scans":1`) {
			return errors.New(body)
		}
		return nil
	})
	if err := a.Ready(); err != nil {
		t.Errorf("not ready: %v", err)
	}
	if a.WorkerConn().IsClosed() {
		t.Error("the workers' connection closed")
	}
	reg := "http://" + a.AdminAddr() + "/metrics"
	if got := metricstest.Scrape(t, reg, `wxgate_scene_rejected_total{account="default",reason="too_long"}`); got != 3 {
		t.Errorf("scenes rejected as too long = %v, want 3", got)
	}
}

// A connection the server closes for good (here a protocol error) is not
// survived quietly: /readyz says 503 naming it, and the process is told to
// exit non-zero.
func TestClosedConnectionEndsTheProcess(t *testing.T) {
	cfg := config.Defaults()
	cfg.Token = "hardening-token"
	a := apptest.Start(t, app.Options{Config: cfg, Standalone: true})
	// A subject longer than the server's control line: it answers -ERR and
	// closes the connection, which nats.go never reopens.
	_ = a.WorkerConn().Publish(strings.Repeat("x", 5000), nil)
	_ = a.WorkerConn().Flush()
	select {
	case err := <-a.Done():
		if !strings.Contains(err.Error(), "closed") {
			t.Errorf("Done = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the process was not told to end")
	}
	code, body := get(t, "http://"+a.AdminAddr()+"/readyz")
	if code != 503 || !strings.Contains(body, "worker-nats") {
		t.Errorf("/readyz = %d %q, want 503 naming worker-nats", code, body)
	}
}

// Standalone with the development token listens on loopback only, and a
// published token on a non-loopback address is refused.
func TestDevTokenStaysOnLoopback(t *testing.T) {
	cfg := config.Defaults()
	cfg.HTTPAddr, cfg.AdminAddr, cfg.DataDir = ":0", ":0", t.TempDir()
	a, err := app.Start(app.Options{Config: cfg, Standalone: true, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	for _, addr := range []string{a.HTTPAddr(), a.AdminAddr()} {
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Errorf("dev-token standalone listens on %s, want loopback", addr)
		}
	}

	for _, token := range []string{"", app.DevToken, "change-me"} {
		cfg := config.Defaults()
		cfg.Token, cfg.HTTPAddr, cfg.AdminAddr, cfg.DataDir = token, "0.0.0.0:0", "127.0.0.1:0", t.TempDir()
		_, err := app.Start(app.Options{Config: cfg, Standalone: true, Logger: discard})
		if err == nil || !strings.Contains(err.Error(), "HTTP_ADDR") || !strings.Contains(err.Error(), "WECHAT_TOKEN") {
			t.Errorf("token %q on 0.0.0.0: %v, want a refusal naming HTTP_ADDR and WECHAT_TOKEN", token, err)
		}
	}
	// A distributed ingress too, for either listener, before it connects.
	for _, c := range []struct{ token, http, admin, want string }{
		{app.DevToken, "0.0.0.0:0", "127.0.0.1:0", "HTTP_ADDR"},
		{"change-me", "127.0.0.1:0", ":0", "ADMIN_ADDR"},
	} {
		cfg := config.Defaults()
		cfg.Token, cfg.HTTPAddr, cfg.AdminAddr, cfg.NATSURL = c.token, c.http, c.admin, "nats://127.0.0.1:1"
		_, err := app.Start(app.Options{Config: cfg, Logger: discard})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "WECHAT_TOKEN") {
			t.Errorf("distributed, token %q, %s on all interfaces: %v, want a refusal naming %s and WECHAT_TOKEN", c.token, c.want, err, c.want)
		}
	}
}

// The embedded NATS listener requires credentials: generated per start
// (written to DATA_DIR for local tools), or taken from NATS_URL.
func TestEmbeddedNATSRequiresCredentials(t *testing.T) {
	start := func(cfg config.Config, listen string) {
		t.Helper()
		a, err := app.Start(app.Options{Config: cfg, Standalone: true, NATSListen: listen, Logger: discard})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	}
	cfg := config.Defaults()
	cfg.Token, cfg.HTTPAddr, cfg.AdminAddr, cfg.DataDir = "hardening-token", "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	// A token file left world-readable (by hand, an old version) is not
	// written into as it is.
	if err := os.WriteFile(filepath.Join(cfg.DataDir, app.TokenFile), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := "127.0.0.1:" + nettest.FreePort(t)
	start(cfg, listen)
	if nc, err := nats.Connect("nats://" + listen); err == nil {
		nc.Close()
		t.Fatal("connected to the embedded NATS without credentials")
	}
	token, err := os.ReadFile(filepath.Join(cfg.DataDir, app.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(cfg.DataDir, app.TokenFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	nc, err := nats.Connect("nats://"+listen, nats.Token(strings.TrimSpace(string(token))))
	if err != nil {
		t.Fatalf("the generated token: %v", err)
	}
	nc.Close()

	listen2 := "127.0.0.1:" + nettest.FreePort(t)
	cfg.DataDir, cfg.NATSURL = t.TempDir(), "nats://s3cret@"+listen2
	start(cfg, listen2)
	if nc, err := nats.Connect("nats://"+listen2, nats.Token("wrong")); err == nil {
		nc.Close()
		t.Fatal("connected with a wrong token")
	}
	nc, err = nats.Connect("nats://"+listen2, nats.Token("s3cret"))
	if err != nil {
		t.Fatalf("the token from NATS_URL: %v", err)
	}
	nc.Close()
}

// Standalone whose NATS port is taken fails at once, naming the address
// and the flag to change, instead of waiting 30 s for a server that never
// becomes ready.
func TestStandaloneNATSPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := config.Defaults()
	cfg.Token, cfg.HTTPAddr, cfg.AdminAddr, cfg.DataDir = "hardening-token", "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	start := time.Now()
	_, err = app.Start(app.Options{Config: cfg, Standalone: true, NATSListen: ln.Addr().String(), Logger: discard})
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) || !strings.Contains(err.Error(), "-nats-listen") {
		t.Fatalf("Start = %v, want an error naming %s and -nats-listen", err, ln.Addr())
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v to fail", took)
	}
}

var discard = slog.New(slog.DiscardHandler)

// The ingress serves the totals API without owning the bucket: it opens
// it, never creates or changes it (a plain ingress once scaled the
// workers' replicated bucket down to one copy).
func TestIngressAPIDoesNotCreateTheBucket(t *testing.T) {
	srv := natstest.RunServer(t)
	cfg := config.Defaults()
	cfg.Token, cfg.NATSURL = "hardening-token", "nats://"+srv.Token+"@"+strings.TrimPrefix(srv.ClientURL(), "nats://")
	a := apptest.Start(t, app.Options{Config: cfg})
	if code, body := get(t, "http://"+a.AdminAddr()+"/api/scenes"); code != 503 {
		t.Errorf("/api/scenes without the bucket = %d %q, want 503", code, body)
	}
	js, err := jetstream.New(natstest.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.KeyValue(context.Background(), stats.BucketName); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("bucket after an ingress API call: %v, want not found", err)
	}
}
