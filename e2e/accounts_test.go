package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// accountsKey is ACCOUNTS_SECRET_KEY for the processes of these tests.
var accountsKey = base64.StdEncoding.EncodeToString([]byte("e2e-accounts-secret-key-32-bytes"))

// replicaSet is two ingresses and two workers on one nats-server, sharing
// the accounts.
type replicaSet struct {
	urls, admins []string // the ingresses' /wechat and admin listeners
}

func startReplicas(t *testing.T, env ...string) replicaSet {
	t.Helper()
	ns := startNATS(t)
	env = append([]string{"NATS_URL=" + ns.url, "ACCOUNTS_SECRET_KEY=" + accountsKey}, env...)
	var rs replicaSet
	for range 2 {
		w := startWorker(t, ns.url, env...)
		_, url, admin := startIngress(t, env...)
		rs.urls, rs.admins = append(rs.urls, url), append(rs.admins, admin)
		waitReady(t, admin, w.admin)
	}
	return rs
}

// api calls an admin listener's /api/accounts…, returning the status and
// the JSON answer.
func api(t *testing.T, admin, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	_ = json.Unmarshal(b, &v)
	return resp.StatusCode, v
}

// within polls cond until it holds and fails the test unless that took at
// most limit (the change's promise), polling on for a while past it to
// tell "late" from "never".
func within(t *testing.T, what string, limit time.Duration, cond func() error) {
	t.Helper()
	start := time.Now()
	wait.For(t, wait.Long, 5*time.Millisecond, cond)
	if took := time.Since(start); took > limit {
		t.Errorf("%s took %v, want at most %v", what, took, limit)
	} else {
		t.Logf("%s took %v", what, took.Round(time.Millisecond))
	}
}

// status posts a text message to url signed with s: the status, and the
// reply opened.
func status(s wechat.Sender, url, content string) (int, string, error) {
	code, body, err := s.Post(http.DefaultClient, url, textMessage(content), time.Now(), fmt.Sprint("n", seq.Add(1)))
	return code, string(body), err
}

// An account made through one replica's API is served by the other's
// ingress within 2 seconds; its token changed there, the old token is
// refused and the new one served within 2 seconds; deleted, its URL is
// 404 within 2 seconds. MAX_ACCOUNTS holds across the replicas.
func TestAccountsAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, "MAX_ACCOUNTS=3") // the default and two more
	a, b := rs.admins[0], rs.admins[1]
	shopURL := strings.Replace(rs.urls[1], "/wechat", "/wechat/shop", 1)
	old, next := wechat.Sender{Token: "ShopToken1"}, wechat.Sender{Token: "ShopToken2"}

	if code, _, _ := status(old, shopURL, "before"); code != http.StatusNotFound {
		t.Fatalf("an account not made yet: %d, want 404", code)
	}
	if code, v := api(t, a, "POST", "/api/accounts", `{"id":"shop","name":"门店","token":"ShopToken1","mode":"plain"}`); code != 201 {
		t.Fatalf("POST /api/accounts = %d %v", code, v)
	}
	within(t, "the account served by the other replica", 2*time.Second, func() error {
		code, body, err := status(old, shopURL, "hello shop")
		if err != nil || code != 200 || !strings.Contains(body, "hello shop") {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})

	if code, v := api(t, a, "PATCH", "/api/accounts/shop", `{"token":"ShopToken2"}`); code != 200 {
		t.Fatalf("PATCH = %d %v", code, v)
	}
	within(t, "the token change at the other replica", 2*time.Second, func() error {
		if code, _, err := status(old, shopURL, "old token"); err != nil || code != http.StatusForbidden {
			return fmt.Errorf("the old token: %d %v", code, err)
		}
		if code, body, err := status(next, shopURL, "new token"); err != nil || code != 200 || !strings.Contains(body, "new token") {
			return fmt.Errorf("the new token: %d %q %v", code, body, err)
		}
		return nil
	})
	// The default account is where it was, with its own token.
	expectEcho(t, wechat.Sender{Token: token}, rs.urls[1], "the default still")

	if code, _ := api(t, b, "POST", "/api/accounts", `{"id":"shop2","token":"Shop2Token"}`); code != 201 {
		t.Fatalf("a third account: %d, want 201", code)
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		if code, _ := api(t, a, "GET", "/api/accounts/shop2", ""); code != 200 {
			return fmt.Errorf("shop2 not at A yet: %d", code)
		}
		return nil
	})
	if code, v := api(t, a, "POST", "/api/accounts", `{"id":"shop3","token":"Shop3Token"}`); code != http.StatusConflict || !strings.Contains(fmt.Sprint(v["error"]), "MAX_ACCOUNTS") {
		t.Errorf("past MAX_ACCOUNTS: %d %v, want 409 naming it", code, v)
	}

	if code, _ := api(t, a, "DELETE", "/api/accounts/shop", ""); code != http.StatusNoContent {
		t.Fatalf("DELETE = %d", code)
	}
	within(t, "the deletion at the other replica", 2*time.Second, func() error {
		if code, _, err := status(next, shopURL, "gone"); err != nil || code != http.StatusNotFound {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
}

// load runs wxsim load against url in the background; its report and
// exit code come on the channel.
func load(url string, args ...string) <-chan string {
	out := make(chan string, 1)
	go func() {
		cmd := exec.Command(filepath.Join(binDir, "wxsim"), append([]string{"load", "-url", url}, args...)...)
		cmd.Env = []string{}
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		out <- fmt.Sprintf("%s(exit: %v)", b.String(), err)
	}()
	return out
}

// A key change under load: WeChat's console moves the account to a new
// EncodingAESKey while callbacks under the old one are still coming (and
// their retries will). With the new key current and the old one previous,
// no callback is refused, and every reply opens under the key its request
// was sealed with (wxsim counts one that does not as an error); both keys
// are seen in wxgate_decrypt_total. The old key removed, it is refused.
func TestKeyRolloverUnderLoad(t *testing.T) {
	const keyOld, keyNew, appid = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg", "wx_roll"
	rs := startReplicas(t)
	a := rs.admins[0]
	if code, v := api(t, a, "POST", "/api/accounts", `{"id":"roll","token":"RollToken","appid":"`+appid+`","encoding_aes_key":"`+keyOld+`"}`); code != 201 {
		t.Fatalf("POST = %d %v", code, v)
	}
	rollURL := func(i int) string { return rs.urls[i] }
	seal := func(key string) wechat.Sender {
		c, err := wechat.NewCipher(key, appid)
		if err != nil {
			t.Fatal(err)
		}
		return wechat.Sender{Token: "RollToken", Cipher: c}
	}
	for i := range rs.urls {
		wait.For(t, wait.Long, wait.Every, func() error {
			if code, _, err := seal(keyOld).Post(http.DefaultClient, rollURL(i)+"/roll", textMessage("ready"), time.Now(), "r"); err != nil || code != 200 {
				return fmt.Errorf("%d %v", code, err)
			}
			return nil
		})
	}
	common := []string{"-account", "roll", "-token", "RollToken", "-appid", appid, "-rate", "50", "-concurrency", "16"}
	// Under the old key from before the change to after it, at both
	// replicas.
	before := []<-chan string{
		load(rollURL(0), append(common, "-aeskey", keyOld, "-duration", "6s")...),
		load(rollURL(1), append(common, "-aeskey", keyOld, "-duration", "6s")...),
	}
	// Under the old key alone for a while before the change.
	wait.For(t, wait.Long, wait.Every, func() error {
		for _, admin := range rs.admins {
			if n := metricValue(t, admin, `wxgate_decrypt_total{account="roll",key="current"}`); n < 50 {
				return fmt.Errorf("%s opened %v callbacks", admin, n)
			}
		}
		return nil
	})
	if code, v := api(t, a, "PATCH", "/api/accounts/roll", `{"encoding_aes_key":"`+keyNew+`","previous_encoding_aes_key":"`+keyOld+`"}`); code != 200 || v["aes_keys"] != 2.0 {
		t.Fatalf("PATCH = %d %v", code, v)
	}
	for i := range rs.urls { // WeChat uses the new key once the console saved it
		wait.For(t, wait.Long, wait.Every, func() error {
			if code, _, err := seal(keyNew).Post(http.DefaultClient, rollURL(i)+"/roll", textMessage("new"), time.Now(), "k"); err != nil || code != 200 {
				return fmt.Errorf("%d %v", code, err)
			}
			return nil
		})
	}
	after := []<-chan string{
		load(rollURL(0), append(common, "-aeskey", keyNew, "-duration", "3s")...),
		load(rollURL(1), append(common, "-aeskey", keyNew, "-duration", "3s")...),
	}
	for _, run := range append(before, after...) {
		report := <-run
		if !strings.Contains(report, "errors: 0") || !strings.Contains(report, "exit: <nil>") {
			t.Errorf("a load through the change refused or misread callbacks:\n%s", report)
		}
	}
	for _, admin := range rs.admins {
		cur := metricValue(t, admin, `wxgate_decrypt_total{account="roll",key="current"}`)
		prev := metricValue(t, admin, `wxgate_decrypt_total{account="roll",key="previous"}`)
		if cur == 0 || prev == 0 {
			t.Errorf("%s: decrypt{roll} current %v, previous %v; want both used", admin, cur, prev)
		}
	}

	// The change done: the old key goes, and is refused.
	if code, v := api(t, a, "PATCH", "/api/accounts/roll", `{"previous_encoding_aes_key":""}`); code != 200 || v["aes_keys"] != 1.0 {
		t.Fatalf("PATCH = %d %v", code, v)
	}
	within(t, "the old key's removal at the other replica", 2*time.Second, func() error {
		if code, _, _ := seal(keyOld).Post(http.DefaultClient, rollURL(1)+"/roll", textMessage("old"), time.Now(), "o"); code != http.StatusBadRequest {
			return fmt.Errorf("the old key: %d, want 400", code)
		}
		return nil
	})
}
