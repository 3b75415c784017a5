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

	"github.com/nats-io/nats.go"
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
	// Lease is how long one process may take to refresh before another
	// takes over. Default 15s (the HTTP client's timeout, and some).
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
// it: the one that creates lease.<appid> (or takes over one whose time is
// up, by compare-and-set); the others keep using the stored token while it
// is valid, and wait for the new one only when it is not. In a process,
// concurrent callers share one lookup (singleflight), and a token before
// its refresh time is served from memory.
type Tokens struct {
	nc       *nats.Conn
	replicas int
	o        TokenOptions
	fetch    func(context.Context) (string, time.Duration, error)
	logger   *slog.Logger
	id       string // this process, in the lease
	tokenKey string
	leaseKey string
	watchKey string
	sf       singleflight.Group

	mu  sync.Mutex
	kv  jetstream.KeyValue
	mem tokenRecord // the last token this process used

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

// leaseRecord says who refreshes, until when, and what WeChat answered the
// last refresh it refused for good.
type leaseRecord struct {
	Holder  string    `json:"holder"`
	Until   time.Time `json:"until"`
	Errcode int       `json:"errcode,omitempty"`
	Errmsg  string    `json:"errmsg,omitempty"`
}

func newTokens(nc *nats.Conn, appID string, replicas int, o TokenOptions, fetch func(context.Context) (string, time.Duration, error), logger *slog.Logger) *Tokens {
	o.setDefaults()
	return &Tokens{
		nc: nc, replicas: max(replicas, 1), o: o, fetch: fetch, logger: logger,
		id:       bus.InstanceID(nc),
		tokenKey: "token." + appID, leaseKey: "lease." + appID, watchKey: "*." + appID,
	}
}

// ErrStoreUnavailable wraps failures of the token bucket (NATS away):
// nothing was asked of WeChat.
var ErrStoreUnavailable = errors.New("access_token store unavailable")

// ErrTokenWait wraps a caller's time running out while another process
// held the refresh lease: this process did not ask WeChat, so it is not
// WeChat that did not answer.
var ErrTokenWait = errors.New("timed out waiting for another process to refresh the access_token")

// bucket opens the token bucket, creating it if it does not exist (never
// changing one that does).
func (t *Tokens) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kv != nil {
		return t.kv, nil
	}
	js, err := jetstream.New(t.nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	kv, err := bus.OpenOrCreateKV(ctx, js, jetstream.KeyValueConfig{
		Bucket: BucketName, Description: "wxgate: the WeChat access_token shared by every process",
		History: 1, Storage: jetstream.FileStorage, Replicas: t.replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: kv %s: %w", ErrStoreUnavailable, BucketName, err)
	}
	t.kv = kv
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
	for {
		now := t.o.Now()
		rec, recRev, err := t.load(ctx, kv)
		if err != nil {
			return "", err
		}
		if rec.Token != "" && now.Before(rec.RefreshAt) {
			t.remember(rec)
			return rec.Token, nil
		}
		valid := rec.Token != "" && now.Before(rec.ExpiresAt)
		lease, leaseRev, held, err := t.acquire(ctx, kv, now)
		if err != nil {
			if valid {
				return rec.Token, nil
			}
			return "", err
		}
		if held {
			// Another process may have stored a fresh token between the
			// load and the lease (and released its lease): look again.
			if again, _, err := t.load(ctx, kv); err == nil && again.Token != "" && t.o.Now().Before(again.RefreshAt) {
				t.release(ctx, kv, leaseRev)
				t.remember(again)
				return again.Token, nil
			}
			tok, err := t.refresh(ctx, kv, leaseRev)
			if err != nil && valid {
				t.logger.Warn("access_token refresh failed; the stored token is still valid", "err", err, "expires_at", rec.ExpiresAt)
				return rec.Token, nil
			}
			return tok, err
		}
		// Another process refreshes: the stored token serves meanwhile.
		if valid {
			return rec.Token, nil
		}
		if err := lease.failure(now); err != nil {
			return "", err
		}
		t.waiting.Add(1)
		err = t.waitChange(ctx, kv, recRev, leaseRev, lease.Until)
		t.waiting.Add(-1)
		if err != nil {
			return "", err
		}
	}
}

// load reads the stored token; an empty record when there is none.
func (t *Tokens) load(ctx context.Context, kv jetstream.KeyValue) (tokenRecord, uint64, error) {
	var rec tokenRecord
	e, err := kv.Get(ctx, t.tokenKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, 0, nil
	}
	if err != nil {
		return rec, 0, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		// A value nobody can use is as good as none: it is replaced.
		t.logger.Warn("stored access_token record unreadable; refreshing", "err", err)
		return tokenRecord{}, e.Revision(), nil
	}
	return rec, e.Revision(), nil
}

func (t *Tokens) remember(rec tokenRecord) {
	t.mu.Lock()
	t.mem = rec
	t.mu.Unlock()
}

// acquire takes the refresh lease: it creates it, or takes over one whose
// time is up by compare-and-set. held is false when another process holds
// it; lease and rev are then what it holds.
func (t *Tokens) acquire(ctx context.Context, kv jetstream.KeyValue, now time.Time) (lease leaseRecord, rev uint64, held bool, err error) {
	mine, _ := json.Marshal(leaseRecord{Holder: t.id, Until: now.Add(t.o.Lease)})
	for attempt := 0; attempt < 3; attempt++ {
		if rev, err = kv.Create(ctx, t.leaseKey, mine); err == nil {
			return lease, rev, true, nil
		}
		if !bus.IsKVConflict(err) {
			return lease, 0, false, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		e, err := kv.Get(ctx, t.leaseKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released meanwhile: create again
		}
		if err != nil {
			return lease, 0, false, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
		lease = leaseRecord{}
		_ = json.Unmarshal(e.Value(), &lease) // unreadable: Until is zero, taken over
		if now.Before(lease.Until) {
			return lease, e.Revision(), false, nil
		}
		if rev, err = kv.Update(ctx, t.leaseKey, mine, e.Revision()); err == nil {
			return leaseRecord{}, rev, true, nil
		}
		if !bus.IsKVConflict(err) {
			return lease, 0, false, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
	}
	return lease, 0, false, fmt.Errorf("%w: the refresh lease keeps changing", ErrStoreUnavailable)
}

// refresh asks WeChat for the token while holding the lease (revision
// leaseRev), stores it and releases the lease. A refusal that will not
// pass by itself is kept in the lease for FailBackoff, so that no process
// asks again meanwhile; a transient failure releases the lease, and is
// this caller's alone.
func (t *Tokens) refresh(ctx context.Context, kv jetstream.KeyValue, leaseRev uint64) (string, error) {
	start := t.o.Now()
	tok, ttl, err := t.fetch(ctx)
	if err != nil {
		var we *Error
		if !errors.As(err, &we) || !we.Definite() {
			t.release(ctx, kv, leaseRev)
			return "", err
		}
		failed := leaseRecord{Holder: t.id, Until: t.o.Now().Add(t.o.FailBackoff), Errcode: we.Code, Errmsg: we.Msg}
		b, _ := json.Marshal(failed)
		if _, uerr := kv.Update(ctx, t.leaseKey, b, leaseRev); uerr != nil {
			t.logger.Warn("could not record the refused refresh", "err", uerr)
		}
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
	t.release(ctx, kv, leaseRev)
	t.remember(rec)
	t.logger.Info("access_token refreshed", "expires_at", rec.ExpiresAt, "refresh_at", rec.RefreshAt)
	return tok, nil
}

// release deletes the lease if it is still the one this process holds.
func (t *Tokens) release(ctx context.Context, kv jetstream.KeyValue, leaseRev uint64) {
	if err := kv.Delete(ctx, t.leaseKey, jetstream.LastRevision(leaseRev)); err != nil && !bus.IsKVConflict(err) {
		t.logger.Warn("could not release the refresh lease", "err", err)
	}
}

// failure is the refusal a lease records, while it lasts.
func (l leaseRecord) failure(now time.Time) error {
	if l.Errcode == 0 || !now.Before(l.Until) {
		return nil
	}
	return &Error{API: APIStableToken, Code: l.Errcode, Msg: l.Errmsg}
}

// waitChange waits until the token or the lease changes from the
// revisions seen, or the lease's time is up.
func (t *Tokens) waitChange(ctx context.Context, kv jetstream.KeyValue, tokenRev, leaseRev uint64, until time.Time) error {
	parent := ctx
	ctx, cancel := context.WithDeadline(ctx, until.Add(100*time.Millisecond))
	defer cancel()
	w, err := kv.Watch(ctx, t.watchKey)
	if err != nil {
		if parent.Err() != nil {
			return fmt.Errorf("%w: %w", ErrTokenWait, parent.Err())
		}
		if ctx.Err() != nil {
			return nil // the lease's time is up: look again
		}
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil {
				continue // the current values are delivered
			}
			switch e.Key() {
			case t.tokenKey:
				// A new token; a delete marker (an expired token) is no
				// news to a process that has none.
				if e.Operation() == jetstream.KeyValuePut && e.Revision() > tokenRev {
					return nil
				}
			case t.leaseKey:
				if e.Revision() != leaseRev {
					return nil
				}
			}
		case <-ctx.Done():
			// The caller's time is up, or the lease's (look again).
			if parent.Err() != nil {
				return fmt.Errorf("%w: %w", ErrTokenWait, parent.Err())
			}
			return nil
		}
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
