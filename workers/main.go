// Command workers serves wxgate's msg.> and event.> requests from NATS in a
// queue group, sends the replies WeChat was answered without, and applies
// the event stream to the per-scene totals: run as many as the load needs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/logging"
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
	if err := worker.Run(ctx, worker.RunOptions{Config: cfg, Logger: logger}); err != nil {
		logger.Error("workers exited with error", "err", err)
		return 1
	}
	return 0
}
