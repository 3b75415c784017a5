package accounts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
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
type Registry struct {
	o      Options
	sealer *Sealer // nil without ACCOUNTS_SECRET_KEY
	def    *Account
	bucket *bus.Bucket
	view   *bus.View[*entry]
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
	r := &Registry{o: o, def: &o.Default,
		bucket: bus.NewBucket(o.Conn, Bucket, "wxgate: the Official Accounts kept as data (secrets sealed with ACCOUNTS_SECRET_KEY)", o.Replicas)}
	if o.SecretKey != "" {
		s, err := NewSealer(o.SecretKey)
		if err != nil {
			return nil, err
		}
		r.sealer = s
	}
	r.view = bus.StartView(r.bucket, o.Logger, r.decode)
	return r, nil
}

func (r *Registry) decode(id string, b []byte) (*entry, error) {
	if id == DefaultID {
		return nil, ErrDefault
	}
	a, _, err := r.sealer.decode(id, b)
	if a == nil {
		return nil, err
	}
	if err != nil {
		r.o.Logger.Error("accounts: cannot open the account's secrets; not served here", "account", id, "err", err)
	}
	return &entry{acct: a, problem: err}, nil
}

// Stop ends the watch.
func (r *Registry) Stop() { r.view.Stop() }

// Check reports whether the registry has read the bucket, for readiness:
// until it has, it knows the default alone. Once read, a watch that fails
// (JetStream away, the bucket lost) keeps the accounts as last read and
// says so in the log, not here: an ingress that rides out JetStream's
// absence (its intake holds the events) stays in its balancer's rotation.
func (r *Registry) Check() error {
	select {
	case <-r.view.Ready():
		return nil
	default:
		return r.view.Check()
	}
}

// Generation changes whenever an account is added, changed or removed:
// a cache keyed by it is current.
func (r *Registry) Generation() uint64 { return r.view.Generation() }

// Get returns the account with id, if this process can serve it.
func (r *Registry) Get(id string) (*Account, bool) {
	if id == DefaultID {
		return r.def, true
	}
	e, ok := r.view.Map()[id]
	if !ok || e.problem != nil {
		return nil, false
	}
	return e.acct, true
}

// Accounts returns every account this process can serve, default first,
// then by id.
func (r *Registry) Accounts() []*Account {
	all := r.view.Map()
	out := []*Account{r.def}
	for _, id := range slices.Sorted(maps.Keys(all)) {
		if e := all[id]; e.problem == nil {
			out = append(out, e.acct)
		}
	}
	return out
}

// Views returns what the API shows of every account, default first.
func (r *Registry) Views() []View {
	all := r.view.Map()
	out := []View{r.def.View()}
	for _, id := range slices.Sorted(maps.Keys(all)) {
		out = append(out, all[id].view())
	}
	return out
}

// View returns what the API shows of one account.
func (r *Registry) View(id string) (View, bool) {
	if id == DefaultID {
		return r.def.View(), true
	}
	e, ok := r.view.Map()[id]
	if !ok {
		return View{}, false
	}
	return e.view(), true
}

func (e *entry) view() View {
	v := e.acct.View()
	if e.problem != nil {
		v.Usable, v.Problem = false, e.problem.Error()
	}
	return v
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
	if n := len(r.view.Map()) + 1; n >= r.o.MaxAccounts {
		return View{}, fmt.Errorf("%w: %d accounts (MAX_ACCOUNTS=%d)", ErrLimit, n, r.o.MaxAccounts)
	}
	kv, err := r.bucket.KV(ctx)
	if err != nil {
		return View{}, err
	}
	b, err := r.sealer.encode(&a, time.Time{})
	if err == nil {
		_, err = kv.Create(ctx, a.ID, b)
	}
	switch {
	case bus.IsKVConflict(err):
		return View{}, ErrExists
	case err != nil:
		return View{}, fmt.Errorf("store account: %w", err)
	}
	return a.View(), nil
}

// Update changes the fields p gives, by compare-and-set: a concurrent
// change is read again and p applied to it.
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
	kv, err := r.bucket.KV(ctx)
	if err != nil {
		return View{}, err
	}
	for {
		e, err := kv.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return View{}, ErrNotFound
		}
		if err != nil {
			return View{}, fmt.Errorf("read account: %w", err)
		}
		cur, created, err := r.sealer.decode(id, e.Value())
		if err != nil {
			return View{}, err
		}
		next := p.Apply(*cur)
		if err := next.Validate(); err != nil {
			return View{}, err
		}
		if b, err := r.sealer.encode(&next, created); err != nil {
			return View{}, err
		} else if _, err := kv.Update(ctx, id, b, e.Revision()); err == nil {
			return next.View(), nil
		} else if !bus.IsKVConflict(err) {
			return View{}, fmt.Errorf("store account: %w", err)
		}
	}
}

// Delete removes an account.
func (r *Registry) Delete(ctx context.Context, id string) error {
	if id == DefaultID {
		return ErrDefault
	}
	if !ValidID(id) {
		return ErrNotFound
	}
	kv, err := r.bucket.KV(ctx)
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
func (r *Registry) Len() int { return len(r.view.Map()) + 1 }

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
			changed := r.view.Changed() // before reading: no change is missed
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
			case <-r.view.Done():
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// Default is the account the WECHAT_* variables define.
func (r *Registry) Default() *Account { return r.def }

// Has reports whether an account with id exists, served here or not.
func (r *Registry) Has(id string) bool {
	_, ok := r.View(id)
	return ok
}
