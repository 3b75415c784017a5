package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	qr "github.com/piglig/go-qr"

	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

const (
	fakeAppID  = "wx_e2e_app"
	fakeSecret = "e2e-app-secret"
)

// fakeAPI is a running "wxsim api": the fake of WeChat's API.
type fakeAPI struct {
	*proc
	base string
}

func startFakeAPI(t *testing.T, args ...string) *fakeAPI {
	t.Helper()
	p := start(t, "wxsim", nil, append([]string{"api", "-addr", "127.0.0.1:0", "-appid", fakeAppID, "-secret", fakeSecret}, args...)...)
	return &fakeAPI{p, "http://" + p.listenAddr(t, "wechat-api")}
}

// env is what a wxgate process needs to use the fake.
func (f *fakeAPI) env() []string {
	return []string{"WECHAT_APPID=" + fakeAppID, "WECHAT_APPSECRET=" + fakeSecret, "WECHAT_API_BASE=" + f.base}
}

func (f *fakeAPI) calls(t *testing.T) wechatapitest.Calls {
	t.Helper()
	var c wechatapitest.Calls
	nettest.GetJSON(t, f.base+"/wxsim/calls", &c)
	return c
}

func (f *fakeAPI) fault(t *testing.T, fault wechatapitest.Fault) {
	t.Helper()
	b, _ := json.Marshal(fault)
	resp, err := http.Post(f.base+"/wxsim/fault", "application/json", bytes.NewReader(b))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("fault %+v: %v %v", fault, resp, err)
	}
	resp.Body.Close()
}

// qrCode is the API's code with its counts.
type qrCode struct {
	Scene        string  `json:"scene"`
	Label        string  `json:"label"`
	Permanent    bool    `json:"permanent"`
	Ticket       string  `json:"ticket"`
	URL          string  `json:"url"`
	ExpiresAt    *string `json:"expires_at"`
	ImageURL     string  `json:"image_url"`
	Expired      bool    `json:"expired"`
	Scans        int64   `json:"scans"`
	NewFollowers int64   `json:"new_followers"`
	Errcode      int     `json:"errcode"`
	Errmsg       string  `json:"errmsg"`
	Error        string  `json:"error"`
}

// createQR posts body to an admin listener's /api/qrcodes.
func createQR(t *testing.T, admin, body string) (int, qrCode) {
	t.Helper()
	resp, err := http.Post("http://"+admin+"/api/qrcodes", "application/json", strings.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0, qrCode{}
	}
	defer resp.Body.Close()
	var c qrCode
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Errorf("POST /api/qrcodes %s: %d: %v", body, resp.StatusCode, err)
	}
	return resp.StatusCode, c
}

// subscribeXML is a follow through the code of scene (scanXML is a SCAN).
func subscribeXML(openid, scene string) []byte {
	return []byte(fmt.Sprintf("<xml><ToUserName>gh_e2e</ToUserName><FromUserName>%s</FromUserName><CreateTime>%d</CreateTime>"+
		"<MsgType>event</MsgType><Event>subscribe</Event><EventKey><![CDATA[%s%s]]></EventKey><Ticket>t</Ticket></xml>",
		openid, 1700000000+seq.Add(1), wechat.ScenePrefix, scene))
}

// Two workers and two ingresses against the fake WeChat API: the codes
// they create at the same time cost one stable_token call; an invalidated
// token costs one refresh and one retry; 45009 and 40053 reach the caller
// as 502 with the errcode; a permanent code created by all four at once is
// one code; the PNG decodes to the code's url; scans of the code's scene
// show in its counts.
func TestQRCodesAcrossProcesses(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	env := append([]string{"NATS_URL=" + ns.url}, fake.env()...)
	w1, w2 := startWorker(t, ns.url, fake.env()...), startWorker(t, ns.url, fake.env()...)
	_, url1, in1 := startIngress(t, env...)
	_, _, in2 := startIngress(t, env...)
	admins := []string{w1.admin, w2.admin, in1, in2}
	waitReady(t, admins...)

	// Eight temporary codes at once, two through each process.
	var wg sync.WaitGroup
	codes := make([]qrCode, 8)
	for i := range codes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			code, c := createQR(t, admins[i%4], fmt.Sprintf(`{"scene":"poster_%d","label":"Batch %d"}`, i, i))
			if code != 201 {
				t.Errorf("create %d via %s: %d %+v", i, admins[i%4], code, c)
			}
			codes[i] = c
		}(i)
	}
	wg.Wait()
	if c := fake.calls(t); c.Calls[wechatapitest.StableToken] != 1 || c.Calls[wechatapitest.QRCodeCreate] != 8 {
		t.Fatalf("the fake saw %d stable_token and %d qrcode/create calls, want 1 and 8", c.Calls[wechatapitest.StableToken], c.Calls[wechatapitest.QRCodeCreate])
	}

	// A permanent code asked of all four at once is one code.
	got := make([]int, 4)
	perm := make([]qrCode, 4)
	for i := range admins {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i], perm[i] = createQR(t, admins[i], `{"scene":"counter_sign","permanent":true,"label":"Store counters"}`)
		}(i)
	}
	wg.Wait()
	created := 0
	for i := range got {
		if got[i] == 201 {
			created++
		} else if got[i] != 200 {
			t.Errorf("permanent via %s: %d %+v", admins[i], got[i], perm[i])
		}
		if perm[i].Ticket != perm[0].Ticket || perm[i].URL != perm[0].URL || !perm[i].Permanent {
			t.Errorf("permanent codes differ: %+v and %+v", perm[i], perm[0])
		}
	}
	if code, again := createQR(t, in2, `{"scene":"counter_sign","permanent":true}`); created != 1 || code != 200 || again.Ticket != perm[0].Ticket {
		t.Errorf("%d answers 201 (want 1); asked again: %d %+v", created, code, again)
	}
	if n := fake.calls(t).Calls[wechatapitest.QRCodeCreate]; n != 9 {
		t.Errorf("qrcode/create calls = %d, want 9: the permanent code asked once", n)
	}

	// The PNG, from another process than the one that made the code,
	// decodes back to its url.
	resp, err := http.Get("http://" + w2.admin + codes[0].ImageURL + "&size=256")
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(resp.Body)
	resp.Body.Close()
	if err != nil || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("image: %v %s", err, resp.Header.Get("Content-Type"))
	}
	if u, err := qr.Decode(img); err != nil || u != codes[0].URL || img.Bounds().Dx() != 256 {
		t.Errorf("the PNG decodes to %q (%v), %d px; want %q, 256 px", u, err, img.Bounds().Dx(), codes[0].URL)
	}

	// WeChat invalidates the token: the next call succeeds with exactly
	// one refresh and one retry.
	fake.fault(t, wechatapitest.Fault{InvalidateToken: true})
	before := fake.calls(t).Calls
	if code, c := createQR(t, in1, `{"scene":"after_invalidation"}`); code != 201 {
		t.Fatalf("after invalidation: %d %+v", code, c)
	}
	after := fake.calls(t).Calls
	if s, q := after[wechatapitest.StableToken]-before[wechatapitest.StableToken], after[wechatapitest.QRCodeCreate]-before[wechatapitest.QRCodeCreate]; s != 1 || q != 2 {
		t.Errorf("after invalidation: %d stable_token and %d qrcode/create calls, want 1 refresh and 1 retry", s, q)
	}
	// The others, still holding the old token, take the stored new one
	// when WeChat refuses theirs: no more refreshes.
	for _, a := range []string{w1.admin, w2.admin, in2} {
		if code, c := createQR(t, a, `{"scene":"elsewhere"}`); code != 201 {
			t.Errorf("via %s: %d %+v", a, code, c)
		}
	}
	if n := fake.calls(t).Calls[wechatapitest.StableToken]; n != after[wechatapitest.StableToken] {
		t.Errorf("stable_token calls went from %d to %d", after[wechatapitest.StableToken], n)
	}

	// WeChat's refusals reach the caller as 502 with the errcode, asked once.
	for _, errcode := range []int{45009, 40053, 40052} {
		fake.fault(t, wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: errcode})
		before := fake.calls(t).Calls[wechatapitest.QRCodeCreate]
		code, c := createQR(t, w1.admin, `{"scene":"refused"}`)
		if code != 502 || c.Errcode != errcode || c.Errmsg == "" || c.Error == "" {
			t.Errorf("errcode %d: %d %+v", errcode, code, c)
		}
		if n := fake.calls(t).Calls[wechatapitest.QRCodeCreate] - before; n != 1 {
			t.Errorf("errcode %d: asked %d times", errcode, n)
		}
		if v := metricValue(t, w1.admin, fmt.Sprintf(`wxgate_wechat_api_calls_total{account="default",api="qrcode_create",outcome="%d"}`, errcode)); v != 1 {
			t.Errorf("errcode %d counted %v", errcode, v)
		}
	}

	// Scans of a code's scene show in its counts, on every process.
	s := wechat.Sender{Token: token}
	for i, m := range [][]byte{scanXML("o_a", "poster_1", 1700000001), scanXML("o_b", "poster_1", 1700000002), subscribeXML("o_c", "poster_1")} {
		if code, body := post(t, s, url1, m); code != 200 || body == "success" {
			t.Fatalf("scan %d: %d %q", i, code, body)
		}
	}
	for _, a := range admins {
		wait.For(t, wait.Long, wait.Every, func() error {
			var c qrCode
			if err := nettest.FetchJSON("http://"+a+"/api/qrcodes/poster_1", &c); err != nil {
				return err
			}
			if c.Scans != 3 || c.NewFollowers != 1 || c.Ticket != codes[1].Ticket {
				return fmt.Errorf("%s: %+v, want 3 scans and 1 new follower", a, c)
			}
			return nil
		})
	}
	var list struct{ QRCodes []qrCode }
	nettest.GetJSON(t, "http://"+in2+"/api/qrcodes", &list)
	if len(list.QRCodes) != 8+1+1+3 {
		t.Errorf("list has %d codes, want 13", len(list.QRCodes))
	}
	metricstest.Scrape(t, "http://"+in1+"/metrics", `wxgate_wechat_api_calls_total{account="default",api="stable_token",outcome="ok"}`)
	if n := fake.calls(t).ForceRefresh; n != 0 {
		t.Errorf("force_refresh sent %d times; wxgate never sends it", n)
	}
}

// Scenes that are path syntax, made through one process and read through
// another: each one's image_url and one-code URL answer 200 without a
// redirect, and the PNG decodes to the code's url.
func TestQRCodesAnyScene(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	w := startWorker(t, ns.url, fake.env()...)
	_, _, in := startIngress(t, append([]string{"NATS_URL=" + ns.url}, fake.env()...)...)
	waitReady(t, w.admin, in)
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, scene := range []string{".", "..", "a/../b", "x/./y", "a/b", "%", "?x", "#h", "image"} {
		body, _ := json.Marshal(map[string]string{"scene": scene})
		code, c := createQR(t, w.admin, string(body))
		if code != 201 || c.Scene != scene {
			t.Fatalf("create %q: %d %+v", scene, code, c)
		}
		resp, err := noRedirects.Get("http://" + in + c.ImageURL)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil {
			t.Errorf("%q: GET %s = %d %v", scene, c.ImageURL, resp.StatusCode, err)
		} else if u, err := qr.Decode(img); err != nil || u != c.URL {
			t.Errorf("%q: the PNG decodes to %q (%v), want %q", scene, u, err, c.URL)
		}
		one := strings.TrimSuffix(strings.SplitN(c.ImageURL, "?", 2)[0], "/image")
		resp, err = noRedirects.Get("http://" + in + one)
		if err != nil {
			t.Fatal(err)
		}
		var got qrCode
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil || got.Scene != scene || got.Ticket != c.Ticket {
			t.Errorf("%q: GET %s = %d %+v %v", scene, one, resp.StatusCode, got, err)
		}
	}
	if n := fake.calls(t).ForceRefresh; n != 0 {
		t.Errorf("force_refresh sent %d times", n)
	}
}

// Without WECHAT_APPSECRET the QR routes answer 503 with a JSON error,
// whatever the request, and the process is ready: the feature is off,
// nothing is broken.
func TestQRCodesOff(t *testing.T) {
	ns := startNATS(t)
	w := startWorker(t, ns.url)
	waitReady(t, w.admin)
	for _, body := range []string{`{"scene":"a"}`, `not json`, `{"scene":""}`} {
		resp, err := http.Post("http://"+w.admin+"/api/qrcodes", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.Contains(string(b), "WECHAT_APPSECRET") {
			t.Errorf("%s: %d %s", body, resp.StatusCode, b)
		}
	}
}

func jsonDecode(resp *http.Response, v any) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
