// Package worker assembles what a worker process runs on one NATS
// connection: the reply service and the analytics role (record fan-out,
// aggregating consumer, scene metrics). The workers binary and standalone
// mode both use it.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/qrcodes"
	"github.com/wxgate/wxgate/shared/reconcile"
	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/workers/analytics"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/late"
	"github.com/wxgate/wxgate/workers/reply"
	"github.com/wxgate/wxgate/workers/tags"
)

// Options wire a Worker. Conn, Logger, Registerer and Health are required.
type Options struct {
	Conn   *nats.Conn
	Config config.Config
	// Accounts are the process's accounts (StartAccounts); nil: the
	// worker starts its own on Conn, and stops it with itself.
	Accounts   *accounts.Registry
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Health gets the worker's parts ("replies", "analytics") for
	// readiness, and a part lost for good as fatal.
	Health *health.Checker
	// Decider decides replies; nil answers with each account's rules
	// (Rules; with none stored, the built-in texts of Config.Replies).
	Decider reply.Decider
	// GiveUp is how long the analytics consumer may fail to be rebuilt,
	// with NATS connected, before the process is told to end. Default 1m.
	GiveUp time.Duration
}

func (o *Options) validate() error {
	if o.Conn == nil || o.Logger == nil || o.Registerer == nil || o.Health == nil {
		return errors.New("worker: Options.Conn, Logger, Registerer and Health are required")
	}
	return nil
}

// Worker is what a worker process runs: the reply service, the analytics
// role, or both.
type Worker struct {
	Analytics *analytics.Role // nil without the analytics role
	Service   *reply.Service  // nil without the replies role
	Late      *late.Service   // nil without the replies role or LATE_REPLY
	// Tags gives people the user tags of the rules' tag actions; nil
	// without the replies role.
	Tags *tags.Tagger
	// WeChat are the process's clients of WeChat's API, one per account
	// (late replies and the QR codes share them).
	WeChat *wechatapi.Clients
	// QR is the process's QR-code service: the codes' labels and groups
	// are the analytics' and the rules' too.
	QR *qrcodes.Service
	// Rules are every account's rules, current by a watch.
	Rules *rules.Set
	// Reconcile serves /api/reconciliation; with the analytics role it
	// completes the rows every day too.
	Reconcile *reconcile.Reconciler
	stopDaily func()
	api       http.Handler
	scenes    stats.StoreFunc
	owned     *accounts.Registry // started here, stopped by Stop
}

// Start starts the roles the configuration names.
func Start(o Options) (_ *Worker, err error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	w := &Worker{}
	defer func() {
		if err != nil && w.Analytics != nil {
			err = errors.Join(err, stopRole(w.Analytics))
		}
		if err != nil && w.stopDaily != nil {
			w.stopDaily()
		}
		if err != nil && w.Tags != nil {
			err = errors.Join(err, w.Tags.Stop(context.Background()))
		}
		if err != nil && w.Rules != nil {
			w.Rules.Stop()
		}
		if err != nil && w.owned != nil {
			w.owned.Stop()
		}
	}()
	if o.Accounts == nil {
		if w.owned, err = StartAccounts(o.Config, o.Conn, o.Logger); err != nil {
			return nil, err
		}
		o.Accounts = w.owned
	}
	if w.WeChat, err = NewWeChat(o.Config, o.Accounts, o.Conn, o.Logger, o.Registerer); err != nil {
		return nil, err
	}
	// The codes' counts come from w.scenes, set below: the analytics' own
	// store when they run here (they read the codes' groups), the bucket
	// opened on first use otherwise.
	store := func(ctx context.Context) (*stats.Store, error) { return w.scenes(ctx) }
	if w.QR, err = qrcodes.New(qrcodes.Options{Conn: o.Conn, Clients: w.WeChat.For, Scenes: qrcodes.FromStore(store),
		Replicas: o.Config.JetStreamReplicas, Fonts: qrcodes.NewFonts(o.Config.QRCaptionFont),
		Logger: o.Logger.With("component", "qrcodes")}); err != nil {
		return nil, err
	}
	w.scenes = stats.OpenOnUse(o.Conn)
	if w.Rules, err = StartRules(o.Config, o.Conn, o.Logger); err != nil {
		return nil, err
	}
	if o.Config.HasRole("analytics") {
		if w.Analytics, err = analytics.StartRole(analytics.RoleOptions{
			Conn: o.Conn, Logger: o.Logger.With("component", "analytics"), Registerer: o.Registerer,
			Streams:   o.Config.Streams(),
			MaxScenes: o.Config.AnalyticsMaxScenes,
			Zone:      o.Config.AnalyticsZone,
			Labels:    w.QR,
			Fatal:     o.Health.Fatal,
			GiveUp:    o.GiveUp,
		}); err != nil {
			return nil, err
		}
		o.Health.Add("analytics", w.Analytics.Check)
		w.scenes = w.Analytics.Store
	}
	if w.api, err = stats.API(stats.APIOptions{Store: w.scenes, Token: o.Config.AdminToken, Zone: o.Config.AnalyticsZone, Known: o.Accounts.Has,
		Labels: w.QR, Logger: o.Logger.With("component", "stats")}); err != nil {
		return nil, err
	}
	if w.Reconcile, err = NewReconciler(o.Config, o.Conn, w.WeChat, w.scenes, o.Logger); err != nil {
		return nil, err
	}
	if o.Config.HasRole("analytics") {
		w.stopDaily = w.Reconcile.StartDaily()
	}
	if !o.Config.HasRole("replies") {
		return w, nil
	}
	lateOn := o.Config.EffectiveLateReply() == config.LateReplyCustomerService
	var dstore *dedup.Store
	if o.Config.DedupTTL > 0 {
		if dstore, err = openDedup(o); err != nil {
			return nil, err
		}
		o.Health.Add("replies-store", dstore.Check)
	} else if lateOn {
		return nil, errors.New("worker: late replies need the replies store (DEDUP_TTL above 0) to go once")
	}
	// Started before the replies, whose rules' tag actions it takes.
	if w.Tags, err = tags.Start(tags.Options{Conn: o.Conn, WeChat: w.WeChat, Replicas: o.Config.JetStreamReplicas,
		Logger: o.Logger.With("component", "tags"), Registerer: o.Registerer}); err != nil {
		if dstore != nil {
			dstore.Close()
		}
		return nil, err
	}
	decider := o.Decider
	if decider == nil {
		if decider, err = reply.NewRules(reply.RulesOptions{Set: w.Rules, Conn: o.Conn, Labels: Labels(w.QR), Tag: w.Tags.Enqueue,
			Accounts: o.Accounts, Logger: o.Logger.With("component", "rules"), Registerer: o.Registerer}); err != nil {
			return nil, err
		}
	}
	// Every worker marks the replies it answers retries with, whatever its
	// own LATE_REPLY: another worker's late sender reads the marks.
	svc, err := reply.Start(reply.Options{
		Conn:           o.Conn,
		Accounts:       o.Accounts,
		Dedup:          dstore,
		Decider:        decider,
		Logger:         o.Logger.With("component", "worker"),
		Registerer:     o.Registerer,
		HandlerTimeout: o.Config.HandlerTimeout,
		LateReplies:    lateOn,
	})
	if err != nil {
		if dstore != nil {
			dstore.Close()
		}
		return nil, err
	}
	o.Health.Add("replies", svc.Check)
	w.Service = svc
	outcomes := late.NewOutcomes(o.Registerer, o.Accounts)
	if lateOn {
		// Each account's late replies through its own AppID.
		api := func(id string) (late.Sender, error) { return w.WeChat.For(id) }
		l, err := late.Start(late.Options{
			Conn: o.Conn, API: api, Accounts: o.Accounts, Store: dstore, Reply: svc.Reply,
			MessageWindow: o.Config.LateMessageWindow, EventWindow: o.Config.LateEventWindow, Settle: config.LateSettle,
			ID: bus.InstanceID(o.Conn), Outcomes: outcomes,
			Logger: o.Logger.With("component", "late"), Registerer: o.Registerer,
		})
		if err != nil {
			return nil, errors.Join(err, stopService(svc))
		}
		o.Health.Add("late", l.Check)
		w.Late = l
	}
	if dstore != nil {
		// It needs JetStream, as the replies store does; a worker told to
		// reply without it (DEDUP_TTL=0) is ready without it.
		o.Health.Add("tags", w.Tags.Check)
	}
	return w, nil
}

// StartAccounts starts the process's registry of accounts on nc (nil: the
// default alone): the one the WECHAT_* variables define, and those kept in
// wxgate_accounts, current within a moment of each change. Every part of
// the process is given this one.
func StartAccounts(cfg config.Config, nc *nats.Conn, logger *slog.Logger) (*accounts.Registry, error) {
	r, err := accounts.Start(accounts.Options{Conn: nc, Default: cfg.DefaultAccount(), SecretKey: cfg.AccountsSecretKey,
		MaxAccounts: cfg.MaxAccounts, Replicas: cfg.JetStreamReplicas, Logger: logger.With("component", "accounts")})
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	return r, nil
}

// StartRules starts the process's view of every account's rules, the
// defaults made from the REPLY_* texts.
func StartRules(cfg config.Config, nc *nats.Conn, logger *slog.Logger) (*rules.Set, error) {
	t := cfg.Replies
	s, err := rules.Start(rules.Options{Conn: nc, Replicas: cfg.JetStreamReplicas, Logger: logger.With("component", "rules"),
		Defaults: rules.Defaults(rules.Texts{Subscribe: t.Subscribe, SubscribeScene: t.SubscribeScene, Scan: t.Scan,
			VoiceUnrecognised: t.VoiceUnrecognised, Default: t.Default})})
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	return s, nil
}

// MountRules serves /api/rules on an admin listener, under its
// ADMIN_TOKEN rule as the other /api/ routes: accounts as /api/accounts
// knows them, labels from the QR codes, imports through WeChat's API.
func MountRules(mux *admin.Mux, set *rules.Set, wx *wechatapi.Clients, qr *qrcodes.Service, token string) {
	h := admin.RequireToken(token, rules.API(rules.APIOptions{Set: set, Account: wx.Accounts().FromQuery,
		Labels: Labels(qr), Import: rules.ImportFrom(wx)}))
	mux.Handle("/api/rules", h)
	mux.Handle("/api/rules/", h)
}

// Labels tells an account's code label and group for a scene, as a rule's
// {label} and {group}: "" when the codes cannot be read within a moment.
func Labels(qr *qrcodes.Service) func(account, scene string) (label, group string) {
	return func(account, scene string) (string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		m, err := qr.Labels(ctx, account)
		if err != nil {
			return "", ""
		}
		l := m[scene]
		return l.Label, l.Group
	}
}

// MountAccounts serves /api/accounts on an admin listener, under its
// ADMIN_TOKEN rule as the other /api/ routes.
func MountAccounts(mux *admin.Mux, r *accounts.Registry, token string) {
	h := admin.RequireToken(token, accounts.API(r))
	mux.Handle("/api/accounts", h)
	mux.Handle("/api/accounts/", h)
}

// NewWeChat makes the process's clients of WeChat's API, for late
// replies and QR codes alike (one token cache per AppID, one metric), for
// the accounts of accts.
func NewWeChat(cfg config.Config, accts *accounts.Registry, nc *nats.Conn, logger *slog.Logger, reg prometheus.Registerer) (*wechatapi.Clients, error) {
	c, err := wechatapi.NewClients(wechatapi.Options{
		Base: cfg.APIBase, Accounts: accts,
		Conn: nc, Replicas: cfg.JetStreamReplicas,
		Logger: logger.With("component", "wechatapi"), Registerer: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("wechat api: %w", err)
	}
	return c, nil
}

// NewReconciler makes the process's reconciliation of WeChat's figures
// with ours, for its API (the analytics role starts its daily run).
func NewReconciler(cfg config.Config, nc *nats.Conn, wx *wechatapi.Clients, scenes stats.StoreFunc, logger *slog.Logger) (*reconcile.Reconciler, error) {
	return reconcile.New(reconcile.Options{Conn: nc, Accounts: wx.Accounts(), WeChat: wx, Followers: stats.Followers(scenes), Zone: cfg.AnalyticsZone,
		Streams: cfg.Streams(), Replicas: cfg.JetStreamReplicas, Logger: logger.With("component", "reconcile")})
}

func stopService(svc *reply.Service) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return svc.Stop(ctx)
}

func stopRole(role *analytics.Role) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return role.Stop(ctx)
}

// openDedup opens the replies store shared by every worker; it sets its
// bucket up in the background, while the worker already answers.
func openDedup(o Options) (*dedup.Store, error) {
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return dedup.Open(js, bus.InstanceID(o.Conn), dedup.Options{
		TTL:            o.Config.DedupTTL,
		Memory:         o.Config.DedupMemoryMB << 20,
		Replicas:       o.Config.JetStreamReplicas,
		HandlerTimeout: o.Config.HandlerTimeout,
		Logger:         o.Logger.With("component", "dedup"),
		Registerer:     o.Registerer,
	})
}

// Scenes reads the per-scene totals: the analytics role's store, or the
// bucket opened on first use without it.
func (w *Worker) Scenes() stats.StoreFunc { return w.scenes }

// API is the analytics JSON API, to mount under /api/ on the admin listener.
func (w *Worker) API() http.Handler { return w.api }

// Stop stops taking requests, answers those in hand, then stops the
// analytics role (a leader writes its totals and a snapshot).
func (w *Worker) Stop(ctx context.Context) error {
	var err error
	if w.stopDaily != nil {
		w.stopDaily()
	}
	if w.Late != nil {
		err = w.Late.Stop(ctx)
	}
	if w.Service != nil {
		err = errors.Join(err, w.Service.Stop(ctx))
	}
	if w.Tags != nil {
		err = errors.Join(err, w.Tags.Stop(ctx))
	}
	if w.Analytics != nil {
		err = errors.Join(err, w.Analytics.Stop(ctx))
	}
	w.Rules.Stop()
	if w.owned != nil {
		w.owned.Stop()
	}
	return err
}
