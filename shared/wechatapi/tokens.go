package wechatapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/singleflight"

	"github.com/wxgate/wxgate/shared/bus"
)

// BucketName is the KV bucket holding the shared access_token.
const BucketName = "wxgate_wechat"

// TokenOptions tune the shared token; zero values are the defaults.
type TokenOptions struct {
	// RefreshBefore is WeChat's rotation window: stable_token gives a new
	// token only in the last 5 minutes of the old one's life (before, the
	// same one), so earlier would buy nothing. A token is replaced 90% of
	// the way into it (at 4m30s left). Default 5m, at most half the
	// token's lifetime.
	RefreshBefore time.Duration
	// Lease is how long the refresh lease may go unrenewed (its holder
	// renews it while WeChat answers) before another process takes it
	// over. Default 15s.
	Lease time.Duration
	// FailBackoff is how long a refresh WeChat refused for a reason that
	// will not pass by itself (40164, 45009, a wrong AppSecret, …) is
	// answered from the bucket by every process, rather than asked again.
	// A transient failure (no answer, a timeout, -1) is not kept: the next
	// caller asks again. Default 10s.
	FailBackoff time.Duration
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

func (o *TokenOptions) setDefaults() {
	if o.RefreshBefore <= 0 {
		o.RefreshBefore = 5 * time.Minute
	}
	if o.Lease <= 0 {
		o.Lease = 15 * time.Second
	}
	if o.FailBackoff <= 0 {
		o.FailBackoff = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Tokens is the access_token every process shares. It lives in the KV
// bucket wxgate_wechat under token.<appid>. One process at a time refreshes
// it: the one that holds the lease lease.<appid> (a bus.Lease, renewed
// while WeChat answers, taken over once it has not moved for Lease); the
// others keep using the stored token while it is valid, and wait for the
// new one only when it is not. In a process, concurrent callers share one
// lookup (singleflight), and a token before its refresh time is served
// from memory.
type Tokens struct {
	store    *bus.Bucket
	o        TokenOptions
	fetch    func(context.Context) (string, time.Duration, error)
	logger   *slog.Logger
	id       string // this process, in the lease
	tokenKey string
	leaseKey string
	sf       singleflight.Group

	mu  sync.Mutex
	mem tokenRecord // the last token this process used
	// refusal is the revision of the last refusal this process met in the
	// lease key, and when it first met it: a refusal's age is judged on
	// this process's clock alone.
	refusal struct {
		rev  uint64
		seen time.Time
	}

	// waiting counts lookups waiting for another process's refresh: a
	// caller whose time runs out meanwhile is told so (ErrTokenWait), not
	// that WeChat did not answer.
	waiting atomic.Int32
}

// tokenRecord is the stored token. The access_token is a secret: it lives
// only here, in memory and in the bucket.
type tokenRecord struct {
	Token     string    `json:"access_token"`
	ExpiresAt time.Time `json:"expires_at"`
	RefreshAt time.Time `json:"refresh_at"`
	FetchedBy string    `json:"fetched_by"`
}

// leaseValue is what the lease key holds: who refreshes; or, written as
// the lease's final value, what WeChat answered a refresh it refused for
// good. It holds no time: no process reads another's clock.
type leaseValue struct {
	Holder  string `json:"holder"`
	Errcode int    `json:"errcode,omitempty"`
	Errmsg  string `json:"errmsg,omitempty"`
}

func newTokens(store *bus.Bucket, id, appID string, o TokenOptions, fetch func(context.Context) (string, time.Duration, error), logger *slog.Logger) *Tokens {
	o.setDefaults()
	return &Tokens{store: store, o: o, fetch: fetch, logger: logger, id: id, tokenKey: "token." + appID, leaseKey: "lease." + appID}
}

// ErrStoreUnavailable wraps failures of the token bucket (NATS away):
// nothing was asked of WeChat.
var ErrStoreUnavailable = errors.New("access_token store unavailable")

// ErrTokenWait wraps a caller's time running out while another process
// held the refresh lease: this process did not ask WeChat, so it is not
// WeChat that did not answer.
var ErrTokenWait = errors.New("timed out waiting for another process to refresh the access_token")

func (t *Tokens) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := t.store.KV(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	return kv, nil
}

// Token returns a valid access_token: from memory before its refresh time,
// else from the bucket, else refreshed by one process.
func (t *Tokens) Token(ctx context.Context) (string, error) {
	t.mu.Lock()
	m := t.mem
	t.mu.Unlock()
	if m.Token != "" && t.o.Now().Before(m.RefreshAt) {
		return m.Token, nil
	}
	// One lookup for every caller in this process; it runs on its own
	// bounded context so that one caller leaving does not fail the others.
	ch := t.sf.DoChan("token", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*t.o.Lease)
		defer cancel()
		return t.resolve(ctx)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		if t.waiting.Load() > 0 {
			return "", fmt.Errorf("%w: %w", ErrTokenWait, ctx.Err())
		}
		return "", ctx.Err()
	}
}

func (t *Tokens) resolve(ctx context.Context) (string, error) {
	kv, err := t.bucket(ctx)
	if err != nil {
		return "", err
	}
	l := bus.Lease{KV: kv, Key: t.leaseKey, TTL: t.o.Lease}
	mine, _ := json.Marshal(leaseValue{Holder: t.id})
	for {
		rec, err := t.load(ctx, kv)
		if err != nil {
			return "", err
		}
		now := t.o.Now()
		if rec.Token != "" && now.Before(rec.RefreshAt) {
			t.remember(rec)
			return rec.Token, nil
		}
		valid := rec.Token != "" && now.Before(rec.ExpiresAt)
		h, err := l.Create(ctx, mine)
		switch {
		case errors.Is(err, bus.ErrLeaseHeld) && !valid:
			// Another process refreshes, or its refusal is kept: wait
			// for its end, its refusal, or its lease going stale.
			if h, err = t.await(ctx, l, mine); errors.Is(err, bus.ErrLeaseHeld) {
				continue // ended, or another took it first: look again
			}
		case err != nil && !errors.Is(err, bus.ErrLeaseHeld):
			err = fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		if err != nil {
			if valid {
				// Another process refreshes (or the store is away): the
				// stored token serves meanwhile.
				return rec.Token, nil
			}
			return "", err
		}
		tok, err := t.refresh(ctx, kv, h)
		if err != nil && valid {
			t.logger.Warn("access_token refresh failed; the stored token is still valid", "err", err, "expires_at", rec.ExpiresAt)
			return rec.Token, nil
		}
		return tok, err
	}
}

// await waits on the refresh lease another process holds: until it ends
// (ErrLeaseHeld: look again), it holds a refusal still current (that
// refusal), or it is stale (taken over: this process refreshes).
func (t *Tokens) await(ctx context.Context, l bus.Lease, mine []byte) (*bus.Held, error) {
	t.waiting.Add(1)
	e, state, err := l.Await(ctx, func(e jetstream.KeyValueEntry) bool {
		var v leaseValue
		return json.Unmarshal(e.Value(), &v) == nil && v.Errcode != 0
	})
	t.waiting.Add(-1)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("%w: %w", ErrTokenWait, ctx.Err())
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	case state == bus.Free:
		return nil, bus.ErrLeaseHeld
	case state == bus.Final:
		if err := t.kept(e); err != nil {
			return nil, err
		}
	}
	h, err := l.TakeOver(ctx, mine, e.Revision())
	if err != nil && !errors.Is(err, bus.ErrLeaseHeld) {
		return nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	return h, err
}

// kept returns the refusal e records while it is current: for FailBackoff
// after this process first met its revision. One written long ago is kept
// for at most FailBackoff more, whatever clock the refuser had.
func (t *Tokens) kept(e jetstream.KeyValueEntry) error {
	now := t.o.Now()
	t.mu.Lock()
	if t.refusal.rev != e.Revision() {
		t.refusal.rev, t.refusal.seen = e.Revision(), now
	}
	seen := t.refusal.seen
	t.mu.Unlock()
	if now.Sub(seen) >= t.o.FailBackoff {
		return nil
	}
	var v leaseValue
	_ = json.Unmarshal(e.Value(), &v)
	return &Error{API: APIStableToken, Code: v.Errcode, Msg: v.Errmsg}
}

// load reads the stored token; an empty record when there is none.
func (t *Tokens) load(ctx context.Context, kv jetstream.KeyValue) (tokenRecord, error) {
	var rec tokenRecord
	e, err := kv.Get(ctx, t.tokenKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, nil
	}
	if err != nil {
		return rec, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		// A value nobody can use is as good as none: it is replaced.
		t.logger.Warn("stored access_token record unreadable; refreshing", "err", err)
		return tokenRecord{}, nil
	}
	return rec, nil
}

func (t *Tokens) remember(rec tokenRecord) {
	t.mu.Lock()
	t.mem = rec
	t.mu.Unlock()
}

// refresh asks WeChat for the token while holding the lease h (renewed
// meanwhile), stores it and releases the lease. A refusal that will not
// pass by itself is written as the lease's final value, so that no
// process asks again for FailBackoff; a transient failure releases the
// lease, and is this caller's alone.
func (t *Tokens) refresh(ctx context.Context, kv jetstream.KeyValue, h *bus.Held) (string, error) {
	// Another process may have stored a fresh token between the load and
	// the lease (and released its lease): look again.
	if rec, err := t.load(ctx, kv); err == nil && rec.Token != "" && t.o.Now().Before(rec.RefreshAt) {
		t.release(ctx, h)
		t.remember(rec)
		return rec.Token, nil
	}
	start := t.o.Now()
	tok, ttl, err := t.fetch(ctx)
	if err != nil {
		var we *Error
		if !errors.As(err, &we) || !we.Definite() {
			t.release(ctx, h)
			return "", err
		}
		b, _ := json.Marshal(leaseValue{Holder: t.id, Errcode: we.Code, Errmsg: we.Msg})
		rev, ferr := h.Finish(ctx, b)
		if ferr != nil {
			t.logger.Warn("could not record the refused refresh", "err", ferr)
			return "", err
		}
		t.mu.Lock()
		t.refusal.rev, t.refusal.seen = rev, t.o.Now()
		t.mu.Unlock()
		return "", err
	}
	// Refresh a little inside WeChat's rotation window, not at its edge: a
	// call just before the edge gets the same token back, and costs one
	// more call soon after.
	before := min(t.o.RefreshBefore, ttl/2) * 9 / 10
	rec := tokenRecord{Token: tok, ExpiresAt: start.Add(ttl), RefreshAt: start.Add(ttl - before), FetchedBy: t.id}
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(ctx, t.tokenKey, b); err != nil {
		// The token is good; the others will fetch it for themselves.
		t.logger.Warn("could not store the access_token", "err", err)
	}
	t.release(ctx, h)
	t.remember(rec)
	t.logger.Info("access_token refreshed", "expires_at", rec.ExpiresAt, "refresh_at", rec.RefreshAt)
	return tok, nil
}

// release ends the lease, if it is still this process's: the waiting
// processes look again at once.
func (t *Tokens) release(ctx context.Context, h *bus.Held) {
	if err := h.Release(ctx); err != nil {
		t.logger.Warn("could not release the refresh lease", "err", err)
	}
}

// Expire forgets tok after WeChat refused it: the stored token is deleted
// only if it is still tok (compare-and-delete), so a process holding an
// older token never throws away the newer one another process stored.
func (t *Tokens) Expire(ctx context.Context, tok string) error {
	t.mu.Lock()
	if t.mem.Token == tok {
		t.mem = tokenRecord{}
	}
	t.mu.Unlock()
	kv, err := t.bucket(ctx)
	if err != nil {
		return err
	}
	e, err := kv.Get(ctx, t.tokenKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	var rec tokenRecord
	if json.Unmarshal(e.Value(), &rec) == nil && rec.Token != tok {
		return nil // already replaced
	}
	if err := kv.Delete(ctx, t.tokenKey, jetstream.LastRevision(e.Revision())); err != nil && !bus.IsKVConflict(err) {
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	t.logger.Info("access_token expired after WeChat refused it")
	return nil
}
