package wechatapi

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

// accountsEnv is the fake with the apps wx_a, wx_b and wx_c, a NATS
// server, a registry with the default account (wx_a) and the clients of
// one process.
type accountsEnv struct {
	fake *wechatapitest.Server
	reg  *accounts.Registry
	cs   *Clients
	prom *prometheus.Registry
}

func newAccountsEnv(t *testing.T) *accountsEnv {
	t.Helper()
	fake := wechatapitest.New(wechatapitest.Options{Apps: map[string]string{"wx_a": "secret-a", "wx_b": "secret-b", "wx_c": "secret-c"}})
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	ns := natstest.RunServer(t)
	logger := slog.New(slog.DiscardHandler)
	reg, err := accounts.Start(accounts.Options{Conn: natstest.Connect(t, ns), Logger: logger,
		Default:   accounts.Account{AppID: "wx_a", AppSecret: "secret-a"},
		SecretKey: base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	prom := prometheus.NewRegistry()
	cs, err := NewClients(Options{Base: ts.URL, Accounts: reg, Conn: natstest.Connect(t, ns), Logger: logger, Registerer: prom})
	if err != nil {
		t.Fatal(err)
	}
	return &accountsEnv{fake: fake, reg: reg, cs: cs, prom: prom}
}

// add creates an account and waits until this process serves it.
func (e *accountsEnv) add(t *testing.T, id, appid, secret string) {
	t.Helper()
	if _, err := e.reg.Create(context.Background(), accounts.Account{ID: id, Token: "tok" + appid[3:], AppID: appid, AppSecret: secret}); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { _, ok := e.reg.Get(id); return ok })
}

// until polls f until it holds.
func until(t *testing.T, f func() bool) {
	t.Helper()
	wait.For(t, wait.Short, wait.Every, func() error {
		if f() {
			return nil
		}
		return errors.New("not yet")
	})
}

// Each account with an AppSecret has its own client, token and series;
// an unknown account, and one without an AppSecret, are told apart; a
// changed AppSecret makes a new client; a deleted account's series go.
func TestClientsPerAccount(t *testing.T) {
	e := newAccountsEnv(t)
	ctx := context.Background()
	e.add(t, "shop-b", "wx_b", "secret-b")
	if _, err := e.reg.Create(ctx, accounts.Account{ID: "nosecret", Token: "tokn", AppID: "wx_c"}); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { _, ok := e.reg.Get("nosecret"); return ok })
	a, err := e.cs.For(accounts.DefaultID)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.cs.For("shop-b")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := e.cs.For("shop-b"); again != b {
		t.Error("a second For made another client")
	}
	for _, c := range []*Client{a, b, b} {
		if _, err := c.CreateQRCode(ctx, tempCode("same_scene")); err != nil {
			t.Fatal(err)
		}
	}
	calls := e.fake.Calls()
	if calls.Apps["wx_a"].Calls[wechatapitest.QRCodeCreate] != 1 || calls.Apps["wx_b"].Calls[wechatapitest.QRCodeCreate] != 2 ||
		calls.Apps["wx_a"].Tokens != 1 || calls.Apps["wx_b"].Tokens != 1 {
		t.Errorf("per app: %+v", calls.Apps)
	}
	for id, want := range map[string]float64{"default": 1, "shop-b": 2} {
		if v, ok := metricstest.Lookup(e.prom, "wxgate_wechat_api_calls_total", map[string]string{"account": id, "api": APIQRCodeCreate, "outcome": OutcomeOK}); !ok || v != want {
			t.Errorf("%s: %v %v, want %v", id, v, ok, want)
		}
	}
	if _, err := e.cs.For("nobody"); !errors.Is(err, ErrUnknownAccount) {
		t.Errorf("unknown: %v", err)
	}
	if _, err := e.cs.For("nosecret"); !errors.Is(err, ErrOff) {
		t.Errorf("without an AppSecret: %v", err)
	}
	// A new AppSecret: a new client (whose token is asked with it).
	secret := "secret-b2"
	if _, err := e.reg.Update(ctx, "shop-b", accounts.Patch{AppSecret: &secret}); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { c, _ := e.cs.For("shop-b"); return c != b })
	// Deleted: unknown, and its series go.
	if err := e.reg.Delete(ctx, "shop-b"); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { _, err := e.cs.For("shop-b"); return errors.Is(err, ErrUnknownAccount) })
	if _, err := e.cs.For(accounts.DefaultID); err != nil {
		t.Fatal(err)
	}
	if _, ok := metricstest.Lookup(e.prom, "wxgate_wechat_api_calls_total", map[string]string{"account": "shop-b"}); ok {
		t.Error("the deleted account's series stay")
	}
}

// An account whose token refresh hangs (WeChat slow for its AppID, or its
// AppSecret refused over and over) holds up none of another account's
// calls: each client waits for its own token alone.
func TestSlowAccountDoesNotHoldUpAnother(t *testing.T) {
	e := newAccountsEnv(t)
	e.add(t, "slow", "wx_b", "wrong-secret")
	slow, err := e.cs.For("slow")
	if err != nil {
		t.Fatal(err)
	}
	fast, err := e.cs.For(accounts.DefaultID)
	if err != nil {
		t.Fatal(err)
	}
	_ = e.fake.Inject(wechatapitest.Fault{AppID: "wx_b", API: wechatapitest.StableToken, Delay: "3s", Count: 10})
	done := make(chan error, 1)
	go func() {
		_, err := slow.CreateQRCode(context.Background(), tempCode("s"))
		done <- err
	}()
	until(t, func() bool { return e.fake.Calls().Apps["wx_b"].Calls[wechatapitest.StableToken] == 1 })
	start := time.Now()
	for i := 0; i < 5; i++ {
		if _, err := fast.CreateQRCode(context.Background(), tempCode("f")); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the other account's 5 codes took %v while one account's token hung", took)
	}
	select {
	case err := <-done:
		t.Errorf("the slow account finished first: %v", err)
	default:
	}
	if code, _ := errcode(<-done); code != CodeInvalidSecret {
		t.Error("the slow account's wrong secret was not refused")
	}
}
