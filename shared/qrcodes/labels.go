package qrcodes

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/wxgate/wxgate/shared/bus"

	"github.com/wxgate/wxgate/shared/stats"
)

// Label is what an account's newest code of a scene says of it: the
// analytics put it beside the scene and count the group's scenes
// together, and a rule's reply may quote it ({label}, {group}). It is the
// analytics' own type, so that a Service is their stats.Labeler.
type Label = stats.Label

// labels is a view of the codes, started by the first Labels call and
// ended by Close, and the maps made from it.
type labels struct {
	start sync.Once
	view  *bus.View[labelEntry]

	mu  sync.Mutex
	gen uint64
	// by are the maps handed out, one per account, made on read and
	// dropped when the view changes: callers never see a map that changes.
	by map[string]map[string]Label
}

type labelEntry struct {
	Label
	account, scene string
	created        time.Time
	pending        bool
}

// Labels returns the label and group of each of account's scenes that has
// a code, from its newest code. The map is shared: it must not be changed.
// The first call waits for the bucket to be read, within ctx.
func (s *Service) Labels(ctx context.Context, account string) (map[string]Label, error) {
	l := &s.labels
	l.start.Do(func() {
		l.view = bus.StartView(s.store, s.o.Logger, func(key string, b []byte) (labelEntry, error) {
			var r record
			err := json.Unmarshal(b, &r)
			return labelEntry{Label{Label: r.Label, Group: r.Group}, accountOf(key), r.Scene, r.CreatedAt, r.Pending}, err
		})
	})
	select {
	case <-l.view.Ready():
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: labels not read yet: %w", ErrUnavailable, ctx.Err())
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if gen := l.view.Generation(); gen != l.gen {
		l.gen, l.by = gen, map[string]map[string]Label{}
	}
	if _, ok := l.by[account]; !ok {
		l.by[account] = newest(l.view.Map(), account)
	}
	return l.by[account], nil
}

// newest is the label of each of account's scenes from its newest code
// (of two made in one millisecond, the one with the greater key).
func newest(codes map[string]labelEntry, account string) map[string]Label {
	key := map[string]string{} // scene → its newest code's key
	for k, e := range codes {
		if e.account != account || e.pending {
			continue
		}
		if cur, ok := key[e.scene]; ok {
			if c := e.created.Compare(codes[cur].created); c < 0 || c == 0 && k < cur {
				continue
			}
		}
		key[e.scene] = k
	}
	out := make(map[string]Label, len(key))
	for scene, k := range key {
		out[scene] = codes[k].Label
	}
	return out
}

// Close ends the labels' watch, if one started.
func (s *Service) Close() {
	l := &s.labels
	l.start.Do(func() {}) // none will start now
	if l.view != nil {
		l.view.Stop()
	}
}
