package gateway_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

const (
	shopToken = "ShopToken1"
	shopKey   = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg" // current
	shopAppID = "wx_shop"
)

var secretKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

// withShop serves the default account (plain, the harness's token) and
// shop: safe, with a key change under way (shopKey current, aesKey
// previous) and its original_id.
func withShop(t *testing.T) (opts, **accounts.Registry) {
	var reg *accounts.Registry
	return opts{accounts: func(h *harness) *accounts.Registry {
		r, err := accounts.Start(accounts.Options{Conn: natstest.Connect(t, h.srv), SecretKey: secretKey,
			Default: accounts.Account{Token: token}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		wait.For(t, wait.Short, wait.Every, r.Check)
		if _, err := r.Create(context.Background(), accounts.Account{ID: "shop", Token: shopToken, AppID: shopAppID, OriginalID: "gh_shop",
			EncodingAESKey: shopKey, PreviousEncodingAESKey: aesKey}); err != nil {
			t.Fatal(err)
		}
		wait.For(t, wait.Short, wait.Every, func() error {
			if _, ok := r.Get("shop"); !ok {
				return fmt.Errorf("shop not served yet")
			}
			return nil
		})
		reg = r
		return r
	}}, &reg
}

func shopMessage(content string) []byte {
	n := seq.Add(1)
	return fmt.Appendf(nil, "<xml><ToUserName><![CDATA[gh_shop]]></ToUserName><FromUserName><![CDATA[openid_%d]]></FromUserName>"+
		"<CreateTime>%d</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[%s]]></Content><MsgId>%d</MsgId></xml>", n, time.Now().Unix(), content, 5000+n)
}

// Each account is served on /wechat/{id} with its own token, keys and
// mode; /wechat is /wechat/default. A key change: a message under either
// key is answered under that key, counted per key. A request signed with
// another account's token is refused 403, a message to another ToUserName
// than the account's original_id 400, an unknown account 404 looking like
// no route at all.
func TestAccountsOnTheirURLs(t *testing.T) {
	o, _ := withShop(t)
	h := newHarness(t, o)
	base := strings.TrimSuffix(h.url, gateway.Path)
	shopURL := base + "/wechat/shop"
	current, _ := wechat.NewCipher(shopKey, shopAppID)
	previous, _ := wechat.NewCipher(aesKey, shopAppID)

	for _, u := range []string{h.url, base + "/wechat/default"} {
		if code, body, err := (wechat.Sender{Token: token}).Post(http.DefaultClient, u, []byte(message("text", "<Content>d</Content>")), time.Now(), "n"); err != nil || code != 200 || !strings.Contains(string(body), "<![CDATA[d]]>") {
			t.Errorf("%s: %d %q %v, want the default's echo", u, code, body, err)
		}
	}
	for _, c := range []struct {
		key    string
		cipher *wechat.Cipher
	}{{"current", current}, {"previous", previous}, {"current", current}} {
		s := wechat.Sender{Token: shopToken, Cipher: c.cipher}
		code, body, err := s.Post(http.DefaultClient, shopURL, shopMessage("k-"+c.key), time.Now(), "n"+c.key)
		if err != nil || code != 200 || !strings.Contains(string(body), "k-"+c.key) {
			t.Errorf("a message under the %s key: %d %q %v, want its echo sealed under that key", c.key, code, body, err)
		}
	}
	for key, want := range map[string]float64{"current": 2, "previous": 1} {
		if got := h.accountCounter("wxgate_decrypt_total", "shop", "key", key); got != want {
			t.Errorf("decrypt{shop,%s} = %v, want %v", key, got, want)
		}
	}

	// The default's token on shop's URL, and shop's on the default's.
	wrong := wechat.Sender{Token: token, Cipher: current}
	if code, _, _ := wrong.Post(http.DefaultClient, shopURL, shopMessage("x"), time.Now(), "w1"); code != http.StatusForbidden {
		t.Errorf("the default's token on shop's URL: %d, want 403", code)
	}
	if code, _, _ := (wechat.Sender{Token: shopToken}).Post(http.DefaultClient, h.url, []byte(message("text", "<Content>x</Content>")), time.Now(), "w2"); code != http.StatusForbidden {
		t.Errorf("shop's token on the default's URL: %d, want 403", code)
	}
	if got := h.accountCounter("wxgate_ingress_rejected_total", "shop", "reason", "signature"); got != 1 {
		t.Errorf("rejected{shop,signature} = %v, want 1", got)
	}
	// original_id: shop's messages go to gh_shop only.
	other := []byte(strings.Replace(string(shopMessage("y")), "gh_shop", "gh_other", 1))
	if code, _, _ := (wechat.Sender{Token: shopToken, Cipher: current}).Post(http.DefaultClient, shopURL, other, time.Now(), "o"); code != http.StatusBadRequest {
		t.Errorf("a message to another ToUserName: %d, want 400", code)
	}
	if got := h.accountCounter("wxgate_ingress_rejected_total", "shop", "reason", "account"); got != 1 {
		t.Errorf("rejected{shop,account} = %v, want 1", got)
	}

	// No such account: as no route, counted under "unknown".
	req, _ := (wechat.Sender{Token: token}).NewRequest(base+"/wechat/nope", []byte(message("text", "")), time.Now(), "u")
	code, body := do(t, req)
	if code != 404 || string(body) != "404 page not found" {
		t.Errorf("unknown account: %d %q, want gin's 404", code, body)
	}
	if got := h.accountCounter("wxgate_ingress_rejected_total", "unknown", "reason", "account"); got != 1 {
		t.Errorf("rejected{unknown,account} = %v, want 1", got)
	}
}

// What a path says never reaches a subject, a label or a log line unless
// it is an account's id: "..", an encoded slash, 33 characters, an id
// that is no account's. A watcher of every subject sees no request and no
// event; the metrics know only the accounts and "unknown".
func TestPathTricksReachNothing(t *testing.T) {
	o, _ := withShop(t)
	h := newHarness(t, o)
	base := strings.TrimSuffix(h.url, gateway.Path)
	sniffer := natstest.Connect(t, h.srv)
	seen := make(chan string, 256)
	for _, subject := range []string{"msg.>", "event.>", "wxgate.events.>", "wxgate.unanswered.>"} {
		if _, err := sniffer.Subscribe(subject, func(m *nats.Msg) { seen <- m.Subject }); err != nil {
			t.Fatal(err)
		}
	}
	if err := sniffer.Flush(); err != nil {
		t.Fatal(err)
	}
	tricks := []string{"..", "%2e%2e", "shop%2f..", "a%2fb", "%2fshop", strings.Repeat("a", 33), "Shop", "shop.x", "shop%00", "unknown", "nope", "%20shop", "shop%2f", "shop/", "default/"}
	for _, trick := range tricks {
		for _, s := range []wechat.Sender{{Token: token}, {Token: shopToken}} {
			req, err := s.NewRequest(base+"/wechat/"+trick, []byte(message("text", "<Content>trick</Content>")), time.Now(), "t")
			if err != nil {
				t.Fatal(err)
			}
			if code, body := do(t, req); code != http.StatusNotFound {
				t.Errorf("/wechat/%s: %d %q, want 404", trick, code, body)
			}
		}
	}
	if err := sniffer.Publish("msg.sentinel", nil); err != nil {
		t.Fatal(err)
	}
	for subject := range seen {
		if subject == "msg.sentinel" {
			break
		}
		t.Errorf("a path trick reached %s", subject)
	}
	for _, name := range []string{"wxgate_ingress_requests_total", "wxgate_ingress_rejected_total", "wxgate_decrypt_total"} {
		for series := range metricstest.Series(t, h.reg, name) {
			if !strings.Contains(series, "account=default") && !strings.Contains(series, "account=shop") && !strings.Contains(series, "account=unknown") {
				t.Errorf("%s has the series %s", name, series)
			}
		}
	}
	if logs := h.logs.String(); strings.Contains(logs, "..") || strings.Contains(logs, strings.Repeat("a", 33)) {
		t.Errorf("a path trick reached the log:\n%s", logs)
	}
}

// An account's series exist from when it appears, before any traffic, and
// go when it is deleted; a request on its URL is then 404.
func TestAccountSeriesFollowTheRegistry(t *testing.T) {
	o, reg := withShop(t)
	h := newHarness(t, o)
	has := func(id string) bool {
		_, ok := metricstest.Lookup(h.reg, "wxgate_ingress_requests_total", map[string]string{"account": id, "outcome": "reply"})
		return ok
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if !has("shop") || !has("default") || !has("unknown") {
			return fmt.Errorf("series of shop %v, default %v, unknown %v", has("shop"), has("default"), has("unknown"))
		}
		return nil
	})
	if err := (*reg).Delete(context.Background(), "shop"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if has("shop") {
			return fmt.Errorf("shop's series still there")
		}
		return nil
	})
	req, _ := (wechat.Sender{Token: shopToken}).NewRequest(strings.TrimSuffix(h.url, gateway.Path)+"/wechat/shop", shopMessage("gone"), time.Now(), "g")
	if code, _ := do(t, req); code != http.StatusNotFound {
		t.Errorf("a deleted account: %d, want 404", code)
	}
}
