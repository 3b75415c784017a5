package accounts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
)

// Options configure a Registry. Logger is required; Conn may be nil (no
// bus: the default account only).
type Options struct {
	Conn *nats.Conn
	// Default is the account the WECHAT_* variables define (its Token may
	// be empty in a process that does not take callbacks).
	Default Account
	// SecretKey is ACCOUNTS_SECRET_KEY; empty: accounts can be listed and
	// the default served, but none created or changed.
	SecretKey string
	// MaxAccounts bounds the accounts, default included (MAX_ACCOUNTS).
	// Default 1000.
	MaxAccounts int
	Replicas    int
	Logger      *slog.Logger
}

func (o *Options) setDefaults() {
	if o.MaxAccounts <= 0 {
		o.MaxAccounts = 1000
	}
	o.Default.ID = DefaultID
}

func (o *Options) validate() error {
	if o.Logger == nil {
		return errors.New("accounts: Options.Logger is required")
	}
	return nil
}

// Registry is every account this deployment serves, as this process knows
// it now: the default, and the bucket's accounts, kept current by a watch.
// Lookups are lock-free (one map, replaced whole on each change).
type Registry struct {
	o      Options
	sealer *Sealer // nil without ACCOUNTS_SECRET_KEY
	def    *Account

	all     atomic.Pointer[map[string]*entry]
	gen     atomic.Uint64                 // bumped on every change
	changed atomic.Pointer[chan struct{}] // closed at the next change
	down    atomic.Pointer[error]

	mu     sync.Mutex
	kv     jetstream.KeyValue
	cancel context.CancelFunc
	done   chan struct{}
}

type entry struct {
	acct    *Account // secrets opened when problem is nil
	problem error
}

// ErrLimit means MAX_ACCOUNTS accounts exist already.
var ErrLimit = errors.New("MAX_ACCOUNTS reached")

// ErrDefault means the default account was asked to change through the API:
// the WECHAT_* variables define it.
var ErrDefault = errors.New("the account default is defined by the WECHAT_* variables of each process, not through the API")

// Start returns the registry and, with a connection, starts keeping it
// current in the background (waiting for NATS as long as it takes).
func Start(o Options) (*Registry, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	r := &Registry{o: o, def: &o.Default, done: make(chan struct{})}
	if o.SecretKey != "" {
		s, err := NewSealer(o.SecretKey)
		if err != nil {
			return nil, err
		}
		r.sealer = s
	}
	m := map[string]*entry{}
	r.all.Store(&m)
	ch := make(chan struct{})
	r.changed.Store(&ch)
	if o.Conn == nil {
		close(r.done)
		return r, nil
	}
	notYet := errors.New("accounts not read yet")
	r.down.Store(&notYet)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.keep(ctx)
	return r, nil
}

// Stop ends the watch.
func (r *Registry) Stop() {
	if r.cancel != nil {
		r.cancel()
	}
	<-r.done
}

// Get returns the account with id, if this process can serve it.
func (r *Registry) Get(id string) (*Account, bool) {
	if id == DefaultID {
		return r.def, true
	}
	e, ok := (*r.all.Load())[id]
	if !ok || e.problem != nil {
		return nil, false
	}
	return e.acct, true
}

// Default is the account the WECHAT_* variables define.
func (r *Registry) Default() *Account { return r.def }

// Accounts returns every account this process can serve, default first,
// then by id.
func (r *Registry) Accounts() []*Account {
	all := *r.all.Load()
	out := make([]*Account, 0, len(all)+1)
	out = append(out, r.def)
	for _, id := range sortedIDs(all) {
		if e := all[id]; e.problem == nil {
			out = append(out, e.acct)
		}
	}
	return out
}

// Generation changes whenever an account is added, changed or removed:
// a cache keyed by it is current.
func (r *Registry) Generation() uint64 { return r.gen.Load() }

// Views returns what the API shows of every account, default first.
func (r *Registry) Views() []View {
	all := *r.all.Load()
	out := []View{r.def.View()}
	for _, id := range sortedIDs(all) {
		out = append(out, viewOf(all[id]))
	}
	return out
}

// View returns what the API shows of one account.
func (r *Registry) View(id string) (View, bool) {
	if id == DefaultID {
		return r.def.View(), true
	}
	e, ok := (*r.all.Load())[id]
	if !ok {
		return View{}, false
	}
	return viewOf(e), true
}

func viewOf(e *entry) View {
	v := e.acct.View()
	if e.problem != nil {
		v.Usable, v.Problem = false, e.problem.Error()
	}
	return v
}

func sortedIDs(m map[string]*entry) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Check reports whether the registry has read the bucket, for readiness:
// until it has, it knows the default alone. Once read, a watch that fails
// (JetStream away, the bucket lost) keeps the accounts as last read and
// says so in the log, not here: an ingress that rides out JetStream's
// absence (its intake holds the events) stays in its balancer's rotation.
func (r *Registry) Check() error {
	if p := r.down.Load(); p != nil {
		return fmt.Errorf("accounts: %w", *p)
	}
	return nil
}

// keep reads the bucket and follows its changes until ctx ends, setting up
// again whenever the watch ends (NATS restarted without its data, the
// bucket deleted).
func (r *Registry) keep(ctx context.Context) {
	defer close(r.done)
	for attempt := 0; ; attempt++ {
		err := r.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if r.down.Load() != nil { // not read yet
			r.down.Store(&err)
		}
		if attempt == 0 || attempt%60 == 0 {
			r.o.Logger.Warn("accounts: not watching the bucket; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (r *Registry) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.kv != nil {
		return r.kv, nil
	}
	js, err := jetstream.New(r.o.Conn)
	if err != nil {
		return nil, err
	}
	kv, err := bus.OpenOrCreateKV(ctx, js, BucketConfig(r.o.Replicas))
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	r.kv = kv
	return kv, nil
}

func (r *Registry) forgetBucket() {
	r.mu.Lock()
	r.kv = nil
	r.mu.Unlock()
}

func (r *Registry) watch(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	kv, err := r.bucket(sctx)
	cancel()
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		r.forgetBucket()
		return fmt.Errorf("watch %s: %w", Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	next := map[string]*entry{} // until the current values are all read
	current := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				r.forgetBucket()
				return errors.New("the accounts watch ended")
			}
			if e == nil {
				current = true
				r.publish(next)
				r.down.Store(nil)
				continue
			}
			if current {
				next = r.copyAll()
			}
			r.apply(next, e)
			if current {
				r.publish(next)
			}
		}
	}
}

func (r *Registry) copyAll() map[string]*entry {
	cur := *r.all.Load()
	next := make(map[string]*entry, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	return next
}

func (r *Registry) apply(m map[string]*entry, e jetstream.KeyValueEntry) {
	id := e.Key()
	if e.Operation() != jetstream.KeyValuePut || id == DefaultID {
		delete(m, id)
		return
	}
	a, _, err := r.sealer.decode(id, e.Value())
	if a == nil {
		r.o.Logger.Error("accounts: an unreadable value in the bucket; ignored", "key", id, "err", err)
		delete(m, id)
		return
	}
	if err != nil {
		r.o.Logger.Error("accounts: cannot open the account's secrets; not served here", "account", id, "err", err)
	}
	m[id] = &entry{acct: a, problem: err}
}

func (r *Registry) publish(m map[string]*entry) {
	r.all.Store(&m)
	r.gen.Add(1)
	next := make(chan struct{})
	close(*r.changed.Swap(&next))
}

// Label is id as the value of a metric's account label: id when this
// process serves such an account, Unknown otherwise (a request anyone on
// the bus may send), so that the label stays bounded by MAX_ACCOUNTS.
func (r *Registry) Label(id string) string {
	if _, ok := r.Get(id); ok {
		return id
	}
	return Unknown
}

// A Vec is a metric vector with an account label.
type Vec interface {
	DeletePartialMatch(prometheus.Labels) int
}

// Series keeps metric vectors in step with the accounts: add makes an
// account's series when it appears, so that rate() sees no gap; when it
// goes, every series of vecs with its id as the account label goes too.
func (r *Registry) Series(add func(id string), vecs ...Vec) {
	r.Follow(add, func(id string) {
		for _, v := range vecs {
			v.DeletePartialMatch(prometheus.Labels{"account": id})
		}
	})
}

// Len is how many accounts there are, the default and those this process
// cannot serve included.
func (r *Registry) Len() int { return len(*r.all.Load()) + 1 }

// Follow calls add with the id of every account this process serves now,
// then of each that appears, and drop with the id of each that goes (or
// that this process can no longer serve), on one goroutine of its own,
// until the registry stops or stop is called: for what is kept per
// account (a metric's series).
func (r *Registry) Follow(add, drop func(id string)) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		known := map[string]bool{}
		for {
			changed := *r.changed.Load() // before reading: no change is missed
			now := map[string]bool{}
			for _, a := range r.Accounts() {
				now[a.ID] = true
				if !known[a.ID] {
					add(a.ID)
				}
			}
			for id := range known {
				if !now[id] {
					drop(id)
				}
			}
			known = now
			select {
			case <-changed:
			case <-quit:
				return
			case <-r.done:
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// Create stores a new account.
func (r *Registry) Create(ctx context.Context, a Account) (View, error) {
	if err := a.Validate(); err != nil {
		return View{}, err
	}
	if a.ID == DefaultID {
		return View{}, ErrExists
	}
	if r.sealer == nil {
		return View{}, ErrNoSecretKey
	}
	if n := len(*r.all.Load()) + 1; n >= r.o.MaxAccounts {
		return View{}, fmt.Errorf("%w: %d accounts (MAX_ACCOUNTS=%d)", ErrLimit, n, r.o.MaxAccounts)
	}
	kv, err := r.bucket(ctx)
	if err != nil {
		return View{}, err
	}
	if err := r.sealer.create(ctx, kv, &a); err != nil {
		return View{}, err
	}
	return a.View(), nil
}

// Update changes the fields p gives.
func (r *Registry) Update(ctx context.Context, id string, p Patch) (View, error) {
	if id == DefaultID {
		return View{}, ErrDefault
	}
	if !ValidID(id) {
		return View{}, ErrNotFound
	}
	if r.sealer == nil {
		return View{}, ErrNoSecretKey
	}
	kv, err := r.bucket(ctx)
	if err != nil {
		return View{}, err
	}
	a, err := r.sealer.update(ctx, kv, id, func(cur Account) (Account, error) {
		next := p.Apply(cur)
		return next, next.Validate()
	})
	if err != nil {
		return View{}, err
	}
	return a.View(), nil
}

// Delete removes an account.
func (r *Registry) Delete(ctx context.Context, id string) error {
	if id == DefaultID {
		return ErrDefault
	}
	if !ValidID(id) {
		return ErrNotFound
	}
	kv, err := r.bucket(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Get(ctx, id); errors.Is(err, jetstream.ErrKeyNotFound) {
		return ErrNotFound
	} else if err != nil {
		return fmt.Errorf("read account: %w", err)
	}
	if err := kv.Delete(ctx, id); err != nil {
		return fmt.Errorf("delete account: %w", err)
	}
	return nil
}
