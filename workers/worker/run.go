package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/console"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/reconcile"
	"github.com/wxgate/wxgate/shared/serve"
	"github.com/wxgate/wxgate/workers/reply"
)

// RunOptions configure a worker process.
type RunOptions struct {
	Config config.Config
	Logger *slog.Logger
	// Decider decides replies; nil uses the built-in texts.
	Decider reply.Decider
}

// Run is a worker process: it connects, starts the roles the configuration
// names and the admin listener, and serves until ctx ends or a part is
// lost for good (then it returns the error, for a non-zero exit).
func Run(ctx context.Context, o RunOptions) error {
	cfg, logger := o.Config, o.Logger
	reg := admin.NewRegistry()
	hc, err := health.New(reg)
	if err != nil {
		return err
	}
	nc, err := bus.Connect(cfg.NATSServers(), "wxgate-worker", logger.With("component", "nats"), hc.Fatal)
	if err != nil {
		return err
	}
	hc.Add("nats", func() error { return bus.Ready(nc) })
	accts, err := StartAccounts(cfg, nc, logger)
	if err != nil {
		nc.Close()
		return err
	}
	// Not part of the workers' readiness: their replies need no account
	// (the Decider is told the request's), and answer with JetStream away.
	defer accts.Stop()
	w, err := Start(Options{Conn: nc, Config: cfg, Accounts: accts, Logger: logger, Registerer: reg, Health: hc, Decider: o.Decider})
	if err != nil {
		nc.Close()
		return err
	}
	mux := admin.NewMux(admin.Options{Gatherer: reg, Ready: hc.Ready, Pprof: cfg.Pprof, Token: cfg.AdminToken, Logger: logger})
	mux.Handle("/api/", w.API())
	MountAccounts(mux, accts, cfg.AdminToken)
	MountRules(mux, w.Rules, w.WeChat, w.QR, cfg.AdminToken)
	mux.Handle(reconcile.Route, w.Reconcile.Handler(cfg.AdminToken))
	if _, err := console.Mount(mux, console.MountOptions{Conn: nc, Config: cfg, Scenes: w.Scenes(), WeChat: w.WeChat, QR: w.QR, Logger: logger}); err != nil {
		nc.Close()
		return err
	}
	adm, err := serve.Start("admin", admin.Server(cfg.AdminAddr, mux), logger)
	if err != nil {
		nc.Close()
		return err
	}
	admin.WarnIfOpen(logger, cfg.AdminAddr, cfg.AdminToken)
	if w.Service != nil {
		logger.Info("worker started", "roles", cfg.WorkerRoles, "service", bus.ServiceName, "id", w.Service.ID(), "queue_group", bus.QueueGroup)
	} else {
		logger.Info("worker started", "roles", cfg.WorkerRoles)
	}

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case runErr = <-adm.Done():
	case runErr = <-hc.Fatals():
		// Alive but deaf helps nobody: exit non-zero so that the
		// orchestrator starts a fresh process.
		logger.Error("a part of the worker is lost for good; exiting", "err", runErr)
	}
	sctx, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	// Stop taking requests, answer the ones in hand, flush, then go.
	return errors.Join(runErr, w.Stop(sctx), bus.Drain(sctx, nc), adm.Shutdown(sctx))
}
