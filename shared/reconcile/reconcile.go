// Package reconcile sets WeChat's own daily figures beside ours, per
// account and local day (ANALYTICS_TIME_ZONE): GET /api/reconciliation.
//
// Ours are the new followers through QR codes (the analytics' per-day
// counts, read when asked) and the callbacks answered, and answered without
// their reply, counted in WXGATE_EVENTS and WXGATE_UNANSWERED once the day
// has ended, while both streams still hold it (72 hours), and kept. WeChat's
// are the datacube's getusersummary (follows through QR codes) and
// getinterfacesummary (callbacks), which WeChat publishes by 08:00 the next
// day: fetched then by the daily run, and by a GET for days that lack them.
// Either is done for an account by one process at a time, under a
// bus.Lease; the rows are kept in the KV bucket wxgate_reconciliation.
package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// Bucket keeps a row per account and day under r.<account>.<YYYY-MM-DD>,
// and each account's lease under l.<account>.
const Bucket = "wxgate_reconciliation"

const (
	// publishedAt is when WeChat has published the day before.
	publishedAt = 8 // o'clock
	// settle is how long after a day ends its events are counted: an
	// ingress holds events while JetStream is away and stores them late.
	settle = 10 * time.Minute
	// early is how much sooner than it was stored an event may say it was
	// received (the clocks of two hosts): a count starts that much before
	// the day.
	early = 5 * time.Minute
	// lookBack is how many days the daily run completes: one
	// getusersummary call's span.
	lookBack = wechatapi.UserSummaryDays
	leaseTTL = 15 * time.Second
)

// Followers are our new followers through QR codes: the analytics'
// per-day counts of an account.
type Followers interface {
	// NewFollowers returns the account's new followers through QR codes
	// on each local day from..to (YYYY-MM-DD, inclusive), in order.
	NewFollowers(ctx context.Context, account, from, to string) ([]int64, error)
}

// Options configure a Reconciler. Conn, Accounts, WeChat, Zone and Logger
// are required.
type Options struct {
	Conn *nats.Conn
	// Accounts are the accounts served; WeChat their clients of WeChat's
	// API (an account without an AppSecret has our figures only).
	Accounts *accounts.Registry
	WeChat   *wechatapi.Clients
	// Followers give new_followers_by_qr; nil leaves it null.
	Followers Followers
	// Zone is ANALYTICS_TIME_ZONE, where days begin.
	Zone *time.Location
	// Streams are the event streams' settings: how long they hold a day.
	Streams  events.Options
	Replicas int // of the bucket, when this process creates it
	Logger   *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

func (o *Options) validate() error {
	if o.Conn == nil || o.Accounts == nil || o.WeChat == nil || o.Zone == nil || o.Logger == nil {
		return errors.New("reconcile: Options.Conn, Accounts, WeChat, Zone and Logger are required")
	}
	return nil
}

// Reconciler completes and serves the rows. Every admin listener has one
// for the API; the workers' analytics run the daily completion too.
type Reconciler struct {
	o     Options
	js    jetstream.JetStream
	id    string // the lease's holder
	store *bus.Bucket
}

// New returns a Reconciler; the bucket is opened when first needed.
func New(o Options) (*Reconciler, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	return &Reconciler{o: o, js: js, id: bus.InstanceID(o.Conn),
		store: bus.NewBucket(o.Conn, Bucket, "wxgate: WeChat's daily figures beside ours, per account and day", o.Replicas)}, nil
}

// Day is one local day of GET /api/reconciliation, as kept in the bucket
// (new_followers_by_qr is read from Followers when asked). null is no
// figure: the day has not ended, the streams no longer held it when it was
// first asked for, or WeChat has not published it or refused it (then
// WeChatError says why).
type Day struct {
	Date                string       `json:"date"`
	NewFollowersByQR    *int64       `json:"new_followers_by_qr"`
	WeChatNewUserQR     *int64       `json:"wechat_new_user_qr"`
	WeChatCancelUserQR  *int64       `json:"wechat_cancel_user_qr"`
	Callbacks           *int64       `json:"callbacks"`
	Fallbacks           *int64       `json:"fallbacks"`
	WeChatCallbackCount *int64       `json:"wechat_callback_count"`
	WeChatFailCount     *int64       `json:"wechat_fail_count"`
	WeChatMaxTimeCostMS *int64       `json:"wechat_max_time_cost_ms"`
	WeChatError         *WeChatError `json:"wechat_error,omitempty"`
}

// WeChatError is why WeChat's figures are null: its refusal (48001, the
// account may not call the datacube), or no client for the account (no
// AppSecret: no errcode).
type WeChatError struct {
	Errcode int    `json:"errcode,omitempty"`
	Errmsg  string `json:"errmsg"`
	Hint    string `json:"hint,omitempty"`
}

// fetched reports whether both of WeChat's calls gave the day's figures.
func (d *Day) fetched() bool { return d.WeChatNewUserQR != nil && d.WeChatCallbackCount != nil }

// row is a Day as kept, with when WeChat was last asked for it and left it
// out (not published yet): asked again an hour later at the soonest, so
// that neither every replica's daily run nor every GET asks again.
type row struct {
	Day
	Unlisted time.Time `json:"unlisted,omitzero"`
}

// unlistedFor is how long a day WeChat left out is not asked for again.
const unlistedFor = time.Hour

// view returns the account's rows from..to (local midnights, in order),
// with our new followers.
func (r *Reconciler) view(ctx context.Context, account string, from, to time.Time) ([]Day, error) {
	kv, err := r.store.KV(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := r.read(ctx, kv, account, from, to)
	if err != nil {
		return nil, err
	}
	days := make([]Day, len(rows))
	for i := range rows {
		days[i] = rows[i].Day
	}
	if r.o.Followers != nil && len(days) > 0 {
		n, err := r.o.Followers.NewFollowers(ctx, account, days[0].Date, days[len(days)-1].Date)
		if err == nil && len(n) != len(days) {
			err = fmt.Errorf("%d days of new followers for %d days", len(n), len(days))
		}
		if err != nil {
			r.o.Logger.Warn("reconciliation: our new followers not read; null", "account", account, "err", err)
			n = nil
		}
		for i := range n {
			days[i].NewFollowersByQR = &n[i]
		}
	}
	if _, err := r.o.WeChat.For(account); err != nil { // no AppSecret, a bad AppID
		for i := range days {
			if !days[i].fetched() {
				days[i].WeChatError = &WeChatError{Errmsg: err.Error()}
			}
		}
	}
	return days, nil
}

// daily completes every account's rows of the last lookBack days, WeChat
// asked again where it refused: what the daily run does.
func (r *Reconciler) daily(ctx context.Context) error {
	today := r.day(r.o.Now(), 0)
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := r.store.KV(bctx) // NATS away: not once per account
	cancel()
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range r.o.Accounts.Accounts() {
		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		if err := r.complete(actx, a.ID, r.day(today, -lookBack), r.day(today, -1), true); err != nil {
			errs = append(errs, fmt.Errorf("account %s: %w", a.ID, err))
		}
		cancel()
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// StartDaily runs daily now and every day at 08:00 in the zone (an hour
// later again after a failure) until stop, which waits for a run to end.
func (r *Reconciler) StartDaily() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			err := r.daily(ctx)
			if ctx.Err() != nil {
				return
			}
			now := r.o.Now()
			next := r.day(now, 0).Add(publishedAt * time.Hour)
			if !next.After(now) {
				next = r.day(now, 1).Add(publishedAt * time.Hour)
			}
			if err != nil {
				r.o.Logger.Warn("reconciliation: daily run incomplete; trying again in an hour", "err", err)
				if again := now.Add(time.Hour); again.Before(next) {
					next = again
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
		}
	}()
	return func() { cancel(); <-done }
}

// complete fills in what the account's rows from..to lack and can have by
// now: ours once a day has ended (while the streams hold it), WeChat's once
// it is published. After a refusal WeChat is asked again only with retry
// (the daily run), so a GET does not ask it over and over.
func (r *Reconciler) complete(ctx context.Context, account string, from, to time.Time, retry bool) error {
	kv, err := r.store.KV(ctx)
	if err != nil {
		return err
	}
	_, err = r.o.WeChat.For(account)
	wx := err == nil
	days, err := r.read(ctx, kv, account, from, to)
	if err != nil {
		return err
	}
	if count, fetch := r.due(days, wx, retry); len(count)+len(fetch) == 0 {
		return nil
	}
	held, err := bus.Lease{KV: kv, Key: "l." + account, TTL: leaseTTL}.Acquire(ctx, []byte(r.id))
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = held.Release(rctx)
	}()
	ctx, cancel := held.Context(ctx)
	defer cancel()
	// Read again: another process may have done it while this one waited.
	if days, err = r.read(ctx, kv, account, from, to); err != nil {
		return err
	}
	count, fetch := r.due(days, wx, retry)
	dirty := map[int]bool{}
	var fetchErr error
	if len(fetch) > 0 {
		fetchErr = r.fetch(ctx, account, days, fetch)
		for _, i := range fetch {
			dirty[i] = true
		}
	}
	for _, i := range count {
		start := r.day(from, i)
		cb, fb, err := r.ours(ctx, account, start, r.day(start, 1))
		if err != nil {
			return errors.Join(fetchErr, r.write(ctx, kv, account, days, dirty), err)
		}
		days[i].Callbacks, days[i].Fallbacks, dirty[i] = &cb, &fb, true
	}
	return errors.Join(fetchErr, r.write(ctx, kv, account, days, dirty))
}

// due returns the days (indexes) whose ours can be counted and whose
// WeChat's can be fetched now.
func (r *Reconciler) due(days []row, wx, retry bool) (count, fetch []int) {
	now := r.o.Now()
	keep := events.UnansweredConfig(r.o.Streams).MaxAge // the shorter of the two streams' ages
	for i, d := range days {
		start, _ := time.ParseInLocation(time.DateOnly, d.Date, r.o.Zone)
		end := r.day(start, 1)
		if d.Callbacks == nil && !now.Before(end.Add(settle)) && now.Before(start.Add(keep)) {
			count = append(count, i)
		}
		if wx && !d.fetched() && (d.WeChatError == nil || retry) && !now.Before(end.Add(publishedAt*time.Hour)) &&
			!now.Before(d.Unlisted.Add(unlistedFor)) {
			fetch = append(fetch, i)
		}
	}
	return count, fetch
}

// fetch asks WeChat for the figures of days[idx] (in order): one call of
// each API per span it allows. A day WeChat lists in neither answer is not
// published yet and stays null; a refusal is kept in each day asked for.
// The error returned is one that no row keeps (no answer, a busy WeChat):
// the days are asked for again next time.
func (r *Reconciler) fetch(ctx context.Context, account string, days []row, idx []int) error {
	c, err := r.o.WeChat.For(account)
	if err != nil {
		return err
	}
	first, last := days[idx[0]].Date, days[idx[len(idx)-1]].Date
	listed := map[string]bool{}
	qr := map[string]wechatapi.UserSummary{}
	uerr := spans(first, last, wechatapi.UserSummaryDays, func(from, to string) error {
		rows, err := c.UserSummary(ctx, from, to)
		for _, u := range rows {
			listed[u.Date] = true
			if u.Source == wechatapi.SourceQRCode {
				qr[u.Date] = u
			}
		}
		return err
	})
	calls := map[string]wechatapi.InterfaceSummary{}
	ierr := spans(first, last, wechatapi.InterfaceDays, func(from, to string) error {
		rows, err := c.InterfaceSummary(ctx, from, to)
		for _, s := range rows {
			listed[s.Date], calls[s.Date] = true, s
		}
		return err
	})
	refused := refusal(uerr, ierr)
	for _, i := range idx {
		d := &days[i]
		if refused != nil || (uerr == nil && ierr == nil) {
			d.WeChatError = refused // else no answer: as it was
		}
		if !listed[d.Date] {
			if uerr == nil || ierr == nil {
				d.Unlisted = r.o.Now()
			}
			continue
		}
		// A day WeChat lists has a figure for each call that answered: a
		// source or a count it leaves out is zero.
		if uerr == nil {
			u := qr[d.Date]
			d.WeChatNewUserQR, d.WeChatCancelUserQR = &u.NewUser, &u.CancelUser
		}
		if ierr == nil {
			s := calls[d.Date]
			d.WeChatCallbackCount, d.WeChatFailCount, d.WeChatMaxTimeCostMS = &s.CallbackCount, &s.FailCount, &s.MaxTimeCost
		}
	}
	var errs []error
	for _, err := range []error{uerr, ierr} {
		if err != nil && refusal(err) == nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// refusal is the first of errs that is WeChat's refusal to stand, as a
// row keeps it; nil if none is. Not -1 (busy), nor 61501, which WeChat
// also answers for a day not published yet.
func refusal(errs ...error) *WeChatError {
	for _, err := range errs {
		var we *wechatapi.Error
		if errors.As(err, &we) && we.Definite() && we.Code != wechatapi.CodeDateRange {
			return &WeChatError{Errcode: we.Code, Errmsg: we.Msg, Hint: we.Hint()}
		}
	}
	return nil
}

// spans calls f for each span of at most n days from first to last
// (YYYY-MM-DD), until one fails.
func spans(first, last string, n int, f func(from, to string) error) error {
	b, _ := time.Parse(time.DateOnly, first)
	e, _ := time.Parse(time.DateOnly, last)
	for ; !b.After(e); b = b.AddDate(0, 0, n) {
		to := b.AddDate(0, 0, n-1)
		if to.After(e) {
			to = e
		}
		if err := f(b.Format(time.DateOnly), to.Format(time.DateOnly)); err != nil {
			return err
		}
	}
	return nil
}

// ours counts the account's callbacks received from start to end: the
// events in WXGATE_EVENTS (each once, however often WeChat retried it),
// and those answered without their reply, the copies in WXGATE_UNANSWERED.
func (r *Reconciler) ours(ctx context.Context, account string, start, end time.Time) (callbacks, fallbacks int64, err error) {
	if callbacks, err = r.count(ctx, events.Stream, subjects(events.SubjectPrefix, account), start, end); err != nil {
		return 0, 0, err
	}
	fallbacks, err = r.count(ctx, events.Unanswered, subjects(events.UnansweredPrefix, account), start, end)
	return callbacks, fallbacks, err
}

// subjects are where an account's events are kept under prefix:
// <prefix><account>.<msg|event>.<type>, and for the default account also
// <prefix><msg|event>.<type>, where versions before accounts kept them.
func subjects(prefix, account string) []string {
	s := []string{prefix + account + ".*.*"}
	if account == accounts.DefaultID {
		s = append(s, prefix+"*.*")
	}
	return s
}

// count counts the messages on subjects of stream received from start to
// end (bus.HeaderReceived; when it is missing, when stored), reading their
// headers only, from shortly before start to the stream's end as the count
// began.
func (r *Reconciler) count(ctx context.Context, stream string, subjects []string, start, end time.Time) (int64, error) {
	s, err := r.js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil // nothing was ever stored
	}
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", stream, err)
	}
	last := s.CachedInfo().State.LastSeq
	from := start.Add(-early)
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &from,
		AckPolicy: jetstream.AckNonePolicy, HeadersOnly: true, MemoryStorage: true, InactiveThreshold: time.Minute,
	})
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", stream, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.DeleteConsumer(dctx, c.CachedInfo().Name) // else InactiveThreshold removes it
	}()
	if c.CachedInfo().NumPending == 0 {
		return 0, nil
	}
	it, err := c.Messages()
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", stream, err)
	}
	defer it.Stop()
	var n int64
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("count %s: %w", stream, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return 0, fmt.Errorf("count %s: %w", stream, err)
		}
		if md.Sequence.Stream > last {
			return n, nil
		}
		t, ok := bus.ParseTime(m.Headers().Get(bus.HeaderReceived))
		if !ok {
			t = md.Timestamp
		}
		if !t.Before(start) && t.Before(end) {
			n++
		}
		if md.NumPending == 0 || md.Sequence.Stream == last {
			return n, nil
		}
	}
}

// key is where the account's row of a day (YYYY-MM-DD) is kept.
func key(account, date string) string { return "r." + account + "." + date }

// read returns the account's rows from..to, empty where none is kept.
func (r *Reconciler) read(ctx context.Context, kv jetstream.KeyValue, account string, from, to time.Time) ([]row, error) {
	var days []row
	for d := from; !d.After(to); d = r.day(d, 1) {
		day := row{Day: Day{Date: d.Format(time.DateOnly)}}
		e, err := kv.Get(ctx, key(account, day.Date))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return nil, fmt.Errorf("read %s: %w", Bucket, err)
		case json.Unmarshal(e.Value(), &day) != nil:
			r.o.Logger.Warn("reconciliation: a row this version cannot read; made again", "key", e.Key())
			day = row{Day: Day{Date: d.Format(time.DateOnly)}}
		}
		days = append(days, day)
	}
	return days, nil
}

// write keeps the rows marked dirty.
func (r *Reconciler) write(ctx context.Context, kv jetstream.KeyValue, account string, days []row, dirty map[int]bool) error {
	for i := range dirty {
		b, err := json.Marshal(days[i])
		if err == nil {
			_, err = kv.Put(ctx, key(account, days[i].Date), b)
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", Bucket, err)
		}
	}
	return nil
}

// day is the local midnight n days after t's day in the zone.
func (r *Reconciler) day(t time.Time, n int) time.Time {
	y, m, d := t.In(r.o.Zone).Date()
	return time.Date(y, m, d+n, 0, 0, 0, 0, r.o.Zone)
}
