package qrcodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Label is what an account's newest code of a scene says of it: the
// analytics put it beside the scene and count the group's scenes
// together, and a rule's reply may quote it ({label}, {group}).
type Label struct {
	Label string `json:"label"`
	Group string `json:"group"`
}

// labels is every account's scene → Label, kept current by a watch on the
// bucket (started by the first Labels call, ended by Close).
type labels struct {
	start  sync.Once
	ready  chan struct{} // closed once the bucket was read whole
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	by map[string]map[string]labelEntry // account → scene
	// views are the maps handed out, one per account, made on read and
	// dropped when the account's labels change: callers never see a map
	// that changes.
	views map[string]map[string]Label
}

type labelEntry struct {
	Label
	created time.Time
}

// Labels returns the label and group of each of account's scenes that has
// a code, from its newest code. The map is shared: it must not be changed.
// The first call waits for the bucket to be read, within ctx.
func (s *Service) Labels(ctx context.Context, account string) (map[string]Label, error) {
	l := &s.labels
	l.start.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel, l.done = cancel, make(chan struct{})
		go s.followLabels(ctx)
	})
	select {
	case <-l.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: labels not read yet: %w", ErrUnavailable, ctx.Err())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.views[account]
	if !ok {
		v = make(map[string]Label, len(l.by[account]))
		for scene, e := range l.by[account] {
			v[scene] = e.Label
		}
		l.views[account] = v
	}
	return v, nil
}

// Close ends the labels' watch, if one started.
func (s *Service) Close() {
	l := &s.labels
	l.start.Do(func() {}) // none will start now
	if l.cancel != nil {
		l.cancel()
		<-l.done
	}
}

// followLabels reads the bucket and follows it until ctx ends, reading it
// whole again whenever the watch ends (NATS restarted without its data).
func (s *Service) followLabels(ctx context.Context) {
	defer close(s.labels.done)
	for {
		err := s.watchLabels(ctx)
		if ctx.Err() != nil {
			return
		}
		s.o.Logger.Warn("qr code labels: watch ended; reading the codes again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second): // NATS away: retry pace
		}
	}
}

func (s *Service) watchLabels(ctx context.Context) error {
	kv, err := s.bucket(ctx)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	l := &s.labels
	fresh := map[string]map[string]labelEntry{} // the bucket as read whole, then live
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch was closed")
			}
			if e == nil {
				l.mu.Lock()
				l.by, l.views = fresh, map[string]map[string]Label{}
				l.mu.Unlock()
				select {
				case <-l.ready:
				default:
					close(l.ready)
				}
				continue
			}
			var r record
			if json.Unmarshal(e.Value(), &r) != nil || r.Pending {
				continue
			}
			account := accountOf(e.Key())
			l.mu.Lock()
			if fresh[account] == nil {
				fresh[account] = map[string]labelEntry{}
			}
			if cur, ok := fresh[account][r.Scene]; !ok || !r.CreatedAt.Before(cur.created) {
				fresh[account][r.Scene] = labelEntry{Label{r.Label, r.Group}, r.CreatedAt}
				delete(l.views, account)
			}
			l.mu.Unlock()
		}
	}
}
