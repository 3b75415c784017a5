// Package gateway is the WeChat-facing HTTP handler: it verifies each
// callback (signature, timestamp, safe-mode crypto), publishes it as a NATS
// request on its subject, and answers WeChat with the worker's reply or
// "success" within the reply deadline.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Path is the callback route.
const Path = "/wechat"

// success is what WeChat takes as "received, no reply".
var success = []byte("success")

// Options wire a Gateway. Token, Conn, Logger and Registerer are required.
type Options struct {
	Token string
	// Cipher decrypts safe-mode requests; nil means plain mode only and
	// encrypted requests are refused.
	Cipher        *wechat.Cipher
	Conn          *nats.Conn
	ReplyTimeout  time.Duration // counted from when the request arrived
	TimestampSkew time.Duration // 0 disables the check
	MaxBodyBytes  int64
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	Now           func() time.Time // time.Now when nil
	// Local, when set instead of Conn, answers in process with no bus: the
	// floor the load benchmark measures the bus against.
	Local func(msg []byte) ([]byte, error)
}

// Gateway is the WeChat callback handler.
type Gateway struct {
	o       Options
	metrics *metrics
	engine  *gin.Engine

	mu      sync.Mutex
	flights map[string]*flight // requests in flight, by dedup key
}

// flight is one worker request that retries of the same message join
// instead of publishing again.
type flight struct {
	done    chan struct{}
	reply   []byte
	outcome string
}

// New returns a Gateway; its Handler serves GET and POST on Path.
func New(o Options) (*Gateway, error) {
	if o.Token == "" || (o.Conn == nil) == (o.Local == nil) || o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("gateway: Token, Logger, Registerer and one of Conn and Local are required")
	}
	if o.ReplyTimeout <= 0 {
		return nil, errors.New("gateway: ReplyTimeout must be positive")
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 64 << 10
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	g := &Gateway{o: o, metrics: newMetrics(o.Registerer), flights: map[string]*flight{}}

	e := gin.New()
	// WeChat connects directly or through a proxy we configure; never trust
	// X-Forwarded-For from the Internet.
	if err := e.SetTrustedProxies(nil); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	e.Use(g.recover, g.logRequest)
	e.GET(Path, g.verify)
	e.POST(Path, g.callback)
	g.engine = e
	return g, nil
}

// Handler is the HTTP handler for the WeChat-facing listener.
func (g *Gateway) Handler() http.Handler { return g.engine }

// recover turns a panic into "success" and a logged stack: a bug of ours must
// not make WeChat tell the person the account is unavailable.
func (g *Gateway) recover(c *gin.Context) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			g.metrics.panics.Inc()
			g.o.Logger.Error("panic in handler", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if !c.Writer.Written() {
				c.Data(http.StatusOK, "text/plain; charset=utf-8", success)
			}
			c.Abort()
		}
	}()
	c.Next()
}

// logRequest logs every request at debug level; rejections and fallbacks
// are logged at warn where they happen. No query or body is logged: they
// carry signatures, OpenIDs and people's messages.
func (g *Gateway) logRequest(c *gin.Context) {
	start := time.Now()
	c.Next()
	if g.o.Logger.Enabled(c.Request.Context(), slog.LevelDebug) {
		g.o.Logger.Debug("request", "method", c.Request.Method, "route", c.FullPath(),
			"status", c.Writer.Status(), "duration", time.Since(start), "remote", c.ClientIP())
	}
}

// verify answers WeChat's URL check: the echostr when the signature is good.
func (g *Gateway) verify(c *gin.Context) {
	start := g.o.Now()
	q := c.Request.URL.Query()
	sig, ts, nonce, echo := q.Get("signature"), q.Get("timestamp"), q.Get("nonce"), q.Get("echostr")
	if sig == "" || ts == "" || nonce == "" || echo == "" {
		g.reject(c, start, http.StatusBadRequest, rejectMalformed, "missing signature, timestamp, nonce or echostr")
		return
	}
	if !wechat.VerifySignature(g.o.Token, ts, nonce, sig) {
		g.reject(c, start, http.StatusForbidden, rejectSignature, "bad signature")
		return
	}
	if status, reason, msg := g.checkTimestamp(ts, start); status != 0 {
		g.reject(c, start, status, reason, msg)
		return
	}
	g.answer(c, start, outcomeReply, "text/plain; charset=utf-8", []byte(echo))
}

// callback handles a message or event POST.
func (g *Gateway) callback(c *gin.Context) {
	received := g.o.Now()
	deadline := received.Add(g.o.ReplyTimeout)
	q := c.Request.URL.Query()
	sig, ts, nonce := q.Get("signature"), q.Get("timestamp"), q.Get("nonce")
	encrypted := strings.EqualFold(q.Get("encrypt_type"), "aes")
	msgSig := q.Get("msg_signature")

	if ts == "" || nonce == "" || (!encrypted && sig == "") || (encrypted && msgSig == "") {
		g.reject(c, received, http.StatusBadRequest, rejectMalformed, "missing signature, timestamp or nonce")
		return
	}
	// In safe mode msg_signature covers the body; signature, when present,
	// is checked too. Checking before reading the body spends nothing on
	// unsigned traffic.
	if sig != "" && !wechat.VerifySignature(g.o.Token, ts, nonce, sig) {
		g.reject(c, received, http.StatusForbidden, rejectSignature, "bad signature")
		return
	}
	if status, reason, msg := g.checkTimestamp(ts, received); status != 0 {
		g.reject(c, received, status, reason, msg)
		return
	}
	body, status, reason, msg := g.readBody(c)
	if status != 0 {
		g.reject(c, received, status, reason, msg)
		return
	}

	plain := body
	if encrypted {
		if g.o.Cipher == nil {
			g.reject(c, received, http.StatusBadRequest, rejectDecrypt, "encrypted request but WECHAT_ENCODING_AES_KEY is not set")
			return
		}
		env, err := classify(body)
		if err != nil || env.Encrypt == "" {
			g.reject(c, received, http.StatusBadRequest, rejectMalformed, "safe-mode envelope without Encrypt")
			return
		}
		// Signature before decryption: padding errors must not be an
		// oracle for anyone without the token.
		if !wechat.VerifyMsgSignature(g.o.Token, ts, nonce, env.Encrypt, msgSig) {
			g.reject(c, received, http.StatusForbidden, rejectSignature, "bad msg_signature")
			return
		}
		if plain, err = g.o.Cipher.Decrypt(env.Encrypt); err != nil {
			g.reject(c, received, http.StatusBadRequest, rejectDecrypt, "decrypt: "+err.Error())
			return
		}
	}
	m, err := classify(plain)
	if err != nil {
		g.reject(c, received, http.StatusBadRequest, rejectMalformed, err.Error())
		return
	}

	reply, outcome := g.once(c.Request.Context(), m, plain, received, deadline)
	if len(reply) == 0 {
		g.answer(c, received, outcome, "text/plain; charset=utf-8", success)
		return
	}
	if encrypted {
		sealed, err := g.o.Cipher.Seal(g.o.Token, reply, strconv.FormatInt(g.o.Now().Unix(), 10), nonce)
		if err != nil {
			// crypto/rand failing: nothing the sender did; still answer.
			g.o.Logger.Error("encrypt reply", "err", err)
			g.metrics.fallbacks.WithLabelValues(reasonWorkerError).Inc()
			g.answer(c, received, outcomeFallback, "text/plain; charset=utf-8", success)
			return
		}
		reply = sealed
	}
	g.answer(c, received, outcome, "application/xml; charset=utf-8", reply)
}

// once runs request for the message, unless the same message (a WeChat
// retry, by dedup key) is already in flight here: then it waits for that
// one's result, within its own deadline, so the handler runs once.
func (g *Gateway) once(ctx context.Context, m *wechat.Message, plain []byte, received, deadline time.Time) ([]byte, string) {
	key := m.DedupKey()
	g.mu.Lock()
	if f, ok := g.flights[key]; ok {
		g.mu.Unlock()
		g.metrics.duplicates.Inc()
		wait, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		select {
		case <-f.done:
			return f.reply, f.outcome
		case <-wait.Done():
			return nil, g.fallback(reasonTimeout, m.Subject(), fmt.Errorf("waiting for the first delivery: %w", wait.Err()))
		}
	}
	f := &flight{done: make(chan struct{})}
	g.flights[key] = f
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.flights, key)
		g.mu.Unlock()
		close(f.done)
	}()
	f.reply, f.outcome = g.request(ctx, m, plain, received, deadline)
	return f.reply, f.outcome
}

// request asks a worker for the reply. It returns the reply XML (nil for
// "success") and the outcome; it never waits past deadline.
func (g *Gateway) request(ctx context.Context, m *wechat.Message, plain []byte, received, deadline time.Time) ([]byte, string) {
	subject := m.Subject()
	if g.o.Local != nil {
		reply, err := g.o.Local(plain)
		if err != nil {
			return nil, g.fallback(reasonWorkerError, subject, err)
		}
		if len(reply) == 0 {
			return nil, outcomeEmpty
		}
		return reply, outcomeReply
	}
	if !g.o.Conn.IsConnected() {
		// Requests would sit in the reconnect buffer until the deadline;
		// answer now instead.
		return nil, g.fallback(reasonBusDown, subject, nats.ErrConnectionReconnecting)
	}
	msg := &nats.Msg{
		Subject: subject,
		Data:    plain,
		Header: nats.Header{
			bus.HeaderAccount:  []string{m.ToUserName},
			bus.HeaderDedupKey: []string{m.DedupKey()},
			bus.HeaderReceived: []string{bus.FormatTime(received)},
			bus.HeaderDeadline: []string{bus.FormatTime(deadline)},
		},
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	resp, err := g.o.Conn.RequestMsgWithContext(ctx, msg)
	switch {
	case err == nil:
	case errors.Is(err, nats.ErrNoResponders):
		return nil, g.fallback(reasonNoResponders, subject, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.Canceled):
		return nil, g.fallback(reasonTimeout, subject, err)
	default:
		return nil, g.fallback(reasonBusDown, subject, err)
	}
	if code := resp.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, g.fallback(reasonWorkerError, subject, fmt.Errorf("worker error %s: %s", code, resp.Header.Get(micro.ErrorHeader)))
	}
	if len(resp.Data) == 0 {
		return nil, outcomeEmpty
	}
	return resp.Data, outcomeReply
}

func (g *Gateway) fallback(reason, subject string, err error) string {
	g.metrics.fallbacks.WithLabelValues(reason).Inc()
	g.o.Logger.Warn("answering success without a worker reply", "reason", reason, "subject", subject, "err", err)
	return outcomeFallback
}

// classify reads the routing fields by the fast path, falling back to the
// full parser for anything outside WeChat's usual flat shape; both agree
// wherever the fast path answers (wechat.FuzzClassify).
func classify(data []byte) (*wechat.Message, error) {
	m := new(wechat.Message)
	if wechat.Classify(data, m) {
		return m, nil
	}
	return wechat.Parse(data)
}

// checkTimestamp refuses replays outside the configured window.
func (g *Gateway) checkTimestamp(ts string, now time.Time) (status int, reason, msg string) {
	if g.o.TimestampSkew <= 0 {
		return 0, "", ""
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return http.StatusBadRequest, rejectMalformed, "timestamp is not a number"
	}
	skew := now.Sub(time.Unix(sec, 0))
	if skew < 0 {
		skew = -skew
	}
	if skew > g.o.TimestampSkew {
		return http.StatusForbidden, rejectStale, fmt.Sprintf("timestamp off by %s, more than %s", skew.Round(time.Second), g.o.TimestampSkew)
	}
	return 0, "", ""
}

// readBody reads the whole body within the size limit.
func (g *Gateway) readBody(c *gin.Context) (body []byte, status int, reason, msg string) {
	limit := g.o.MaxBodyBytes
	if c.Request.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Sprintf("body of %d bytes over the %d-byte limit", c.Request.ContentLength, limit)
	}
	r := http.MaxBytesReader(c.Writer, c.Request.Body, limit)
	body, err := io.ReadAll(r)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Sprintf("body over the %d-byte limit", limit)
	case err != nil:
		return nil, http.StatusBadRequest, rejectMalformed, "reading body: " + err.Error()
	case len(body) == 0:
		return nil, http.StatusBadRequest, rejectMalformed, "empty body"
	}
	return body, 0, "", ""
}

func (g *Gateway) reject(c *gin.Context, start time.Time, status int, reason, msg string) {
	g.metrics.rejected.WithLabelValues(reason).Inc()
	g.observe(outcomeRejected, start)
	g.o.Logger.Warn("rejected", "reason", reason, "status", status, "detail", msg, "method", c.Request.Method, "remote", c.ClientIP())
	c.Data(status, "text/plain; charset=utf-8", []byte(http.StatusText(status)+": "+reason+"\n"))
}

func (g *Gateway) answer(c *gin.Context, start time.Time, outcome, contentType string, body []byte) {
	g.observe(outcome, start)
	c.Data(http.StatusOK, contentType, body)
}

func (g *Gateway) observe(outcome string, start time.Time) {
	g.metrics.requests.WithLabelValues(outcome).Inc()
	g.metrics.duration.WithLabelValues(outcome).Observe(g.o.Now().Sub(start).Seconds())
}
