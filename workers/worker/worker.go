// Package worker assembles what a worker process runs on one NATS
// connection: the reply service and the analytics role (record fan-out,
// aggregating consumer, scene metrics). The workers binary and standalone
// mode both use it.
package worker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/workers/analytics"
	"github.com/wxgate/wxgate/workers/dedup"
	"github.com/wxgate/wxgate/workers/reply"
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

// Worker is a running reply service with its analytics role.
type Worker struct {
	Analytics *analytics.Role
	Service   *reply.Service // nil without the replies role
	api       http.Handler
}

// Start starts the analytics role, then the reply service that feeds it.
func Start(o Options) (*Worker, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	role, err := analytics.StartRole(analytics.RoleOptions{
		Conn: o.Conn, Logger: o.Logger.With("component", "analytics"), Registerer: o.Registerer,
		Stream:    StreamOptions(o.Config),
		MaxScenes: o.Config.AnalyticsMaxScenes,
		Consume:   o.Config.HasRole("analytics"),
		Fatal:     o.Health.Fatal,
		GiveUp:    o.GiveUp,
	})
	if err != nil {
		return nil, err
	}
	w := &Worker{Analytics: role, api: analytics.API(role.Store, o.Config.AdminToken)}
	if o.Config.HasRole("analytics") {
		o.Health.Add("analytics", role.Check)
	}
	if !o.Config.HasRole("replies") {
		return w, nil
	}
	var store *dedup.Store
	if o.Config.DedupTTL > 0 {
		if store, err = openDedup(o); err != nil {
			return nil, errors.Join(err, stopRole(role))
		}
	}
	decider := o.Decider
	if decider == nil {
		decider = reply.NewReplier(o.Config.Replies)
	}
	svc, err := reply.Start(reply.Options{
		Conn:           o.Conn,
		Dedup:          store,
		Decider:        decider,
		Logger:         o.Logger.With("component", "worker"),
		Registerer:     o.Registerer,
		HandlerTimeout: o.Config.HandlerTimeout,
		Record:         role.Record,
	})
	if err != nil {
		return nil, errors.Join(err, stopRole(role))
	}
	o.Health.Add("replies", svc.Check)
	w.Service = svc
	return w, nil
}

func stopRole(role *analytics.Role) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return role.Stop(ctx)
}

// openDedup opens the claim-and-reply store shared by every worker.
func openDedup(o Options) (*dedup.Store, error) {
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return dedup.Open(ctx, js, o.Conn.Opts.Name+"/"+rand.Text(), dedup.Options{
		TTL:            o.Config.DedupTTL,
		Replicas:       o.Config.JetStreamReplicas,
		HandlerTimeout: o.Config.HandlerTimeout,
		Logger:         o.Logger.With("component", "dedup"),
		Registerer:     o.Registerer,
	})
}

// StreamOptions are the stream and bucket settings from the configuration.
func StreamOptions(c config.Config) analytics.StreamOptions {
	return analytics.StreamOptions{Replicas: c.JetStreamReplicas, MaxAge: c.AnalyticsRetention}
}

// API is the analytics JSON API, to mount under /api/ on the admin listener.
func (w *Worker) API() http.Handler { return w.api }

// Stop stops taking requests, answers those in hand, then stops the
// analytics role (records queued are published, records in hand applied).
func (w *Worker) Stop(ctx context.Context) error {
	var err error
	if w.Service != nil {
		err = w.Service.Stop(ctx)
	}
	return errors.Join(err, w.Analytics.Stop(ctx))
}
