package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// With -api, each callback command tells the fake of the interaction it
// is, before the callback, once however many retries.
func TestTellsTheFakeAPI(t *testing.T) {
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx", Secret: "s"})
	fs := httptest.NewServer(fake)
	defer fs.Close()
	// wxgate's stand-in answers success, and notes what the fake had been
	// told by then.
	var mu sync.Mutex
	var toldBefore []int
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c := fake.Calls().Interactions
		mu.Lock()
		toldBefore = append(toldBefore, c[wechatapitest.KindMessage]+c[wechatapitest.KindEvent]+c[wechatapitest.KindUnsubscribe])
		mu.Unlock()
		_, _ = io.WriteString(w, "success")
	}))
	defer gw.Close()

	run := func(args ...string) string {
		t.Helper()
		var out, errs bytes.Buffer
		args = append(args, "-url", gw.URL, "-api", fs.URL+"/")
		if code := Main(context.Background(), args, &out, &errs); code != 0 {
			t.Fatalf("wxsim %v = %d: %s%s", args, code, out.String(), errs.String())
		}
		return out.String()
	}
	run("text", "-openid", "o_text", "-retries", "2")
	run("voice", "-openid", "o_voice")
	run("scan", "-openid", "o_scan", "-scene", "poster")
	run("subscribe", "-openid", "o_sub")
	run("unsubscribe", "-openid", "o_text")
	if out := run("raw", "-file", writeTemp(t, `<xml><FromUserName>o_loc</FromUserName><MsgType>event</MsgType><Event>LOCATION</Event></xml>`)); !strings.Contains(out, "interaction: none") {
		t.Errorf("a LOCATION report told the fake:\n%s", out)
	}

	c := fake.Calls().Interactions
	if c[wechatapitest.KindMessage] != 2 || c[wechatapitest.KindEvent] != 2 || c[wechatapitest.KindUnsubscribe] != 1 {
		t.Errorf("interactions = %v, want 2 messages, 2 events, 1 unsubscribe", c)
	}
	mu.Lock()
	if want := []int{1, 1, 1, 2, 3, 4, 5, 5}; !slices.Equal(toldBefore, want) {
		t.Errorf("told before each callback: %v, want %v", toldBefore, want)
	}
	mu.Unlock()
	for who, want := range map[string]int{"o_voice": 0, "o_scan": 0, "o_sub": 0, "o_text": 45015, "o_loc": 45015} {
		if got := customSend(t, fs.URL, who); got != want {
			t.Errorf("a send to %s: %d, want %d", who, got, want)
		}
	}
}

func TestAPIFlagOnlyOnCallbacks(t *testing.T) {
	for _, cmd := range []string{"verify", "load"} {
		var out, errs bytes.Buffer
		if code := Main(context.Background(), []string{cmd, "-api", "http://127.0.0.1:1"}, &out, &errs); code != 2 {
			t.Errorf("%s -api = %d, want 2 (no such flag)", cmd, code)
		}
	}
}

// A fake that cannot be told fails the command before any callback.
func TestFakeAPIDown(t *testing.T) {
	var called atomic.Bool
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { called.Store(true) }))
	defer gw.Close()
	fs := httptest.NewServer(http.NotFoundHandler())
	defer fs.Close()
	var out, errs bytes.Buffer
	if code := Main(context.Background(), []string{"text", "-url", gw.URL, "-api", fs.URL}, &out, &errs); code != 1 || called.Load() || !strings.Contains(errs.String(), "404") {
		t.Errorf("exit %d, callback sent %v: %s", code, called.Load(), errs.String())
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "msg.xml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// customSend sends a text to openid through the fake and returns the errcode.
func customSend(t *testing.T, base, openid string) int {
	t.Helper()
	post := func(path, body string, out any) {
		t.Helper()
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	post("/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"wx","secret":"s"}`, &tok)
	var a struct {
		Errcode int `json:"errcode"`
	}
	post("/cgi-bin/message/custom/send?access_token="+tok.AccessToken, `{"touser":"`+openid+`","msgtype":"text","text":{"content":"late"}}`, &a)
	return a.Errcode
}

// -account sends to -url/<id>, signed with that account's -tokens (safe
// mode with its -aeskeys and -appids) and told to the fake as that AppID's
// interaction; load -accounts N spreads the load over acct000…, each
// signed with its own token.
func TestAccounts(t *testing.T) {
	const keyA = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	fake := wechatapitest.New(wechatapitest.Options{AppID: "wx_default", Secret: "s", Apps: map[string]string{"wx_shop": "s2"}})
	fs := httptest.NewServer(fake)
	defer fs.Close()
	tokens := map[string]string{"default": "tokdef", "shop": "tokshop", "acct000": "tok0", "acct001": "tok1", "acct002": "tok2"}
	var mu sync.Mutex
	got := map[string]int{}
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/wechat/")
		q := r.URL.Query()
		if !wechat.VerifySignature(tokens[id], q.Get("timestamp"), q.Get("nonce"), q.Get("signature")) {
			http.Error(w, "signature", http.StatusForbidden)
			return
		}
		if id == "shop" && (q.Get("encrypt_type") != "aes" || q.Get("msg_signature") == "") {
			http.Error(w, "shop is in safe mode", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[id]++
		mu.Unlock()
		_, _ = io.WriteString(w, "success")
	}))
	defer gw.Close()
	run := func(args ...string) error {
		var out, errs bytes.Buffer
		args = append(args, "-url", gw.URL+"/wechat", "-tokens", "shop=tokshop,acct000=tok0,acct001=tok1,acct002=tok2", "-token", "tokdef")
		if code := Main(context.Background(), args, &out, &errs); code != 0 {
			return fmt.Errorf("wxsim %v = %d: %s%s", args, code, out.String(), errs.String())
		}
		return nil
	}
	if err := run("text", "-account", "shop", "-aeskeys", "shop="+keyA, "-appids", "shop=wx_shop", "-openid", "o1", "-api", fs.URL); err != nil {
		t.Fatal(err)
	}
	if err := run("text", "-account", "default"); err != nil {
		t.Fatal(err)
	}
	if c := fake.Calls(); c.Apps["wx_shop"].Interactions[wechatapitest.KindMessage] != 1 || c.Apps["wx_default"].Interactions[wechatapitest.KindMessage] != 0 {
		t.Errorf("the interaction went to %+v", c.Apps)
	}
	if err := run("load", "-accounts", "3", "-requests", "30", "-concurrency", "3", "-mix", "text=100"); err != nil {
		t.Fatal(err)
	}
	if got["shop"] != 1 || got["default"] != 1 || got["acct000"] != 10 || got["acct001"] != 10 || got["acct002"] != 10 {
		t.Errorf("requests per account: %v", got)
	}
	if err := run("load", "-accounts", "2", "-account", "shop", "-requests", "1"); err == nil {
		t.Error("-accounts with -account taken")
	}
	var out, errs bytes.Buffer
	if code := Main(context.Background(), []string{"text", "-url", gw.URL, "-tokens", "shop:tokshop"}, &out, &errs); code != 2 || strings.Contains(errs.String(), "tokshop") {
		t.Errorf("a bad -tokens: %d %s", code, errs.String())
	}
}
