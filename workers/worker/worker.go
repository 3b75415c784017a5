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
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/reconcile"
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
	Conn       *nats.Conn
	Config     config.Config
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Health gets the worker's parts ("replies", "analytics") for
	// readiness, and a part lost for good as fatal.
	Health *health.Checker
	// Decider decides replies; nil uses the built-in texts (Config.Replies).
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
	// Reconcile serves /api/reconciliation; with the analytics role it
	// completes the rows every day too.
	Reconcile *reconcile.Reconciler
	stopDaily func()
	api       http.Handler
	scenes    stats.StoreFunc
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
	}()
	store := stats.OpenOnUse(o.Conn)
	if o.Config.HasRole("analytics") {
		if w.Analytics, err = analytics.StartRole(analytics.RoleOptions{
			Conn: o.Conn, Logger: o.Logger.With("component", "analytics"), Registerer: o.Registerer,
			Streams:   o.Config.Streams(),
			MaxScenes: o.Config.AnalyticsMaxScenes,
			Fatal:     o.Health.Fatal,
			GiveUp:    o.GiveUp,
		}); err != nil {
			return nil, err
		}
		o.Health.Add("analytics", w.Analytics.Check)
		store = w.Analytics.Store
	}
	w.api, w.scenes = stats.API(store, o.Config.AdminToken), store
	if w.WeChat, err = NewWeChat(o.Config, o.Conn, o.Logger, o.Registerer); err != nil {
		return nil, err
	}
	if w.Reconcile, err = NewReconciler(o.Config, o.Conn, w.WeChat, o.Logger); err != nil {
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
	decider := o.Decider
	if decider == nil {
		decider = reply.NewReplier(o.Config.Replies)
	}
	// Every worker marks the replies it answers retries with, whatever its
	// own LATE_REPLY: another worker's late sender reads the marks.
	svc, err := reply.Start(reply.Options{
		Conn:           o.Conn,
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
	outcomes := late.NewOutcomes(o.Registerer)
	if lateOn {
		// Late replies are the default account's until they are per account.
		api, err := w.WeChat.For(accounts.DefaultID)
		if err != nil {
			return nil, errors.Join(err, stopService(svc))
		}
		l, err := late.Start(late.Options{
			Conn: o.Conn, API: api, Store: dstore, Reply: svc.Reply,
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
	if w.Tags, err = tags.Start(tags.Options{Conn: o.Conn, WeChat: w.WeChat, Replicas: o.Config.JetStreamReplicas,
		Logger: o.Logger.With("component", "tags"), Registerer: o.Registerer}); err != nil {
		if w.Late != nil {
			err = errors.Join(err, w.Late.Stop(context.Background()))
		}
		return nil, errors.Join(err, stopService(svc))
	}
	if dstore != nil {
		// It needs JetStream, as the replies store does; a worker told to
		// reply without it (DEDUP_TTL=0) is ready without it.
		o.Health.Add("tags", w.Tags.Check)
	}
	return w, nil
}

// NewWeChat makes the process's clients of WeChat's API, for late
// replies and QR codes alike (one token cache per AppID, one metric). The
// accounts are the default's alone until the accounts registry is wired.
func NewWeChat(cfg config.Config, nc *nats.Conn, logger *slog.Logger, reg prometheus.Registerer) (*wechatapi.Clients, error) {
	accts, err := accounts.Start(accounts.Options{Default: accounts.Account{AppID: cfg.AppID, AppSecret: cfg.AppSecret}, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("wechat api: %w", err)
	}
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
func NewReconciler(cfg config.Config, nc *nats.Conn, wx *wechatapi.Clients, logger *slog.Logger) (*reconcile.Reconciler, error) {
	return reconcile.New(reconcile.Options{Conn: nc, Accounts: wx.Accounts(), WeChat: wx, Zone: cfg.AnalyticsZone,
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
	return err
}
