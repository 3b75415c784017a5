package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// View is a KV bucket as this process knows it now: each key's value,
// decoded, kept current by a watch, so that a change reaches every process
// within a moment. Reads are lock-free: the map is replaced whole on each
// change and never changed, so a caller may keep one.
//
// The watch is set up again whenever it fails or its bucket goes (deleted,
// or lost with NATS's data: it is created again); the last map is served
// meanwhile, and Check says the view is not current.
type View[T any] struct {
	b      *Bucket
	decode func(key string, value []byte) (T, error)
	logger *slog.Logger

	m   atomic.Pointer[map[string]T]
	gen atomic.Uint64
	// changed is closed at the next change, and replaced.
	changed atomic.Pointer[chan struct{}]
	down    atomic.Pointer[error]
	ready   chan struct{}
	once    sync.Once

	cancel context.CancelFunc
	done   chan struct{}
}

// StartView starts following b. decode turns a value into T; a value it
// refuses is logged, and its key keeps the value it had. Without a
// connection the view is empty, and current.
func StartView[T any](b *Bucket, logger *slog.Logger, decode func(key string, value []byte) (T, error)) *View[T] {
	v := &View[T]{b: b, decode: decode, logger: logger, ready: make(chan struct{}), done: make(chan struct{})}
	v.m.Store(&map[string]T{})
	changed := make(chan struct{})
	v.changed.Store(&changed)
	if b.nc == nil {
		close(v.ready)
		close(v.done)
		return v
	}
	notYet := errors.New("not read yet")
	v.down.Store(&notYet)
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	go v.keep(ctx)
	return v
}

// Stop ends the watch.
func (v *View[T]) Stop() {
	if v.cancel != nil {
		v.cancel()
	}
	<-v.done
}

// Map is every key's value. It is shared: it must not be changed.
func (v *View[T]) Map() map[string]T { return *v.m.Load() }

// Generation changes whenever the map does: a cache keyed by it is
// current.
func (v *View[T]) Generation() uint64 { return v.gen.Load() }

// Changed is closed at the next change of the map: read it before the
// map, and no change is missed.
func (v *View[T]) Changed() <-chan struct{} { return *v.changed.Load() }

// Done is closed once the view has stopped.
func (v *View[T]) Done() <-chan struct{} { return v.done }

// Ready is closed once the bucket has been read whole.
func (v *View[T]) Ready() <-chan struct{} { return v.ready }

// Check reports whether the view is current: the bucket read and watched.
func (v *View[T]) Check() error {
	if p := v.down.Load(); p != nil {
		return fmt.Errorf("%s: %w", v.b.cfg.Bucket, *p)
	}
	return nil
}

func (v *View[T]) keep(ctx context.Context) {
	defer close(v.done)
	for attempt := 0; ; attempt++ {
		err := v.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		wasCurrent := v.down.Swap(&err) == nil
		v.b.Forget()
		if wasCurrent || attempt%60 == 0 {
			v.logger.Warn("not watching a KV bucket; retrying", "bucket", v.b.cfg.Bucket, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// checkEvery paces the checks that the watched bucket is still there: a
// watch goes on silently when its bucket is deleted, or lost with NATS's
// data, and waits through a disconnection.
const checkEvery = 2 * time.Second

func (v *View[T]) watch(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := v.b.KV(octx)
	if err != nil {
		return err
	}
	created, err := bucketCreated(octx, kv)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	// Stop asks NATS to delete the consumer and waits for the answer, which
	// a NATS away never gives; the server drops an idle one anyway.
	defer func() { go w.Stop() }()
	check := time.NewTicker(checkEvery)
	defer check.Stop()
	// next is published once the current values are all read, then after
	// each change, or after the last of a burst of them.
	next, current, published := map[string]T{}, false, false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			if c, err := bucketCreated(ctx, kv); err != nil {
				return err
			} else if !c.Equal(created) {
				return errors.New("the bucket was replaced")
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch ended")
			}
			if e == nil {
				current = true
			} else {
				if published {
					next, published = maps.Clone(next), false
				}
				v.apply(next, e)
			}
			if current && len(w.Updates()) == 0 {
				v.publish(next)
				published = true
			}
		}
	}
}

func bucketCreated(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, checkEvery)
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("status: %w", err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().Created, nil
}

func (v *View[T]) publish(m map[string]T) {
	v.m.Store(&m)
	v.gen.Add(1)
	next := make(chan struct{})
	close(*v.changed.Swap(&next))
	v.down.Store(nil)
	v.once.Do(func() { close(v.ready) })
}

func (v *View[T]) apply(m map[string]T, e jetstream.KeyValueEntry) {
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		delete(m, key)
		return
	}
	val, err := v.decode(key, e.Value())
	if err != nil {
		v.logger.Error("a KV value that cannot be read; its key keeps its last value", "bucket", v.b.cfg.Bucket, "key", key, "err", err)
		if last, ok := v.Map()[key]; ok {
			m[key] = last
		} else {
			delete(m, key)
		}
		return
	}
	m[key] = val
}
