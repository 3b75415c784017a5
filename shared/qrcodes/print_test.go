package qrcodes

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	qr "github.com/piglig/go-qr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

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

// Two accounts with the same scenes keep separate codes, made with their
// own AppIDs; an account without an AppSecret is 503, an unknown one 404;
// a code stored by a version before accounts (its key unprefixed) is the
// default account's.
func TestAccountsKeepTheirCodes(t *testing.T) {
	e := newEnv(t)
	p := e.process(t, "p", false)
	ctx := context.Background()
	if _, err := p.reg.Create(ctx, accounts.Account{ID: "shop", Token: "tokr", AppID: appR, AppSecret: secretR}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.reg.Create(ctx, accounts.Account{ID: "nosecret", Token: "tokn", AppID: "wx_n"}); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { _, a := p.reg.Get("shop"); _, b := p.reg.Get("nosecret"); return a && b })
	h := p.Handler("")
	var d, s Code
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"poster","permanent":true,"label":"默认"}`, &d); code != 201 {
		t.Fatalf("default: %d", code)
	}
	if code := do(t, h, "POST", "/api/qrcodes?account=shop", `{"scene":"poster","permanent":true,"label":"门店"}`, &s); code != 201 {
		t.Fatalf("shop: %d (the same scene in another account is another code)", code)
	}
	if d.Ticket == s.Ticket || s.ImageURL != ImageURL("shop", "poster", s.Ticket) || !strings.HasSuffix(s.ImageURL, "&account=shop") {
		t.Errorf("default %+v, shop %+v", d, s)
	}
	if c := e.fake.Calls(); c.Apps[appQ].Calls[wechatapitest.QRCodeCreate] != 1 || c.Apps[appR].Calls[wechatapitest.QRCodeCreate] != 1 {
		t.Errorf("each account asks with its own AppID: %+v", c.Apps)
	}
	var list struct{ QRCodes []Listed }
	if do(t, h, "GET", "/api/qrcodes?account=shop", "", &list); len(list.QRCodes) != 1 || list.QRCodes[0].Label != "门店" {
		t.Errorf("shop's list: %+v", list.QRCodes)
	}
	decodes(t, get(h, s.ImageURL), s.URL)
	var l Listed
	if do(t, h, "GET", "/api/qrcodes/poster", "", &l); l.Ticket != d.Ticket {
		t.Errorf("default's poster: %+v", l)
	}
	for path, want := range map[string]int{
		"/api/qrcodes?account=nosecret":               503,
		"/api/qrcodes/poster/image?account=nosecret":  503,
		"/api/qrcodes/poster?account=gone":            404,
		"/api/qrcodes/poster/image?account=Shop":      404,
		"/api/qrcodes/archive.zip?account=%2E%2E%2Fa": 404,
	} {
		if w := get(h, path); w.Code != want {
			t.Errorf("%s: %d %s, want %d", path, w.Code, w.Body.String(), want)
		}
	}
	// A code as the version before accounts stored it is the default's.
	kv, err := p.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := `{"scene":"legacy","label":"旧","permanent":true,"ticket":"gQold","url":"http://weixin.qq.com/q/old","created_at":"2026-01-01T00:00:00Z","image_url":"/api/qrcodes/legacy/image?ticket=gQold"}`
	if _, err := kv.Put(ctx, "p."+sceneB64("legacy"), []byte(old)); err != nil {
		t.Fatal(err)
	}
	if code := do(t, h, "GET", "/api/qrcodes/legacy", "", &l); code != 200 || l.Label != "旧" {
		t.Errorf("the old code: %d %+v", code, l)
	}
	if code := do(t, h, "GET", "/api/qrcodes/legacy?account=shop", "", &l); code != 404 {
		t.Errorf("the old code read as shop's: %d", code)
	}
	if code := do(t, h, "POST", "/api/qrcodes", `{"scene":"legacy","permanent":true}`, &d); code != 200 || d.Ticket != "gQold" {
		t.Errorf("the old permanent code made again: %d %+v", code, d)
	}
}

// Groups are stored with the code, shown, filtered on; Labels gives each
// scene's newest label and group per account, and follows new codes.
func TestGroupsAndLabels(t *testing.T) {
	e := newEnv(t)
	p := e.process(t, "p", false)
	ctx := context.Background()
	if _, err := p.reg.Create(ctx, accounts.Account{ID: "shop", Token: "tokr", AppID: appR, AppSecret: secretR}); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { _, ok := p.reg.Get("shop"); return ok })
	h := p.Handler("")
	for _, body := range []string{
		`{"scene":"bj","label":"北京朝阳","group":"门店"}`,
		`{"scene":"sh","label":"上海徐汇","group":"门店"}`,
		`{"scene":"metro","label":"地铁","group":"地铁"}`,
		`{"scene":"plain"}`,
	} {
		if code := do(t, h, "POST", "/api/qrcodes", body, nil); code != 201 {
			t.Fatalf("%s: %d", body, code)
		}
	}
	var list struct{ QRCodes []Listed }
	do(t, h, "GET", "/api/qrcodes?group="+url.QueryEscape("门店"), "", &list)
	var scenes []string
	for _, c := range list.QRCodes {
		scenes = append(scenes, c.Scene)
	}
	if slices.Sort(scenes); !slices.Equal(scenes, []string{"bj", "sh"}) || list.QRCodes[0].Group != "门店" {
		t.Errorf("group 门店: %v", list.QRCodes)
	}
	if do(t, h, "GET", "/api/qrcodes?group=", "", &list); len(list.QRCodes) != 1 || list.QRCodes[0].Scene != "plain" {
		t.Errorf("no group: %v", list.QRCodes)
	}
	labels, err := p.Labels(ctx, accounts.DefaultID)
	if err != nil {
		t.Fatal(err)
	}
	if labels["bj"] != (Label{Label: "北京朝阳", Group: "门店"}) || labels["metro"] != (Label{Label: "地铁", Group: "地铁"}) || labels["plain"] != (Label{}) || len(labels) != 4 {
		t.Errorf("labels %v", labels)
	}
	// A newer code of a scene, another account's code: followed, apart.
	e.clock.Add(time.Second)
	do(t, h, "POST", "/api/qrcodes", `{"scene":"bj","label":"北京朝阳 新","group":"门店二"}`, nil)
	do(t, h, "POST", "/api/qrcodes?account=shop", `{"scene":"bj","label":"shop","group":"g"}`, nil)
	until(t, func() bool {
		l, _ := p.Labels(ctx, accounts.DefaultID)
		s, _ := p.Labels(ctx, "shop")
		return l["bj"] == Label{Label: "北京朝阳 新", Group: "门店二"} && s["bj"] == Label{Label: "shop", Group: "g"} && len(s) == 1
	})
	// Another process reads the same labels.
	q := e.service(t, "q", false)
	if l, err := q.Labels(ctx, accounts.DefaultID); err != nil || l["sh"] != (Label{Label: "上海徐汇", Group: "门店"}) {
		t.Errorf("another process: %v %v", l, err)
	}
}

// pngPHYs returns a PNG's pHYs pixels per metre, 0 without the chunk.
func pngPHYs(b []byte) uint32 {
	i := bytes.Index(b, []byte("pHYs"))
	if i < 0 || b[i+12] != 1 {
		return 0
	}
	return binary.BigEndian.Uint32(b[i+4:])
}

// Print-ready images: PNG at any size from 64 to 4096 px at 300 dpi, a
// Chinese caption drawn (not boxes) under a code that still decodes, SVG
// with a viewBox and rects, Chinese file names, and a dead code refused.
func TestPrintReadyImages(t *testing.T) {
	e := newEnv(t)
	svc := e.service(t, "p", false)
	h := svc.Handler("")
	var c Code
	do(t, h, "POST", "/api/qrcodes", `{"scene":"store_bj","label":"门店_北京朝阳","expire_seconds":864000}`, &c)
	if c.ExpiringSoon {
		t.Error("a 10-day code is expiring_soon when made")
	}
	for _, size := range []int{64, 4096} {
		w := get(h, "/api/qrcodes/store_bj/image?size="+itoa(size))
		if ppm := pngPHYs(w.Body.Bytes()); ppm != 11811 {
			t.Errorf("%d px: pHYs %d px/m, want 11811 (300 dpi)", size, ppm)
		}
		decodes(t, w, c.URL)
	}
	// SVG: vector modules, the caption as text in a CJK font stack.
	w := get(h, "/api/qrcodes/store_bj/image?format=svg&caption=1&size=800")
	body := w.Body.String()
	if w.Code != 200 || w.Header().Get("Content-Type") != "image/svg+xml" || !regexp.MustCompile(`viewBox="0 0 \d+ [\d.]+" width="800"`).MatchString(body) ||
		strings.Count(body, "<rect") < 50 || !strings.Contains(body, ">门店_北京朝阳</text>") || !strings.Contains(body, "PingFang SC") || !strings.Contains(body, "WenQuanYi") ||
		!strings.HasSuffix(w.Header().Get("Content-Disposition"), ".svg") {
		t.Errorf("svg: %d %v\n%.400s", w.Code, w.Header(), body)
	}
	// Within 7 days of its end, the view says so; expired: 410 unless
	// asked for all the same.
	e.clock.Add(4 * 24 * time.Hour)
	var l Listed
	if do(t, h, "GET", "/api/qrcodes/store_bj", "", &l); !l.ExpiringSoon || l.Expired {
		t.Errorf("6 days left: %+v", l)
	}
	e.clock.Add(7 * 24 * time.Hour)
	if do(t, h, "GET", "/api/qrcodes/store_bj", "", &l); l.ExpiringSoon || !l.Expired {
		t.Errorf("expired: %+v", l)
	}
	if w := get(h, "/api/qrcodes/store_bj/image"); w.Code != 410 || !strings.Contains(w.Body.String(), "expired") {
		t.Errorf("expired: %d %s", w.Code, w.Body.String())
	}
	decodes(t, get(h, "/api/qrcodes/store_bj/image?expired=1"), c.URL)

	// A PNG caption, drawn from a CJK font.
	if src := NewFonts("").Source(); strings.HasPrefix(src, "no CJK font") && os.Getenv("E2E_REQUIRE") != "1" {
		// CI installs fonts-wqy-microhei; a machine without a CJK font
		// tests the refusal instead (TestCaptionFonts).
		t.Skipf("captions: %s", src)
	}
	w = get(h, "/api/qrcodes/store_bj/image?size=600&caption=1&expired=1")
	if w.Code != 200 {
		t.Fatalf("caption: %d %s", w.Code, w.Body.String())
	}
	want := `attachment; filename*=UTF-8''%E9%97%A8%E5%BA%97_%E5%8C%97%E4%BA%AC%E6%9C%9D%E9%98%B3.png`
	if cd := w.Header().Get("Content-Disposition"); cd != want {
		t.Errorf("Content-Disposition %q, want %q", cd, want)
	}
	img, err := png.Decode(bytes.NewReader(w.Body.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 600 || b.Dy() <= 600 {
		t.Errorf("captioned: %v, want 600 wide and taller", b)
	}
	if got, err := qr.Decode(img); err != nil || got != c.URL {
		t.Errorf("the captioned code decodes to %q, %v", got, err)
	}
	if dark(img, image.Rect(0, 600, 600, img.Bounds().Dy())) < 200 {
		t.Error("nothing drawn under the code")
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// dark counts the dark pixels of img in r.
func dark(img image.Image, r image.Rectangle) int {
	n := 0
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if g, _, _, _ := img.At(x, y).RGBA(); g < 0x8000 {
				n++
			}
		}
	}
	return n
}

// Caption fonts: without a CJK font a Chinese caption is refused with the
// way out (never boxes) while Latin is drawn with Go's font; a character
// no font has is refused even with one; an unreadable QR_CAPTION_FONT says
// so.
func TestCaptionFonts(t *testing.T) {
	none := &Fonts{}
	none.once.Do(func() { none.latn, _ = opentype.Parse(goregular.TTF) }) // a machine without a CJK font
	if _, err := none.Render("http://weixin.qq.com/q/x", Image{Format: FormatPNG, Size: 200, Caption: "Store 12"}); err != nil {
		t.Errorf("Latin without a CJK font: %v", err)
	}
	_, err := none.Render("http://weixin.qq.com/q/x", Image{Format: FormatPNG, Size: 200, Caption: "门店"})
	var ge *GlyphError
	if !errors.As(err, &ge) || !ge.NoCJK || !strings.Contains(err.Error(), "QR_CAPTION_FONT") || !strings.Contains(err.Error(), "fonts-wqy-microhei") {
		t.Errorf("Chinese without a CJK font: %v", err)
	}
	if code, _ := Problem(err); code != 503 {
		t.Errorf("status %d, want 503", code)
	}
	if code, _ := Problem(&GlyphError{Missing: "☃"}); code != 400 {
		t.Errorf("a glyph no font has, with a CJK font: %d", code)
	}
	bad := NewFonts("/nonexistent/font.ttc")
	if err := bad.Check("x"); !errors.Is(err, ErrFont) || !strings.Contains(err.Error(), "QR_CAPTION_FONT") {
		t.Errorf("unreadable QR_CAPTION_FONT: %v", err)
	}
	if code, _ := Problem(bad.Check("x")); code != 503 {
		t.Errorf("unreadable QR_CAPTION_FONT: %d", code)
	}
	// The machine's own fonts: CI installs fonts-wqy-microhei.
	f := NewFonts("")
	if f.Source() == "" || strings.HasPrefix(f.Source(), "no CJK font") {
		t.Skipf("no CJK font on this machine: %s", f.Source())
	}
	if err := f.Check("门店 Store ①"); err != nil {
		t.Errorf("with %s: %v", f.Source(), err)
	}
}

// A batch from JSON or CSV: each code gets its own status in input order,
// the bad rows say why, the good ones are made; 45009 stops the rest.
func TestBatch(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	post := func(body, ctype string) (int, []Result) {
		t.Helper()
		r := httptest.NewRequest("POST", "/api/qrcodes/batch", strings.NewReader(body))
		r.Header.Set("Content-Type", ctype)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var out struct{ Results []Result }
		_ = json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out.Results
	}
	code, res := post(`{"codes":[{"scene":"a","group":"门店"},{"scene":""},{"scene":"p","permanent":true},{"scene":"p","permanent":true},{"scene":"b","expires":1}]}`, "application/json")
	if code != 200 || len(res) != 5 {
		t.Fatalf("json: %d %+v", code, res)
	}
	for i, want := range []int{201, 400, 201, 200, 400} {
		if i == 2 || i == 3 { // one permanent code asked twice at once: one of them makes it
			want = 401 - res[5-i].Status
		}
		if res[i].Status != want {
			t.Errorf("json %d: %+v, want %d", i, res[i], want)
		}
	}
	if !strings.Contains(res[1].Error, "codes[1]") || !strings.Contains(res[4].Error, "expires") || res[0].Error != "" {
		t.Errorf("errors: %+v", res)
	}
	csvBody := "\uFEFFscene,label,group,permanent,expire_seconds\n" +
		"门店_北京朝阳,北京朝阳,门店,false,86400\n" +
		"sh,\"上海, 徐汇\",门店,,\n" +
		"bad,x,门店,maybe,\n" +
		"short,x\n" +
		"long,x,g,false,59\n" +
		"perm,,,true,\n"
	code, res = post(csvBody, "text/csv; charset=utf-8")
	if code != 200 || len(res) != 6 {
		t.Fatalf("csv: %d %+v", code, res)
	}
	for i, want := range []int{201, 201, 400, 400, 400, 201} {
		if res[i].Status != want {
			t.Errorf("csv %d: %+v, want %d", i, res[i], want)
		}
	}
	if res[0].Scene != "门店_北京朝阳" || !strings.Contains(res[2].Error, "line 4: permanent") || !strings.Contains(res[3].Error, "line 5") || !strings.Contains(res[4].Error, "expire_seconds") {
		t.Errorf("csv results: %+v", res)
	}
	var list struct{ QRCodes []Listed }
	do(t, h, "GET", "/api/qrcodes?group="+url.QueryEscape("门店"), "", &list)
	if len(list.QRCodes) != 3 {
		t.Errorf("group 门店 has %d codes, want 3", len(list.QRCodes))
	}
	for _, bad := range []struct{ body, ctype string }{
		{`{"codes":[]}`, "application/json"},
		{`{"code":[{"scene":"a"}]}`, "application/json"},
		{"scene,colour\na,red\n", "text/csv"},
		{"label\nx\n", "text/csv"},
		{"scene,scene\na,a\n", "text/csv"},
		{"scene\n\"a\n", "text/csv"},
		{`{"codes":[` + strings.Repeat(`{"scene":"x"},`, MaxBatch) + `{"scene":"y"}]}`, "application/json"},
		{"scene\n" + strings.Repeat("x\n", MaxBatch+1), "text/csv"},
	} {
		if code, _ := post(bad.body, bad.ctype); code != 400 {
			t.Errorf("%.40q: %d, want 400", bad.body, code)
		}
	}
	// 45009 after the quota is spent: the rest are not asked for.
	before := e.fake.Calls().Calls[wechatapitest.QRCodeCreate]
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: 45009, Count: 1000})
	var codes []string
	for i := 0; i < 40; i++ {
		codes = append(codes, `{"scene":"q`+itoa(i)+`"}`)
	}
	code, res = post(`{"codes":[`+strings.Join(codes, ",")+`]}`, "application/json")
	if code != 200 || len(res) != 40 {
		t.Fatalf("quota: %d %d", code, len(res))
	}
	asked := e.fake.Calls().Calls[wechatapitest.QRCodeCreate] - before
	if asked > batchCalls {
		t.Errorf("WeChat asked %d times after 45009, at most %d (those in flight)", asked, batchCalls)
	}
	for _, r := range res {
		if r.Status != 502 || !strings.Contains(r.Error, "45009") {
			t.Errorf("%+v", r)
		}
	}
}

// The archive: a ZIP of the live codes' PNGs, one per scene, named by
// label or scene in UTF-8 (flagged), duplicates numbered, of one group
// when asked; expired codes left out.
func TestArchive(t *testing.T) {
	e := newEnv(t)
	h := e.service(t, "p", false).Handler("")
	for _, body := range []string{
		`{"scene":"bj","label":"门店_北京朝阳","group":"门店","permanent":true}`,
		`{"scene":"bj2","label":"门店_北京朝阳","group":"门店","permanent":true}`,
		`{"scene":"a/b","group":"门店","permanent":true}`,
		`{"scene":"old","group":"门店","expire_seconds":60}`,
		`{"scene":"metro","group":"地铁","permanent":true}`,
	} {
		do(t, h, "POST", "/api/qrcodes", body, nil)
	}
	e.clock.Add(2 * time.Minute)
	w := get(h, "/api/qrcodes/archive.zip?group="+url.QueryEscape("门店")+"&size=256")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/zip" || !strings.Contains(w.Header().Get("Content-Disposition"), "filename*=UTF-8''qrcodes-%E9%97%A8%E5%BA%97.zip") {
		t.Fatalf("archive: %d %v %.200s", w.Code, w.Header(), w.Body.String())
	}
	zr, err := zip.NewReader(bytes.NewReader(w.Body.Bytes()), int64(w.Body.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		if f.Flags&0x800 == 0 && f.Name != "a_b.png" {
			t.Errorf("%s: no UTF-8 flag", f.Name)
		}
		rc, _ := f.Open()
		img, err := png.Decode(rc)
		rc.Close()
		if err != nil || img.Bounds().Dx() != 256 {
			t.Errorf("%s: %v", f.Name, err)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a_b.png", "门店_北京朝阳 (2).png", "门店_北京朝阳.png"}) {
		t.Errorf("names %q", names)
	}
	if w := get(h, "/api/qrcodes/archive.zip"); w.Code != 200 {
		t.Errorf("all groups: %d", w.Code)
	} else if zr, _ := zip.NewReader(bytes.NewReader(w.Body.Bytes()), int64(w.Body.Len())); len(zr.File) != 4 {
		t.Errorf("all groups: %d files, want 4", len(zr.File))
	}
	// A scene named archive.zip is its own code, escaped as SceneURL does.
	var c Code
	do(t, h, "POST", "/api/qrcodes", `{"scene":"archive.zip"}`, &c)
	decodes(t, get(h, c.ImageURL), c.URL)
}

func TestAttachment(t *testing.T) {
	for name, want := range map[string]string{
		"poster_a":   `attachment; filename*=UTF-8''poster_a.png`,
		"a/b\\c\x01": `attachment; filename*=UTF-8''a_b_c_.png`,
		"50% off!":   `attachment; filename*=UTF-8''50%25%20off!.png`,
		"  ":         `attachment; filename*=UTF-8''qr.png`,
		"门店 1":       `attachment; filename*=UTF-8''%E9%97%A8%E5%BA%97%201.png`,
	} {
		if got := attachment(name, ".png"); got != want {
			t.Errorf("%q: %s, want %s", name, got, want)
		}
	}
}

// A CSV batch passes the admin listener's guard against what pages make
// browsers send (text/csv is not a type a page can send cross-site
// without a preflight), as the page's own upload would.
func TestBatchCSVThroughAdmin(t *testing.T) {
	e := newEnv(t)
	mux := admin.NewMux(admin.Options{Gatherer: prometheus.NewRegistry()})
	mux.HandleUncleaned(Prefix, e.service(t, "p", false).Handler(""))
	r := httptest.NewRequest("POST", "http://127.0.0.1:8081/api/qrcodes/batch", strings.NewReader("scene,label\nbj,北京\n"))
	r.Header.Set("Content-Type", "text/csv; charset=utf-8")
	r.Header.Set("Origin", "http://127.0.0.1:8081")
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"status":201`) {
		t.Errorf("= %d %s", w.Code, w.Body.String())
	}
}
