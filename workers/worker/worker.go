// Package worker assembles what a worker process runs on one NATS
// connection: the reply service and the analytics role (record fan-out,
// aggregating consumer, scene metrics). The workers binary and standalone
// mode both use it.
package worker

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/analytics"
	"github.com/wxgate/wxgate/workers/reply"
)

// Options wire a Worker.
type Options struct {
	Conn       *nats.Conn
	Config     config.Config
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Worker is a running reply service with its analytics role.
type Worker struct {
	Analytics *analytics.Role
	Service   *reply.Service // nil without the replies role
	api       http.Handler
}

// Start starts the analytics role, then the reply service that feeds it.
func Start(o Options) (*Worker, error) {
	role, err := analytics.StartRole(analytics.RoleOptions{
		Conn: o.Conn, Logger: o.Logger.With("component", "analytics"), Registerer: o.Registerer,
		Stream:    StreamOptions(o.Config),
		MaxScenes: o.Config.AnalyticsMaxScenes,
		Consume:   o.Config.HasRole("analytics"),
	})
	if err != nil {
		return nil, err
	}
	w := &Worker{Analytics: role, api: analytics.API(role.Store, o.Config.AdminToken)}
	if !o.Config.HasRole("replies") {
		return w, nil
	}
	svc, err := reply.Start(reply.Options{
		Conn:       o.Conn,
		Replier:    reply.NewReplier(o.Config.Replies),
		Logger:     o.Logger.With("component", "worker"),
		Registerer: o.Registerer,
		Observe: func(m *wechat.Message, key string, received time.Time) {
			if r, ok := analytics.RecordFrom(m, key, received); ok {
				role.Publish(r)
			}
		},
	})
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return nil, errors.Join(err, role.Stop(ctx))
	}
	w.Service = svc
	return w, nil
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
		err = w.Service.Stop()
	}
	return errors.Join(err, w.Analytics.Stop(ctx))
}
