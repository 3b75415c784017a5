package e2e

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

// storeRules replaces the default account's rules through an admin
// listener's /api/rules, at the revision it reads first.
func storeRules(t *testing.T, admin string, rs []map[string]any) {
	t.Helper()
	var cur struct {
		Revision uint64 `json:"revision"`
	}
	if code := apiJSON(t, "GET", "http://"+admin+"/api/rules", nil, &cur); code != 200 {
		t.Fatalf("GET /api/rules = %d", code)
	}
	b, _ := json.Marshal(map[string]any{"rules": rs})
	req, _ := http.NewRequest("PUT", "http://"+admin+"/api/rules", strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("If-Match", strconv.FormatUint(cur.Revision, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT /api/rules = %d", resp.StatusCode)
	}
}

// passive is a passive reply as WeChat reads it.
type passive struct {
	MsgType  string
	Content  string
	Image    struct{ MediaId string }
	Articles struct {
		Item []struct{ Title, Url string } `xml:"item"`
	}
}

// answer posts msg and reads the reply: "success" (no reply) is MsgType "".
func answer(t *testing.T, url string, msg []byte) passive {
	t.Helper()
	code, body := post(t, wechat.Sender{Token: token}, url, msg)
	var p passive
	if code != 200 || (body != "success" && xml.Unmarshal([]byte(body), &p) != nil) {
		t.Fatalf("%s = %d %q", msg, code, body)
	}
	return p
}

func text(openid, content string) []byte {
	m := &wechat.Message{ToUserName: "gh_e2e", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "text", Content: content, MsgID: fmt.Sprint(7_000_000 + seq.Add(1))}
	return m.AppendXML(nil)
}

func voice(openid, recognition string) []byte {
	m := &wechat.Message{ToUserName: "gh_e2e", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "voice", MediaID: "m",
		Format: "amr", Recognition: recognition, MsgID: fmt.Sprint(7_000_000 + seq.Add(1))}
	return m.AppendXML(nil)
}

func click(openid, key string) []byte {
	m := &wechat.Message{ToUserName: "gh_e2e", FromUserName: openid, CreateTime: time.Now().Unix() + seq.Add(1), MsgType: "event", Event: "CLICK", EventKey: key}
	return m.AppendXML(nil)
}

func image(openid string) []byte {
	m := &wechat.Message{ToUserName: "gh_e2e", FromUserName: openid, CreateTime: time.Now().Unix(), MsgType: "image", PicURL: "http://mmbiz.qpic.cn/p", MediaID: "m", MsgID: fmt.Sprint(7_000_000 + seq.Add(1))}
	return m.AppendXML(nil)
}

// Each rule kind and reply type through a real ingress, worker and the fake
// WeChat API, the rules stored through the distributed ingress's
// /api/rules: a scene rule answers subscribe and SCAN alike with its code's
// label and group, and tags the person (once, though they scan twice); a
// scene prefix answers an image; exact, contains and regex keywords match
// texts and voice recognitions; a menu key; a none reply; and a message no
// rule matches is answered success (the stored list is the whole truth).
func TestRulesThroughProcesses(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	w := startWorker(t, ns.url, fake.env()...)
	_, url, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url)...)
	waitReady(t, admin, w.admin)
	if code, c := createQR(t, admin, `{"scene":"store_bj","permanent":true,"label":"北京朝阳店","group":"北京"}`); code != http.StatusCreated {
		t.Fatalf("create store_bj's code: %d %+v", code, c)
	}
	const tag = "门店客户"
	storeRules(t, admin, []map[string]any{
		{"name": "门店", "when": map[string]any{"scene": "store_bj"}, "reply": map[string]any{"type": "text", "content": "欢迎光临{label}（{group}·{scene}）"},
			"actions": []any{map[string]any{"tag": tag}}},
		{"name": "海报", "when": map[string]any{"scene_prefix": "poster_"}, "reply": map[string]any{"type": "image", "media_id": "MEDIA_POSTER"}},
		{"name": "营业时间", "when": map[string]any{"keyword": "营业时间"}, "reply": map[string]any{"type": "text", "content": "每天 10:00–22:00"}},
		{"name": "优惠", "when": map[string]any{"keyword": "优惠", "match": "contains"},
			"reply": map[string]any{"type": "news", "articles": []any{map[string]any{"title": "满100减20", "url": "https://example.com/sale"}}}},
		{"name": "订单", "when": map[string]any{"keyword": `^订单\d{6}$`, "match": "regex"}, "reply": map[string]any{"type": "text", "content": "正在查询{content}"}},
		{"name": "菜单", "when": map[string]any{"key": "MENU_HOURS"}, "reply": map[string]any{"type": "text", "content": "菜单：营业时间"}},
		{"name": "图片", "when": map[string]any{"event": "image"}, "reply": map[string]any{"type": "none"}},
	})
	// Applied by the worker within a moment.
	wait.For(t, wait.Long, wait.Every, func() error {
		if got := answer(t, url, text("o_wait", "营业时间")).Content; got != "每天 10:00–22:00" {
			return fmt.Errorf("the worker answers %q", got)
		}
		return nil
	})

	welcome := "欢迎光临北京朝阳店（北京·store_bj）"
	for _, tt := range []struct {
		name string
		msg  []byte
		want string // MsgType:what
	}{
		{"subscribe through store_bj", subscribeXML("o_rule_a", "store_bj"), "text:" + welcome},
		{"SCAN of store_bj", scanXML("o_rule_b", "store_bj", 1700001000+seq.Add(1)), "text:" + welcome},
		{"SCAN of store_bj again", scanXML("o_rule_b", "store_bj", 1700001000+seq.Add(1)), "text:" + welcome},
		{"SCAN of another code", scanXML("o_rule_c", "store_sh", 1700001000+seq.Add(1)), ":"},
		{"SCAN of a poster", scanXML("o_rule_c", "poster_metro", 1700001000+seq.Add(1)), "image:MEDIA_POSTER"},
		{"subscribe through a poster", subscribeXML("o_rule_d", "poster_bus"), "image:MEDIA_POSTER"},
		{"exact keyword", text("o_rule_e", "  营业时间 "), "text:每天 10:00–22:00"},
		{"exact keyword, not contained", text("o_rule_e", "请问营业时间"), ":"},
		{"exact keyword by voice", voice("o_rule_e", "营业时间"), "text:每天 10:00–22:00"},
		{"contains keyword", text("o_rule_f", "今天有优惠吗"), "news:满100减20"},
		{"contains keyword by voice", voice("o_rule_f", "有什么优惠"), "news:满100减20"},
		{"regex keyword", text("o_rule_g", "订单123456"), "text:正在查询订单123456"},
		{"regex keyword by voice", voice("o_rule_g", "订单654321"), "text:正在查询订单654321"},
		{"regex keyword, no match", text("o_rule_g", "订单12345"), ":"},
		{"menu key", click("o_rule_h", "MENU_HOURS"), "text:菜单：营业时间"},
		{"another menu key", click("o_rule_h", "MENU_OTHER"), ":"},
		{"none reply", image("o_rule_i"), ":"},
		{"no rule", text("o_rule_i", "你好"), ":"},
	} {
		p := answer(t, url, tt.msg)
		got := p.MsgType + ":" + p.Content + p.Image.MediaId
		if len(p.Articles.Item) > 0 {
			got += p.Articles.Item[0].Title
		}
		if got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}

	// The tag action: both people who came through store_bj carry the
	// tag, each tagged once (o_rule_b scanned twice).
	wait.For(t, wait.Long, wait.Every, func() error {
		if tg := fake.tagging(t); tg.People[tag] != 2 {
			return fmt.Errorf("%d people tagged %s, want 2", tg.People[tag], tag)
		}
		return nil
	})
	if tg := fake.tagging(t); tg.Retagged != 0 {
		t.Errorf("someone tagged twice: %+v", tg)
	}
	if v := metricValue(t, w.admin, `wxgate_tagging_total{account="default",outcome="tagged"}`); v != 2 {
		t.Errorf("tagged = %v, want 2", v)
	}
	// A dry run tags nobody and calls nothing.
	var res rules.Result
	apiJSON(t, "POST", "http://"+admin+"/api/rules/test", map[string]string{"xml": string(scanXML("o_rule_dry", "store_bj", 1700002000))}, &res)
	if res.Rule == nil || *res.Rule != "门店" || res.Reply == nil || res.Reply.Content != welcome {
		t.Errorf("dry run: %+v", res)
	}
	time.Sleep(2 * time.Second) // the absence of a tag is what is under test: longer than the tagger's 1 s linger
	if tg := fake.tagging(t); tg.People[tag] != 2 {
		t.Errorf("after a dry run %d people carry the tag, want 2", tg.People[tag])
	}
}

// bots serves handler rules' subjects from the test, as any language's
// NATS service would; runs counts each subject's runs by message content.
type bots struct {
	mu   sync.Mutex
	runs map[string]int
}

func startBots(t *testing.T, natsURL string) *bots {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := micro.AddService(nc, micro.Config{Name: "e2ebots", Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	b := &bots{runs: map[string]int{}}
	text := func(s string) any { return map[string]any{"reply": map[string]any{"type": "text", "content": s}} }
	for subject, h := range map[string]func(req rules.HandlerRequest, r micro.Request){
		// Counts its runs: what a retry answered with tells which run's reply it was.
		"e2e.count": func(req rules.HandlerRequest, r micro.Request) {
			n := b.ran("e2e.count", req.Content)
			time.Sleep(300 * time.Millisecond) // retries arrive while it runs
			_ = r.RespondJSON(text(fmt.Sprintf("run %d: %s", n, req.Content)))
		},
		"e2e.slow": func(req rules.HandlerRequest, r micro.Request) {
			b.ran("e2e.slow", req.Content)
			time.Sleep(4 * time.Second) // slower than REPLY_TIMEOUT: the slowness under test
			_ = r.RespondJSON(text("想好了：" + req.Content))
		},
		"e2e.garbage": func(_ rules.HandlerRequest, r micro.Request) { _ = r.Respond([]byte("not json")) },
		"e2e.fail":    func(_ rules.HandlerRequest, r micro.Request) { _ = r.Error("500", "boom", nil) },
		"e2e.none": func(_ rules.HandlerRequest, r micro.Request) {
			_ = r.RespondJSON(map[string]any{"reply": map[string]any{"type": "none"}})
		},
	} {
		h := h
		if err := svc.AddEndpoint(strings.ReplaceAll(subject, ".", "_"), micro.HandlerFunc(func(r micro.Request) {
			var req rules.HandlerRequest
			_ = json.Unmarshal(r.Data(), &req)
			go h(req, r) // one slow request holds up no other
		}), micro.WithEndpointSubject(subject)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *bots) ran(subject, content string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.runs[subject+" "+content]++
	return b.runs[subject+" "+content]
}

func (b *bots) count(subject, content string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.runs[subject+" "+content]
}

// Handler rules keep the reply-once promises: WeChat's retries of one
// message (sent while the handler runs, and after) run it once and are
// answered with its first reply; a handler slower than the deadline has
// WeChat answered success in time and its reply sent as a late reply,
// once; a handler that answers garbage, an error, none or nobody gives
// success, each counted by outcome, and the worker stays ready.
func TestHandlerRules(t *testing.T) {
	ns := startNATS(t)
	fake := startFakeAPI(t)
	b := startBots(t, ns.url)
	w := startWorker(t, ns.url, fake.env()...)
	_, url, admin := startIngress(t, append(fake.env(), "NATS_URL="+ns.url, "REPLY_TIMEOUT=2s")...)
	waitReady(t, admin, w.admin)
	handler := func(keyword, subject string) map[string]any {
		return map[string]any{"name": subject, "when": map[string]any{"keyword": keyword, "match": "contains"},
			"reply": map[string]any{"type": "handler", "subject": subject, "timeout_ms": 8000}}
	}
	storeRules(t, admin, []map[string]any{
		handler("数一数", "e2e.count"), handler("慢", "e2e.slow"), handler("乱码", "e2e.garbage"),
		handler("出错", "e2e.fail"), handler("不回", "e2e.none"), handler("没人", "e2e.missing"),
		{"name": "ping", "when": map[string]any{"keyword": "ping"}, "reply": map[string]any{"type": "text", "content": "pong"}},
	})
	wait.For(t, wait.Long, wait.Every, func() error {
		if got := answer(t, url, text("o_wait", "ping")).Content; got != "pong" {
			return fmt.Errorf("the worker answers %q", got)
		}
		return nil
	})

	// One message and WeChat's retries of it: two while its handler runs,
	// one after.
	msg := text("o_retry", "数一数")
	var wg sync.WaitGroup
	var got [4]string
	wg.Go(func() { got[0] = answer(t, url, msg).Content })
	wait.For(t, wait.Long, time.Millisecond, func() error {
		if b.count("e2e.count", "数一数") == 0 {
			return fmt.Errorf("the handler has not started")
		}
		return nil
	})
	for i := 1; i <= 2; i++ {
		wg.Go(func() { got[i] = answer(t, url, msg).Content })
	}
	wg.Wait()
	got[3] = answer(t, url, msg).Content
	for i, g := range got {
		if g != "run 1: 数一数" {
			t.Errorf("delivery %d answered %q, want the first run's reply", i, g)
		}
	}
	if n := b.count("e2e.count", "数一数"); n != 1 {
		t.Errorf("the handler ran %d times for one message, want 1", n)
	}

	// Slower than the deadline: success in time, then the late reply.
	fake.interaction(t, "o_slow", "message")
	start := time.Now()
	if p := answer(t, url, text("o_slow", "慢慢想")); p.MsgType != "" || time.Since(start) > 3500*time.Millisecond {
		t.Fatalf("a slow handler's message = %+v after %v, want success at the 2 s deadline", p, time.Since(start))
	}
	msgs := fake.waitMessages(t, 1)
	if msgs[0].ToUser != "o_slow" || msgs[0].Content != "想好了：慢慢想" {
		t.Errorf("late reply = %+v", msgs[0])
	}
	wait.For(t, wait.Long, wait.Every, func() error {
		if v := metricValue(t, w.admin, `wxgate_late_replies_total{account="default",outcome="sent"}`); v != 1 {
			return fmt.Errorf("late replies sent = %v, want 1", v)
		}
		return nil
	})
	if n := len(fake.calls(t).Messages); n != 1 {
		t.Errorf("%d customer-service messages, want 1", n)
	}
	if n := b.count("e2e.slow", "慢慢想"); n != 1 {
		t.Errorf("the slow handler ran %d times, want 1", n)
	}

	// Garbage, an error, none, nobody: success, counted.
	for content, outcome := range map[string]string{"乱码": "bad_answer", "出错": "error", "不回": "none", "没人": "no_responders"} {
		if p := answer(t, url, text("o_bad", content)); p.MsgType != "" {
			t.Errorf("%s answered %+v, want success", content, p)
		}
		series := fmt.Sprintf(`wxgate_handler_calls_total{account="default",outcome=%q}`, outcome)
		if v := metricValue(t, w.admin, series); v != 1 {
			t.Errorf("%s = %v, want 1", series, v)
		}
	}
	if v := metricValue(t, w.admin, `wxgate_handler_calls_total{account="default",outcome="ok"}`); v != 2 {
		t.Errorf("ok = %v, want 2 (one run of each slow and counting message)", v)
	}
	waitReady(t, w.admin)
	if got := answer(t, url, text("o_after", "ping")).Content; got != "pong" {
		t.Errorf("after the bad handlers the worker answers %q", got)
	}
	if n := len(fake.calls(t).Messages); n != 1 {
		t.Errorf("%d customer-service messages after the bad handlers, want 1", n)
	}
}

// nodeTools finds node and npm (Debian's nodejs and npm, what .ci/run
// installs), or skips the test with the reason; with E2E_REQUIRE=1 (CI) it
// fails instead.
func nodeTools(t *testing.T) (node, npm string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		npm, err = exec.LookPath("npm")
	}
	if err != nil {
		msg := "no node or npm on this machine: the Node.js handler's test needs Debian's nodejs and npm (apt-get install nodejs npm; .ci/run installs them)"
		if os.Getenv("E2E_REQUIRE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node, npm
}

// The Node.js example (examples/handler-node, npm's nats) answers through a
// real ingress and worker: a rule hands texts and voice messages to its
// subject, and its reply is the passive reply.
func TestNodeHandlerExample(t *testing.T) {
	node, npm := nodeTools(t)
	dir, err := filepath.Abs(filepath.Join("..", "examples", "handler-node"))
	if err != nil {
		t.Fatal(err)
	}
	ci := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	ci.Dir = dir
	if out, err := ci.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
	ns := startNATS(t)
	h := start(t, node, []string{"NATS_URL=" + ns.url, "SUBJECT=bots.node"}, filepath.Join(dir, "handler.js"))
	h.waitLog(t, "handler ready", map[string]string{"subject": "bots.node"})
	w := startWorker(t, ns.url)
	_, url, admin := startIngress(t, "NATS_URL="+ns.url)
	waitReady(t, admin, w.admin)
	storeRules(t, admin, []map[string]any{{"name": "Node.js", "when": map[string]any{"event": "message"},
		"reply": map[string]any{"type": "handler", "subject": "bots.node", "timeout_ms": 3000}}})
	wait.For(t, wait.Long, wait.Every, func() error {
		if got := answer(t, url, text("o_node", "你好")).Content; got != "Node.js 收到：你好" {
			return fmt.Errorf("answered %q", got)
		}
		return nil
	})
	if got := answer(t, url, voice("o_node", "语音你好")).Content; got != "Node.js 收到：语音你好" {
		t.Errorf("voice answered %q", got)
	}
	if v := metricValue(t, w.admin, `wxgate_handler_calls_total{account="default",outcome="ok"}`); v < 2 {
		t.Errorf("ok = %v, want the calls counted", v)
	}
}
