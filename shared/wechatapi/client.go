// Package wechatapi is wxgate's client of WeChat's API: one Client per
// account with an AppSecret (Clients makes them from the accounts
// registry), with timeouts, errcodes as typed errors, a metric per call,
// and one access_token per AppID shared by every process through a
// JetStream KV bucket (see Tokens). The access_token and the AppSecret
// never reach a log line, a metric or an error message.
package wechatapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
)

// The APIs, as the metric's api label names them.
const (
	APIStableToken  = "stable_token"
	APIQRCodeCreate = "qrcode_create"
	APICustomSend   = "custom_send"
)

// OutcomeOK and OutcomeError label a call answered with errcode 0 and one
// that got no answer from WeChat (network, timeout, HTTP status, garbage).
const (
	OutcomeOK    = "ok"
	OutcomeError = "error"
)

// Options configure Clients. Accounts, Conn, Logger and Registerer are
// required.
type Options struct {
	// Base is WECHAT_API_BASE; default https://api.weixin.qq.com.
	Base string
	// Accounts are the accounts this process serves: each with an
	// AppSecret (the default's is WECHAT_APPSECRET) gets a client.
	Accounts *accounts.Registry
	// Conn carries the token bucket shared by every process.
	Conn *nats.Conn
	// Replicas of the token bucket when this process creates it.
	Replicas int
	// HTTP is the client for WeChat; nil is one with timeouts.
	HTTP       *http.Client
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Token tunes the shared tokens; zero values are the defaults.
	Token TokenOptions
}

func (o *Options) setDefaults() {
	o.Base = strings.TrimRight(o.Base, "/")
	if o.Base == "" {
		o.Base = "https://api.weixin.qq.com"
	}
	if o.HTTP == nil {
		o.HTTP = defaultHTTPClient()
	}
}

func (o *Options) validate() error {
	if o.Accounts == nil || o.Conn == nil || o.Logger == nil || o.Registerer == nil {
		return errors.New("wechatapi: Options.Accounts, Conn, Logger and Registerer are required")
	}
	return nil
}

// Clients are the process's clients of WeChat's API, one per account with
// an AppSecret, made on first use and remade when the account's AppID or
// AppSecret changes. Each has its own token wait and in-process lock: an
// account whose AppSecret WeChat refuses, or whose refresh is slow, does
// not hold up another's calls. Two accounts with one AppID share its
// token through the bucket, as two processes do.
type Clients struct {
	o      Options
	calls  *prometheus.CounterVec
	tokens *bus.Bucket
	id     string // this process, in the tokens' leases

	mu   sync.Mutex
	gen  uint64 // the registry's generation last swept
	byID map[string]*Client
}

// ErrOff means the account has no AppSecret: the API's features are off
// for it.
var ErrOff = errors.New("the account has no AppSecret (WECHAT_APPSECRET for the default account)")

// ErrUnknownAccount means no account has the id.
var ErrUnknownAccount = errors.New("no such account")

// NewClients returns the process's clients; one per process: the metric
// is registered once, and a second on the same registry is refused.
func NewClients(o Options) (*Clients, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	c := &Clients{o: o, byID: map[string]*Client{}, id: bus.InstanceID(o.Conn),
		tokens: bus.NewBucket(o.Conn, BucketName, "wxgate: the WeChat access_token shared by every process", o.Replicas)}
	c.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxgate_wechat_api_calls_total",
		Help: "Calls of WeChat's API by account, api and outcome: ok, the errcode WeChat answered, or error (no answer).",
	}, []string{"account", "api", "outcome"})
	if err := o.Registerer.Register(c.calls); err != nil {
		return nil, fmt.Errorf("wechatapi: metrics: %w", err)
	}
	return c, nil
}

// For returns the client of the account id: ErrUnknownAccount when the
// registry has no such account, ErrOff when it has no AppSecret.
func (c *Clients) For(id string) (*Client, error) {
	a, ok := c.o.Accounts.Get(id)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownAccount, id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen := c.o.Accounts.Generation(); gen != c.gen {
		c.gen = gen
		c.sweep()
	}
	if a.AppSecret == "" {
		c.drop(id)
		return nil, ErrOff
	}
	if cl := c.byID[id]; cl != nil && cl.appID == a.AppID && cl.secret == a.AppSecret {
		return cl, nil
	}
	if !appIDPattern.MatchString(a.AppID) {
		return nil, fmt.Errorf("wechatapi: account %s: the AppID must be 1-64 letters, digits, _ or -", id)
	}
	cl := &Client{base: c.o.Base, account: id, appID: a.AppID, secret: a.AppSecret, http: c.o.HTTP,
		logger: c.o.Logger.With("account", id), calls: c.calls.MustCurryWith(prometheus.Labels{"account": id})}
	for _, api := range apis {
		cl.calls.WithLabelValues(api, OutcomeOK)
		cl.calls.WithLabelValues(api, OutcomeError)
	}
	cl.tokens = newTokens(c.tokens, c.id, a.AppID, c.o.Token, cl.fetchToken, cl.logger)
	c.byID[id] = cl
	return cl, nil
}

// Accounts are the accounts the clients are made for.
func (c *Clients) Accounts() *accounts.Registry { return c.o.Accounts }

// sweep drops the clients, and the series, of accounts that are gone or
// no longer usable; c.mu held.
func (c *Clients) sweep() {
	for id := range c.byID {
		if _, ok := c.o.Accounts.Get(id); !ok {
			c.drop(id)
		}
	}
}

func (c *Clients) drop(id string) {
	if c.byID[id] != nil {
		delete(c.byID, id)
		c.calls.DeletePartialMatch(prometheus.Labels{"account": id})
	}
}

// Client calls WeChat's API for one account with its AppID's shared
// access_token.
type Client struct {
	base, account, appID, secret string
	http                         *http.Client
	logger                       *slog.Logger
	calls                        *prometheus.CounterVec // curried with the account
	tokens                       *Tokens
}

// Account is the id of the client's account.
func (c *Client) Account() string { return c.account }

// defaultHTTPClient bounds every step of a call: WeChat answers in
// milliseconds, and a caller (an admin request) must not hang on it.
func defaultHTTPClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
	}
}

// appIDPattern bounds the AppID, which becomes part of KV keys.
var appIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// apis are every API the client calls: their ok and error series start at 0.
var apis = []string{APIStableToken, APIQRCodeCreate, APICustomSend, APIUserSummary, APIInterfaceSummary,
	APITagsCreate, APITagsGet, APITagsBatchTagging, APITagsGetIDList, APIAutoreplyInfo}

// withToken calls api with the shared access_token. When WeChat refuses
// the token itself, the token is expired (only if it is still the stored
// one) and the call retried once with the token that replaces it.
func (c *Client) withToken(ctx context.Context, api, method, path string, body, out any) error {
	tok, err := c.tokens.Token(ctx)
	if err != nil {
		return notSent{err}
	}
	err = c.call(ctx, api, method, path, tok, body, out)
	var we *Error
	if !errors.As(err, &we) || !we.TokenRejected() {
		return err
	}
	c.logger.Warn("access_token refused; expiring it if it is still the stored one, retrying once", "api", api, "errcode", we.Code)
	if err := c.tokens.Expire(ctx, tok); err != nil {
		return notSent{err} // the refused call did nothing; the retry was not made
	}
	if tok, err = c.tokens.Token(ctx); err != nil {
		return notSent{err}
	}
	return c.call(ctx, api, method, path, tok, body, out)
}

// ErrNotSent is in the chain of an error from before a call left for
// WeChat: no access_token, or no connection made. WeChat did not see the
// call, so making it again cannot do its work twice. Other failures (a
// timeout, a connection lost while waiting for the answer) leave that
// unknown.
var ErrNotSent = errors.New("not sent to WeChat")

type notSent struct{ err error }

func (e notSent) Error() string   { return e.err.Error() }
func (e notSent) Unwrap() []error { return []error{e.err, ErrNotSent} }

// beforeSending tells the errors of http.Client.Do that come before the
// request was written: resolving the name or connecting.
func beforeSending(err error) bool {
	var dns *net.DNSError
	var op *net.OpError
	return errors.As(err, &dns) || (errors.As(err, &op) && op.Op == "dial")
}

// maxAnswer bounds what is read of an answer: WeChat's are a few hundred bytes.
const maxAnswer = 64 << 10

// call sends body as JSON to path with method (a GET has none), with the
// access_token when tok is not empty, counts the outcome and decodes the
// answer into out.
func (c *Client) call(ctx context.Context, api, method, path, tok string, body, out any) error {
	var rd io.Reader
	if method != http.MethodGet {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("wechat %s: %w", api, err)
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if tok != "" {
		u += "?access_token=" + url.QueryEscape(tok)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return c.fail(api, fmt.Errorf("wechat %s: %w", api, c.redactErr(err, tok)))
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		err = c.fail(api, fmt.Errorf("wechat %s: %w", api, c.redactErr(err, tok)))
		if beforeSending(err) {
			return notSent{err}
		}
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return c.fail(api, fmt.Errorf("wechat %s: reading the answer: %w", api, c.redactErr(err, tok)))
	}
	if resp.StatusCode != http.StatusOK {
		return c.fail(api, fmt.Errorf("wechat %s: HTTP %d", api, resp.StatusCode))
	}
	err = decodeAnswer(api, answer, out, tok, c.secret)
	var we *Error
	switch {
	case errors.As(err, &we):
		c.calls.WithLabelValues(api, strconv.Itoa(we.Code)).Inc()
		c.logger.Warn("wechat refused", "api", api, "errcode", we.Code, "errmsg", we.Msg, "duration", time.Since(start))
		return err
	case err != nil:
		return c.fail(api, err)
	}
	c.calls.WithLabelValues(api, OutcomeOK).Inc()
	c.logger.Debug("wechat call", "api", api, "duration", time.Since(start))
	return nil
}

func (c *Client) fail(api string, err error) error {
	c.calls.WithLabelValues(api, OutcomeError).Inc()
	c.logger.Warn("wechat call failed", "api", api, "err", err)
	return err
}

// maxErrmsg bounds the errmsg kept from an answer.
const maxErrmsg = 256

// decodeAnswer reads WeChat's answer: a non-zero errcode is an *Error (its
// errmsg with the secrets redacted), else the answer is decoded into out.
func decodeAnswer(api string, answer []byte, out any, secrets ...string) error {
	var head struct {
		Errcode json.Number `json:"errcode"`
		Errmsg  string      `json:"errmsg"`
	}
	if err := json.Unmarshal(answer, &head); err != nil {
		return fmt.Errorf("wechat %s: the answer is not JSON", api)
	}
	if head.Errcode != "" {
		code, err := strconv.Atoi(string(head.Errcode))
		if err != nil {
			return fmt.Errorf("wechat %s: errcode %q is not a whole number", api, truncate(string(head.Errcode), 32))
		}
		if code != 0 {
			return &Error{API: api, Code: code, Msg: redact(truncate(head.Errmsg, maxErrmsg), secrets...)}
		}
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("wechat %s: unexpected answer: %w", api, err)
		}
	}
	return nil
}

// redactErr removes the access_token and the AppSecret from an error: a
// *url.Error carries the request's URL, query (the token) included.
func (c *Client) redactErr(err error, tok string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			ue.URL = u.String()
		} else {
			ue.URL = "[redacted]"
		}
	}
	msg := err.Error()
	if r := redact(msg, tok, url.QueryEscape(tok), c.secret); r != msg {
		return redactedError{msg: r, err: err}
	}
	return err
}

type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }

// Unwrap keeps errors.Is (a deadline, a cancel) working.
func (e redactedError) Unwrap() error { return e.err }

func redact(s string, secrets ...string) string {
	for _, v := range secrets {
		if v != "" {
			s = strings.ReplaceAll(s, v, "[redacted]")
		}
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// fetchToken calls stable_token in normal mode: the same token for every
// caller until WeChat rotates it, so no caller invalidates another's.
// force_refresh is never sent.
func (c *Client) fetchToken(ctx context.Context) (string, time.Duration, error) {
	var out struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	body := map[string]string{"grant_type": "client_credential", "appid": c.appID, "secret": c.secret}
	if err := c.call(ctx, APIStableToken, http.MethodPost, "/cgi-bin/stable_token", "", body, &out); err != nil {
		return "", 0, err
	}
	// WeChat's tokens are at most 512 characters; a token is part of a KV
	// value and every URL, so a longer answer is refused.
	if out.AccessToken == "" || len(out.AccessToken) > 2048 || out.ExpiresIn <= 0 {
		return "", 0, fmt.Errorf("wechat %s: unexpected answer (token of %d bytes, expires_in %d)", APIStableToken, len(out.AccessToken), out.ExpiresIn)
	}
	return out.AccessToken, time.Duration(out.ExpiresIn) * time.Second, nil
}
