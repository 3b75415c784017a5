package stats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
)

// totals are the account's scenes' totals, from the view.
func (v *view) totals(account string) []Totals {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]Totals, 0, len(v.tot[account]))
	for _, t := range v.tot[account] {
		out = append(out, t)
	}
	return out
}

// hasAccount reports whether the view holds any totals of account.
func (v *view) hasAccount(account string) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.tot[account]) > 0
}

// daySet is the day values of one account over a period: the view's, and
// those read for days outside it.
type daySet struct {
	lo, hi     Date
	view, read map[Date]map[string]*Day
}

// at is the values of day d, by universe.
func (ds daySet) at(d Date) map[string]*Day {
	if d >= ds.lo && d <= ds.hi {
		return ds.view[d]
	}
	return ds.read[d]
}

// get is universe uid's value on day d; nil: no scans.
func (ds daySet) get(d Date, uid string) *Day { return ds.at(d)[uid] }

// withDays calls f with the account's day values on from..to, of
// universe uid or of every one (uid ""): the view's, and the others read
// now. f runs under the view's read lock: it must not block.
func (s *Store) withDays(ctx context.Context, account string, from, to Date, uid string, f func(daySet)) error {
	v, err := s.readView(ctx)
	if err != nil {
		return err
	}
	v.mu.RLock()
	lo, hi := v.lo, v.hi
	v.mu.RUnlock()
	var missing []Date
	for d := from; d <= to; d++ {
		if d < lo || d > hi {
			missing = append(missing, d)
		}
	}
	// Days outside the view: a universe's are one read of its every day;
	// every universe's, one read a day, a few at a time.
	read := map[string]map[Date]map[string]*Day{account: {}}
	var mu sync.Mutex
	keep := func(entries []jetstream.KeyValueEntry) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range entries {
			if _, date, _, ok := dayOfKey(e.Key()); ok && slices.Contains(missing, date) {
				putDay(read, e)
			}
		}
	}
	switch {
	case len(missing) == 0:
	case uid != "":
		entries, err := readAll(ctx, s.Series, "d."+account+".*."+uid)
		if err != nil {
			return err
		}
		keep(entries)
	default:
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		for _, d := range missing {
			g.Go(func() error {
				entries, err := readAll(gctx, s.Series, "d."+account+"."+d.key()+".*")
				keep(entries)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	f(daySet{v.lo, v.hi, v.days[account], read[account]})
	return nil
}

// hours reads a universe's hour values on from..to.
func (s *Store) hours(ctx context.Context, account string, from, to Date, uid string) (map[Date]*Hours, error) {
	entries, err := readAll(ctx, s.Series, "h."+account+".*."+uid)
	if err != nil {
		return nil, err
	}
	out := map[Date]*Hours{}
	for _, e := range entries {
		if _, date, _, ok := dayOfKey(e.Key()); ok && date >= from && date <= to {
			if h, err := DecodeHours(e.Value()); err == nil {
				out[date] = h
			}
		}
	}
	return out, nil
}

// readAll reads the current values of the keys that match filter (one
// filter: see view.follow).
func readAll(ctx context.Context, kv jetstream.KeyValue, filter string) ([]jetstream.KeyValueEntry, error) {
	w, err := kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", kv.Bucket(), err)
	}
	defer w.Stop()
	var out []jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("read: the watch ended")
			}
			if e == nil {
				return out, nil
			}
			out = append(out, e)
		case <-ctx.Done():
			return nil, fmt.Errorf("read %s: %w", kv.Bucket(), ctx.Err())
		}
	}
}

// Followers read an account's new followers through its codes, per local
// day, from the day values: reconcile.Followers, beside WeChat's figures.
type Followers StoreFunc

// NewFollowers are the account's new followers on each day from..to
// (YYYY-MM-DD, inclusive), in order.
func (f Followers) NewFollowers(ctx context.Context, account, from, to string) ([]int64, error) {
	first, err := ParseDate(from)
	if err != nil {
		return nil, err
	}
	last, err := ParseDate(to)
	if err != nil || last < first || last-first >= MaxDays {
		return nil, fmt.Errorf("new followers: %s..%s is not a period", from, to)
	}
	s, err := f(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]int64, 0, last-first+1)
	err = s.withDays(ctx, account, first, last, AccountUID, func(ds daySet) {
		for d := first; d <= last; d++ {
			var n int64
			if v := ds.get(d, AccountUID); v != nil {
				n = v.Subscribe
			}
			out = append(out, n)
		}
	})
	return out, err
}
