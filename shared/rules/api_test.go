package rules_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

var seed = rules.Texts{Subscribe: "感谢您的关注！", SubscribeScene: "场景值:{scene}", Scan: "您扫描的场景值为：{scene}",
	VoiceUnrecognised: "未识别", Default: "您的消息已收到。"}

type env struct {
	t   *testing.T
	set *rules.Set
	srv *httptest.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	nc := natstest.Connect(t, natstest.RunServer(t))
	set, err := rules.Start(rules.Options{Conn: nc, Defaults: rules.Defaults(seed), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Stop)
	wait.For(t, wait.Short, wait.Every, set.Check)
	account := func(w http.ResponseWriter, r *http.Request) (string, bool) {
		id := r.URL.Query().Get("account")
		switch id {
		case "", "default":
			return "default", true
		case "shop":
			return id, true
		}
		http.Error(w, `{"error":"no such account"}`, http.StatusNotFound)
		return "", false
	}
	labels := func(account, scene string) (string, string) {
		if account == "shop" && scene == "store_a" {
			return "A店", "门店"
		}
		return "", ""
	}
	srv := httptest.NewServer(rules.API(rules.APIOptions{Set: set, Account: account, Labels: labels}))
	t.Cleanup(srv.Close)
	return &env{t: t, set: set, srv: srv}
}

func (e *env) do(method, path, ifMatch, body string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil && resp.StatusCode != 204 {
		e.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, v
}

const storeRules = `{"rules":[
	{"name":"store welcome","when":{"scene":"store_a"},"reply":{"type":"text","content":"欢迎光临{label}"},"actions":[{"tag":"门店客户"}]},
	{"name":"hi","when":{"keyword":"hi"},"reply":{"type":"text","content":"hello"}}]}`

func TestRulesAPI(t *testing.T) {
	e := newEnv(t)
	code, v := e.do("GET", "/api/rules?account=shop", "", "")
	if code != 200 || v["revision"] != 0.0 || v["default"] != true || len(v["rules"].([]any)) != len(rules.Defaults(seed)) {
		t.Fatalf("GET with none stored = %d %v, want the defaults at revision 0", code, v)
	}
	if code, _ := e.do("PUT", "/api/rules?account=shop", "", storeRules); code != 428 {
		t.Errorf("PUT without If-Match: %d, want 428", code)
	}
	if code, _ := e.do("PUT", "/api/rules?account=nope", "0", storeRules); code != 404 {
		t.Errorf("PUT for an unknown account: %d, want 404", code)
	}
	code, v = e.do("PUT", "/api/rules?account=shop", "0", storeRules)
	if code != 200 {
		t.Fatalf("PUT = %d %v", code, v)
	}
	rev := v["revision"].(float64)
	if code, _ := e.do("PUT", "/api/rules?account=shop", "0", storeRules); code != 412 {
		t.Errorf("PUT at a stale revision: %d, want 412", code)
	}
	// Applied at once by this process's Set (every replica's, by the same watch).
	wait.For(t, wait.Short, wait.Every, func() error {
		if len(e.set.Engine("shop").Rules()) != 2 {
			return errors.New("not applied yet")
		}
		return nil
	})
	if len(e.set.Engine("default").Rules()) != len(rules.Defaults(seed)) {
		t.Error("another account's rules changed")
	}
	code, v = e.do("POST", "/api/rules/test?account=shop", "", `{"xml":"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><MsgType>event</MsgType><Event>SCAN</Event><EventKey>store_a</EventKey></xml>"}`)
	if code != 200 || v["rule"] != "store welcome" || v["reply"].(map[string]any)["content"] != "欢迎光临A店" || len(v["actions"].([]any)) != 1 {
		t.Errorf("test = %d %v", code, v)
	}
	code, v = e.do("POST", "/api/rules/test?account=shop", "", `{"xml":"<xml><MsgType>image</MsgType></xml>"}`)
	if code != 200 || v["rule"] != nil || v["reply"].(map[string]any)["type"] != "none" {
		t.Errorf("test of a message no rule matches = %d %v, want rule null and a none reply", code, v)
	}
	_ = rev
}

func TestRulesBadInput(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct{ body, index, field string }{
		{`{"rules":[{"when":{},"reply":{"type":"none"}},{"when":{"keyword":"(","match":"regex"},"reply":{"type":"none"}}]}`, "1", "when.keyword"},
		{`{"rules":[{"when":{"bogus":1},"reply":{"type":"none"}}]}`, "0", "when.bogus"},
		{`{"rules":[{"when":{},"reply":{"type":"news","articles":[{"title":"t","colour":"red"}]}}]}`, "0", "reply.articles[0].colour"},
		{`{"rules":[{"when":{},"reply":{"type":"none"},"extra":true}]}`, "0", "extra"},
		{`{"rules":[{"when":{"event":7},"reply":{"type":"none"}}]}`, "0", "when.event"},
		{`{"rules":[{"when":{},"reply":{"type":"text","content":"` + strings.Repeat("长", 700) + `"}}]}`, "0", "reply.content"},
		{`{"rules":[{"when":{},"reply":{"type":"handler","subject":"wxgate.events.default.>"}}]}`, "0", "reply.subject"},
	} {
		code, v := e.do("PUT", "/api/rules", "0", tt.body)
		if code != 400 || v["field"] != tt.field || fmt.Sprint(v["index"]) != tt.index {
			t.Errorf("%.70s: %d %v, want 400 naming rule %s field %s", tt.body, code, v, tt.index, tt.field)
		}
	}
	if code, _ := e.do("PUT", "/api/rules", "0", `{"rules":[`); code != 400 {
		t.Errorf("truncated JSON: %d", code)
	}
}

// Nothing a rule says can break a reply's XML: content with ]]> and
// forbidden characters still gives well-formed XML.
func TestReplyXMLStaysValid(t *testing.T) {
	e, err := rules.Compile([]rules.Rule{{When: rules.When{Event: "text"}, Reply: rules.Reply{Type: rules.ReplyText, Content: "a]]>b\x01</Content><x>{content}"}}})
	if err != nil {
		t.Fatal(err)
	}
	m := &wechat.Message{ToUserName: "gh", FromUserName: "o", MsgType: "text", Content: "]]><evil/>"}
	in := rules.InputOf(m)
	out := rules.Render(&e.Rule(e.Match(in)).Reply, in, nil).ReplyTo(m, 1)
	back, err := wechat.Parse(out)
	if err != nil {
		t.Fatalf("reply XML does not parse: %v\n%s", err, out)
	}
	if back.Content != "a]]>b</Content><x>]]><evil/>" {
		t.Errorf("content = %q", back.Content)
	}
}
