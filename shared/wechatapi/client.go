// Package wechatapi is wxgate's client of WeChat's API: one http.Client with
// timeouts, errcodes as typed errors, a metric per call, and one
// access_token shared by every process through a JetStream KV bucket (see
// Tokens). The access_token and the AppSecret never reach a log line, a
// metric or an error message.
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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
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

// Options configure a Client. AppID, Secret, Conn, Logger and Registerer
// are required.
type Options struct {
	// Base is WECHAT_API_BASE; default https://api.weixin.qq.com.
	Base   string
	AppID  string
	Secret string // WECHAT_APPSECRET
	// Conn carries the token bucket shared by every process.
	Conn *nats.Conn
	// Replicas of the token bucket when this process creates it.
	Replicas int
	// HTTP is the client for WeChat; nil is one with timeouts.
	HTTP       *http.Client
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Token tunes the shared token; zero values are the defaults.
	Token TokenOptions
}

// Client calls WeChat's API with the shared access_token.
type Client struct {
	base, appID, secret string
	http                *http.Client
	logger              *slog.Logger
	calls               *prometheus.CounterVec
	tokens              *Tokens
}

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

// New returns a client; it makes no call until one is needed.
func New(o Options) (*Client, error) {
	if o.Conn == nil || o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("wechatapi: Options.Conn, Logger and Registerer are required")
	}
	if !appIDPattern.MatchString(o.AppID) || o.Secret == "" {
		return nil, errors.New("wechatapi: WECHAT_APPID must be 1-64 letters, digits, _ or -, and WECHAT_APPSECRET set")
	}
	base := strings.TrimRight(o.Base, "/")
	if base == "" {
		base = "https://api.weixin.qq.com"
	}
	c := &Client{base: base, appID: o.AppID, secret: o.Secret, http: o.HTTP, logger: o.Logger}
	if c.http == nil {
		c.http = defaultHTTPClient()
	}
	c.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wxgate_wechat_api_calls_total",
		Help: "Calls of WeChat's API by api and outcome: ok, the errcode WeChat answered, or error (no answer).",
	}, []string{"api", "outcome"})
	// One client per process (late replies and QR codes share it): a
	// second on the same registry is a wiring mistake, refused here.
	if err := o.Registerer.Register(c.calls); err != nil {
		return nil, fmt.Errorf("wechatapi: metrics: %w", err)
	}
	for api, codes := range precreated {
		for _, o := range append([]string{OutcomeOK, OutcomeError}, codes...) {
			c.calls.WithLabelValues(api, o)
		}
	}
	c.tokens = newTokens(o.Conn, o.AppID, o.Replicas, o.Token, c.fetchToken, o.Logger)
	return c, nil
}

// precreated are the outcomes each API's series start with (at 0).
var precreated = map[string][]string{
	APIStableToken:  {"-1", "40013", "40125", "40164", "45009", "89503"},
	APIQRCodeCreate: {"-1", "40001", "40014", "42001", "40052", "40053", "45009", "45029", "48001"},
	APICustomSend:   {"-1", "40001", "40014", "42001", "45009", "45015", "45047", "48001"},
}

// withToken calls api with the shared access_token. When WeChat refuses
// the token itself, the token is expired (only if it is still the stored
// one) and the call retried once with the token that replaces it.
func (c *Client) withToken(ctx context.Context, api, path string, body, out any) error {
	tok, err := c.tokens.Token(ctx)
	if err != nil {
		return notSent{err}
	}
	err = c.post(ctx, api, path, tok, body, out)
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
	return c.post(ctx, api, path, tok, body, out)
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

// post sends body as JSON to path (with the access_token when tok is not
// empty), counts the outcome and decodes the answer into out.
func (c *Client) post(ctx context.Context, api, path, tok string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("wechat %s: %w", api, err)
	}
	u := c.base + path
	if tok != "" {
		u += "?access_token=" + url.QueryEscape(tok)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return c.fail(api, fmt.Errorf("wechat %s: %w", api, c.redactErr(err, tok)))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
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
	if err := c.post(ctx, APIStableToken, "/cgi-bin/stable_token", "", body, &out); err != nil {
		return "", 0, err
	}
	// WeChat's tokens are at most 512 characters; a token is part of a KV
	// value and every URL, so a longer answer is refused.
	if out.AccessToken == "" || len(out.AccessToken) > 2048 || out.ExpiresIn <= 0 {
		return "", 0, fmt.Errorf("wechat %s: unexpected answer (token of %d bytes, expires_in %d)", APIStableToken, len(out.AccessToken), out.ExpiresIn)
	}
	return out.AccessToken, time.Duration(out.ExpiresIn) * time.Second, nil
}
