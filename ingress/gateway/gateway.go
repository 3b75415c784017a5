// Package gateway is the WeChat-facing HTTP handler: it verifies each
// callback to /wechat/{id} with that account's token, key(s) and mode
// (signature, timestamp, safe-mode crypto), publishes it as a NATS request
// on its subject, and answers WeChat with the worker's reply or "success"
// within the reply deadline.
package gateway

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Path is the callback route of the account default; another account's is
// Path/<id>.
const Path = "/wechat"

// success is what WeChat takes as "received, no reply".
var success = []byte("success")

// Options wire a Gateway. Accounts, Logger, Registerer and one of Conn and
// Local are required.
type Options struct {
	// Accounts are the accounts served: each one's token, AES keys and
	// mode, current as the registry is.
	Accounts      *accounts.Registry
	Conn          *nats.Conn
	ReplyTimeout  time.Duration // counted from when the request arrived
	TimestampSkew time.Duration // 0 disables the check
	MaxBodyBytes  int64
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	Now           func() time.Time // time.Now when nil
	// Local, when set instead of Conn, answers in process with no bus: the
	// floor the load benchmark measures the bus against.
	Local func(account string, msg []byte) ([]byte, error)
	// Intake makes each event durable before it is answered; nil stores
	// nothing (Local, and tests of the request path alone).
	Intake Intake
	// Ask sends a request to the workers and waits for the answer;
	// Conn.RequestMsg when nil. Standalone mode asks the workers of its
	// own process with it (reply.Service.Ask), without the round trip
	// through the NATS server.
	Ask func(msg *nats.Msg, wait time.Duration) (*nats.Msg, error)
}

// Gateway is the WeChat callback handler.
type Gateway struct {
	o       Options
	metrics *metrics
	engine  *gin.Engine
	unknown *account // what came for no account: counted, refused 404
	table   atomic.Pointer[table]
	mu      sync.Mutex // one refresh at a time
}

// New returns a Gateway; its Handler serves GET and POST on Path and
// Path/{id}.
func New(o Options) (*Gateway, error) {
	if o.Accounts == nil || (o.Conn == nil) == (o.Local == nil) || o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("gateway: Accounts, Logger, Registerer and one of Conn and Local are required")
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
	if o.Ask == nil && o.Conn != nil {
		o.Ask = o.Conn.RequestMsg
	}
	g := &Gateway{o: o, metrics: newMetrics(o.Registerer)}
	g.unknown = &account{id: accounts.Unknown, m: g.metrics.of(accounts.Unknown)}
	g.table.Store(&table{})
	// The default account is the WECHAT_* variables': one that cannot
	// serve is refused at start.
	if _, err := compile(o.Accounts.Default()); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.refresh()
	// Every account's series exist from when it appears, traffic or not,
	// and go with it.
	o.Accounts.Follow(func(string) { g.refresh() }, func(string) { g.refresh() })

	e := gin.New()
	// WeChat connects directly or through a proxy we configure; never trust
	// X-Forwarded-For from the Internet.
	if err := e.SetTrustedProxies(nil); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	// A callback URL is exact: /wechat/shop/ (or /wechat/shop%2f) is no
	// route, not a redirect to one.
	e.RedirectTrailingSlash = false
	e.Use(g.recover, g.logRequest)
	e.GET(Path, g.verify)
	e.POST(Path, g.callback)
	e.GET(Path+"/:id", g.verify)
	e.POST(Path+"/:id", g.callback)
	// Any other route gets gin's 404, on a connection closed like any
	// rejection's.
	e.NoRoute(closeConnection)
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
	a := g.account(c, start)
	if a == nil {
		return
	}
	sig, ts, nonce, echo := c.Query("signature"), c.Query("timestamp"), c.Query("nonce"), c.Query("echostr")
	if sig == "" || ts == "" || nonce == "" || echo == "" {
		g.reject(c, a, start, malformed(errors.New("missing signature, timestamp, nonce or echostr")))
		return
	}
	if !wechat.VerifySignature(a.token, ts, nonce, sig) {
		g.reject(c, a, start, refuse(http.StatusForbidden, rejectSignature, errors.New("bad signature")))
		return
	}
	if err := g.checkTimestamp(ts, start); err != nil {
		g.reject(c, a, start, err)
		return
	}
	g.answer(c, a, start, outcomeReply, "text/plain; charset=utf-8", []byte(echo))
}

// callback handles a message or event POST: admit it, store it and ask a
// worker, seal the reply when the request was encrypted, answer. A retry
// of a message still in flight here is asked like any other: the workers
// make it wait for the first delivery's reply (docs/reply-once.md).
func (g *Gateway) callback(c *gin.Context) {
	received := g.o.Now()
	a := g.account(c, received)
	if a == nil {
		return
	}
	plain, m, cipher, err := g.admit(c, a, received)
	if err != nil {
		g.reject(c, a, received, err)
		return
	}
	reply, outcome := g.dispatch(a, m, m.DedupKey(a.id, plain), plain, received, received.Add(g.o.ReplyTimeout))
	if outcome == outcomeUnavailable {
		// Not accepted: without a 200, WeChat retries it, by when the bus
		// may take it again.
		g.refused(c, a, received, http.StatusServiceUnavailable, "events cannot be stored now")
		return
	}
	if len(reply) == 0 {
		g.answer(c, a, received, outcome, "text/plain; charset=utf-8", success)
		return
	}
	if cipher != nil { // under the key the request came in
		sealed, err := cipher.Seal(a.token, reply, strconv.FormatInt(g.o.Now().Unix(), 10), c.Query("nonce"))
		if err != nil {
			// crypto/rand failing: nothing the sender did; still answer.
			g.o.Logger.Error("encrypt reply", "account", a.id, "err", err)
			a.m.fallbacks[reasonWorkerError].Inc()
			g.answer(c, a, received, outcomeFallback, "text/plain; charset=utf-8", success)
			return
		}
		reply = sealed
	}
	g.answer(c, a, received, outcome, "application/xml; charset=utf-8", reply)
}

// admit checks a callback POST to account a (parameters, signatures,
// timestamp, size, decryption) and returns the message it carries: the
// plaintext XML, its routing fields and, when it came encrypted, the
// cipher of the key that opened it. Its errors are rejections.
func (g *Gateway) admit(c *gin.Context, a *account, now time.Time) (plain []byte, m *wechat.Message, cipher *wechat.Cipher, err error) {
	sig, ts, nonce := c.Query("signature"), c.Query("timestamp"), c.Query("nonce")
	encrypted := strings.EqualFold(c.Query("encrypt_type"), "aes")
	msgSig := c.Query("msg_signature")

	switch {
	case ts == "" || nonce == "":
		return nil, nil, nil, malformed(errors.New("missing timestamp or nonce"))
	case !encrypted && a.mode == wechat.ModeSafe:
		// Before anything else: a plaintext body is covered by no
		// signature, whatever the query carries.
		return nil, nil, nil, refuse(http.StatusForbidden, rejectSignature, errors.New("plaintext POST in safe mode"))
	case !encrypted && sig == "":
		return nil, nil, nil, malformed(errors.New("missing signature"))
	case encrypted && msgSig == "":
		return nil, nil, nil, malformed(errors.New("missing msg_signature"))
	}
	// msg_signature covers an encrypted body; signature, when present, is
	// checked too. Checking before reading the body spends nothing on
	// unsigned traffic. Each account has its own token: a request signed
	// with another's is refused here.
	if sig != "" && !wechat.VerifySignature(a.token, ts, nonce, sig) {
		return nil, nil, nil, refuse(http.StatusForbidden, rejectSignature, errors.New("bad signature"))
	}
	if err := g.checkTimestamp(ts, now); err != nil {
		return nil, nil, nil, err
	}
	if encrypted && a.mode == wechat.ModePlain {
		detail := "encrypted POST in plain mode"
		if len(a.ciphers) == 0 {
			detail += ": the account has no EncodingAESKey"
		}
		return nil, nil, nil, refuse(http.StatusBadRequest, rejectDecrypt, errors.New(detail))
	}
	body, err := g.readBody(c)
	if err != nil {
		return nil, nil, nil, err
	}

	plain = body
	if encrypted { // compat or safe: compile saw to the ciphers
		env, err := classify(body)
		if err != nil || env.Encrypt == "" {
			return nil, nil, nil, malformed(errors.New("safe-mode envelope without Encrypt"))
		}
		// Signature before decryption: padding errors must not be an
		// oracle for anyone without the token.
		if !wechat.VerifyMsgSignature(a.token, ts, nonce, env.Encrypt, msgSig) {
			return nil, nil, nil, refuse(http.StatusForbidden, rejectSignature, errors.New("bad msg_signature"))
		}
		// During a key change, the current key first, then the previous.
		for i, ci := range a.ciphers {
			if plain, err = ci.Decrypt(env.Encrypt); err == nil {
				a.m.decrypt[i].Inc()
				cipher = ci
				break
			}
		}
		if cipher == nil {
			return nil, nil, nil, refuse(http.StatusBadRequest, rejectDecrypt, fmt.Errorf("decrypt: %w", err))
		}
	}
	if m, err = classify(plain); err != nil {
		return nil, nil, nil, malformed(err)
	}
	if a.originalID != "" && m.ToUserName != a.originalID {
		return nil, nil, nil, refuse(http.StatusBadRequest, rejectAccount, errors.New("ToUserName is not the account's original_id"))
	}
	return plain, m, cipher, nil
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

// rejection is why a request is refused: the 4xx status, the reason label
// and the cause, which is logged but never sent back.
type rejection struct {
	status int
	reason string
	err    error
}

func (r *rejection) Error() string { return r.reason + ": " + r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

func refuse(status int, reason string, err error) error {
	return &rejection{status: status, reason: reason, err: err}
}

func malformed(err error) error { return refuse(http.StatusBadRequest, rejectMalformed, err) }

// checkTimestamp refuses replays outside the configured window, either
// side of now. It compares whole seconds as unsigned distances, exact for
// any two int64 values: a time.Duration saturates about 292 years out,
// which once let a far-future timestamp, and its signature, stay fresh
// forever.
func (g *Gateway) checkTimestamp(ts string, now time.Time) error {
	if g.o.TimestampSkew <= 0 {
		return nil
	}
	// Past int64's range ParseInt returns the nearest limit with ErrRange:
	// a number, and as stale as can be.
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return malformed(errors.New("timestamp is not a number"))
	}
	nowSec := now.Unix()
	off, side := uint64(nowSec)-uint64(sec), "behind" // two's complement: exact when sec <= nowSec
	if sec > nowSec {
		off, side = uint64(sec)-uint64(nowSec), "ahead"
	}
	if off > uint64(g.o.TimestampSkew/time.Second) {
		return refuse(http.StatusForbidden, rejectStale, fmt.Errorf("timestamp %s %s, more than %s", seconds(off), side, g.o.TimestampSkew))
	}
	return nil
}

// seconds writes n seconds as a duration when one can hold it.
func seconds(n uint64) string {
	if n > uint64(math.MaxInt64/int64(time.Second)) {
		return strconv.FormatUint(n, 10) + "s"
	}
	return (time.Duration(n) * time.Second).String()
}

// readBody reads the whole body within the size limit.
func (g *Gateway) readBody(c *gin.Context) ([]byte, error) {
	limit := g.o.MaxBodyBytes
	if c.Request.ContentLength > limit {
		return nil, refuse(http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Errorf("body of %d bytes over the %d-byte limit", c.Request.ContentLength, limit))
	}
	r := http.MaxBytesReader(c.Writer, c.Request.Body, limit)
	body, err := io.ReadAll(r)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, refuse(http.StatusRequestEntityTooLarge, rejectTooLarge, fmt.Errorf("body over the %d-byte limit", limit))
	case err != nil:
		return nil, malformed(fmt.Errorf("reading body: %w", err))
	case len(body) == 0:
		return nil, malformed(errors.New("empty body"))
	}
	return body, nil
}

// reject answers a refused request to a with its status and reason. An
// error that is not a rejection is the sender's too: a 400, never a 5xx.
func (g *Gateway) reject(c *gin.Context, a *account, start time.Time, err error) {
	r := &rejection{status: http.StatusBadRequest, reason: rejectMalformed, err: err}
	errors.As(err, &r)
	a.m.rejected[r.reason].Inc()
	g.o.Logger.Warn("rejected", "account", a.id, "reason", r.reason, "status", r.status, "detail", r.err.Error(), "method", c.Request.Method, "remote", c.ClientIP())
	g.refused(c, a, start, r.status, r.reason)
}

// refused answers a request not accepted (outcome rejected) with status
// and why, and closes the connection after it.
func (g *Gateway) refused(c *gin.Context, a *account, start time.Time, status int, why string) {
	g.observe(a, outcomeRejected, start)
	closeConnection(c)
	c.Data(status, "text/plain; charset=utf-8", []byte(http.StatusText(status)+": "+why+"\n"))
}

// closeConnection has net/http close the connection after this response: a
// client that earned a cheap 4xx must not then hold one of the listener's
// MAX_CONNECTIONS slots for the idle timeout. WeChat, whose
// requests are answered 200, keeps its keep-alive connections.
func closeConnection(c *gin.Context) { c.Header("Connection", "close") }

func (g *Gateway) answer(c *gin.Context, a *account, start time.Time, outcome, contentType string, body []byte) {
	g.observe(a, outcome, start)
	c.Data(http.StatusOK, contentType, body)
}

func (g *Gateway) observe(a *account, outcome string, start time.Time) {
	a.m.requests[outcome].Inc()
	a.m.duration[outcome].Observe(g.o.Now().Sub(start).Seconds())
}
