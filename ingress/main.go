// Command ingress is wxgate's WeChat-facing HTTP server. With -standalone it
// also runs an embedded NATS server and the workers: the one-process setup.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gin-gonic/gin"

	"github.com/wxgate/wxgate/ingress/app"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/logging"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
	standalone := fs.Bool("standalone", false, "run an embedded NATS server (JetStream under DATA_DIR) and the workers in this process")
	healthcheck := fs.Bool("healthcheck", false, "probe a running ingress's /readyz on ADMIN_ADDR and exit 0 if ready (for container healthchecks)")
	noBus := fs.Bool("no-bus", false, "benchmarks only: compute replies in process, with no NATS and no analytics (the floor the bus is measured against)")
	natsListen := fs.String("nats-listen", envOr("NATS_LISTEN", "127.0.0.1:4222"), "standalone: client address of the embedded NATS server; empty for in-process only")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}

	cfg := config.Defaults()
	if err := cfg.FromEnv(os.LookupEnv); err != nil {
		fmt.Fprintln(os.Stderr, "ingress:", err)
		return 2
	}
	if *healthcheck {
		return admin.Healthcheck(cfg.AdminAddr, os.Stderr)
	}
	logger, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingress:", err)
		return 2
	}
	gin.SetMode(gin.ReleaseMode)

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := app.Run(ctx, app.Options{Config: cfg, Standalone: *standalone, NATSListen: *natsListen, NoBus: *noBus, Logger: logger}); err != nil {
		logger.Error("ingress exited with error", "err", err)
		return 1
	}
	return 0
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}
