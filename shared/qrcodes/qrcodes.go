// Package qrcodes makes WeChat parametric QR codes for each account and
// serves them: created through WeChat's API with the account's shared
// access_token, kept in the JetStream KV bucket wxgate_qrcodes with their
// label and group, listed with their scene's counts from the analytics,
// and rendered locally from the code's url as print-ready PNG or SVG, one
// at a time, in a batch, or as a ZIP.
package qrcodes

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// BucketName is the KV bucket of the codes.
const BucketName = "wxgate_qrcodes"

// Bounds of a request.
const (
	MinExpireSeconds     = 60
	MaxExpireSeconds     = wechatapi.MaxExpireSeconds
	DefaultExpireSeconds = MaxExpireSeconds
	MaxLabelChars        = 200
	MaxGroupChars        = 32
)

// ExpiringSoon is how long before its end a temporary code's view says
// "expiring_soon": a printed code needs replacing before then.
const ExpiringSoon = 7 * 24 * time.Hour

// Options configure a Service. Conn, Clients, Scenes and Logger are
// required.
type Options struct {
	Conn *nats.Conn
	// Clients returns an account's client of WeChat's API:
	// wechatapi.ErrUnknownAccount for an unknown account (the routes answer
	// 404), wechatapi.ErrOff for one without an AppSecret (503).
	// (*wechatapi.Clients).For is one.
	Clients func(account string) (*wechatapi.Client, error)
	// Scenes opens an account's analytics totals, for the codes' counts
	// (FromStore adapts the analytics' StoreFunc).
	Scenes func(ctx context.Context, account string) (Totals, error)
	// Fonts draw PNG captions (QR_CAPTION_FONT); nil: NewFonts("").
	Fonts *Fonts
	// Replicas of the codes bucket when this process creates it.
	Replicas int
	Logger   *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// RequestTimeout bounds an API request (a WeChat call, KV reads and
	// writes, a wait on another process); default 20s.
	RequestTimeout time.Duration
	// Reservation is how long a permanent code's reservation may go
	// unrenewed (its holder renews it while WeChat answers) before another
	// process takes it over. Default 10s: well inside RequestTimeout, so
	// that a request outwaits a holder that died and still has time to ask
	// WeChat itself.
	Reservation time.Duration
}

// Totals reads one scene's analytics totals; *stats.Store does.
type Totals interface {
	Scene(ctx context.Context, scene string) (t stats.Totals, ok bool, err error)
}

// FromStore adapts the analytics' StoreFunc (what /api/scenes reads):
// each account's totals.
func FromStore(f stats.StoreFunc) func(context.Context, string) (Totals, error) {
	if f == nil {
		return nil
	}
	return func(ctx context.Context, account string) (Totals, error) {
		s, err := f(ctx)
		if err != nil {
			return nil, err
		}
		return s.For(account), nil
	}
}

// Service creates, stores and lists the codes.
type Service struct {
	o      Options
	id     string
	js     jetstream.JetStream
	store  *bus.Bucket
	labels labels
}

func (o *Options) setDefaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 20 * time.Second
	}
	if o.Reservation <= 0 {
		o.Reservation = 10 * time.Second
	}
	if o.Fonts == nil {
		o.Fonts = NewFonts("")
	}
}

func (o *Options) validate() error {
	if o.Conn == nil || o.Clients == nil || o.Scenes == nil || o.Logger == nil {
		return errors.New("qrcodes: Options.Conn, Clients, Scenes and Logger are required")
	}
	return nil
}

// New returns a service; the bucket is opened on first use.
func New(o Options) (*Service, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, err
	}
	return &Service{o: o, id: bus.InstanceID(o.Conn), js: js,
		store: bus.NewBucket(o.Conn, BucketName, "wxgate: parametric QR codes", o.Replicas)}, nil
}

// Enabled reports whether the account's codes can be made: it has an
// AppSecret.
func (s *Service) Enabled(account string) bool {
	_, err := s.o.Clients(account)
	return err == nil
}

// client is the account's client: ErrNoAccount or ErrOff when there is
// none.
func (s *Service) client(account string) (*wechatapi.Client, error) {
	c, err := s.o.Clients(account)
	switch {
	case errors.Is(err, wechatapi.ErrUnknownAccount):
		return nil, fmt.Errorf("%w: %q", ErrNoAccount, account)
	case errors.Is(err, wechatapi.ErrOff):
		return nil, ErrOff
	}
	return c, err
}

// Errors the API maps to its status codes.
var (
	// ErrOff: the account has no AppSecret (503).
	ErrOff = errors.New("QR codes are off: the account has no AppSecret (WECHAT_APPSECRET for the default account)")
	// ErrNoAccount: no such account (404).
	ErrNoAccount = errors.New("no such account")
	// ErrUnavailable: the codes bucket or the totals cannot be reached (503).
	ErrUnavailable = errors.New("QR code store unavailable")
	// ErrBadRequest: the caller's mistake (400).
	ErrBadRequest = errors.New("bad request")
	// ErrWaitedTooLong: the request's time ran out while another process
	// held the permanent code's reservation (502, but not WeChat's fault).
	ErrWaitedTooLong = errors.New("timed out waiting for another wxgate process to create this permanent code")
)

// Retention is how long a temporary code's record is kept after its
// expires_at: it is listed as expired meanwhile (its scans still count),
// then deleted, so that the bucket and the list do not grow for ever.
const Retention = 7 * 24 * time.Hour

// Code is a stored code, as the API shows it.
type Code struct {
	Scene     string     `json:"scene"`
	Label     string     `json:"label"`
	Permanent bool       `json:"permanent"`
	Ticket    string     `json:"ticket"`
	URL       string     `json:"url"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // temporary codes
	// ExpiringSoon is true for a temporary code within ExpiringSoon of its
	// end (set when the code is shown, never stored).
	ExpiringSoon bool      `json:"expiring_soon"`
	CreatedAt    time.Time `json:"created_at"`
	ImageURL     string    `json:"image_url"`
	// Group gathers codes (门店, 地铁, 线上); "" for none.
	Group string `json:"group"`
}

// Listed is a code with its scene's counts. An expired temporary code is
// still listed, and its scans still count.
type Listed struct {
	Code
	Expired      bool  `json:"expired"`
	Scans        int64 `json:"scans"`
	NewFollowers int64 `json:"new_followers"`
}

// record is the stored value. A permanent code's key is reserved (a
// bus.Lease, its value a pending record) before WeChat is asked, so that
// two processes never create it twice.
type record struct {
	Code
	Pending bool   `json:"pending,omitempty"`
	Holder  string `json:"holder,omitempty"`
}

// ImageURL is the path of one code's PNG on the admin listener: the
// scene as one path segment, and the code's ticket, so that the URL names
// that code (and may be cached for good) rather than the scene's latest;
// the account when it is not the default.
func ImageURL(account, scene, ticket string) string {
	u := SceneURL(scene) + "/image?ticket=" + url.QueryEscape(ticket)
	if account != accounts.DefaultID {
		u += "&account=" + account // an account id needs no escaping
	}
	return u
}

// SceneURL is the path of GET /api/qrcodes/{scene}. The scene is one
// escaped segment whose dots are escaped too: "." and ".." are scenes, and
// a client or proxy that removes dot segments must not see one.
func SceneURL(scene string) string {
	return "/api/qrcodes/" + strings.ReplaceAll(url.PathEscape(scene), ".", "%2E")
}

// view is the code as shown to account's callers at now.
func (c Code) view(account string, now time.Time) Code {
	c.ImageURL = ImageURL(account, c.Scene, c.Ticket)
	c.ExpiringSoon = c.ExpiresAt != nil && !c.Expired(now) && c.ExpiresAt.Sub(now) <= ExpiringSoon
	return c
}

// Expired reports whether a temporary code's time is up.
func (c Code) Expired(now time.Time) bool { return c.ExpiresAt != nil && !now.Before(*c.ExpiresAt) }

// stale reports whether a temporary code expired more than Retention ago.
func (c Code) stale(now time.Time) bool {
	return !c.Permanent && c.ExpiresAt != nil && now.After(c.ExpiresAt.Add(Retention))
}

func sceneB64(scene string) string { return base64.RawURLEncoding.EncodeToString([]byte(scene)) }

// Keys: p.<scene> for a permanent code (one per scene),
// t.<scene>.<time>-<random> for each temporary one (the time in hex
// nanoseconds, so keys sort in order). Scenes are base64url-encoded, so
// any scene makes a valid key. The default account's keys have no prefix
// (where a version before accounts wrote them: they are its own with no
// migration); another account's start a.<id>. (ids are
// accounts.ValidID's, which are valid key tokens).
func prefix(account string) string {
	if account == accounts.DefaultID {
		return ""
	}
	return "a." + account + "."
}

func permKey(account, scene string) string { return prefix(account) + "p." + sceneB64(scene) }
func tempKey(account, scene string, at time.Time) string {
	// The random part keeps two codes of one scene in one instant apart.
	return fmt.Sprintf("%st.%s.%016x-%s", prefix(account), sceneB64(scene), at.UnixNano(), rand.Text()[:8])
}

// accountOf is the account a key belongs to.
func accountOf(key string) string {
	if rest, ok := strings.CutPrefix(key, "a."); ok {
		id, _, _ := strings.Cut(rest, ".")
		return id
	}
	return accounts.DefaultID
}

func (s *Service) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := s.store.KV(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return kv, nil
}

// Create makes a code of account. created is false when a permanent code
// for the scene existed already: it is returned as it is. WeChat's
// refusals come back as *wechatapi.Error.
func (s *Service) Create(ctx context.Context, account string, req Request) (c Code, created bool, err error) {
	client, err := s.client(account)
	if err != nil {
		return Code{}, false, err
	}
	kv, err := s.bucket(ctx)
	if err != nil {
		return Code{}, false, err
	}
	if req.Permanent {
		c, created, err = s.createPermanent(ctx, kv, client, account, req)
		return c.view(account, s.o.Now()), created, err
	}
	c, err = s.ask(ctx, client, req)
	if err != nil {
		return Code{}, false, err
	}
	b, _ := json.Marshal(record{Code: c})
	if _, err := kv.Create(ctx, tempKey(account, req.Scene, s.o.Now()), b); err != nil {
		return Code{}, false, fmt.Errorf("%w: storing the code: %w", ErrUnavailable, err)
	}
	s.o.Logger.Info("qr code created", "account", account, "scene", req.Scene, "permanent", false, "expires_at", c.ExpiresAt)
	return c.view(account, s.o.Now()), true, nil
}

func (s *Service) createPermanent(ctx context.Context, kv jetstream.KeyValue, client *wechatapi.Client, account string, req Request) (Code, bool, error) {
	l := bus.Lease{KV: kv, Key: permKey(account, req.Scene), TTL: s.o.Reservation}
	pending, _ := json.Marshal(record{Code: Code{Scene: req.Scene, Permanent: true}, Pending: true, Holder: s.id})
	for {
		h, err := l.Create(ctx, pending)
		if errors.Is(err, bus.ErrLeaseHeld) { // a code, or a reservation
			var stored record
			e, state, aerr := l.Await(ctx, func(e jetstream.KeyValueEntry) bool {
				var r record
				if json.Unmarshal(e.Value(), &r) != nil || r.Pending {
					return false // unreadable: taken over once stale, and replaced
				}
				stored = r
				return true
			})
			switch {
			case aerr != nil && ctx.Err() != nil:
				// Another process holds the reservation; this one has
				// not asked WeChat.
				return Code{}, false, fmt.Errorf("%w: %w", ErrWaitedTooLong, ctx.Err())
			case aerr != nil:
				return Code{}, false, fmt.Errorf("%w: %w", ErrUnavailable, aerr)
			case state == bus.Final:
				return stored.Code, false, nil
			case state == bus.Free:
				continue // a failed reservation was just removed
			}
			if h, err = l.TakeOver(ctx, pending, e.Revision()); errors.Is(err, bus.ErrLeaseHeld) {
				continue
			}
		}
		if err != nil {
			return Code{}, false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// The reservation is ours.
		c, err := s.ask(ctx, client, req)
		if err != nil {
			if derr := h.Release(context.WithoutCancel(ctx)); derr != nil {
				s.o.Logger.Warn("could not drop the reservation of a permanent code", "scene", req.Scene, "err", derr)
			}
			return Code{}, false, err
		}
		b, _ := json.Marshal(record{Code: c})
		if _, err := h.Finish(ctx, b); err != nil {
			// WeChat gives the same code for the same scene, so whoever
			// takes the reservation over stores this code again.
			return Code{}, false, fmt.Errorf("%w: storing the code: %w", ErrUnavailable, err)
		}
		s.o.Logger.Info("qr code created", "account", account, "scene", req.Scene, "permanent", true)
		return c, true, nil
	}
}

// ask gets the code from WeChat.
func (s *Service) ask(ctx context.Context, client *wechatapi.Client, req Request) (Code, error) {
	now := s.o.Now().UTC().Truncate(time.Millisecond)
	q, err := client.CreateQRCode(ctx, wechatapi.NewQRRequest(req.Scene, req.Permanent, req.ExpireSeconds))
	if err != nil {
		return Code{}, err
	}
	c := Code{Scene: req.Scene, Label: req.Label, Group: req.Group, Permanent: req.Permanent, Ticket: q.Ticket, URL: q.URL, CreatedAt: now}
	if !req.Permanent {
		// The lifetime asked for, counted from before the call: WeChat's
		// echo of expire_seconds has been seen to be 0.
		exp := now.Add(time.Duration(req.ExpireSeconds) * time.Second)
		c.ExpiresAt = &exp
	}
	return c, nil
}

// codes reads account's stored codes under filters (key patterns after
// its prefix), as account's callers see them. Temporary codes past their
// Retention are left out, and deleted (the janitor: a read that meets
// them removes them).
func (s *Service) codes(ctx context.Context, account string, filters ...string) ([]Code, error) {
	kv, err := s.bucket(ctx)
	if err != nil {
		return nil, err
	}
	for i, f := range filters {
		filters[i] = prefix(account) + f
	}
	w, err := kv.WatchFiltered(ctx, filters, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer func() { _ = w.Stop() }()
	now := s.o.Now()
	var out []Code
	var stale []string
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // every current value delivered
				s.purge(ctx, stale)
				slices.SortFunc(out, func(a, b Code) int { return b.CreatedAt.Compare(a.CreatedAt) })
				return out, nil
			}
			var r record
			if err := json.Unmarshal(e.Value(), &r); err != nil || r.Pending {
				continue
			}
			if r.stale(now) {
				stale = append(stale, e.Key())
				continue
			}
			out = append(out, r.view(account, now))
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		}
	}
}

// purge removes the records of temporary codes past their Retention. A
// temporary code's key is written once and never updated, so purging its
// subject from the bucket's stream (which leaves no delete marker behind,
// unlike a KV delete) cannot lose a newer value. A failure is logged: the
// list is right without them, and the next read tries again.
func (s *Service) purge(ctx context.Context, keys []string) {
	if len(keys) == 0 {
		return
	}
	st, err := s.js.Stream(ctx, "KV_"+BucketName)
	if err == nil {
		for _, k := range keys {
			if err = st.Purge(ctx, jetstream.WithPurgeSubject("$KV."+BucketName+"."+k)); err != nil {
				break
			}
		}
	}
	if err != nil {
		s.o.Logger.Warn("could not delete expired temporary codes", "codes", len(keys), "err", err)
		return
	}
	s.o.Logger.Info("expired temporary codes deleted", "codes", len(keys), "retention", Retention.String())
}

// List returns account's codes, newest first, with their scene's counts;
// with group not nil, those of that group only.
func (s *Service) List(ctx context.Context, account string, group *string) ([]Listed, error) {
	all, err := s.all(ctx, account, group)
	if err != nil {
		return nil, err
	}
	return s.withCounts(ctx, account, all)
}

// all returns account's codes, newest first; with group not nil, those of
// that group only.
func (s *Service) all(ctx context.Context, account string, group *string) ([]Code, error) {
	if _, err := s.client(account); err != nil {
		return nil, err
	}
	all, err := s.codes(ctx, account, "p.*", "t.*.*")
	if err == nil && group != nil {
		all = slices.DeleteFunc(all, func(c Code) bool { return c.Group != *group })
	}
	return all, err
}

// Latest returns the newest code of scene, with its counts; ok is false
// when the scene has none.
func (s *Service) Latest(ctx context.Context, account, scene string) (Listed, bool, error) {
	c, ok, err := s.find(ctx, account, scene, "")
	if err != nil || !ok {
		return Listed{}, ok, err
	}
	l, err := s.withCounts(ctx, account, []Code{c})
	if err != nil {
		return Listed{}, false, err
	}
	return l[0], true, nil
}

// find returns the scene's code with ticket, or its newest when ticket is
// empty; ok is false when there is none.
func (s *Service) find(ctx context.Context, account, scene, ticket string) (Code, bool, error) {
	if _, err := s.client(account); err != nil {
		return Code{}, false, err
	}
	all, err := s.codes(ctx, account, "t."+sceneB64(scene)+".*", "p."+sceneB64(scene))
	if err != nil {
		return Code{}, false, err
	}
	if ticket != "" {
		i := slices.IndexFunc(all, func(c Code) bool { return c.Ticket == ticket })
		if i < 0 {
			return Code{}, false, nil
		}
		return all[i], true, nil
	}
	if len(all) == 0 {
		return Code{}, false, nil
	}
	return slices.MaxFunc(all, func(a, b Code) int { return a.CreatedAt.Compare(b.CreatedAt) }), true, nil
}

// withCounts adds each scene's scans and new followers; a scene without
// scans has zeros, and so has every scene while the totals bucket does not
// exist yet (no analytics has run: nothing was counted).
func (s *Service) withCounts(ctx context.Context, account string, codes []Code) ([]Listed, error) {
	out := make([]Listed, 0, len(codes))
	if len(codes) == 0 {
		return out, nil
	}
	store, err := s.o.Scenes(ctx, account)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		store = nil
	case err != nil:
		return nil, fmt.Errorf("%w: totals: %w", ErrUnavailable, err)
	}
	now := s.o.Now()
	totals := map[string]stats.Totals{}
	for _, c := range codes {
		t, seen := totals[c.Scene]
		if !seen && store != nil {
			if t, _, err = store.Scene(ctx, c.Scene); err != nil {
				return nil, fmt.Errorf("%w: totals: %w", ErrUnavailable, err)
			}
			totals[c.Scene] = t
		}
		out = append(out, Listed{Code: c, Expired: c.Expired(now), Scans: t.Scans, NewFollowers: t.NewFollowers})
	}
	return out, nil
}
