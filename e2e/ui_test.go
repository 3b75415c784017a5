package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// The /ui/ page in a real headless Chromium, against standalone wxgate
// with ADMIN_TOKEN set and the fake WeChat API: sign in through the page,
// create a code through its form; the page then shows the scene and its
// image (loaded with the session cookie), and after scans, their counts.
// With UPDATE_SCREENSHOT=1 the screenshot goes to docs/ui.png, which the
// README shows; otherwise to the test's temporary directory, so that a run
// leaves the repository as it was.
func TestUIInBrowser(t *testing.T) {
	path := chromium(t)
	const adminToken = "ui-admin-token"
	fake := startFakeAPI(t)
	p := start(t, "ingress", append([]string{"WECHAT_TOKEN=" + token, "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0",
		"DATA_DIR=" + t.TempDir(), "ADMIN_TOKEN=" + adminToken}, fake.env()...), "-standalone", "-nats-listen", "")
	url := "http://" + p.listenAddr(t, "http") + "/wechat"
	base := "http://" + p.listenAddr(t, "admin")
	waitReady(t, strings.TrimPrefix(base, "http://"))

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()

	// imageLoaded waits until a code's <img> has a decoded picture: the
	// browser fetched the PNG with its cookie (no bearer header).
	imageLoaded := func(scene string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(() => { const i = document.querySelector('li.code[data-scene=%q] img'); return !!i && i.complete && i.naturalWidth === 160; })()`, scene))
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	// The first Run starts the browser: no timeout on its context.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/ui/")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(css(`input[name="token"]`))); err != nil {
		t.Fatalf("the login form: %v", err)
	}
	signedOut, err := chromedp.Run(ctx, chromedp.Text(css(`main`)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(signedOut, "spring_poster") || !strings.Contains(signedOut, "Sign in") {
		t.Errorf("the signed-out page shows more than the login: %q", signedOut)
	}
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(css(`input[name="token"]`), adminToken),
		chromedp.Submit(css(`input[name="token"]`)),
		chromedp.WaitVisible(css(`form.create`)),
		chromedp.SendKeys(css(`input[name="scene"]`), "spring_poster"),
		chromedp.SendKeys(css(`input[name="label"]`), "Spring posters, Shanghai metro"),
		chromedp.Submit(css(`input[name="scene"]`)),
		chromedp.WaitVisible(css(`li.code[data-scene="spring_poster"] img`)),
		imageLoaded("spring_poster"),
	); err != nil {
		t.Fatalf("sign in and create through the page: %v", err)
	}

	// A second code through the page (permanent), then scans through
	// WeChat's side, so the chart and the counts have something to show.
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(css(`input[name="scene"]`), "store_counter"),
		chromedp.SendKeys(css(`input[name="label"]`), "Store counters"),
		chromedp.SetValue(css(`select[name="kind"]`), "permanent"),
		chromedp.Submit(css(`input[name="scene"]`)),
		chromedp.WaitVisible(css(`li.code[data-scene="store_counter"] img`)),
	); err != nil {
		t.Fatalf("second code: %v", err)
	}
	s := wechat.Sender{Token: token}
	for i := 0; i < 5; i++ {
		post(t, s, url, scanXML(fmt.Sprintf("o_ui_%d", i), "spring_poster", 1700000100+int64(i)))
	}
	post(t, s, url, subscribeXML("o_ui_new", "spring_poster"))
	for i := 0; i < 3; i++ {
		post(t, s, url, scanXML(fmt.Sprintf("o_ui_c%d", i), "store_counter", 1700000200+int64(i)))
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		req, _ := http.NewRequest("GET", base+"/api/qrcodes/spring_poster", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var c qrCode
		if err := jsonDecode(resp, &c); err != nil || c.Scans != 6 {
			return fmt.Errorf("spring_poster: %+v %v, want 6 scans", c, err)
		}
		return nil
	})

	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(css(`li.code[data-scene="spring_poster"] img`)),
		imageLoaded("spring_poster"),
		imageLoaded("store_counter"),
	); err != nil {
		t.Fatalf("the page after scans: %v", err)
	}
	card, err1 := chromedp.Run(ctx, chromedp.Text(css(`li.code[data-scene="spring_poster"]`)))
	chart, err2 := chromedp.Run(ctx, chromedp.Text(css(`table.chart`)))
	shot, err3 := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(card, "6 scans") || !strings.Contains(card, "1 new followers") || !strings.Contains(card, "Shanghai metro") {
		t.Errorf("the code's card: %q", card)
	}
	if !strings.Contains(chart, "spring_poster") || !strings.Contains(chart, "store_counter") {
		t.Errorf("the chart: %q", chart)
	}
	dst := filepath.Join(t.TempDir(), "ui.png")
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		dst = "../docs/ui.png"
	}
	if err := os.WriteFile(dst, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", dst)
}
