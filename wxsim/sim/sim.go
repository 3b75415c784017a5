// Package sim is the wxsim command: WeChat's side of the callback protocol,
// for trying wxgate without a WeChat account and for load.
package sim

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

const usage = `wxsim plays WeChat against a wxgate callback URL.

usage: wxsim <command> [flags]

commands:
  verify       the GET URL check WeChat does when the server settings are saved
  text         a text message (-content)
  voice        a voice message (-recognition; empty means unrecognised)
  subscribe    a follow (-scene for one through a parametric QR code)
  scan         a follower scanning a parametric QR code (-scene)
  unsubscribe  an unfollow
  raw          any message XML, from -file or standard input
  load         traffic: -concurrency or -rate, -duration or -requests, -mix, -scenes
  api          a fake of WeChat's API for wxgate's WECHAT_API_BASE (-addr; see wxsim api -h)

-account ID sends to the account's URL, -url/ID (wxgate's /wechat/{id});
-tokens, -aeskeys and -appids give accounts their own Token, EncodingAESKey
and AppID (id=value,id2=value2; the others use -token, -aeskey, -appid).
load -accounts N spreads the load over the accounts acct000, acct001, ...

With -api URL, text, voice, subscribe, scan, unsubscribe and raw first tell
a "wxsim api" at URL of the person's interaction, which opens their
customer-service window there (with -account, the window of -appid's app).

Run "wxsim <command> -h" for the flags.
`

// Main runs wxsim with args and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, args := args[0], args[1:]
	c := &client{out: stdout}
	fs := flag.NewFlagSet("wxsim "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.commonFlags(fs)
	var run func(context.Context) error
	switch cmd {
	case "text", "voice", "subscribe", "scan", "unsubscribe", "raw":
		// Only what a person does opens a customer-service window.
		fs.StringVar(&c.api, "api", "", "a fake WeChat API (wxsim api) to tell of the person's interaction, as WeChat knows of it, before the callback: it opens their customer-service window")
	}
	switch cmd {
	case "verify":
		echo := fs.String("echostr", "wxsim-"+strconv.Itoa(rand.IntN(1e9)), "the echostr to send")
		run = func(ctx context.Context) error { return c.verify(ctx, *echo) }
	case "text":
		content := fs.String("content", "hello from wxsim", "the text")
		run = func(ctx context.Context) error {
			return c.send(ctx, &wechat.Message{MsgType: wechat.MsgText, Content: *content})
		}
	case "voice":
		recognition := fs.String("recognition", "", "the recognised speech; empty means WeChat could not recognise it")
		run = func(ctx context.Context) error {
			return c.send(ctx, &wechat.Message{MsgType: wechat.MsgVoice, MediaID: "wxsim_media", Format: "amr", Recognition: *recognition})
		}
	case "subscribe":
		scene := fs.String("scene", "", "the QR scene the person followed through (empty: followed another way)")
		run = func(ctx context.Context) error {
			m := &wechat.Message{MsgType: wechat.MsgEvent, Event: wechat.EventSubscribe}
			if *scene != "" {
				m.EventKey, m.Ticket = wechat.ScenePrefix+*scene, "wxsim_ticket"
			}
			return c.send(ctx, m)
		}
	case "scan":
		scene := fs.String("scene", "", "the QR scene scanned (required)")
		run = func(ctx context.Context) error {
			if *scene == "" {
				return errors.New("scan needs -scene")
			}
			return c.send(ctx, &wechat.Message{MsgType: wechat.MsgEvent, Event: wechat.EventScan, EventKey: *scene, Ticket: "wxsim_ticket"})
		}
	case "unsubscribe":
		run = func(ctx context.Context) error {
			return c.send(ctx, &wechat.Message{MsgType: wechat.MsgEvent, Event: wechat.EventUnsubscribe})
		}
	case "raw":
		file := fs.String("file", "-", "the message XML; - for standard input")
		run = func(ctx context.Context) error {
			var b []byte
			var err error
			if *file == "-" {
				b, err = io.ReadAll(os.Stdin)
			} else {
				b, err = os.ReadFile(*file)
			}
			if err != nil {
				return err
			}
			return c.sendRaw(ctx, b)
		}
	case "load":
		l := &loadCmd{client: c}
		l.flags(fs)
		run = l.run
	default:
		fmt.Fprintf(stderr, "wxsim: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := c.setup(); err != nil {
		fmt.Fprintln(stderr, "wxsim:", err)
		return 2
	}
	if err := run(ctx); err != nil {
		fmt.Fprintln(stderr, "wxsim:", err)
		return 1
	}
	return 0
}

// client holds the common flags and plays WeChat.
type client struct {
	out                io.Writer
	url, token, aesKey string
	appID, to          string
	account            string // the wxgate account: -url/<account>; empty: -url as given
	tokens, aesKeys    string // per account: id=value,…
	appIDs             string
	tokenOf, aesKeyOf  map[string]string // -tokens, -aeskeys, -appids, read
	appIDOf            map[string]string
	openID             string
	api                string // the fake WeChat API to tell of interactions; empty: none
	retries            int
	timeout, wait      time.Duration
	sender             wechat.Sender
	http               *http.Client
}

func (c *client) commonFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "url", "http://127.0.0.1:8080/wechat", "the wxgate callback URL")
	fs.StringVar(&c.token, "token", cmp.Or(os.Getenv("WECHAT_TOKEN"), "wxgate-dev-token"), "the Token (default $WECHAT_TOKEN, else standalone's dev token)")
	fs.StringVar(&c.aesKey, "aeskey", os.Getenv("WECHAT_ENCODING_AES_KEY"), "the EncodingAESKey: given, messages go in safe mode")
	fs.StringVar(&c.appID, "appid", os.Getenv("WECHAT_APPID"), "the AppID (safe mode)")
	fs.StringVar(&c.to, "to", "gh_wxsim", "ToUserName: the account's original ID (gh_…)")
	fs.StringVar(&c.account, "account", "", "the wxgate account id: messages go to -url/<id> (/wechat/<id>) with its -tokens, -aeskeys, -appids")
	fs.StringVar(&c.tokens, "tokens", "", "Tokens per account: id=token,id2=token2 (the others: -token)")
	fs.StringVar(&c.aesKeys, "aeskeys", "", "EncodingAESKeys per account: id=key,… (the others: -aeskey)")
	fs.StringVar(&c.appIDs, "appids", "", "AppIDs per account: id=appid,… (the others: -appid)")
	fs.StringVar(&c.openID, "openid", "", "FromUserName: the person's OpenID (default a fresh one)")
	fs.IntVar(&c.retries, "retries", 0, "resend the identical message this many more times, as WeChat's retries")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "how long to wait for an answer (WeChat waits 5s)")
	fs.DurationVar(&c.wait, "wait", 0, "keep trying to connect this long, for a server still starting")
}

func (c *client) setup() error {
	var err error
	for flag, f := range map[string]struct {
		v string
		m *map[string]string
	}{"-tokens": {c.tokens, &c.tokenOf}, "-aeskeys": {c.aesKeys, &c.aesKeyOf}, "-appids": {c.appIDs, &c.appIDOf}} {
		if *f.m, err = wechatapitest.ParsePairs(f.v, "="); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	if c.sender, err = c.senderFor(c.account); err != nil {
		return err
	}
	if c.account != "" {
		c.appID = cmp.Or(c.appIDOf[c.account], c.appID)
		c.url = accountURL(c.url, c.account)
	}
	if c.openID == "" {
		c.openID = "o_wxsim_" + strconv.FormatUint(rand.Uint64()%1e12, 36)
	}
	c.http = &http.Client{Timeout: c.timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	return nil
}

// senderFor signs (and in safe mode encrypts) as the account expects:
// its own -tokens, -aeskeys and -appids, else the common flags.
func (c *client) senderFor(account string) (wechat.Sender, error) {
	s := wechat.Sender{Token: cmp.Or(c.tokenOf[account], c.token)}
	key, appID := cmp.Or(c.aesKeyOf[account], c.aesKey), cmp.Or(c.appIDOf[account], c.appID)
	if key == "" {
		return s, nil
	}
	if appID == "" {
		return s, errors.New("safe mode (-aeskey) needs -appid")
	}
	cipher, err := wechat.NewCipher(key, appID)
	if err != nil {
		return s, fmt.Errorf("the EncodingAESKey of %q: %w", cmp.Or(account, "the account"), err)
	}
	s.Cipher = cipher
	return s, nil
}

// accountURL is the callback URL of account: base/<account>.
func accountURL(base, account string) string { return strings.TrimSuffix(base, "/") + "/" + account }

func nonce() string { return strconv.FormatUint(rand.Uint64()%1e10, 10) }

// ready waits, within -wait, until the server accepts connections.
func (c *client) ready(ctx context.Context) error {
	if c.wait <= 0 {
		return nil
	}
	deadline := time.Now().Add(c.wait)
	for {
		resp, err := c.http.Get(c.url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not reachable within %s: %w", c.url, c.wait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // retry pace while the server starts
		}
	}
}

func (c *client) verify(ctx context.Context, echo string) error {
	if err := c.ready(ctx); err != nil {
		return err
	}
	req, err := c.sender.NewVerifyRequest(c.url, echo, time.Now(), nonce())
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req.WithContext(ctx))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Fprintf(c.out, "status: %d\n", resp.StatusCode)
	if resp.StatusCode != http.StatusOK || string(body) != echo {
		return fmt.Errorf("URL check failed: got %q, want the echostr %q", body, echo)
	}
	fmt.Fprintln(c.out, "verify: ok (echostr returned)")
	return nil
}

// send fills in the addressing fields and sends m.
func (c *client) send(ctx context.Context, m *wechat.Message) error {
	m.ToUserName, m.FromUserName, m.CreateTime = c.to, c.openID, time.Now().Unix()
	if !m.IsEvent() {
		m.MsgID = strconv.FormatUint(rand.Uint64()>>1, 10)
	}
	return c.sendRaw(ctx, m.AppendXML(nil))
}

func (c *client) sendRaw(ctx context.Context, msg []byte) error {
	if err := c.ready(ctx); err != nil {
		return err
	}
	if c.api != "" {
		if err := c.tellAPI(ctx, msg); err != nil {
			return err
		}
	}
	var failed error
	for attempt := 0; attempt <= c.retries; attempt++ {
		if c.retries > 0 {
			fmt.Fprintf(c.out, "attempt %d/%d\n", attempt+1, c.retries+1)
		}
		start := time.Now()
		code, reply, err := c.sender.Post(c.http, c.url, msg, time.Now(), nonce())
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "status: %d (%s)\n", code, time.Since(start).Round(100*time.Microsecond))
		if code != http.StatusOK {
			fmt.Fprintf(c.out, "error: %s\n", strings.TrimSpace(string(reply)))
			failed = fmt.Errorf("server answered %d", code)
			continue
		}
		printReply(c.out, reply)
	}
	return failed
}

// tellAPI tells the fake WeChat API of the interaction msg is, once
// however many retries follow. It goes before the callback, as the window
// opens when the person acts: a reply sent late by a handler that just
// missed the deadline must not race the fake being told.
func (c *client) tellAPI(ctx context.Context, msg []byte) error {
	m, err := wechat.Parse(msg)
	kind := ""
	if err == nil && m.FromUserName != "" {
		kind = wechatapitest.InteractionKind(m.MsgType, m.Event)
	}
	if kind == "" {
		fmt.Fprintln(c.out, "interaction: none (this callback opens no customer-service window)")
		return nil
	}
	told := wechatapitest.InteractionRequest{OpenID: m.FromUserName, Kind: kind}
	if c.account != "" {
		told.AppID = c.appID // the fake keeps each app's windows apart
	}
	body, _ := json.Marshal(told)
	url := strings.TrimSuffix(c.api, "/") + "/wxsim/interaction"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("-api: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("telling the fake API of the interaction: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("telling the fake API of the interaction: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	fmt.Fprintf(c.out, "interaction: %s for %s told to %s\n", kind, m.FromUserName, c.api)
	return nil
}

// printReply prints what the person would see.
func printReply(w io.Writer, reply []byte) {
	if len(reply) == 0 || string(reply) == "success" {
		fmt.Fprintln(w, "reply: success (nothing shown to the person)")
		return
	}
	var r struct {
		MsgType string
		Content string
	}
	if err := xml.Unmarshal(reply, &r); err != nil {
		fmt.Fprintf(w, "reply: not XML: %q\n", reply)
		return
	}
	if r.MsgType == wechat.ReplyText {
		fmt.Fprintf(w, "reply: text: %s\n", r.Content)
		return
	}
	fmt.Fprintf(w, "reply: %s: %s\n", r.MsgType, reply)
}
