package accounts_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

const (
	aesKey     = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	aesKeyNext = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg"
)

var secretKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))

func TestValidate(t *testing.T) {
	good := accounts.Account{ID: "shop-2", Token: "Tok3n", AppID: "wx1", EncodingAESKey: aesKey, AppSecret: "s3cret"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good account refused: %v", err)
	}
	for field, change := range map[string]func(*accounts.Account){
		"id":                        func(a *accounts.Account) { a.ID = "" },
		"id ":                       func(a *accounts.Account) { a.ID = strings.Repeat("a", 33) },
		"id  ":                      func(a *accounts.Account) { a.ID = ".." },
		"id   ":                     func(a *accounts.Account) { a.ID = "a/b" },
		"id    ":                    func(a *accounts.Account) { a.ID = "Shop" },
		"token":                     func(a *accounts.Account) { a.Token = "ab" },
		"token ":                    func(a *accounts.Account) { a.Token = "has space" },
		"mode":                      func(a *accounts.Account) { a.Mode = "secret" },
		"encoding_aes_key":          func(a *accounts.Account) { a.EncodingAESKey = "short" },
		"previous_encoding_aes_key": func(a *accounts.Account) { a.PreviousEncodingAESKey = "short" },
		"appid":                     func(a *accounts.Account) { a.AppID = "" },
		"name":                      func(a *accounts.Account) { a.Name = strings.Repeat("名", 65) },
		"id     ":                   func(a *accounts.Account) { a.ID = accounts.Unknown },
	} {
		a := good
		change(&a)
		err := a.Validate()
		var fe *admin.FieldError
		if !errors.As(err, &fe) || fe.Field != strings.TrimSpace(field) {
			t.Errorf("%s: Validate = %v, want an error naming %q", field, err, strings.TrimSpace(field))
		}
	}
}

type env struct {
	t      *testing.T
	nc     *nats.Conn
	kv     jetstream.KeyValue
	reg    *accounts.Registry
	server *httptest.Server
}

func newEnv(t *testing.T, key string, max int) *env {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t))
	return newEnvOn(t, nc, key, max)
}

func newEnvOn(t *testing.T, nc *nats.Conn, key string, max int) *env {
	t.Helper()
	reg, err := accounts.Start(accounts.Options{Conn: nc, SecretKey: key, MaxAccounts: max,
		Default: accounts.Account{Token: "envtoken"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	until(t, func() bool { return reg.Check() == nil })
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), accounts.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(accounts.API(reg))
	t.Cleanup(srv.Close)
	return &env{t: t, nc: nc, kv: kv, reg: reg, server: srv}
}

func (e *env) do(method, path, body string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.server.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	_ = json.Unmarshal(b, &v)
	return resp.StatusCode, v
}

const shop = `{"id":"shop","name":"门店","appid":"wx_shop","original_id":"gh_shop","token":"ShopToken1",
	"encoding_aes_key":"` + aesKey + `","appsecret":"shop-app-secret-xyz"}`

func TestAccountsAPI(t *testing.T) {
	e := newEnv(t, secretKey, 0)
	if code, v := e.do("POST", "/api/accounts", shop); code != 201 || v["has_appsecret"] != true || v["aes_keys"] != 1.0 || v["mode"] != "safe" {
		t.Fatalf("POST = %d %v", code, v)
	}
	if code, _ := e.do("POST", "/api/accounts", shop); code != 409 {
		t.Errorf("the same id again: %d, want 409", code)
	}
	if code, v := e.do("POST", "/api/accounts", `{"id":"x","token":"abc","bogus":1}`); code != 400 || v["field"] != "bogus" {
		t.Errorf("unknown field: %d %v, want 400 naming it", code, v)
	}
	if code, v := e.do("POST", "/api/accounts", `{"id":"Bad/..","token":"abc"}`); code != 400 || v["field"] != "id" {
		t.Errorf("bad id: %d %v, want 400 naming it", code, v)
	}
	until(t, func() bool { _, ok := e.reg.Get("shop"); return ok })
	a, _ := e.reg.Get("shop")
	if a.Token != "ShopToken1" || a.AppSecret != "shop-app-secret-xyz" || a.EncodingAESKey != aesKey {
		t.Fatalf("the registry's account lacks its secrets: %+v", a)
	}
	// A key change: the new key current, the old one previous.
	code, v := e.do("PATCH", "/api/accounts/shop", `{"encoding_aes_key":"`+aesKeyNext+`","previous_encoding_aes_key":"`+aesKey+`"}`)
	if code != 200 || v["aes_keys"] != 2.0 || v["name"] != "门店" {
		t.Fatalf("PATCH = %d %v", code, v)
	}
	until(t, func() bool { a, _ := e.reg.Get("shop"); return a.PreviousEncodingAESKey == aesKey })
	if code, v := e.do("PATCH", "/api/accounts/shop", `{"token":"x"}`); code != 400 || v["field"] != "token" {
		t.Errorf("bad token: %d %v", code, v)
	}
	if code, _ := e.do("PATCH", "/api/accounts/nope", `{"name":"x"}`); code != 404 {
		t.Errorf("PATCH unknown: %d", code)
	}
	for _, m := range []string{"PATCH", "DELETE"} {
		if code, _ := e.do(m, "/api/accounts/default", `{"name":"x"}`); code != 409 {
			t.Errorf("%s default: %d, want 409", m, code)
		}
	}
	_, list := e.do("GET", "/api/accounts", "")
	raw, _ := json.Marshal(list)
	for _, secret := range []string{"ShopToken1", "shop-app-secret-xyz", aesKey, aesKeyNext, "envtoken"} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("GET /api/accounts shows a secret: %s", raw)
		}
	}
	if ids := list["accounts"].([]any); len(ids) != 2 || ids[0].(map[string]any)["id"] != "default" {
		t.Errorf("list = %v, want default then shop", list)
	}
	if code, _ := e.do("DELETE", "/api/accounts/shop", ""); code != 204 {
		t.Errorf("DELETE = %d", code)
	}
	until(t, func() bool { _, ok := e.reg.Get("shop"); return !ok })
	if code, _ := e.do("GET", "/api/accounts/shop", ""); code != 404 {
		t.Errorf("GET deleted: %d", code)
	}
}

// The raw values in the bucket never hold a secret in clear.
func TestNoSecretInTheBucket(t *testing.T) {
	e := newEnv(t, secretKey, 0)
	if code, v := e.do("POST", "/api/accounts", shop); code != 201 {
		t.Fatalf("POST = %d %v", code, v)
	}
	entry, err := e.kv.Get(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"ShopToken1", "shop-app-secret-xyz", aesKey} {
		if strings.Contains(string(entry.Value()), secret) {
			t.Errorf("the stored value holds a secret in clear: %s", entry.Value())
		}
	}
	// Another process with another key cannot serve it, and says why.
	other := newEnvOn(t, e.nc, base64.StdEncoding.EncodeToString([]byte("another-32-byte-key-for-testing!")), 0)
	until(t, func() bool { _, ok := other.reg.View("shop"); return ok })
	if _, ok := other.reg.Get("shop"); ok {
		t.Error("an account sealed with another key was served")
	}
	if v, _ := other.reg.View("shop"); v.Usable || v.Problem == "" {
		t.Errorf("view = %+v, want unusable with a reason", v)
	}
}

func TestWithoutSecretKey(t *testing.T) {
	e := newEnv(t, "", 0)
	code, v := e.do("POST", "/api/accounts", shop)
	if code != 503 || !strings.Contains(v["error"].(string), "ACCOUNTS_SECRET_KEY") {
		t.Errorf("POST without the key = %d %v, want 503 naming ACCOUNTS_SECRET_KEY", code, v)
	}
	if code, v := e.do("GET", "/api/accounts", ""); code != 200 || len(v["accounts"].([]any)) != 1 {
		t.Errorf("GET without the key = %d %v, want the default listed", code, v)
	}
}

func TestMaxAccounts(t *testing.T) {
	e := newEnv(t, secretKey, 2) // default and one more
	if code, _ := e.do("POST", "/api/accounts", shop); code != 201 {
		t.Fatal(code)
	}
	until(t, func() bool { _, ok := e.reg.Get("shop"); return ok })
	code, v := e.do("POST", "/api/accounts", strings.Replace(shop, `"id":"shop"`, `"id":"shop2"`, 1))
	if code != 409 || !strings.Contains(v["error"].(string), "MAX_ACCOUNTS") {
		t.Errorf("past MAX_ACCOUNTS: %d %v", code, v)
	}
}

// until waits for cond: a change reaching the registry's watch.
func until(t *testing.T, cond func() bool) {
	t.Helper()
	wait.For(t, wait.Short, wait.Every, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// Follow tells what is kept per account of every account there, then of
// each that appears and each that goes, and Len counts them.
func TestFollow(t *testing.T) {
	e := newEnv(t, secretKey, 0)
	events := make(chan string, 16)
	stop := e.reg.Follow(func(id string) { events <- "+" + id }, func(id string) { events <- "-" + id })
	t.Cleanup(stop)
	next := func(want string) {
		t.Helper()
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("Follow told %q, want %q", got, want)
			}
		case <-time.After(wait.Short):
			t.Fatalf("Follow told nothing, want %q", want)
		}
	}
	next("+default")
	if code, v := e.do("POST", "/api/accounts", shop); code != 201 {
		t.Fatalf("POST = %d %v", code, v)
	}
	next("+shop")
	if n := e.reg.Len(); n != 2 {
		t.Errorf("Len = %d, want 2", n)
	}
	if code, _ := e.do("PATCH", "/api/accounts/shop", `{"name":"x"}`); code != 200 {
		t.Fatal(code)
	}
	if code, _ := e.do("DELETE", "/api/accounts/shop", ""); code != 204 {
		t.Fatal(code)
	}
	next("-shop") // the change in between told nothing
}
