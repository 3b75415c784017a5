package stats

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// view is a process's copy of the totals and of the day values of the
// recent days (viewDays: a 31-day period and the one before it, whatever
// the zone), kept current by watches, so that the API answers from memory
// without a leader. Older days and the hour values are read on demand.
type view struct {
	s      *Store
	cancel context.CancelFunc
	done   chan struct{}
	ready  chan struct{} // closed once both watches delivered their values

	mu   sync.RWMutex
	tot  map[string]map[string]Totals        // account → scene → totals
	days map[string]map[Date]map[string]*Day // account → date → universe → value
	lo   Date                                // the first date held; later ones up to hi
	hi   Date
}

// viewDays is how many days the view holds, ending tomorrow in UTC: the
// last 62 local days in any zone.
const viewDays = 64

// readView is the store's view, started on first use; it waits, within
// ctx, for the values to be read once.
func (s *Store) readView(ctx context.Context) (*view, error) {
	s.viewOnce.Do(func() {
		vctx, cancel := context.WithCancel(context.Background())
		s.view = &view{s: s, cancel: cancel, done: make(chan struct{}), ready: make(chan struct{})}
		go s.view.run(vctx)
	})
	select {
	case <-s.view.ready:
		return s.view, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("analytics values not read yet: %w", ctx.Err())
	}
}

// Close stops the store's view, if one started.
func (s *Store) Close() {
	s.viewOnce.Do(func() {})
	if s.view != nil {
		s.view.cancel()
		<-s.view.done
	}
}

// run follows the buckets until ctx ends: the totals, and the days of the
// window, moved at each UTC midnight. A watch that ends (NATS restarted,
// a bucket made again) is started again and read whole.
func (v *view) run(ctx context.Context) {
	defer close(v.done)
	for ctx.Err() == nil {
		err := v.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // NATS away: retry pace
			}
		}
	}
}

// follow reads the totals and the window's days whole, then follows them
// until the window moves or a watch ends. Every read has one filter: a
// consumer of many (one per day) takes half a minute over 60 000 values
// once the file store's caches have cooled, one of one a fraction of a
// second.
func (v *view) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	now := time.Now().UTC()
	hi := DateOf(now.Date()) + 1
	lo := hi - viewDays + 1
	tw, err := v.s.KV.Watch(wctx, "s.*.*")
	if err != nil {
		return err
	}
	defer tw.Stop()
	// Changes from now on, first: a day read below may be older than one
	// of them, or newer (the revision says).
	dw, err := v.s.Series.Watch(wctx, "d.>", jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	defer dw.Stop()
	days := map[string]map[Date]map[string]*Day{}
	for d := lo; d <= hi; d++ {
		entries, err := readAll(wctx, v.s.Series, "d.*."+d.key()+".*")
		if err != nil {
			return err
		}
		for _, e := range entries {
			putDay(days, e)
		}
	}
	tot, live := map[string]map[string]Totals{}, false
	// Until the totals are read whole the maps are this goroutine's; then
	// they are the view's, changed under its lock.
	change := func(f func()) {
		if live {
			v.mu.Lock()
			defer v.mu.Unlock()
		}
		f()
	}
	midnight := time.NewTimer(time.Until(time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)))
	defer midnight.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-midnight.C:
			return nil
		case e, ok := <-tw.Updates():
			if !ok {
				return errors.New("totals watch ended")
			}
			if e != nil {
				change(func() { putTotals(tot, e) })
			} else if !live {
				live = true
				v.mu.Lock()
				v.tot, v.days, v.lo, v.hi = tot, days, lo, hi
				v.mu.Unlock()
				select {
				case <-v.ready:
				default:
					close(v.ready)
				}
			}
		case e, ok := <-dw.Updates():
			if !ok {
				return errors.New("series watch ended")
			}
			if e == nil {
				continue
			}
			if _, date, _, ok := dayOfKey(e.Key()); ok && date >= lo && date <= hi {
				change(func() { putDay(days, e) })
			}
		}
	}
}

func putTotals(tot map[string]map[string]Totals, e jetstream.KeyValueEntry) {
	account, ok := totalsAccount(e.Key())
	if !ok {
		return
	}
	var d SceneDoc
	if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &d) != nil {
		// Deleted (a rebuild dropped it), or unreadable.
		if scene, err := base64.RawURLEncoding.DecodeString(e.Key()[len("s."+account+"."):]); err == nil {
			delete(tot[account], string(scene))
		}
		return
	}
	if tot[account] == nil {
		tot[account] = map[string]Totals{}
	}
	tot[account][d.Scene] = d.Totals.withNet()
}

// dayOfKey parses d.<account>.<YYYYMMDD>.<universe> (or h.…).
func dayOfKey(key string) (account string, date Date, uid string, ok bool) {
	parts := strings.Split(key, ".")
	if len(parts) != 4 {
		return "", 0, "", false
	}
	t, err := time.Parse("20060102", parts[2])
	if err != nil {
		return "", 0, "", false
	}
	return parts[1], DateOf(t.Date()), parts[3], true
}

func putDay(days map[string]map[Date]map[string]*Day, e jetstream.KeyValueEntry) {
	account, date, uid, ok := dayOfKey(e.Key())
	if !ok {
		return
	}
	if days[account] == nil {
		days[account] = map[Date]map[string]*Day{}
	}
	byUni := days[account][date]
	if byUni == nil {
		byUni = map[string]*Day{}
		days[account][date] = byUni
	}
	if old := byUni[uid]; old != nil && old.rev > e.Revision() {
		return // read after a change seen later
	}
	d, err := DecodeDay(e.Value())
	if e.Operation() != jetstream.KeyValuePut || err != nil {
		delete(byUni, uid)
		return
	}
	d.rev = e.Revision()
	byUni[uid] = d
}
