// Command workers serves wxgate's msg.> and event.> requests from NATS in a
// queue group, fans scene scans out to JetStream and keeps the per-scene
// totals: run as many as the load needs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/logging"
	"github.com/wxgate/wxgate/shared/serve"
	"github.com/wxgate/wxgate/workers/console"
	"github.com/wxgate/wxgate/workers/worker"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("workers", flag.ContinueOnError)
	healthcheck := fs.Bool("healthcheck", false, "probe a running worker's /readyz on ADMIN_ADDR and exit 0 if ready (for container healthchecks)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	cfg := config.Defaults()
	cfg.AdminAddr = ":8082"
	if err := cfg.FromEnv(os.LookupEnv); err != nil {
		fmt.Fprintln(os.Stderr, "workers:", err)
		return 2
	}
	if *healthcheck {
		return admin.Healthcheck(cfg.AdminAddr, os.Stderr)
	}
	logger, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workers:", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := serveWorkers(ctx, cfg, logger); err != nil {
		logger.Error("workers exited with error", "err", err)
		return 1
	}
	return 0
}

func serveWorkers(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
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
	w, err := worker.Start(worker.Options{Conn: nc, Config: cfg, Logger: logger, Registerer: reg, Health: hc})
	if err != nil {
		nc.Close()
		return err
	}
	mux := admin.NewMux(admin.Options{Gatherer: reg, Ready: hc.Ready, Pprof: cfg.Pprof, Token: cfg.AdminToken, Logger: logger})
	mux.Handle("/api/", w.API())
	if _, err := console.Mount(mux, console.MountOptions{Conn: nc, Config: cfg, Scenes: w.Scenes(), Logger: logger, Registerer: reg}); err != nil {
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
