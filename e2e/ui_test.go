package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// chromium finds Debian's chromium (what .ci/run installs), or skips the
// test with the reason; with E2E_REQUIRE=1 (CI) it fails instead.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium on this machine: the browser test needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
	if os.Getenv("E2E_REQUIRE") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

const adminToken = "ui-admin-token"

// page is a headless Chromium tab on an admin listener; its methods fail
// the test.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string // http://host:port of the admin listener
}

// newPage starts Chromium (its first action starts it, without the
// timeout) and opens path.
func newPage(t *testing.T, base, path string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	ctx, cancel := context.WithTimeout(bctx, 4*time.Minute)
	t.Cleanup(func() { cancel(); cancelBrowser(); cancelAlloc() })
	if err := chromedp.Do(bctx, chromedp.Navigate(base+path)); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return &page{t, ctx, base}
}

func (p *page) do(what string, acts ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, acts...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// js evaluates an expression (awaiting a promise) in the page.
func js[T any](p *page, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// until waits for a JavaScript condition: what the reader would wait for.
// A navigation under way (a form's post) ends a poll early: it polls again.
func (p *page) until(what, cond string) {
	p.t.Helper()
	deadline := time.Now().Add(wait.Long)
	for {
		err := chromedp.Do(p.ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(time.Until(deadline))))
		if err == nil {
			return
		}
		if time.Now().After(deadline) || p.ctx.Err() != nil {
			p.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(wait.Every) // the next document, not yet there
	}
}

func (p *page) text(sel string) string {
	p.t.Helper()
	return js[string](p, fmt.Sprintf(`(document.querySelector(%q) || {}).innerText || ''`, sel))
}

// open navigates to path and waits for the page's first data.
func (p *page) open(path string) {
	p.t.Helper()
	p.do("open "+path, chromedp.Navigate(p.base+path))
	p.until("the page's data", `document.body.dataset.ready === '1'`)
}

// shot saves a screenshot of the whole page under name: into docs/ with
// UPDATE_SCREENSHOT=1 (the README shows them), else into a temporary
// directory, so that a run leaves the repository as it was.
func (p *page) shot(name string) {
	p.t.Helper()
	b, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatal(err)
	}
	dst := filepath.Join(p.t.TempDir(), name)
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		dst = filepath.Join("..", "docs", name)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", dst)
}

// apiJSON asks the admin API with the bearer token; body nil is a GET.
func apiJSON(t *testing.T, method, u string, body any, v any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, u, rd)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("%s %s: %d: %v", method, u, resp.StatusCode, err)
		}
	}
	return resp.StatusCode
}

// counts are a row of the API: the columns the page shows.
type counts struct {
	Scene, Group                                               string
	Scans, NewFollowers, UniquePeople, Unfollows, NetFollowers int64
}

func (c counts) cols() map[string]int64 {
	return map[string]int64{"scans": c.Scans, "new_followers": c.NewFollowers, "unique_people": c.UniquePeople, "unfollows": c.Unfollows, "net_followers": c.NetFollowers}
}

func (c *counts) UnmarshalJSON(b []byte) error {
	var m struct {
		Scene        string `json:"scene"`
		Group        string `json:"group"`
		Scans        int64  `json:"scans"`
		NewFollowers int64  `json:"new_followers"`
		UniquePeople int64  `json:"unique_people"`
		Unfollows    int64  `json:"unfollows"`
		NetFollowers int64  `json:"net_followers"`
	}
	err := json.Unmarshal(b, &m)
	*c = counts(m)
	return err
}

// rowNumbers reads the numbers a ranking row shows, by column.
func (p *page) rowNumbers(kind, id string) map[string]int64 {
	p.t.Helper()
	var out map[string]int64
	raw := js[string](p, fmt.Sprintf(`JSON.stringify(Object.fromEntries([...document.querySelectorAll('table.rank tr[data-kind=%q]')]
		.filter((tr) => tr.dataset.id === %q).flatMap((tr) => [...tr.querySelectorAll('td[data-col]')])
		.map((td) => [td.dataset.col, Number(td.querySelector('span').textContent.replace(/[^0-9-]/g, ''))])))`, kind, id))
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		p.t.Fatalf("row %s %q: %v", kind, id, err)
	}
	return out
}

func unsubscribeXML(openid string) []byte {
	return []byte(fmt.Sprintf("<xml><ToUserName>gh_e2e</ToUserName><FromUserName>%s</FromUserName><CreateTime>%d</CreateTime>"+
		"<MsgType>event</MsgType><Event>unsubscribe</Event></xml>", openid, 1700000000+seq.Add(1)))
}

// startUI runs standalone wxgate with ADMIN_TOKEN and the fake WeChat API,
// and returns its WeChat URL and its admin listener's base URL.
func startUI(t *testing.T, env ...string) (wechatURL, base string) {
	t.Helper()
	fake := startFakeAPI(t)
	p := start(t, "ingress", append(append([]string{"WECHAT_TOKEN=" + token, "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0",
		"DATA_DIR=" + t.TempDir(), "ADMIN_TOKEN=" + adminToken, "ACCOUNTS_SECRET_KEY=" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))},
		fake.env()...), env...), "-standalone", "-nats-listen", "")
	admin := p.listenAddr(t, "admin")
	waitReady(t, admin)
	return "http://" + p.listenAddr(t, "http") + "/wechat", "http://" + admin
}

// The /ui/ page in a real headless Chromium, against standalone wxgate
// with ADMIN_TOKEN and the fake WeChat API, as the people who print the
// codes use it: sign in (a wrong code first), make a code through the form
// (permanent by default; the warning for a temporary one) and three from a
// CSV file (one hostile, one bad), scans and follows through signed
// callbacks; the numbers shown for today, by channel and by group, equal
// the API's; a channel's trend; the codes without scans; a reply for a
// code and a keyword reply, the test box, and a conflict with someone
// else's change; English; 390 px wide with nothing to scroll sideways;
// screenshots of both languages at both widths.
func TestUIInBrowser(t *testing.T) {
	wechatURL, base := startUI(t)
	p := newPage(t, base, "/ui/")

	p.do("the sign-in form", chromedp.WaitVisible(chromedp.CSS(`input[name="token"]`)))
	if lang := js[string](p, `document.documentElement.lang`); lang != "zh-CN" || !strings.Contains(p.text("main"), "访问口令") {
		t.Errorf("the sign-in page: lang %q, %q", lang, p.text("main"))
	}
	p.do("a wrong code", chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), "guess"), chromedp.Submit(chromedp.CSS(`input[name="token"]`)),
		chromedp.WaitVisible(chromedp.CSS(`p.error`)))
	if msg := p.text("p.error"); !strings.Contains(msg, "口令不对") {
		t.Errorf("after a wrong code: %q", msg)
	}
	p.do("sign in", chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), adminToken), chromedp.Submit(chromedp.CSS(`input[name="token"]`)))
	p.until("the page's data", `document.body.dataset.ready === '1'`)

	// A code through the form: permanent unless asked; a temporary one
	// says it is not for print.
	p.do("the temporary warning", chromedp.Click(chromedp.CSS(`input[value="temporary"]`)), chromedp.WaitVisible(chromedp.CSS(`p.alert`)))
	if w := p.text("p.alert"); w != "临时码最长30天，过期后扫码无效，不要用于印刷品。" {
		t.Errorf("the temporary warning: %q", w)
	}
	p.do("make a code", chromedp.Click(chromedp.CSS(`input[value="permanent"]`)), chromedp.WaitNotVisible(chromedp.CSS(`p.alert`)),
		chromedp.SendKeys(chromedp.CSS(`input[name="label"]`), "北京朝阳店"), chromedp.SendKeys(chromedp.CSS(`input[name="scene"]`), "store_bj"),
		chromedp.SendKeys(chromedp.CSS(`input[name="group"]`), "门店"), chromedp.Click(chromedp.CSS(`form.create > button`)),
		chromedp.WaitVisible(chromedp.CSS(`li.code[data-scene="store_bj"]`)))
	if card := p.text(`li.code[data-scene="store_bj"]`); !strings.Contains(card, "北京朝阳店") || !strings.Contains(card, "永久码") || !strings.Contains(card, "门店") {
		t.Errorf("the new code's card: %q", card)
	}

	// Three codes from a CSV file: one whose scene and label are markup,
	// temporary for a day (expiring soon); one too long, refused alone.
	hostile := `<img src=x onerror="document.title='xss'">`
	csvFile := filepath.Join(t.TempDir(), "codes.csv")
	csvText := "scene,label,group,permanent,expire_seconds\nmetro_line2,地铁2号线广告,地铁,true,\n" +
		`"` + strings.ReplaceAll(hostile, `"`, `""`) + `",<b>粗体</b>,线上,false,86400` + "\n" + strings.Repeat("x", 65) + ",太长,,true,\n"
	if err := os.WriteFile(csvFile, []byte(csvText), 0o644); err != nil {
		t.Fatal(err)
	}
	p.do("make codes from a CSV file", chromedp.SetUploadFiles(chromedp.CSS(`form.batch input[type="file"]`), []string{csvFile}),
		chromedp.Click(chromedp.CSS(`form.batch > button`)), chromedp.WaitVisible(chromedp.CSS(`table.results`)))
	results := js[[]string](p, `[...document.querySelectorAll('table.results tbody tr')].map((tr) => tr.innerText)`)
	if len(results) != 3 || !strings.Contains(results[0], "已生成") || !strings.Contains(results[1], "已生成") || !strings.Contains(results[2], "64") ||
		!strings.Contains(p.text("#codes-make"), "成功 2 个，失败 1 个") {
		t.Errorf("the batch's results: %q", results)
	}
	p.until("three cards", `document.querySelectorAll('li.code').length === 3`)
	if n := js[int](p, `document.querySelectorAll('img[src="x"], b').length`); n != 0 || js[string](p, `document.title`) == "xss" {
		t.Errorf("a label or scene became markup: %d elements", n)
	}
	if got := js[string](p, fmt.Sprintf(`[...document.querySelectorAll('li.code')].find((li) => li.dataset.scene === %q).querySelector('h4').textContent`, hostile)); got != "<b>粗体</b>" {
		t.Errorf("the hostile code's card shows %q", got)
	}
	if soon := p.text(`li.code.soon`); !strings.Contains(soon, "还有") {
		t.Errorf("the day-long code is not shown as expiring soon: %q", soon)
	}
	// Each card shows its own code's image, loaded with the session.
	var codes struct {
		QRCodes []qrCode `json:"qrcodes"`
	}
	apiJSON(t, "GET", base+"/api/qrcodes", nil, &codes)
	for _, c := range codes.QRCodes {
		p.until("the image of "+c.Scene, fmt.Sprintf(`[...document.querySelectorAll('li.code')].some((li) => li.dataset.scene === %q &&
			li.querySelector('img').complete && li.querySelector('img').naturalWidth > 0 && li.querySelector('img').src.includes(%q))`, c.Scene, url.QueryEscape(c.Ticket)))
	}

	// Scans and follows through WeChat's side: store_bj 4 scans by 3
	// followers, 2 follows, 1 of them unfollowing; metro_line2 1 and 1.
	s := wechat.Sender{Token: token}
	now := time.Now().Unix()
	for i, who := range []string{"o_ui_1", "o_ui_2", "o_ui_3", "o_ui_1"} {
		post(t, s, wechatURL, scanXML(who, "store_bj", now+int64(i)))
	}
	for _, m := range [][]byte{subscribeXML("o_ui_4", "store_bj"), subscribeXML("o_ui_5", "store_bj"), unsubscribeXML("o_ui_5"),
		scanXML("o_ui_6", "metro_line2", now), subscribeXML("o_ui_7", "metro_line2")} {
		post(t, s, wechatURL, m)
	}
	var today struct {
		TimeZone string `json:"time_zone"`
		Points   []struct {
			Start string `json:"start"`
		} `json:"points"`
	}
	apiJSON(t, "GET", base+"/api/series?step=day&from=2000-01-01&to=2000-01-01", nil, &today)
	loc, err := time.LoadLocation(today.TimeZone)
	if err != nil {
		t.Fatalf("the API's time_zone %q: %v", today.TimeZone, err)
	}
	day := time.Now().In(loc).Format("2006-01-02")
	period := "from=" + day + "&to=" + day
	var scenes struct{ Scenes []counts }
	wait.For(t, wait.Long, wait.Every, func() error {
		apiJSON(t, "GET", base+"/api/scenes?"+period, nil, &scenes)
		for _, c := range scenes.Scenes {
			if c.Scene == "store_bj" && c.Scans == 6 && c.Unfollows == 1 {
				return nil
			}
		}
		return fmt.Errorf("today's scenes: %+v", scenes.Scenes)
	})

	// The numbers shown for today are the API's, channel by channel.
	check := func(kind, apiPath, list string) {
		t.Helper()
		var body map[string]json.RawMessage
		var rows []counts
		apiJSON(t, "GET", base+apiPath+"?"+period+"&compare=previous", nil, &body)
		if err := json.Unmarshal(body[list], &rows); err != nil || len(rows) < 2 {
			t.Fatalf("%s: %s %v", apiPath, body[list], err)
		}
		for _, c := range rows {
			id := c.Scene
			if kind == "group" {
				id = c.Group
			}
			p.until("the row of "+id, fmt.Sprintf(`[...document.querySelectorAll('table.rank tr')].some((tr) => tr.dataset.id === %q)`, id))
			got, want := p.rowNumbers(kind, id), c.cols()
			for col, n := range want {
				if got[col] != n {
					t.Errorf("%s %q, %s: the page shows %d, the API %d", kind, id, col, got[col], n)
				}
			}
		}
	}
	p.do("today", chromedp.Click(chromedp.CSS(`button[data-period="today"]`)))
	p.until("today's ranking", `document.querySelector('table.rank tr[data-id="store_bj"] td[data-col="scans"]')?.textContent.startsWith('6')`)
	check("scene", "/api/scenes", "scenes")
	if tile := p.text(`.tile[data-col="scans"] strong`); tile != "8" {
		t.Errorf("today's scans of every channel: the tile shows %q, want 8", tile)
	}

	// One channel's trend, then the groups, then the codes nobody scanned.
	p.do("store_bj's trend", chromedp.Click(chromedp.CSS(`tr[data-id="store_bj"] th button`)))
	p.until("store_bj's trend", `document.querySelector('#trend h3').textContent.includes('北京朝阳店') && document.querySelector('.tile[data-col="scans"] strong').textContent === '6'`)
	if n := js[int](p, `document.querySelectorAll('#trend svg rect.bar').length`); n != 24 {
		t.Errorf("today's trend has %d bars, want one an hour", n)
	}
	p.do("the groups", chromedp.Click(chromedp.CSS(`button[data-view="groups"]`)))
	check("group", "/api/groups", "groups")
	p.do("the codes without scans", chromedp.Click(chromedp.CSS(`button[data-view="idle"]`)))
	p.until("the idle view", fmt.Sprintf(`[...document.querySelectorAll('table.rank tr')].some((tr) => tr.dataset.id === %q) &&
		!document.querySelector('table.rank tr[data-id="store_bj"]')`, hostile))
	p.do("back to the channels", chromedp.Click(chromedp.CSS(`button[data-view="scenes"]`)))
	p.until("the channels", `!!document.querySelector('table.rank tr[data-id="store_bj"]')`)

	// The rules API comes with issue 21's wiring: until this listener
	// serves it, the page shows no rules and there is nothing to test.
	if code := apiJSON(t, "GET", base+"/api/rules", nil, nil); code == http.StatusNotFound {
		t.Log("GET /api/rules is 404 on this build: the page's rules (a reply per code, keyword replies, the test box) are not tested")
	} else {
		rulesOnPage(t, p, wechatURL)
	}

	accountsOnPage(t, p)

	// The scans the rules' part sent are counted a moment later: the card
	// and the API agree once they are.
	var bj qrCode
	wait.For(t, wait.Long, wait.Every, func() error {
		apiJSON(t, "GET", base+"/api/qrcodes/store_bj", nil, &bj)
		p.open("/ui/?period=today")
		if card, want := p.text(`li.code[data-scene="store_bj"] .counts`), fmt.Sprintf("累计扫码 %d 次 · 新增关注 %d", bj.Scans, bj.NewFollowers); card != want {
			return fmt.Errorf("store_bj's card shows %q, want %q (the API's)", card, want)
		}
		return nil
	})
	if bj.Scans < 6 {
		t.Errorf("store_bj: %d scans, want at least 6", bj.Scans)
	}
	p.shot("ui.png")
	// The language link keeps the period.
	p.do("switch to English", chromedp.Click(chromedp.CSS(`#lang`)))
	p.until("the English page", `document.documentElement.lang === 'en' && location.search.includes('period=today') && document.body.dataset.ready === '1'`)
	if lang, h2 := js[string](p, `document.documentElement.lang`), p.text("#channels h2"); lang != "en" || h2 != "Channels" {
		t.Errorf("English: lang %q, %q", lang, h2)
	}
	check("scene", "/api/scenes", "scenes")
	p.shot("ui-en.png")

	// A phone: nothing scrolls sideways; the cards are one column.
	p.do("390 px", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(1), chromedp.EmulateMobile))
	for _, lang := range []string{"", "&lang=en"} {
		p.open("/ui/?period=today" + lang)
		if w := js[[]int](p, `[document.documentElement.scrollWidth, window.innerWidth]`); w[0] > w[1] || w[1] != 390 {
			t.Errorf("390 px%s: the page is %d px wide in a %d px window", lang, w[0], w[1])
		}
		if cols := js[int](p, `new Set([...document.querySelectorAll('li.code')].map((li) => li.offsetLeft)).size`); cols != 1 {
			t.Errorf("390 px%s: the cards are in %d columns", lang, cols)
		}
		check("scene", "/api/scenes", "scenes")
		p.shot(map[string]string{"": "ui-phone.png", "&lang=en": "ui-phone-en.png"}[lang])
	}
}

// rulesOnPage edits the rules through the page: a reply on store_bj's card
// (which a real scan then gets), a keyword reply tried in the test box, and
// a save over someone else's change, which the page refuses and reloads.
func rulesOnPage(t *testing.T, p *page, wechatURL string) {
	t.Helper()
	const welcome = "欢迎光临{label}！"
	card := `li.code[data-scene="store_bj"]`
	p.do("a reply for store_bj", chromedp.Click(chromedp.CSS(card+` details.reply summary`)),
		chromedp.SendKeys(chromedp.CSS(card+` details.reply textarea`), welcome), chromedp.Click(chromedp.CSS(card+` details.reply button`)),
		chromedp.WaitVisible(chromedp.CSS(card+` .saved`)))
	var rules struct {
		Revision uint64           `json:"revision"`
		Rules    []map[string]any `json:"rules"`
	}
	apiJSON(t, "GET", p.base+"/api/rules", nil, &rules)
	if when, _ := rules.Rules[0]["when"].(map[string]any); when["scene"] != "store_bj" {
		t.Fatalf("the rules after the card's save: %+v", rules.Rules)
	}
	s := wechat.Sender{Token: token}
	wait.For(t, wait.Long, wait.Every, func() error {
		if _, body := post(t, s, wechatURL, scanXML("o_ui_rule", "store_bj", time.Now().Unix()+seq.Add(1))); !strings.Contains(body, "欢迎光临北京朝阳店！") {
			return fmt.Errorf("a scan of store_bj is answered %q", body)
		}
		return nil
	})

	p.do("a keyword reply", chromedp.Click(chromedp.CSS(`#rules .actions button.secondary`)),
		chromedp.SendKeys(chromedp.CSS(`#rules .keyword input`), "营业时间"),
		chromedp.SendKeys(chromedp.CSS(`#rules .keyword textarea`), "每天 10:00–22:00"),
		chromedp.SendKeys(chromedp.CSS(`form.try input`), "请问营业时间？"), chromedp.Click(chromedp.CSS(`form.try > button`)),
		chromedp.WaitVisible(chromedp.CSS(`.answer .bubble`)))
	if got := p.text(`.answer`); !strings.Contains(got, "关键词：营业时间") || !strings.Contains(got, "每天 10:00–22:00") {
		t.Errorf("the test box, before saving: %q", got)
	}
	p.do("save the keyword reply", chromedp.Click(chromedp.CSS(`#rules .actions button:not(.secondary)`)),
		chromedp.WaitVisible(chromedp.CSS(`#toast.notice`)))
	p.do("try a scan of store_bj", chromedp.SetValue(chromedp.CSS(`form.try select`), "scan"),
		chromedp.SetValue(chromedp.CSS(`form.try input`), "store_bj"), chromedp.Click(chromedp.CSS(`form.try > button`)))
	p.until("the test box's answer", `document.querySelector('.answer').innerText.includes('欢迎光临北京朝阳店！')`)

	// Someone else changes the rules; the page's next save is refused,
	// says so, and shows theirs.
	apiJSON(t, "GET", p.base+"/api/rules", nil, &rules)
	theirs := append(rules.Rules, map[string]any{"name": "他们的规则", "when": map[string]any{"keyword": "优惠"}, "reply": map[string]any{"type": "text", "content": "满100减20"}})
	req, _ := http.NewRequest("PUT", p.base+"/api/rules", strings.NewReader(mustJSON(map[string]any{"rules": theirs})))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("If-Match", strconv.FormatUint(rules.Revision, 10))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("someone else's change: %v %v", resp, err)
	}
	p.do("a save over their change", chromedp.Click(chromedp.CSS(`#rules .actions button:not(.secondary)`)),
		chromedp.WaitVisible(chromedp.CSS(`#toast.error`)))
	if msg := p.text(`#toast`); !strings.Contains(msg, "有人刚刚修改了回复规则") {
		t.Errorf("the conflict: %q", msg)
	}
	p.until("their rule on the page", `[...document.querySelectorAll('#rules .keyword input')].some((i) => i.value === '优惠')`)
}

// accountsOnPage adds a second account; the page then offers both, and
// the other one's page has its own numbers (none) and no codes (it has
// no AppSecret).
func accountsOnPage(t *testing.T, p *page) {
	t.Helper()
	// The accounts API comes with issue 19's wiring.
	if code := apiJSON(t, "GET", p.base+"/api/accounts", nil, nil); code == http.StatusNotFound {
		t.Log("GET /api/accounts is 404 on this build: the account selector is not tested")
		return
	}
	if code := apiJSON(t, "POST", p.base+"/api/accounts", map[string]string{"id": "shop", "name": "门店服务号", "token": "shoptoken1"}, nil); code != 201 {
		t.Fatalf("POST /api/accounts: %d", code)
	}
	p.open("/ui/?period=today")
	if opts := js[[]string](p, `[...document.querySelectorAll('#account option')].map((o) => o.textContent)`); len(opts) != 2 || opts[1] != "门店服务号 (shop)" {
		t.Fatalf("the account selector offers %q", opts)
	}
	// ready cleared first: the old page has the new URL (replaceState)
	// and ready=1 until the reload replaces it.
	js[any](p, `(() => { delete document.body.dataset.ready; const s = document.querySelector('#account'); s.value = 'shop'; s.dispatchEvent(new Event('change')); })()`)
	p.until("the shop's page", `location.search.includes('account=shop') && document.body.dataset.ready === '1'`)
	if rank, codes := p.text("#rank"), p.text("#codelist"); !strings.Contains(rank, "这个时间段还没有扫码") || !strings.Contains(codes, "AppSecret") {
		t.Errorf("the shop's page: %q, %q", rank, codes)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// With 10 000 scenes (and their codes), the page still answers at once:
// the ranking of the last 30 days with its change is shown within a
// second of the navigation (the best of three loads, on a shared 2-core
// machine; each is logged), search finds one scene, and paging works.
func TestUIWith10000Scenes(t *testing.T) {
	const n = 10000
	wechatURL, base := startUI(t)
	scene := func(i int) string { return fmt.Sprintf("store_%05d", i) }
	// The codes, a thousand a batch.
	start := time.Now()
	for b := 0; b < n; b += 1000 {
		var rows []string
		for i := b; i < b+1000; i++ {
			rows = append(rows, fmt.Sprintf(`{"scene":%q,"label":"门店_%d","group":"门店%d","permanent":true}`, scene(i), i, i%20))
		}
		var res struct{ Results []struct{ Status int } }
		if code := apiJSON(t, "POST", base+"/api/qrcodes/batch", json.RawMessage(`{"codes":[`+strings.Join(rows, ",")+`]}`), &res); code != 200 || len(res.Results) != 1000 || res.Results[999].Status != 201 {
			t.Fatalf("batch %d: %d %+v", b, code, res.Results[len(res.Results)-1:])
		}
	}
	t.Logf("%d codes made in %v", n, time.Since(start).Round(time.Millisecond))
	// A scan of every scene, eight callbacks at a time.
	start = time.Now()
	s := wechat.Sender{Token: token}
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				code, _, err := s.Post(http.DefaultClient, wechatURL, scanXML(fmt.Sprintf("o_%d", i), scene(i), time.Now().Unix()), time.Now(), "n"+strconv.Itoa(i))
				if err != nil || code != 200 {
					t.Errorf("scan %d: %d %v", i, code, err)
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	var all struct{ Total int }
	wait.For(t, 3*wait.Long, 100*time.Millisecond, func() error {
		apiJSON(t, "GET", base+"/api/scenes?limit=1&sort=scans", nil, &all)
		var top struct{ Scenes []counts }
		apiJSON(t, "GET", base+"/api/scenes?limit=1&sort=scans&order=asc", nil, &top)
		if all.Total != n || len(top.Scenes) == 0 || top.Scenes[0].Scans != 1 {
			return fmt.Errorf("%d scenes, the least scanned %+v", all.Total, top.Scenes)
		}
		return nil
	})
	t.Logf("%d scans sent and counted in %v", n, time.Since(start).Round(time.Millisecond))

	// What the page waits for, asked directly: the API's share of it.
	now := time.Now().UTC()
	day := func(d int) string { return now.AddDate(0, 0, d).Format("2006-01-02") }
	for _, q := range []string{"/api/scenes?compare=previous&limit=20&from=" + day(-29), "/api/series?step=day&from=" + day(-59)} {
		for range 3 {
			start := time.Now()
			var v any
			apiJSON(t, "GET", base+q+"&to="+day(0), nil, &v)
			t.Logf("GET %s answered in %v", q, time.Since(start).Round(time.Millisecond))
		}
	}

	p := newPage(t, base, "/ui/")
	p.do("sign in", chromedp.WaitVisible(chromedp.CSS(`input[name="token"]`)), chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), adminToken),
		chromedp.Submit(chromedp.CSS(`input[name="token"]`)))
	p.until("the page's data", `document.body.dataset.ready === '1'`)
	best := time.Hour
	for i := range 3 {
		p.do("reload", chromedp.Navigate(base+"/ui/?period=30d"))
		// performance.now() counts from the navigation's start.
		ms, err := chromedp.Run(p.ctx, chromedp.Poll[float64](`document.querySelectorAll('table.rank tbody tr').length === 20 &&
			document.querySelector('.pager span').textContent.includes('10,000') && performance.now()`, chromedp.WithPollingInterval(5*time.Millisecond), chromedp.WithPollingTimeout(wait.Long)))
		if err != nil {
			t.Fatalf("load %d: %v", i, err)
		}
		all, _ := chromedp.Run(p.ctx, chromedp.Poll[float64](`document.body.dataset.ready === '1' && performance.now()`, chromedp.WithPollingTimeout(wait.Long)))
		d := time.Duration(ms * float64(time.Millisecond))
		t.Logf("load %d with %d scenes and codes: the ranking in %v, every part (codes, rules) in %v", i+1, n, d.Round(time.Millisecond),
			time.Duration(all*float64(time.Millisecond)).Round(time.Millisecond))
		best = min(best, d)
	}
	if best > time.Second {
		t.Errorf("with %d scenes the ranking shows after %v at best, want ≤ 1 s", n, best)
	}
	p.do("search", chromedp.SendKeys(chromedp.CSS(`#search`), "门店_9999"))
	p.until("one match", `document.querySelectorAll('table.rank tbody tr').length === 1 && document.querySelector('table.rank tbody tr').dataset.id === 'store_09999'`)
	js[any](p, `(() => { const i = document.querySelector('#search'); i.value = ''; i.dispatchEvent(new Event('input')); })()`)
	p.until("every scene again", `document.querySelector('.pager span')?.textContent.includes('10,000')`)
	p.do("the next page", chromedp.Click(chromedp.CSS(`.pager button:last-child`)))
	p.until("the second page", `document.querySelector('.pager span').textContent.startsWith('第 21–40 个')`)
	// A group's 30-day trend: the API has no series per group, so the page
	// asks for each day's groups (60 days with the period before).
	p.do("the groups", chromedp.Click(chromedp.CSS(`button[data-view="groups"]`)))
	p.until("20 groups", `document.querySelectorAll('table.rank tbody tr').length === 20`)
	start = time.Now()
	p.do("a group's trend", chromedp.Click(chromedp.CSS(`tr[data-id="门店0"] th button`)))
	p.until("the group's trend", `document.querySelector('#trend h3').textContent.includes('门店0') && document.querySelector('.tile[data-col="scans"] strong')?.textContent === '500'`)
	t.Logf("a group's 30-day trend in %v", time.Since(start).Round(time.Millisecond))
	if n := js[int](p, `document.querySelectorAll('li.code').length`); n != 24 {
		t.Errorf("%d code cards on the page, want a page of 24", n)
	}
}
