package wechatapitest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/clocktest"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

func newFake(t *testing.T, o Options) (*Server, string, *clocktest.Clock) {
	t.Helper()
	clk := clocktest.New(time.Unix(1_800_000_000, 0))
	o.AppID, o.Secret, o.Now = "wx1", "secret1", clk.Now
	s := New(o)
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL, clk
}

// call posts body to path and decodes WeChat's answer.
func call(t *testing.T, base, path string, body any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(base+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d %v", path, resp.StatusCode, err)
	}
	return out
}

func errcode(m map[string]any) int {
	f, _ := m["errcode"].(float64)
	return int(f)
}

func getToken(t *testing.T, base string) (string, int) {
	t.Helper()
	m := call(t, base, "/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wx1", "secret": "secret1"})
	if errcode(m) != 0 {
		t.Fatalf("stable_token: %v", m)
	}
	return m["access_token"].(string), int(m["expires_in"].(float64))
}

func qr(t *testing.T, base, tok string, body any) map[string]any {
	t.Helper()
	return call(t, base, "/cgi-bin/qrcode/create?access_token="+tok, body)
}

var tempCode = map[string]any{"action_name": "QR_STR_SCENE", "expire_seconds": 600, "action_info": map[string]any{"scene": map[string]any{"scene_str": "poster_a"}}}

// Normal mode returns the same token until the overlap before its expiry,
// then a new one; both are valid during the overlap, and the superseded
// one is refused (42001) once its own time is up.
func TestStableTokenRotation(t *testing.T) {
	_, base, clk := newFake(t, Options{TokenTTL: 7200 * time.Second})
	t1, exp := getToken(t, base)
	if exp != 7200 || len(t1) < 64 {
		t.Fatalf("first token %q expires_in %d", t1, exp)
	}
	clk.Add(6000 * time.Second)
	if t2, exp := getToken(t, base); t2 != t1 || exp != 1200 {
		t.Fatalf("before the overlap: %q %d, want the same token with 1200 s left", t2, exp)
	}
	clk.Add(1000 * time.Second) // 200 s left: inside the 5-minute overlap
	t3, exp := getToken(t, base)
	if t3 == t1 || exp != 7200 {
		t.Fatalf("in the overlap: %q %d, want a new token", t3, exp)
	}
	for _, tok := range []string{t1, t3} {
		if m := qr(t, base, tok, tempCode); errcode(m) != 0 {
			t.Errorf("during the overlap %s: %v", tok[:12], m)
		}
	}
	clk.Add(201 * time.Second)
	if m := qr(t, base, t1, tempCode); errcode(m) != 42001 {
		t.Errorf("old token after its expiry: %v, want 42001", m)
	}
	if m := qr(t, base, t3, tempCode); errcode(m) != 0 {
		t.Errorf("new token: %v", m)
	}
}

func TestStableTokenCredentials(t *testing.T) {
	_, base, _ := newFake(t, Options{})
	for _, tt := range []struct {
		body map[string]any
		want int
	}{
		{map[string]any{"grant_type": "client_credential", "appid": "wx2", "secret": "secret1"}, 40013},
		{map[string]any{"grant_type": "client_credential", "appid": "wx1", "secret": "nope"}, 40125},
		{map[string]any{"grant_type": "password", "appid": "wx1", "secret": "secret1"}, 40002},
	} {
		if m := call(t, base, "/cgi-bin/stable_token", tt.body); errcode(m) != tt.want {
			t.Errorf("%v: %v, want %d", tt.body, m, tt.want)
		}
	}
}

// An injected invalidation makes the current token 40001, and the next
// stable_token (normal mode) issues a new one; force_refresh does the same.
func TestInvalidateAndForceRefresh(t *testing.T) {
	s, base, _ := newFake(t, Options{})
	t1, _ := getToken(t, base)
	if err := s.Inject(Fault{InvalidateToken: true}); err != nil {
		t.Fatal(err)
	}
	if m := qr(t, base, t1, tempCode); errcode(m) != 40001 {
		t.Errorf("invalidated token: %v, want 40001", m)
	}
	t2, _ := getToken(t, base)
	if t2 == t1 {
		t.Fatal("stable_token returned the invalidated token")
	}
	m := call(t, base, "/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wx1", "secret": "secret1", "force_refresh": true})
	if t3 := m["access_token"]; t3 == t2 || errcode(qr(t, base, t2, tempCode)) != 40001 {
		t.Errorf("force_refresh: %v; the previous token must be refused", m)
	}
	if m := qr(t, base, "", tempCode); errcode(m) != 41001 {
		t.Errorf("no token: %v", m)
	}
	// GET /wxsim/calls counts the stable_token calls that asked for
	// force_refresh, and only those; one refused by a fault too.
	if err := s.Inject(Fault{API: StableToken, Errcode: 45009}); err != nil {
		t.Fatal(err)
	}
	call(t, base, "/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wx1", "secret": "secret1", "force_refresh": true})
	var c Calls
	resp, err := http.Get(base + "/wxsim/calls")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || c.ForceRefresh != 2 || c.Calls[StableToken] != 4 {
		t.Errorf("calls: force_refresh %d of %d stable_token calls (%v), want 2 of 4", c.ForceRefresh, c.Calls[StableToken], err)
	}
}

// "wxsim api -h" prints the flags' defaults: never the AppSecret of the
// environment. The environment's AppSecret is the one accepted all the same.
func TestHelpHidesTheSecret(t *testing.T) {
	t.Setenv("WECHAT_APPSECRET", "env-secret-value-42")
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"-h"}, &out, &errOut); code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	usage := out.String() + errOut.String()
	if strings.Contains(usage, "env-secret-value-42") || !strings.Contains(usage, "(from $WECHAT_APPSECRET") {
		t.Errorf("usage:\n%s", usage)
	}
	// The fake that runs accepts the environment's AppSecret.
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int)
	go func() {
		code := Main(ctx, []string{"-addr", "127.0.0.1:0", "-appid", "wx1"}, pw, io.Discard)
		pw.Close()
		done <- code
	}()
	defer func() {
		cancel()
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if code := <-done; code != 0 {
			t.Errorf("exited %d", code)
		}
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	base, _, ok := strings.Cut(strings.TrimPrefix(line, "fake WeChat API on "), " ")
	if err != nil || !ok {
		t.Fatalf("no address in %q: %v", line, err)
	}
	for secret, want := range map[string]int{"env-secret-value-42": 0, FakeSecret: 40125} {
		if m := call(t, base, "/cgi-bin/stable_token", map[string]any{"grant_type": "client_credential", "appid": "wx1", "secret": secret}); errcode(m) != want {
			t.Errorf("secret %q: %v, want errcode %d", secret, m, want)
		}
	}
	// -healthcheck asks a running fake, and fails where none runs.
	for addr, want := range map[string]int{strings.TrimPrefix(base, "http://"): 0, "127.0.0.1:" + nettest.FreePort(t): 1} {
		if code := Main(ctx, []string{"-addr", addr, "-healthcheck"}, io.Discard, io.Discard); code != want {
			t.Errorf("-healthcheck of %s exited %d, want %d", addr, code, want)
		}
	}
	if secretOr("flag-secret", "env") != "flag-secret" || secretOr("", "") != FakeSecret {
		t.Error("secretOr: the flag first, the quick start's last")
	}
}

func TestParseQRRequest(t *testing.T) {
	tests := []struct {
		name, body string
		scene      string
		expire     int64
		code       int
	}{
		{"temp id", `{"action_name":"QR_SCENE","expire_seconds":604800,"action_info":{"scene":{"scene_id":123}}}`, "123", 604800, 0},
		{"temp id default lifetime", `{"action_name":"QR_SCENE","action_info":{"scene":{"scene_id":4294967295}}}`, "4294967295", 30, 0},
		{"temp id zero", `{"action_name":"QR_SCENE","action_info":{"scene":{"scene_id":0}}}`, "", 0, 40053},
		{"temp id too big", `{"action_name":"QR_SCENE","action_info":{"scene":{"scene_id":4294967296}}}`, "", 0, 40053},
		{"temp id fraction", `{"action_name":"QR_SCENE","action_info":{"scene":{"scene_id":1.5}}}`, "", 0, 40053},
		{"perm id", `{"action_name":"QR_LIMIT_SCENE","action_info":{"scene":{"scene_id":100000}}}`, "100000", 0, 0},
		{"perm id too big", `{"action_name":"QR_LIMIT_SCENE","action_info":{"scene":{"scene_id":100001}}}`, "", 0, 40053},
		{"str", `{"action_name":"QR_STR_SCENE","expire_seconds":2592000,"action_info":{"scene":{"scene_str":"海报 a"}}}`, "海报 a", 2592000, 0},
		{"str 64 chars", `{"action_name":"QR_LIMIT_STR_SCENE","action_info":{"scene":{"scene_str":"` + strings.Repeat("码", 64) + `"}}}`, strings.Repeat("码", 64), 0, 0},
		{"str 65 chars", `{"action_name":"QR_LIMIT_STR_SCENE","action_info":{"scene":{"scene_str":"` + strings.Repeat("a", 65) + `"}}}`, "", 0, 40053},
		{"str empty", `{"action_name":"QR_STR_SCENE","action_info":{"scene":{"scene_str":""}}}`, "", 0, 40053},
		{"str missing", `{"action_name":"QR_STR_SCENE","action_info":{"scene":{"scene_id":5}}}`, "", 0, 40053},
		{"expire too long", `{"action_name":"QR_STR_SCENE","expire_seconds":2592001,"action_info":{"scene":{"scene_str":"a"}}}`, "", 0, 40053},
		{"bad action", `{"action_name":"QR_FOREVER","action_info":{"scene":{"scene_str":"a"}}}`, "", 0, 40052},
		{"not json", `action_name=QR_SCENE`, "", 0, 47001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, scene, expire, code := ParseQRRequest([]byte(tt.body))
			if scene != tt.scene || expire != tt.expire || code != tt.code {
				t.Errorf("= %q %d %d, want %q %d %d", scene, expire, code, tt.scene, tt.expire, tt.code)
			}
		})
	}
}

// A permanent code is one per scene, and past the cap WeChat says 45029.
func TestPermanentCodes(t *testing.T) {
	s, base, _ := newFake(t, Options{PermanentCap: 2})
	tok, _ := getToken(t, base)
	perm := func(scene string) map[string]any {
		return qr(t, base, tok, map[string]any{"action_name": "QR_LIMIT_STR_SCENE", "action_info": map[string]any{"scene": map[string]any{"scene_str": scene}}})
	}
	a1, a2 := perm("a"), perm("a")
	if a1["ticket"] == nil || a1["ticket"] != a2["ticket"] || a1["url"] != a2["url"] || a1["expire_seconds"] != nil {
		t.Errorf("the same permanent scene twice: %v and %v", a1, a2)
	}
	if !strings.HasPrefix(a1["url"].(string), "http://weixin.qq.com/q/") {
		t.Errorf("url %v", a1["url"])
	}
	perm("b")
	if m := perm("c"); errcode(m) != 45029 {
		t.Errorf("past the cap: %v, want 45029", m)
	}
	if c := s.Calls(); c.Calls[QRCodeCreate] != 4 || c.Errcodes[QRCodeCreate]["45029"] != 1 || len(c.QRCodes) != 2 {
		t.Errorf("calls = %+v", c)
	}
}

func TestFaults(t *testing.T) {
	s, base, _ := newFake(t, Options{})
	tok, _ := getToken(t, base)
	post := func(body string) (*http.Response, error) {
		return http.Post(base+"/wxsim/fault", "application/json", strings.NewReader(body))
	}
	if resp, err := post(`{"api":"qrcode_create","errcode":45009,"count":2}`); err != nil || resp.StatusCode != 200 {
		t.Fatalf("fault: %v %v", resp, err)
	}
	for i := 0; i < 2; i++ {
		if m := qr(t, base, tok, tempCode); errcode(m) != 45009 {
			t.Errorf("call %d: %v, want 45009", i, m)
		}
	}
	if m := qr(t, base, tok, tempCode); errcode(m) != 0 {
		t.Errorf("after the fault: %v", m)
	}
	if resp, _ := post(`{"delay":"forever"}`); resp == nil || resp.StatusCode != 400 {
		t.Errorf("a bad delay was taken: %v", resp)
	}

	_ = s.Inject(Fault{API: QRCodeCreate, Drop: true})
	if resp, err := http.Post(base+"/cgi-bin/qrcode/create?access_token="+tok, "application/json", strings.NewReader("{}")); err == nil {
		resp.Body.Close()
		t.Error("a dropped call got an answer")
	}
	_ = s.Inject(Fault{API: StableToken, Delay: "50ms"})
	start := time.Now()
	getToken(t, base)
	if time.Since(start) < 50*time.Millisecond {
		t.Error("the delay was not applied")
	}

	resp, err := http.Get(base + "/wxsim/calls")
	if err != nil {
		t.Fatal(err)
	}
	var c Calls
	_ = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if c.Calls[QRCodeCreate] != 4 || c.Calls[StableToken] != 2 || c.Errcodes[QRCodeCreate]["45009"] != 2 {
		t.Errorf("calls = %+v", c)
	}
}

// With After, a call is processed and recorded before the fault: a send
// answered -1 or dropped was delivered all the same, and a caller that
// goes away during the delay does not undo it. Without After, a caller
// that goes away during the delay leaves nothing.
func TestFaultAfter(t *testing.T) {
	s := New(Options{AppID: "wx1", Secret: "secret1", NoWindows: true})
	ts := httptest.NewServer(s)
	defer ts.Close()
	tok, _ := getToken(t, ts.URL)
	url := ts.URL + "/cgi-bin/message/custom/send?access_token=" + tok
	body := func(n int) string {
		return `{"touser":"o1","msgtype":"text","text":{"content":"m` + strconv.Itoa(n) + `"}}`
	}
	messages := func() int { return len(s.Calls().Messages) }

	_ = s.Inject(Fault{API: CustomSend, After: true, Errcode: -1})
	if m := call(t, ts.URL, "/cgi-bin/message/custom/send?access_token="+tok, json.RawMessage(body(1))); errcode(m) != -1 || messages() != 1 {
		t.Errorf("after, errcode -1: %v, %d recorded", m, messages())
	}
	_ = s.Inject(Fault{API: CustomSend, After: true, Drop: true})
	if resp, err := http.Post(url, "application/json", strings.NewReader(body(2))); err == nil {
		resp.Body.Close()
		t.Error("a dropped call got an answer")
	}
	if messages() != 2 {
		t.Errorf("after, dropped: %d recorded, want 2", messages())
	}

	// sendUntil sends, waits for ready, then abandons the call.
	sendUntil := func(n int, ready func() bool) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body(n)))
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		wait.For(t, wait.Short, wait.Every, func() error {
			if !ready() {
				return errors.New("the call has not reached its delay")
			}
			return nil
		})
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("call %d: %v, want it cancelled during the delay", n, err)
		}
	}
	_ = s.Inject(Fault{API: CustomSend, After: true, Delay: "2m"})
	sendUntil(3, func() bool { return messages() == 3 })
	_ = s.Inject(Fault{API: CustomSend, Delay: "2m"})
	sendUntil(4, func() bool { return s.Calls().Calls[CustomSend] == 4 })

	ts.Close() // waits for the handlers: nothing more can be recorded
	c := s.Calls()
	if len(c.Messages) != 3 || c.Messages[2].Content != "m3" {
		t.Errorf("messages = %+v, want m1 to m3", c.Messages)
	}
	if len(c.Errcodes[CustomSend]) != 1 || c.Errcodes[CustomSend]["-1"] != 1 {
		t.Errorf("errcodes answered = %v, want -1 once", c.Errcodes[CustomSend])
	}
}

func TestCustomSend(t *testing.T) {
	s, base, _ := newFake(t, Options{})
	tok, _ := getToken(t, base)
	if err := s.Interaction("o1", KindMessage, time.Time{}); err != nil {
		t.Fatal(err)
	}
	send := func(body any) int {
		return errcode(call(t, base, "/cgi-bin/message/custom/send?access_token="+tok, body))
	}
	for _, tt := range []struct {
		body any
		want int
	}{
		{map[string]any{"touser": "o1", "msgtype": "text", "text": map[string]any{"content": "你好"}}, 0},
		{map[string]any{"touser": "", "msgtype": "text", "text": map[string]any{"content": "x"}}, 40003},
		{map[string]any{"touser": "o1", "msgtype": "fax"}, 40008},
		{map[string]any{"touser": "o1", "msgtype": "text", "text": map[string]any{"content": ""}}, 44004},
	} {
		if got := send(tt.body); got != tt.want {
			t.Errorf("%v: %d, want %d", tt.body, got, tt.want)
		}
	}
	if m := s.Calls().Messages; len(m) != 1 || m[0].ToUser != "o1" || m[0].Content != "你好" {
		t.Errorf("messages = %+v", m)
	}
}

func TestGetIsRefused(t *testing.T) {
	_, base, _ := newFake(t, Options{})
	resp, err := http.Get(base + "/cgi-bin/stable_token")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), strconv.Itoa(43002)) {
		t.Errorf("GET stable_token = %s", b)
	}
}

func FuzzParseQRRequest(f *testing.F) {
	f.Add([]byte(`{"action_name":"QR_SCENE","expire_seconds":604800,"action_info":{"scene":{"scene_id":123}}}`))
	f.Add([]byte(`{"action_name":"QR_LIMIT_STR_SCENE","action_info":{"scene":{"scene_str":"a"}}}`))
	f.Add([]byte(`{"action_name":"QR_SCENE","action_info":{"scene":{"scene_id":1e400}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		_, scene, expire, code := ParseQRRequest(body)
		if code != 0 {
			return
		}
		if scene == "" || len(scene) > 4*MaxSceneStr || expire < 0 || expire > MaxExpireSeconds {
			t.Errorf("accepted scene %q expire %d", scene, expire)
		}
	})
}

func FuzzParseStableToken(f *testing.F) {
	f.Add([]byte(`{"grant_type":"client_credential","appid":"wx1","secret":"s"}`))
	f.Add([]byte(`{"grant_type":1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if req, code := ParseStableToken(body); code == 0 && req.GrantType != "client_credential" {
			t.Errorf("accepted grant_type %q", req.GrantType)
		}
	})
}

func FuzzParseSend(f *testing.F) {
	f.Add([]byte(`{"touser":"o1","msgtype":"text","text":{"content":"hi"}}`))
	f.Add([]byte(`{"touser":"o1","msgtype":"image","image":{"media_id":"m"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if m, code := ParseSend(body); code == 0 && (m.ToUser == "" || !msgTypes[m.MsgType]) {
			t.Errorf("accepted %+v", m)
		}
	})
}

func FuzzFault(f *testing.F) {
	f.Add([]byte(`{"api":"qrcode_create","errcode":45009,"count":2}`))
	f.Add([]byte(`{"delay":"1s","drop":true}`))
	f.Add([]byte(`{"invalidate_token":true}`))
	s := New(Options{AppID: "wx", Secret: "s"})
	f.Fuzz(func(t *testing.T, body []byte) {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest("POST", "/wxsim/fault", bytes.NewReader(body)))
		if w.Code != 200 && w.Code != 400 {
			t.Errorf("status %d", w.Code)
		}
		s.mu.Lock()
		for _, f := range s.faults {
			if f.Count <= 0 || f.delay < 0 || f.delay > 10*time.Minute {
				t.Errorf("fault kept: %+v", f)
			}
		}
		s.faults = nil
		s.mu.Unlock()
	})
}
