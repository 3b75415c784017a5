package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/reply"
)

const (
	token  = "test-token"
	aesKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	appID  = "wx2c2769f8efd9abc2"
)

type harness struct {
	t      *testing.T
	url    string
	reg    *prometheus.Registry
	srv    *bus.Embedded
	sender wechat.Sender
	logs   *lockedWriter
}

type opts struct {
	safe         bool        // the gateway has the Cipher and the sender encrypts
	mode         wechat.Mode // empty: the gateway's default
	noWorker     bool
	replyTimeout time.Duration
	conn         *nats.Conn
	intake       gateway.Intake
	ask          func(*nats.Msg, time.Duration) (*nats.Msg, error)
	// accounts, when set, are served instead of the default alone (made
	// of token, safe and mode).
	accounts func(h *harness) *accounts.Registry
}

// defaultOnly is a registry of the default account a alone, as a process
// with no bus has.
func defaultOnly(t testing.TB, a accounts.Account) *accounts.Registry {
	t.Helper()
	r, err := accounts.Start(accounts.Options{Default: a, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var seq atomic.Int64

func newHarness(t *testing.T, o opts) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(), sender: wechat.Sender{Token: token}, logs: &lockedWriter{w: &bytes.Buffer{}}}
	h.srv = natstest.RunServer(t)
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if !o.noWorker {
		wnc := natstest.Connect(t, h.srv)
		svc, err := reply.Start(reply.Options{Conn: wnc, Decider: reply.NewReplier(config.Defaults().Replies), Logger: logger, Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop(context.Background()) })
		if err := wnc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	def := accounts.Account{Token: token, Mode: string(o.mode), AppID: appID}
	if o.safe {
		cipher, err := wechat.NewCipher(aesKey, appID)
		if err != nil {
			t.Fatal(err)
		}
		h.sender.Cipher = cipher
		def.EncodingAESKey = aesKey
	}
	accts := defaultOnly(t, def)
	if o.accounts != nil {
		accts = o.accounts(h)
	}
	if o.replyTimeout == 0 {
		o.replyTimeout = 4 * time.Second
	}
	nc := o.conn
	if nc == nil {
		nc = natstest.Connect(t, h.srv)
	}
	gw, err := gateway.New(gateway.Options{
		Accounts: accts, Conn: nc, Intake: o.intake, Ask: o.ask, ReplyTimeout: o.replyTimeout,
		TimestampSkew: 5 * time.Minute, MaxBodyBytes: 64 << 10, Logger: logger, Registerer: h.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw.Handler()) // a real loopback listener
	t.Cleanup(hs.Close)
	h.url = hs.URL + gateway.Path
	return h
}

// lockedWriter lets the handlers' goroutines log into one buffer while the
// test reads it.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// post sends msg as WeChat would and returns the status and the opened reply.
func (h *harness) post(msg string) (int, string) {
	h.t.Helper()
	code, body, err := h.sender.Post(http.DefaultClient, h.url, []byte(msg), time.Now(), "nonce"+strconv.FormatInt(seq.Add(1), 10))
	if err != nil {
		h.t.Fatal(err)
	}
	return code, string(body)
}

func do(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// counter is the default account's series name{label=value}.
func (h *harness) counter(name, label, value string) float64 {
	h.t.Helper()
	return h.accountCounter(name, "default", label, value)
}

func (h *harness) accountCounter(name, account, label, value string) float64 {
	h.t.Helper()
	v, ok := metricstest.Lookup(h.reg, name, map[string]string{"account": account, label: value})
	if !ok {
		h.t.Fatalf("no series %s{account=%q,%s=%q}", name, account, label, value)
	}
	return v
}

func message(msgType, extra string) string {
	n := seq.Add(1)
	return fmt.Sprintf("<xml><ToUserName><![CDATA[gh_account]]></ToUserName><FromUserName><![CDATA[openid_%d]]></FromUserName>"+
		"<CreateTime>%d</CreateTime><MsgType><![CDATA[%s]]></MsgType>%s<MsgId>%d</MsgId></xml>", n, time.Now().Unix(), msgType, extra, 1000+n)
}

func event(ev, key string) string {
	n := seq.Add(1)
	return fmt.Sprintf("<xml><ToUserName><![CDATA[gh_account]]></ToUserName><FromUserName><![CDATA[openid_%d]]></FromUserName>"+
		"<CreateTime>%d</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[%s]]></Event><EventKey><![CDATA[%s]]></EventKey></xml>", n, time.Now().Unix(), ev, key)
}

type replyDoc struct {
	ToUserName, FromUserName, MsgType, Content string
}

var replyCases = []struct {
	name, msg, want string // want "" means "success"
}{
	{"text echo", message("text", "<Content><![CDATA[hello ]]]]><![CDATA[> 你好 😀]]></Content>"), "hello ]]> 你好 😀"},
	{"voice recognition", message("voice", "<MediaId>m</MediaId><Format>amr</Format><Recognition><![CDATA[腾讯微信团队]]></Recognition>"), "腾讯微信团队"},
	{"voice unrecognised", message("voice", "<MediaId>m</MediaId><Format>amr</Format><Recognition><![CDATA[]]></Recognition>"), "未识别"},
	{"subscribe without scene", event("subscribe", ""), "感谢您的关注！"},
	{"subscribe with scene", event("subscribe", "qrscene_123"), "感谢您的关注！场景值:123"},
	{"subscribe with string scene", event("subscribe", "qrscene_poster_a"), "感谢您的关注！场景值:poster_a"},
	{"scan", event("SCAN", "123"), "您扫描的场景值为：123"},
	{"unknown message type", message("image", "<PicUrl>http://x/y.jpg</PicUrl><MediaId>m</MediaId>"), "您的消息已收到。"},
	{"invented message type", message("hologram", ""), "您的消息已收到。"},
	{"other event", event("CLICK", "V1001"), ""},
	{"unsubscribe", event("unsubscribe", ""), ""},
}

func TestReplies(t *testing.T) {
	for _, mode := range []struct {
		name string
		safe bool
	}{{"plain", false}, {"safe", true}} {
		t.Run(mode.name, func(t *testing.T) {
			h := newHarness(t, opts{safe: mode.safe})
			for _, tc := range replyCases {
				t.Run(tc.name, func(t *testing.T) {
					code, body := h.post(tc.msg)
					if code != http.StatusOK {
						t.Fatalf("status %d: %s", code, body)
					}
					if tc.want == "" {
						if body != "success" {
							t.Fatalf("reply = %q, want success", body)
						}
						return
					}
					var d replyDoc
					if err := xml.Unmarshal([]byte(body), &d); err != nil {
						t.Fatalf("reply is not XML: %v: %q", err, body)
					}
					if d.Content != tc.want || d.MsgType != "text" || d.FromUserName != "gh_account" || !strings.HasPrefix(d.ToUserName, "openid_") {
						t.Fatalf("reply = %+v, want text %q to the sender", d, tc.want)
					}
				})
			}
			var replies, empties float64
			for _, tc := range replyCases {
				if tc.want == "" {
					empties++
				} else {
					replies++
				}
			}
			if got := h.counter("wxgate_ingress_requests_total", "outcome", "reply"); got != replies {
				t.Errorf("requests{outcome=reply} = %v, want %v", got, replies)
			}
			if got := h.counter("wxgate_ingress_requests_total", "outcome", "empty"); got != empties {
				t.Errorf("requests{outcome=empty} = %v, want %v", got, empties)
			}
		})
	}
}

// Compatible mode: the body carries the plaintext fields and Encrypt; the
// encrypted copy is the one trusted, and the reply is encrypted.
func TestCompatibleMode(t *testing.T) {
	h := newHarness(t, opts{safe: true})
	msg := message("text", "<Content>compat</Content>")
	enc, err := h.sender.Cipher.Encrypt([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	ts, nonce := strconv.FormatInt(time.Now().Unix(), 10), "compat1"
	body := strings.Replace(msg, "</xml>", "<Encrypt><![CDATA["+enc+"]]></Encrypt></xml>", 1)
	u := fmt.Sprintf("%s?signature=%s&timestamp=%s&nonce=%s&encrypt_type=aes&msg_signature=%s",
		h.url, wechat.Signature(token, ts, nonce), ts, nonce, wechat.Signature(token, ts, nonce, enc))
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	code, resp := do(t, req)
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	plain, err := h.sender.OpenReply(resp)
	if err != nil || !strings.Contains(string(plain), "compat") {
		t.Fatalf("reply %q, %v", plain, err)
	}
}

// Each mode × each kind of POST: safe refuses plaintext (finding F6: with
// the AES key set and no mode given, a plaintext POST signed only with
// signature was accepted); plain refuses encrypted; compat takes both. The
// URL check answers the same in every mode.
func TestModes(t *testing.T) {
	cipher, err := wechat.NewCipher(aesKey, appID)
	if err != nil {
		t.Fatal(err)
	}
	plainSender, safeSender := wechat.Sender{Token: token}, wechat.Sender{Token: token, Cipher: cipher}
	type kind int
	const (
		plainPost kind = iota
		encryptedPost
		missingMsgSignature
		badMsgSignature
		kinds
	)
	kindNames := [kinds]string{"plain POST", "encrypted POST", "missing msg_signature", "bad msg_signature"}
	type want struct {
		code   int
		reason string // rejections only
		detail string // in the rejected log line
	}
	ok := want{code: 200}
	plainRefused := want{403, "signature", "plaintext POST in safe mode"}
	encryptedRefused := want{400, "decrypt", "encrypted POST in plain mode"}
	missing := want{400, "malformed", "missing msg_signature"}
	badSig := want{403, "signature", "bad msg_signature"}
	modes := []struct {
		name string
		o    opts
		want [kinds]want
	}{
		{"plain by default (no key)", opts{}, [kinds]want{ok, encryptedRefused, missing, encryptedRefused}},
		{"plain with a key", opts{safe: true, mode: wechat.ModePlain}, [kinds]want{ok, encryptedRefused, missing, encryptedRefused}},
		{"safe by default (key set)", opts{safe: true}, [kinds]want{plainRefused, ok, missing, badSig}},
		{"compat", opts{safe: true, mode: wechat.ModeCompat}, [kinds]want{ok, ok, missing, badSig}},
		{"safe", opts{safe: true, mode: wechat.ModeSafe}, [kinds]want{plainRefused, ok, missing, badSig}},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			h := newHarness(t, mode.o)
			for k := kind(0); k < kinds; k++ {
				t.Run(kindNames[k], func(t *testing.T) {
					w := mode.want[k]
					content := "mode " + strconv.Itoa(int(k))
					msg := []byte(message("text", "<Content>"+content+"</Content>"))
					nonce := "m" + strconv.FormatInt(seq.Add(1), 10)
					sender := safeSender
					if k == plainPost {
						sender = plainSender
					}
					req, err := sender.NewRequest(h.url, msg, time.Now(), nonce)
					if err != nil {
						t.Fatal(err)
					}
					q := req.URL.Query()
					switch k {
					case missingMsgSignature:
						q.Del("msg_signature")
					case badMsgSignature:
						q.Set("msg_signature", strings.Repeat("0", 40))
					}
					req.URL.RawQuery = q.Encode()
					before, logged := 0.0, 0
					if w.reason != "" {
						before = h.counter("wxgate_ingress_rejected_total", "reason", w.reason)
						logged = strings.Count(h.logs.String(), "detail=\""+w.detail)
					}
					code, body := do(t, req)
					if code != w.code {
						t.Fatalf("status %d (%s), want %d", code, body, w.code)
					}
					if w.code == 200 {
						reply, err := sender.OpenReply(body)
						if err != nil || !strings.Contains(string(reply), content) {
							t.Fatalf("reply %q, %v; want the echo of %q", reply, err, content)
						}
						return
					}
					if got := h.counter("wxgate_ingress_rejected_total", "reason", w.reason); got != before+1 {
						t.Errorf("rejected{reason=%s} went %v -> %v", w.reason, before, got)
					}
					if logs := h.logs.String(); strings.Count(logs, "detail=\""+w.detail) != logged+1 {
						t.Errorf("no rejection logged with detail %q:\n%s", w.detail, logs)
					}
				})
			}
			t.Run("URL check", func(t *testing.T) {
				req, err := plainSender.NewVerifyRequest(h.url, "echo-"+mode.name, time.Now(), "v")
				if err != nil {
					t.Fatal(err)
				}
				if code, body := do(t, req); code != 200 || string(body) != "echo-"+mode.name {
					t.Fatalf("GET = %d %q, want the echostr", code, body)
				}
			})
		})
	}
}

func TestNewRefusesModeWithoutCipher(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, m := range []wechat.Mode{wechat.ModeCompat, wechat.ModeSafe, "aes", "SAFE"} {
		_, err := gateway.New(gateway.Options{Accounts: defaultOnly(t, accounts.Account{Token: token, Mode: string(m)}),
			Local: func(string, []byte) ([]byte, error) { return nil, nil }, ReplyTimeout: time.Second, Logger: quiet, Registerer: prometheus.NewRegistry()})
		if err == nil || !strings.Contains(err.Error(), "mode") {
			t.Errorf("Mode %q without a Cipher: %v, want an error naming the mode", m, err)
		}
	}
}

func TestVerifyURL(t *testing.T) {
	h := newHarness(t, opts{noWorker: true})
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	good := wechat.Signature(token, ts, "n1")
	tests := []struct {
		name  string
		query string
		code  int
		body  string
	}{
		{"valid", "signature=" + good + "&timestamp=" + ts + "&nonce=n1&echostr=echo123", 200, "echo123"},
		{"bad signature", "signature=" + strings.Repeat("0", 40) + "&timestamp=" + ts + "&nonce=n1&echostr=e", 403, ""},
		{"missing echostr", "signature=" + good + "&timestamp=" + ts + "&nonce=n1", 400, ""},
		{"missing nonce", "signature=" + good + "&timestamp=" + ts + "&echostr=e", 400, ""},
		{"stale", "signature=" + wechat.Signature(token, "1000", "n1") + "&timestamp=1000&nonce=n1&echostr=e", 403, ""},
		// Finding F7: 634 years ahead overflowed the check and passed.
		{"far future", "signature=" + wechat.Signature(token, "20000000000", "n1") + "&timestamp=20000000000&nonce=n1&echostr=e", 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, h.url+"?"+tt.query, nil)
			code, body := do(t, req)
			if code != tt.code || (tt.body != "" && string(body) != tt.body) {
				t.Fatalf("GET = %d %q, want %d %q", code, body, tt.code, tt.body)
			}
		})
	}
}

// rawEncrypt encrypts plain (a multiple of the block size) with the test
// key as WeChat does, without any framing: to build broken ciphertexts.
func rawEncrypt(t *testing.T, plain []byte) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(aesKey + "=")
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(plain))
	cipher.NewCBCEncrypter(block, key[:16]).CryptBlocks(out, plain)
	return base64.StdEncoding.EncodeToString(out)
}

func TestRejects(t *testing.T) {
	// Padding byte 0 is never valid PKCS#7.
	badPadding := rawEncrypt(t, make([]byte, 32))
	// A length field claiming far more than the buffer holds.
	framed := append(append(make([]byte, 16), 0x00, 0xff, 0xff, 0xff), "<xml/>"+appID...)
	pad := 32 - len(framed)%32
	longLength := rawEncrypt(t, append(framed, bytes.Repeat([]byte{byte(pad)}, pad)...))

	plainH := newHarness(t, opts{})
	safeH := newHarness(t, opts{safe: true})
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	sign := func(ts, nonce string) string { return wechat.Signature(token, ts, nonce) }
	okMsg := message("text", "<Content>x</Content>")
	otherApp, _ := wechat.NewCipher(aesKey, "wx_someone_else")
	wrongAppEnc, _ := otherApp.Encrypt([]byte(okMsg))
	safeQuery := func(enc string) string {
		return fmt.Sprintf("signature=%s&timestamp=%s&nonce=n&encrypt_type=aes&msg_signature=%s", sign(ts, "n"), ts, wechat.Signature(token, ts, "n", enc))
	}
	envelope := func(enc string) string {
		return "<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[" + enc + "]]></Encrypt></xml>"
	}
	tests := []struct {
		name   string
		h      *harness
		query  string
		body   string
		code   int
		reason string
	}{
		{"bad signature", plainH, "signature=" + sign(ts, "other") + "&timestamp=" + ts + "&nonce=n", okMsg, 403, "signature"},
		{"stale timestamp", plainH, "signature=" + sign("1000000000", "n") + "&timestamp=1000000000&nonce=n", okMsg, 403, "stale"},
		{"future timestamp", plainH, func() string {
			f := strconv.FormatInt(now.Add(time.Hour).Unix(), 10)
			return "signature=" + sign(f, "n") + "&timestamp=" + f + "&nonce=n"
		}(), okMsg, 403, "stale"},
		{"far-future timestamp", plainH, "signature=" + sign("20000000000", "n") + "&timestamp=20000000000&nonce=n", okMsg, 403, "stale"},
		{"timestamp past int64", plainH, "signature=" + sign("99999999999999999999", "n") + "&timestamp=99999999999999999999&nonce=n", okMsg, 403, "stale"},
		{"non-numeric timestamp", plainH, "signature=" + sign("soon", "n") + "&timestamp=soon&nonce=n", okMsg, 400, "malformed"},
		{"missing signature", plainH, "timestamp=" + ts + "&nonce=n", okMsg, 400, "malformed"},
		{"malformed xml", plainH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n", "<xml><MsgType>text</xml>", 400, "malformed"},
		{"not xml", plainH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n", "hello", 400, "malformed"},
		{"empty body", plainH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n", "", 400, "malformed"},
		{"oversized body", plainH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n",
			"<xml><Content>" + strings.Repeat("x", 65<<10) + "</Content></xml>", 413, "too_large"},
		{"encrypted without key", plainH, safeQuery("AAAA"), envelope("AAAA"), 400, "decrypt"},
		{"bad msg_signature", safeH, fmt.Sprintf("signature=%s&timestamp=%s&nonce=n&encrypt_type=aes&msg_signature=%s", sign(ts, "n"), ts, strings.Repeat("a", 40)), envelope(wrongAppEnc), 403, "signature"},
		{"missing msg_signature", safeH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n&encrypt_type=aes", envelope(wrongAppEnc), 400, "malformed"},
		{"envelope without Encrypt", safeH, safeQuery(""), "<xml><ToUserName>gh</ToUserName></xml>", 400, "malformed"},
		{"bad base64", safeH, safeQuery("!!!!"), envelope("!!!!"), 400, "decrypt"},
		{"short block", safeH, safeQuery("AAAA"), envelope("AAAA"), 400, "decrypt"},
		{"wrong appid", safeH, safeQuery(wrongAppEnc), envelope(wrongAppEnc), 400, "decrypt"},
		{"bad padding", safeH, safeQuery(badPadding), envelope(badPadding), 400, "decrypt"},
		{"length beyond the buffer", safeH, safeQuery(longLength), envelope(longLength), 400, "decrypt"},
		// The signature is checked before any decryption: garbage under a
		// bad signature is a signature rejection, so a caller without the
		// token learns nothing from the cipher's errors or timing.
		{"bad signature over garbage", safeH, fmt.Sprintf("signature=%s&timestamp=%s&nonce=n&encrypt_type=aes&msg_signature=%s", sign(ts, "n"), ts, strings.Repeat("b", 40)), envelope("!!!!"), 403, "signature"},
		{"xml too deep", plainH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n",
			"<xml><MsgType>text</MsgType>" + strings.Repeat("<a>", 64) + strings.Repeat("</a>", 64) + "</xml>", 400, "malformed"},
		{"too many elements", plainH, "signature=" + sign(ts, "n") + "&timestamp=" + ts + "&nonce=n",
			"<xml><MsgType>text</MsgType>" + strings.Repeat("<a>1</a>", 2000) + "</xml>", 400, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.h.counter("wxgate_ingress_rejected_total", "reason", tt.reason)
			req, _ := http.NewRequest(http.MethodPost, tt.h.url+"?"+tt.query, strings.NewReader(tt.body))
			code, body := do(t, req)
			if code != tt.code {
				t.Fatalf("status = %d (%s), want %d", code, body, tt.code)
			}
			if got := tt.h.counter("wxgate_ingress_rejected_total", "reason", tt.reason); got != before+1 {
				t.Errorf("rejected{reason=%s} went %v -> %v", tt.reason, before, got)
			}
		})
	}
	// A body over the limit without Content-Length (chunked) is cut off too.
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("<xml><Content>" + strings.Repeat("y", 70<<10)))
		_ = pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, plainH.url+"?signature="+sign(ts, "n")+"&timestamp="+ts+"&nonce=n", pr)
	if code, _ := do(t, req); code != 413 {
		t.Errorf("chunked oversized body: status %d, want 413", code)
	}
	// Every rejection was logged, and no log line carries the token.
	logs := plainH.logs.String()
	if !strings.Contains(logs, "reason=signature") || !strings.Contains(logs, "reason=too_large") {
		t.Errorf("rejections not logged:\n%s", logs)
	}
	if strings.Contains(logs+safeH.logs.String(), token) || strings.Contains(safeH.logs.String(), aesKey) {
		t.Error("a secret appears in the logs")
	}
}

func TestNoWorkerAnswersSuccessFast(t *testing.T) {
	h := newHarness(t, opts{noWorker: true, replyTimeout: 4 * time.Second})
	start := time.Now()
	code, body := h.post(message("text", "<Content>anyone?</Content>"))
	elapsed := time.Since(start)
	if code != 200 || body != "success" {
		t.Fatalf("= %d %q, want 200 success", code, body)
	}
	// No responders is known at once; waiting for REPLY_TIMEOUT would be a bug.
	if elapsed >= time.Second {
		t.Errorf("took %v with no worker, want well under a second", elapsed)
	}
	if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "no_responders"); got != 1 {
		t.Errorf("fallbacks{no_responders} = %v", got)
	}
}

func TestSlowWorkerAnswersSuccessAtDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h := newHarness(t, opts{noWorker: true, replyTimeout: timeout})
	nc := natstest.Connect(t, h.srv)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	if _, err := nc.QueueSubscribe(bus.MessagesSubject, bus.QueueGroup, func(m *nats.Msg) {
		<-release // slower than any deadline
		_ = m.Respond([]byte("too late"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, body := h.post(message("text", "<Content>slow</Content>"))
	elapsed := time.Since(start)
	if code != 200 || body != "success" {
		t.Fatalf("= %d %q, want 200 success", code, body)
	}
	if elapsed < timeout || elapsed > timeout+3*time.Second {
		t.Errorf("answered after %v, want at the %v deadline", elapsed, timeout)
	}
	if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "timeout"); got != 1 {
		t.Errorf("fallbacks{timeout} = %v", got)
	}
}

func TestWorkerErrorAnswersSuccess(t *testing.T) {
	h := newHarness(t, opts{noWorker: true})
	nc := natstest.Connect(t, h.srv)
	svc, err := micro.AddService(nc, micro.Config{Name: "failing", Version: "0.0.1", QueueGroup: bus.QueueGroup,
		Endpoint: &micro.EndpointConfig{Subject: bus.MessagesSubject, Handler: micro.HandlerFunc(func(r micro.Request) {
			_ = r.Error("500", "boom", nil)
		})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	if err := nc.Flush(); err != nil { // the subscription is live on the server
		t.Fatal(err)
	}
	code, body := h.post(message("text", "<Content>x</Content>"))
	if code != 200 || body != "success" {
		t.Fatalf("= %d %q", code, body)
	}
	if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "worker_error"); got != 1 {
		t.Errorf("fallbacks{worker_error} = %v", got)
	}
}

func TestBusDownAnswersSuccessFast(t *testing.T) {
	down := natstest.RunServer(t)
	nc := natstest.Connect(t, down, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	disconnected := make(chan struct{})
	nc.SetDisconnectErrHandler(func(*nats.Conn, error) { close(disconnected) })
	h := newHarness(t, opts{conn: nc})
	down.Shutdown()
	<-disconnected

	start := time.Now()
	code, body := h.post(message("text", "<Content>x</Content>"))
	if code != 200 || body != "success" {
		t.Fatalf("= %d %q", code, body)
	}
	if elapsed := time.Since(start); elapsed >= time.Second {
		t.Errorf("took %v with the bus down, want an immediate answer", elapsed)
	}
	if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "bus_down"); got != 1 {
		t.Errorf("fallbacks{bus_down} = %v", got)
	}
}

func TestMetricsLint(t *testing.T) {
	h := newHarness(t, opts{noWorker: true})
	problems, err := testutil.GatherAndLint(h.reg)
	if err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	// Every outcome and reason series exists before any traffic.
	for _, o := range []string{"reply", "empty", "fallback", "rejected"} {
		if h.counter("wxgate_ingress_requests_total", "outcome", o) != 0 {
			t.Errorf("outcome %s not zero", o)
		}
	}
}

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

// blockOnce blocks its first run until released; every run is counted.
type blockOnce struct {
	*reply.Replier
	runs    atomic.Int32
	started chan struct{}
	release chan struct{}
}

func (d *blockOnce) Decide(ctx context.Context, _ string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	if d.runs.Add(1) == 1 {
		close(d.started)
		<-d.release
	}
	return d.Reply(m), nil
}

// A retry that arrives while the first delivery is still with the worker
// is asked for like any request (the ingress keeps no map of requests in
// flight): the stream flags it a retry, the worker finds the first
// delivery in hand and waits for its reply. The handler runs once, and
// both deliveries get its reply.
func TestRetryInFlightWaitsForFirstDelivery(t *testing.T) {
	streams := natstest.RunServer(t) // the intake's, which says the second is a retry
	in, err := intake.New(intake.Options{Conn: natstest.Connect(t, streams), Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(context.Background()) })
	h := newHarness(t, opts{noWorker: true, safe: true, intake: in})
	wnc := natstest.Connect(t, h.srv)
	js, err := jetstream.New(wnc)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	store, err := dedup.Open(js, "w", dedup.Options{ClaimAfter: time.Minute, Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, store.Check)
	d := &blockOnce{Replier: reply.NewReplier(config.Defaults().Replies), started: make(chan struct{}), release: make(chan struct{})}
	svc, err := reply.Start(reply.Options{Conn: wnc, Dedup: store, Decider: d, Logger: quiet, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	var released sync.Once
	release := func() { released.Do(func() { close(d.release) }) }
	t.Cleanup(release) // before the service stops, even when the test fails

	msg := message("text", "<Content>once</Content>")
	type answer struct {
		code int
		body string
	}
	answers := make(chan answer, 2)
	send := func(nonce string) {
		code, body, err := h.sender.Post(http.DefaultClient, h.url, []byte(msg), time.Now(), nonce)
		if err != nil {
			t.Error(err)
		}
		answers <- answer{code, string(body)}
	}
	go send("first")
	<-d.started // the worker runs the first delivery
	go send("retry")
	// The retry waits on the message's key (it watches it) before the
	// first delivery's handler is let go.
	wait.For(t, wait.Short, wait.Every, func() error {
		s, err := js.Stream(context.Background(), "KV_"+dedup.Bucket)
		if err != nil {
			return err
		}
		info, err := s.Info(context.Background())
		if err != nil || info.State.Consumers == 0 {
			return fmt.Errorf("the retry does not wait for the first delivery yet (%v)", err)
		}
		return nil
	})
	release()
	for i := 0; i < 2; i++ {
		a := <-answers
		if a.code != 200 || !strings.Contains(a.body, "once") {
			t.Errorf("delivery answered %d %q, want the worker's reply", a.code, a.body)
		}
	}
	if n := d.runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// unanswered records the events the gateway hands to the intake as
// answered without their reply.
type unanswered struct {
	mu      sync.Mutex
	reasons []string
}

func (u *unanswered) Publish(string, *wechat.Message, string, []byte, time.Time) (intake.Receipt, error) {
	return intake.Receipt{Duplicate: true}, nil
}

func (u *unanswered) Unanswered(_ string, _ *wechat.Message, _ string, _ []byte, _ time.Time, _ intake.Receipt, reason string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reasons = append(u.reasons, reason)
}

// A reply the worker could not mark (its replies store out of reach, code
// 503) is a fallback as when the bus is down (finding N1): "success" now,
// counted, and the event recorded for the late reply.
func TestUnmarkedReplyIsABusDownFallback(t *testing.T) {
	rec := &unanswered{}
	h := newHarness(t, opts{noWorker: true, intake: rec})
	nc := natstest.Connect(t, h.srv)
	svc, err := micro.AddService(nc, micro.Config{Name: "unmarked", Version: "0.0.1", QueueGroup: bus.QueueGroup,
		Endpoint: &micro.EndpointConfig{Subject: bus.MessagesSubject, Handler: micro.HandlerFunc(func(r micro.Request) {
			_ = r.Error(bus.ErrorCodeNotMarked, "reply not marked: replies store unavailable", nil)
		})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if code, body := h.post(message("text", "<Content>x</Content>")); code != 200 || body != "success" {
		t.Fatalf("= %d %q", code, body)
	}
	if got := h.counter("wxgate_ingress_fallbacks_total", "reason", "bus_down"); got != 1 {
		t.Errorf("fallbacks{bus_down} = %v, want 1", got)
	}
	if got := h.counter("wxgate_ingress_requests_total", "outcome", "fallback"); got != 1 {
		t.Errorf("requests{fallback} = %v, want 1", got)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reasons) != 1 || rec.reasons[0] != "bus_down" {
		t.Errorf("recorded as unanswered: %v, want once, bus_down", rec.reasons)
	}
}

// A request carries the account (its id, and the ToUserName), the dedup key, when the ingress received
// it, and how long it still waits (Wx-Timeout, in milliseconds: the
// worker's deadline is its own arrival plus that, no clock compared); a
// first delivery carries no Wx-Retry.
func TestRequestHeaders(t *testing.T) {
	h := newHarness(t, opts{noWorker: true, replyTimeout: 3 * time.Second})
	nc := natstest.Connect(t, h.srv)
	got := make(chan nats.Header, 1)
	if _, err := nc.QueueSubscribe(bus.MessagesSubject, bus.QueueGroup, func(m *nats.Msg) { got <- m.Header; _ = m.Respond(nil) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if code, _ := h.post(message("text", "<Content>headers</Content>")); code != 200 {
		t.Fatalf("status %d", code)
	}
	hd := <-got
	ms, err := strconv.Atoi(hd.Get(bus.HeaderTimeout))
	if err != nil || ms <= 2000 || ms > 3000 {
		t.Errorf("%s = %q, want most of the 3s REPLY_TIMEOUT in milliseconds", bus.HeaderTimeout, hd.Get(bus.HeaderTimeout))
	}
	if hd.Get(bus.HeaderAccountID) != "default" || hd.Get(bus.HeaderAccount) != "gh_account" || hd.Get(bus.HeaderDedupKey) == "" || hd.Get(bus.HeaderReceived) == "" || hd.Get(bus.HeaderRetry) != "" {
		t.Errorf("headers %v", hd)
	}
	for _, gone := range []string{"Wx-Deadline", "Wx-Sent"} {
		if hd.Get(gone) != "" {
			t.Errorf("%s still sent", gone)
		}
	}
}

// No byte a sender controls may choose a NATS subject outside msg.* and
// event.*: hostile MsgType and Event values, seen from a wildcard
// subscriber on the real server.
func TestSubjectInjection(t *testing.T) {
	h := newHarness(t, opts{})
	sniffer := natstest.Connect(t, h.srv)
	seen := make(chan string, 256)
	sub, err := sniffer.Subscribe(">", func(m *nats.Msg) { seen <- m.Subject })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := sniffer.Flush(); err != nil {
		t.Fatal(err)
	}
	hostile := []string{"text.>", "*", ">", "msg.text", "text event", "../x", "te\tx\nt", "事件", "TEXT.*.>",
		strings.Repeat("a", 100), "", "a$b", "_INBOX.x", "$JS.API.STREAM.DELETE.X"}
	for _, v := range hostile {
		for _, msg := range []string{message(v, ""), event(v, "")} {
			if code, _ := h.post(msg); code != 200 {
				t.Fatalf("%q: status %d", v, code)
			}
		}
	}
	// A sentinel published after every request: the server delivers in
	// order, so once it arrives everything before it has.
	if err := sniffer.Publish("sentinel", nil); err != nil {
		t.Fatal(err)
	}
	valid := regexp.MustCompile(`^(msg|event)\.[a-z0-9_]{1,64}$`)
	requests := 0
	for subject := range seen {
		switch {
		case subject == "sentinel":
			if requests != 2*len(hostile) {
				t.Fatalf("saw %d requests, want %d", requests, 2*len(hostile))
			}
			return
		case strings.HasPrefix(subject, "_INBOX.") || strings.HasPrefix(subject, "$SRV."):
			// replies and the micro service's own subjects
		case valid.MatchString(subject):
			requests++
		default:
			t.Errorf("a request reached subject %q", subject)
		}
	}
}

// Every 4xx closes its connection, so an unauthenticated client cannot hold
// a keep-alive slot after a cheap rejection (finding F9); WeChat's valid
// requests keep theirs. Seen on a raw TCP connection to a real listener.
func TestRejectionClosesConnection(t *testing.T) {
	h := newHarness(t, opts{})
	u, err := url.Parse(h.url)
	if err != nil {
		t.Fatal(err)
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	okMsg := message("text", "<Content>x</Content>")
	newReq := func(method, path, body string) *http.Request {
		req, err := http.NewRequest(method, "http://"+u.Host+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	// roundTrip writes req on conn and reads the whole response.
	roundTrip := func(conn net.Conn, br *bufio.Reader, req *http.Request) *http.Response {
		t.Helper()
		if err := req.Write(conn); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	dial := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// A bound on the test, not a wait: the server answers at once.
		if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		return conn, bufio.NewReader(conn)
	}

	rejections := []struct {
		name string
		req  *http.Request
		code int
	}{
		{"unsigned POST", newReq(http.MethodPost, gateway.Path+"?timestamp="+ts+"&nonce=n", okMsg), 400},
		{"bad signature", newReq(http.MethodPost, gateway.Path+"?signature="+strings.Repeat("0", 40)+"&timestamp="+ts+"&nonce=n", okMsg), 403},
		{"bad URL check", newReq(http.MethodGet, gateway.Path+"?signature="+strings.Repeat("0", 40)+"&timestamp="+ts+"&nonce=n&echostr=e", ""), 403},
		{"oversized body", newReq(http.MethodPost, gateway.Path+"?signature="+wechat.Signature(token, ts, "n")+"&timestamp="+ts+"&nonce=n",
			strings.Repeat("x", 65<<10)), 413},
		{"other route", newReq(http.MethodGet, "/other", ""), 404},
	}
	for _, tt := range rejections {
		t.Run(tt.name, func(t *testing.T) {
			conn, br := dial()
			resp := roundTrip(conn, br, tt.req)
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.code)
			}
			if !resp.Close {
				t.Errorf("no Connection: close on the %d (header %q)", resp.StatusCode, resp.Header.Get("Connection"))
			}
			if b, err := br.ReadByte(); err != io.EOF {
				t.Errorf("after the %d the connection is still open: read %q, %v; want EOF", resp.StatusCode, b, err)
			}
		})
	}

	t.Run("valid requests keep the connection", func(t *testing.T) {
		conn, br := dial()
		for i := 0; i < 2; i++ {
			req, err := h.sender.NewRequest("http://"+u.Host+gateway.Path, []byte(message("text", "<Content>ka</Content>")), time.Now(), "ka"+strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			// The second request on the same connection is answered: it stayed open.
			if resp := roundTrip(conn, br, req); resp.StatusCode != 200 || resp.Close {
				t.Fatalf("request %d: status %d, close %v; want 200 on a kept connection", i, resp.StatusCode, resp.Close)
			}
		}
	})
}

// JetStream away and the intake's buffer full: the event is not accepted.
// WeChat gets 503 (so that it sends it again), the connection is closed,
// and the request counts as rejected.
func TestFullIntakeIsA503(t *testing.T) {
	streams := natstest.RunServer(t) // the intake's own server, stopped below
	inc := natstest.Connect(t, streams, nats.MaxReconnects(-1))
	in, err := intake.New(intake.Options{Conn: inc, Buffer: 1, Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second) // the held event is lost with the server
		defer cancel()
		_ = in.Close(ctx)
	})
	h := newHarness(t, opts{intake: in})
	streams.Close()
	wait.For(t, wait.Short, wait.Every, func() error {
		if inc.IsConnected() {
			return errors.New("intake still connected")
		}
		return nil
	})
	if code, body := h.post(message("text", "<Content>held</Content><MsgId>9101</MsgId>")); code != 200 || !strings.Contains(body, "held") {
		t.Fatalf("first event (held) = %d %q, want the worker's reply", code, body)
	}
	req, err := h.sender.NewRequest(h.url, []byte(message("text", "<Content>one too many</Content><MsgId>9102</MsgId>")), time.Now(), "nonce-full")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close {
		t.Errorf("past the buffer = %d (close %v), want 503 and the connection closed", resp.StatusCode, resp.Close)
	}
	if got := h.counter("wxgate_ingress_requests_total", "outcome", "rejected"); got != 1 {
		t.Errorf("rejected = %v, want 1", got)
	}
}
