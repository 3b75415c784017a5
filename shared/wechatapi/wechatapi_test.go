package wechatapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/clocktest"
	"github.com/wxgate/wxgate/shared/testutil/metricstest"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
)

const (
	appID  = "wx_test_app"
	secret = "test-app-secret-0123456789"
)

// env is a NATS server and the fake WeChat API, in process.
type env struct {
	ns   *bus.Embedded
	fake *wechatapitest.Server
	base string
}

func newEnv(t *testing.T, o wechatapitest.Options) *env {
	t.Helper()
	o.AppID, o.Secret = appID, secret
	fake := wechatapitest.New(o)
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	return &env{ns: natstest.RunServer(t), fake: fake, base: ts.URL}
}

// process is one wxgate process's client: its own NATS connection,
// registry and log.
type process struct {
	*Client
	reg *prometheus.Registry
	log *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func (e *env) process(t *testing.T, name string, to TokenOptions) *process {
	t.Helper()
	return e.processOf(t, name, to, appID, secret)
}

// processOf is a process whose default account has appid and secret.
func (e *env) processOf(t *testing.T, name string, to TokenOptions, appid, secret string) *process {
	t.Helper()
	nc := natstest.Connect(t, e.ns, nats.Name(name))
	reg := prometheus.NewRegistry()
	buf := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cs, err := NewClients(Options{Base: e.base, Accounts: defaultOnly(t, appid, secret), Conn: nc, Registerer: reg, Logger: logger, Token: to})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cs.For(accounts.DefaultID)
	if err != nil {
		t.Fatal(err)
	}
	return &process{c, reg, buf}
}

// defaultOnly is a registry of the default account alone, as a process
// without a bus has.
func defaultOnly(t *testing.T, appid, secret string) *accounts.Registry {
	t.Helper()
	reg, err := accounts.Start(accounts.Options{Default: accounts.Account{AppID: appid, AppSecret: secret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func tempCode(scene string) QRRequest { return NewQRRequest(scene, false, 600) }

func (e *env) calls(api string) int { return e.fake.Calls().Calls[api] }

// Four processes, many concurrent callers each: WeChat is asked for the
// token once, and every code is created.
func TestOneTokenForEveryProcess(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	var procs []*process
	for i := 0; i < 4; i++ {
		procs = append(procs, e.process(t, fmt.Sprintf("p%d", i), TokenOptions{}))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 80)
	for i := 0; i < 80; i++ {
		wg.Add(1)
		go func(p *process, i int) {
			defer wg.Done()
			if _, err := p.CreateQRCode(context.Background(), tempCode(fmt.Sprintf("s%d", i))); err != nil {
				errs <- err
			}
		}(procs[i%4], i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.calls(wechatapitest.StableToken); n != 1 {
		t.Errorf("stable_token calls = %d, want 1", n)
	}
	if n := e.calls(wechatapitest.QRCodeCreate); n != 80 {
		t.Errorf("qrcode/create calls = %d, want 80", n)
	}
	if n := e.fake.Calls().ForceRefresh; n != 0 {
		t.Errorf("force_refresh sent %d times", n)
	}
}

// The fake invalidates the token: the process that meets 40001 expires it
// and refreshes once, and retries once; a process still holding the old
// token in memory meets 40001 too, finds the stored token already replaced
// (compare-and-expire), and retries with it: no second refresh.
func TestInvalidatedTokenRefreshedOnce(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	a, b := e.process(t, "a", TokenOptions{}), e.process(t, "b", TokenOptions{})
	ctx := context.Background()
	for _, p := range []*process{a, b} {
		if _, err := p.CreateQRCode(ctx, tempCode("warm")); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.fake.Inject(wechatapitest.Fault{InvalidateToken: true}); err != nil {
		t.Fatal(err)
	}
	before := e.fake.Calls().Calls
	if _, err := a.CreateQRCode(ctx, tempCode("after")); err != nil {
		t.Fatal(err)
	}
	after := e.fake.Calls().Calls
	if after[wechatapitest.StableToken]-before[wechatapitest.StableToken] != 1 || after[wechatapitest.QRCodeCreate]-before[wechatapitest.QRCodeCreate] != 2 {
		t.Errorf("after invalidation: %d stable_token and %d qrcode/create calls, want 1 refresh and 1 retry",
			after[wechatapitest.StableToken]-before[wechatapitest.StableToken], after[wechatapitest.QRCodeCreate]-before[wechatapitest.QRCodeCreate])
	}
	if _, err := b.CreateQRCode(ctx, tempCode("stale in memory")); err != nil {
		t.Fatal(err)
	}
	if n := e.calls(wechatapitest.StableToken); n != after[wechatapitest.StableToken] {
		t.Errorf("the second process refreshed again: %d stable_token calls, want %d", n, after[wechatapitest.StableToken])
	}
	if v := testutil.ToFloat64(a.calls.WithLabelValues(APIQRCodeCreate, "40001")); v != 1 {
		t.Errorf("40001 counted %v times in a", v)
	}
}

// Expire deletes the stored token only if it is the one that failed.
func TestExpireComparesTheToken(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	ctx := context.Background()
	tok, err := p.tokens.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.tokens.Expire(ctx, "not-the-stored-token"); err != nil {
		t.Fatal(err)
	}
	q := e.process(t, "q", TokenOptions{})
	if got, err := q.tokens.Token(ctx); err != nil || got != tok {
		t.Fatalf("after expiring another token: %v, want the stored one kept", err)
	}
	if err := p.tokens.Expire(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// The fake still deems tok valid, so stable_token (normal mode) gives
	// it again: what matters is that it was asked.
	if _, err := q.tokens.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.calls(wechatapitest.StableToken); n != 1 {
		t.Errorf("q served from memory: %d stable_token calls", n)
	}
	r := e.process(t, "r", TokenOptions{})
	if _, err := r.tokens.Token(ctx); err != nil || e.calls(wechatapitest.StableToken) != 2 {
		t.Errorf("after Expire a fresh process did not refresh: %v, %d calls", err, e.calls(wechatapitest.StableToken))
	}
}

// A 2-second token with a 1-second overlap, three processes calling
// without pause for 4 seconds: the token is refreshed about once a second
// by one process, every call succeeds, and none meets an expired token.
func TestRefreshBeforeExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 4 seconds")
	}
	e := newEnv(t, wechatapitest.Options{TokenTTL: 2 * time.Second, Overlap: time.Second})
	procs := []*process{e.process(t, "a", TokenOptions{}), e.process(t, "b", TokenOptions{}), e.process(t, "c", TokenOptions{})}
	const run = 4 * time.Second
	end := time.Now().Add(run)
	var wg sync.WaitGroup
	var mu sync.Mutex
	calls := 0
	for _, p := range procs {
		wg.Add(1)
		go func(p *process) {
			defer wg.Done()
			for time.Now().Before(end) {
				if _, err := p.CreateQRCode(context.Background(), tempCode("t")); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				calls++
				mu.Unlock()
			}
		}(p)
	}
	wg.Wait()
	c := e.fake.Calls()
	// One fetch at the start and about one per second after it.
	if n := c.Calls[wechatapitest.StableToken]; n < 3 || n > 5 {
		t.Errorf("%d stable_token calls in %v with a 2s token, want about %d", n, run, int(run/time.Second)+1)
	}
	if len(c.Errcodes[wechatapitest.QRCodeCreate]) != 0 || c.ForceRefresh != 0 {
		t.Errorf("codes refused: %v; force_refresh sent %d times", c.Errcodes, c.ForceRefresh)
	}
	t.Logf("%d codes created, %d stable_token calls", calls, c.Calls[wechatapitest.StableToken])

}

// plantLease writes value into p's refresh lease, as another process (of
// this version or an older one) would have left it.
func plantLease(t *testing.T, p *process, value string) {
	t.Helper()
	kv, err := p.tokens.bucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(context.Background(), p.tokens.leaseKey, []byte(value)); err != nil {
		t.Fatal(err)
	}
}

// A lease whose holder died is taken over once it has not moved for a
// whole Lease.
func TestDeadLeaseTakenOver(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{Lease: 300 * time.Millisecond})
	ctx := context.Background()
	plantLease(t, p, `{"holder":"dead"}`)
	start := time.Now()
	if _, err := p.tokens.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("took the token after %v, while the dead lease still held", took)
	}
	if n := e.calls(wechatapitest.StableToken); n != 1 {
		t.Errorf("stable_token calls = %d", n)
	}
}

// The refresher renews its lease while WeChat answers: a refresh slower
// than the Lease is not taken over by a process waiting for it.
func TestRefresherRenewsItsLease(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	to := TokenOptions{Lease: time.Second}
	a, b := e.process(t, "a", to), e.process(t, "b", to)
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.StableToken, Delay: "1500ms"})
	ctx := context.Background()
	got := make(chan string, 1)
	go func() {
		tok, err := a.tokens.Token(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- tok
	}()
	kv, err := b.tokens.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error { // a holds the lease
		_, err := kv.Get(ctx, b.tokens.leaseKey)
		return err
	})
	tok, err := b.tokens.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok != <-got {
		t.Error("the two processes have different tokens")
	}
	if n := e.calls(wechatapitest.StableToken); n != 1 {
		t.Errorf("stable_token calls = %d, want 1: the slow refresher's lease was taken over", n)
	}
}

// Finding N6: a lease, and a refusal, left by a host whose clock ran ahead
// (both "until" 2027, as the review planted them) hold the refresh up for
// one Lease, and one FailBackoff, counted on this process's clock: not
// until the date another host wrote.
func TestLeaseOfAClockAheadN6(t *testing.T) {
	const ttl = 300 * time.Millisecond
	for _, tt := range []struct {
		name, value string
		code        int // the refusal kept meanwhile; 0: none
	}{
		{"lease", `{"holder":"wxgate-worker/DEADHOST","until":"2027-12-05T00:00:00Z"}`, 0},
		{"refusal", `{"holder":"wxgate-worker/DEADHOST","until":"2027-12-05T00:00:00Z","errcode":45009,"errmsg":"reach max api daily quota limit"}`, CodeDailyQuota},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, wechatapitest.Options{})
			p := e.process(t, "p", TokenOptions{Lease: ttl, FailBackoff: ttl})
			plantLease(t, p, tt.value)
			ctx := context.Background()
			start := time.Now()
			if tt.code != 0 {
				// The refusal holds for FailBackoff after this process met it.
				_, err := p.tokens.Token(ctx)
				if code, _ := errcode(err); code != tt.code {
					t.Fatalf("first call: %v, want the kept %d", err, tt.code)
				}
			}
			wait.For(t, wait.Short, wait.Every, func() error {
				_, err := p.tokens.Token(ctx)
				return err
			})
			if took := time.Since(start); took < ttl {
				t.Errorf("refreshed after %v, before the lease or refusal had held for %v", took, ttl)
			}
			if n := e.calls(wechatapitest.StableToken); n != 1 {
				t.Errorf("stable_token calls = %d, want 1", n)
			}
		})
	}
}

// Refusals no retry mends are surfaced, counted and asked once.
func TestRefusalsAreNotRetried(t *testing.T) {
	for _, code := range []int{CodeDailyQuota, CodeIPNotWhitelisted, CodeUnauthorized, CodeRiskyIP, CodeInvalidActionInfo, CodeInvalidActionName, CodeSystemBusy} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			e := newEnv(t, wechatapitest.Options{})
			p := e.process(t, "p", TokenOptions{})
			ctx := context.Background()
			if _, err := p.tokens.Token(ctx); err != nil {
				t.Fatal(err)
			}
			_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: code, Count: 5})
			_, err := p.CreateQRCode(ctx, tempCode("x"))
			if got, ok := errcode(err); !ok || got != code {
				t.Fatalf("err = %v, want errcode %d", err, code)
			}
			if n := e.calls(wechatapitest.QRCodeCreate); n != 1 {
				t.Errorf("qrcode/create asked %d times", n)
			}
			if v, ok := metricstest.Lookup(p.reg, "wxgate_wechat_api_calls_total", map[string]string{"api": APIQRCodeCreate, "outcome": fmt.Sprint(code)}); v != 1 || !ok {
				t.Errorf("counted %v", v)
			}
		})
	}
}

// A refusal of stable_token that will not pass by itself is kept for
// FailBackoff (10 s): another process gets it from the bucket without
// asking WeChat again, with its hint; at 10 s it is asked again.
func TestTokenRefusalShared(t *testing.T) {
	for _, code := range []int{CodeIPNotWhitelisted, CodeDailyQuota, CodeUnauthorized, CodeRiskyIP, CodeInvalidAppID, CodeInvalidSecret} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			e := newEnv(t, wechatapitest.Options{})
			_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.StableToken, Errcode: code, Count: 10})
			clk := clocktest.New(time.Now())
			a, b := e.process(t, "a", TokenOptions{Now: clk.Now}), e.process(t, "b", TokenOptions{Now: clk.Now})
			ctx := context.Background()
			for i, p := range []*process{a, b, a} {
				_, err := p.CreateQRCode(ctx, tempCode("x"))
				var we *Error
				if !errors.As(err, &we) || we.Code != code || !strings.Contains(err.Error(), we.Hint()) || we.Hint() == "" {
					t.Fatalf("call %d: err = %v, want %d with its hint", i, err, code)
				}
			}
			if n := e.calls(wechatapitest.StableToken); n != 1 {
				t.Errorf("stable_token asked %d times, want once", n)
			}
			clk.Add(10*time.Second - time.Millisecond)
			_, _ = b.CreateQRCode(ctx, tempCode("x"))
			if n := e.calls(wechatapitest.StableToken); n != 1 {
				t.Errorf("asked again before 10 s: %d calls", n)
			}
			clk.Add(time.Millisecond)
			_, _ = b.CreateQRCode(ctx, tempCode("x"))
			if n := e.calls(wechatapitest.StableToken); n != 2 {
				t.Errorf("after 10 s: %d stable_token calls, want 2", n)
			}
			if n := e.calls(wechatapitest.QRCodeCreate); n != 0 {
				t.Errorf("qrcode/create asked %d times without a token", n)
			}
		})
	}
}

// A transient failure of stable_token (the connection dropped, no answer
// in time, -1) is the failing caller's alone: the next caller, in the same
// process or another, asks WeChat again and gets the token; nobody is told
// that it "failed in another process".
func TestTransientTokenFailureNotShared(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fault wechatapitest.Fault
		http  *http.Client
		code  int // the errcode the failing caller sees; 0: none
	}{
		{"dropped", wechatapitest.Fault{API: wechatapitest.StableToken, Drop: true}, nil, 0},
		{"timeout", wechatapitest.Fault{API: wechatapitest.StableToken, Delay: "2s"}, &http.Client{Timeout: 100 * time.Millisecond}, 0},
		{"system busy", wechatapitest.Fault{API: wechatapitest.StableToken, Errcode: CodeSystemBusy}, nil, CodeSystemBusy},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, wechatapitest.Options{})
			a := e.process(t, "a", TokenOptions{})
			if tt.http != nil {
				a.http = tt.http
			}
			b := e.process(t, "b", TokenOptions{})
			_ = e.fake.Inject(tt.fault)
			ctx := context.Background()
			_, err := a.CreateQRCode(ctx, tempCode("x"))
			if err == nil || strings.Contains(err.Error(), "another process") {
				t.Fatalf("the failing caller: %v", err)
			}
			if code, _ := errcode(err); code != tt.code {
				t.Errorf("the failing caller: %v, want errcode %d", err, tt.code)
			}
			// The same process tries again at once, and so does another.
			if _, err := a.CreateQRCode(ctx, tempCode("x")); err != nil {
				t.Errorf("a, next call: %v", err)
			}
			if _, err := b.CreateQRCode(ctx, tempCode("x")); err != nil {
				t.Errorf("b: %v", err)
			}
			if n := e.calls(wechatapitest.StableToken); n != 2 {
				t.Errorf("stable_token calls = %d, want 2: the failed one and one that worked", n)
			}
		})
	}
}

// 40001, 40014 and 42001 each: the token is expired and refreshed once,
// the call retried once, and it succeeds.
func TestTokenRejectedRefreshedOnce(t *testing.T) {
	for _, code := range []int{CodeInvalidCredential, CodeInvalidToken, CodeTokenExpired} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			e := newEnv(t, wechatapitest.Options{})
			p := e.process(t, "p", TokenOptions{})
			ctx := context.Background()
			if _, err := p.tokens.Token(ctx); err != nil {
				t.Fatal(err)
			}
			_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: code})
			if _, err := p.CreateQRCode(ctx, tempCode("x")); err != nil {
				t.Fatalf("after %d: %v", code, err)
			}
			if s, q := e.calls(wechatapitest.StableToken), e.calls(wechatapitest.QRCodeCreate); s != 2 || q != 2 {
				t.Errorf("%d stable_token and %d qrcode/create calls, want 2 (the first, one refresh) and 2 (one retry)", s, q)
			}
			if v, _ := metricstest.Lookup(p.reg, "wxgate_wechat_api_calls_total", map[string]string{"api": APIQRCodeCreate, "outcome": fmt.Sprint(code)}); v != 1 {
				t.Errorf("%d counted %v times", code, v)
			}
			if n := e.fake.Calls().ForceRefresh; n != 0 {
				t.Errorf("force_refresh sent %d times", n)
			}
		})
	}
}

// A caller whose time runs out while another process holds the refresh
// lease is told so: it did not ask WeChat, so it is not WeChat's silence.
func TestTokenWaitTimesOut(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	ctx := context.Background()
	plantLease(t, p, `{"holder":"elsewhere"}`)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := p.CreateQRCode(short, tempCode("x"))
	if !errors.Is(err, ErrTokenWait) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want ErrTokenWait", err)
	}
	if n := e.calls(wechatapitest.StableToken); n != 0 {
		t.Errorf("stable_token asked %d times", n)
	}
}

// 40001 twice in a row: one refresh, one retry, then the error.
func TestTokenRejectedTwiceIsNoLoop(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: CodeInvalidCredential, Count: 10})
	_, err := p.CreateQRCode(context.Background(), tempCode("x"))
	if code, _ := errcode(err); code != CodeInvalidCredential {
		t.Fatalf("err = %v", err)
	}
	if q, s := e.calls(wechatapitest.QRCodeCreate), e.calls(wechatapitest.StableToken); q != 2 || s != 2 {
		t.Errorf("%d qrcode/create and %d stable_token calls, want 2 and 2", q, s)
	}
}

// The access_token and the AppSecret appear in no error and no log line,
// whatever fails: a dropped connection (net/http puts the URL, token
// included, in its error), an errmsg that quotes them, a timeout.
func TestSecretsRedacted(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	ctx := context.Background()
	tok, err := p.tokens.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Drop: true})
	_, err = p.CreateQRCode(ctx, tempCode("x"))
	errs = append(errs, err)
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Errcode: 40003, Errmsg: "bad token " + tok + " secret " + secret})
	_, err = p.CreateQRCode(ctx, tempCode("x"))
	errs = append(errs, err)
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.QRCodeCreate, Delay: "2s"})
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = p.CreateQRCode(short, tempCode("x"))
	cancel()
	errs = append(errs, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a timeout no longer unwraps: %v", err)
	}
	for i, err := range errs {
		if err == nil {
			t.Fatalf("case %d did not fail", i)
		}
		if s := fmt.Sprintf("%v %+v", err, err); strings.Contains(s, tok) || strings.Contains(s, secret) {
			t.Errorf("case %d: a secret in the error: %s", i, s)
		}
	}
	if strings.Contains(p.log.String(), tok) || strings.Contains(p.log.String(), secret) {
		t.Errorf("a secret in the log:\n%s", p.log.String())
	}
	if !strings.Contains(p.log.String(), "[redacted]") {
		t.Errorf("nothing was redacted:\n%s", p.log.String())
	}
	// No answer (the drop, the timeout) is counted as outcome="error".
	if v, _ := metricstest.Lookup(p.reg, "wxgate_wechat_api_calls_total", map[string]string{"api": APIQRCodeCreate, "outcome": OutcomeError}); v != 2 {
		t.Errorf(`outcome="error" counted %v times, want 2`, v)
	}
	// Nor in a metric.
	mfs, _ := p.reg.Gather()
	for _, mf := range mfs {
		if s := mf.String(); strings.Contains(s, tok) || strings.Contains(s, secret) {
			t.Errorf("a secret in metric %s", mf.GetName())
		}
	}
	if problems, err := testutil.GatherAndLint(p.reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestDecodeAnswer(t *testing.T) {
	tests := []struct {
		name, answer string
		code         int  // 0: no *Error
		fails        bool // an error of any kind
	}{
		{"ok with errcode 0", `{"errcode":0,"errmsg":"ok"}`, 0, false},
		{"ok without errcode", `{"ticket":"t","url":"http://weixin.qq.com/q/x"}`, 0, false},
		{"invalid credential", `{"errcode":40001,"errmsg":"invalid credential"}`, 40001, true},
		{"system busy", `{"errcode":-1,"errmsg":"system error"}`, -1, true},
		{"quota", `{"errcode":45009,"errmsg":"reach max api daily quota limit"}`, 45009, true},
		{"not json", `<html>502</html>`, 0, true},
		{"errcode not a number", `{"errcode":"x"}`, 0, true},
		{"errcode a fraction", `{"errcode":1.5}`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out QRCode
			err := decodeAnswer("qrcode_create", []byte(tt.answer), &out)
			code, isWeChat := errcode(err)
			if (err != nil) != tt.fails || code != tt.code || isWeChat != (tt.code != 0) {
				t.Errorf("err = %v (code %d), want code %d fails %v", err, code, tt.code, tt.fails)
			}
		})
	}
	e := &Error{Code: 40001}
	if !e.TokenRejected() || (&Error{Code: 45009}).TokenRejected() {
		t.Error("TokenRejected")
	}
}

func TestNewQRRequest(t *testing.T) {
	tests := []struct {
		scene     string
		permanent bool
		action    string
		id        uint64
		str       string
	}{
		{"123", false, "QR_SCENE", 123, ""},
		{"4294967295", false, "QR_SCENE", 4294967295, ""},
		{"4294967296", false, "QR_STR_SCENE", 0, "4294967296"},
		{"0", false, "QR_STR_SCENE", 0, "0"},
		{"007", false, "QR_STR_SCENE", 0, "007"},
		{"100000", true, "QR_LIMIT_SCENE", 100000, ""},
		{"100001", true, "QR_LIMIT_STR_SCENE", 0, "100001"},
		{"1", true, "QR_LIMIT_SCENE", 1, ""},
		{"poster_a", false, "QR_STR_SCENE", 0, "poster_a"},
		{"poster_a", true, "QR_LIMIT_STR_SCENE", 0, "poster_a"},
		{"12a", false, "QR_STR_SCENE", 0, "12a"},
		{"+12", false, "QR_STR_SCENE", 0, "+12"},
		{"１２", false, "QR_STR_SCENE", 0, "１２"}, // full-width digits are not digits to WeChat
		{"99999999999999999999", false, "QR_STR_SCENE", 0, "99999999999999999999"},
	}
	for _, tt := range tests {
		r := NewQRRequest(tt.scene, tt.permanent, 600)
		if r.ActionName != tt.action || r.ActionInfo.Scene.SceneID != tt.id || r.ActionInfo.Scene.SceneStr != tt.str {
			t.Errorf("%q permanent=%v: %+v", tt.scene, tt.permanent, r)
		}
		if (r.ExpireSeconds != 0) == tt.permanent {
			t.Errorf("%q permanent=%v: expire_seconds %d", tt.scene, tt.permanent, r.ExpireSeconds)
		}
		// What goes to WeChat passes the fake's checks, which are WeChat's.
		b, _ := json.Marshal(r)
		if _, scene, _, code := wechatapitest.ParseQRRequest(b); code != 0 || scene != tt.scene {
			t.Errorf("%q: the fake refuses %s with %d (scene %q)", tt.scene, b, code, scene)
		}
	}
}

func TestCustomSend(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	if err := e.fake.Interaction("o_person", wechatapitest.KindMessage, time.Time{}); err != nil { // opens o_person's window
		t.Fatal(err)
	}
	p := e.process(t, "p", TokenOptions{})
	if err := p.CustomSend(context.Background(), TextMessage("o_person", "晚到的回复")); err != nil {
		t.Fatal(err)
	}
	if m := e.fake.Calls().Messages; len(m) != 1 || m[0].ToUser != "o_person" || m[0].Content != "晚到的回复" {
		t.Errorf("messages = %+v", m)
	}
	err := p.CustomSend(context.Background(), TextMessage("", "x"))
	if code, _ := errcode(err); code != 40003 {
		t.Errorf("empty touser: %v", err)
	}
}

func FuzzDecodeAnswer(f *testing.F) {
	f.Add([]byte(`{"errcode":40001,"errmsg":"invalid credential"}`))
	f.Add([]byte(`{"ticket":"t","expire_seconds":60,"url":"http://weixin.qq.com/q/x"}`))
	f.Add([]byte(`{"access_token":"x","expires_in":7200}`))
	f.Fuzz(func(t *testing.T, answer []byte) {
		var out QRCode
		err := decodeAnswer("qrcode_create", answer, &out, "SECRET")
		if err != nil && strings.Contains(err.Error(), "SECRET") {
			t.Errorf("the secret in %v", err)
		}
		if code, ok := errcode(err); ok && code == 0 {
			t.Errorf("an *Error with errcode 0: %v", err)
		}
	})
}

// A wrong AppID or AppSecret: stable_token's 40013 or 40125 reaches the
// caller with a hint, is kept for every process (a second one does not
// ask), and the secret is in no error.
func TestWrongSecret(t *testing.T) {
	for _, tt := range []struct {
		appID, secret string
		code          int
	}{
		{"wx_other_app", secret, CodeInvalidAppID},
		{appID, "not-the-secret", CodeInvalidSecret},
	} {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			e := newEnv(t, wechatapitest.Options{})
			for i := 0; i < 2; i++ {
				c := e.processOf(t, fmt.Sprint("p", i), TokenOptions{}, tt.appID, tt.secret)
				_, err := c.CreateQRCode(context.Background(), tempCode("x"))
				if code, _ := errcode(err); code != tt.code || !strings.Contains(err.Error(), "WECHAT_APPSECRET") || strings.Contains(err.Error(), tt.secret) {
					t.Errorf("process %d: err = %v", i, err)
				}
			}
			if n := e.calls(wechatapitest.StableToken); n != 1 {
				t.Errorf("stable_token asked %d times, want once (the refusal kept)", n)
			}
		})
	}
}

// While one process refreshes slowly after the token was expired, another
// with no token waits for it rather than asking WeChat too.
func TestWaitsForTheRefresher(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	a, b := e.process(t, "a", TokenOptions{}), e.process(t, "b", TokenOptions{})
	ctx := context.Background()
	tok, err := a.tokens.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = e.fake.Inject(wechatapitest.Fault{InvalidateToken: true})
	if err := a.tokens.Expire(ctx, tok); err != nil {
		t.Fatal(err)
	}
	_ = e.fake.Inject(wechatapitest.Fault{API: wechatapitest.StableToken, Delay: "300ms"})
	var wg sync.WaitGroup
	got := make([]string, 2)
	for i, p := range []*process{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if got[i], err = p.tokens.Token(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got[0] != got[1] || got[0] == tok {
		t.Errorf("the two processes have different or stale tokens")
	}
	if n := e.calls(wechatapitest.StableToken); n != 2 {
		t.Errorf("stable_token calls = %d, want 2 (the first, and one refresh)", n)
	}
}

// One set of clients per process, which late replies and QR codes share:
// a second on the process's registry is refused, not counted into the
// first one's series with token caches of its own.
func TestOneClientsPerRegistry(t *testing.T) {
	e := newEnv(t, wechatapitest.Options{})
	p := e.process(t, "p", TokenOptions{})
	nc := natstest.Connect(t, e.ns)
	_, err := NewClients(Options{Base: e.base, Accounts: defaultOnly(t, appID, secret), Conn: nc, Registerer: p.reg, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Errorf("a second set of clients on one registry: %v, want refused", err)
	}
	for name, o := range map[string]Options{
		"no Accounts": {Conn: nc, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)},
		"no Conn":     {Accounts: defaultOnly(t, appID, secret), Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)},
		"no Logger":   {Accounts: defaultOnly(t, appID, secret), Conn: nc, Registerer: prometheus.NewRegistry()},
		"no metrics":  {Accounts: defaultOnly(t, appID, secret), Conn: nc, Logger: slog.New(slog.DiscardHandler)},
	} {
		if _, err := NewClients(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// errcode returns the errcode of a refusal anywhere in err's chain.
func errcode(err error) (int, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Code, true
	}
	return 0, false
}
