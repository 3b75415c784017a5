// Package app assembles the ingress process: the WeChat-facing listener,
// the admin listener and the NATS connection, and in standalone mode an
// embedded NATS server and the workers too. It does not touch signals, so
// it runs the same in main and in tests.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/wxgate/wxgate/ingress/gateway"
	"github.com/wxgate/wxgate/ingress/intake"
	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/console"
	"github.com/wxgate/wxgate/shared/health"
	"github.com/wxgate/wxgate/shared/reconcile"
	"github.com/wxgate/wxgate/shared/rules"
	"github.com/wxgate/wxgate/shared/serve"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
	"github.com/wxgate/wxgate/workers/worker"
)

// DevToken is the token standalone mode uses when WECHAT_TOKEN is unset.
const DevToken = "wxgate-dev-token"

// ShutdownGrace bounds how long in-flight requests may take at shutdown,
// after the shutdown delay.
const ShutdownGrace = 10 * time.Second

// DefaultShutdownDelay is the distributed ingress's SHUTDOWN_DELAY: longer
// than load balancers' usual readiness probe interval. Standalone mode,
// which has no balancer in front, uses none.
const DefaultShutdownDelay = 5 * time.Second

// Options configure the process.
type Options struct {
	Config config.Config
	// Standalone runs an embedded NATS server (JetStream under
	// Config.DataDir) and the workers in this process.
	Standalone bool
	// NATSListen is where the embedded server accepts clients in standalone
	// mode ("127.0.0.1:4222"); empty for in-process connections only.
	NATSListen string
	// NoBus answers with the workers' reply logic in this process and no
	// NATS at all: the floor the side-by-side benchmark measures against.
	NoBus  bool
	Logger *slog.Logger
}

// App is a started ingress.
type App struct {
	logger   *slog.Logger
	delay    time.Duration // SHUTDOWN_DELAY, resolved
	draining atomic.Bool
	health   *health.Checker
	http     *serve.Server
	admin    *serve.Server
	nc       *nats.Conn
	intake   *intake.Intake
	// accounts are the accounts this process serves, kept current from
	// wxgate_accounts: one registry, for every part of the process.
	accounts *accounts.Registry
	rules    *rules.Set // the distributed ingress's, for /api/rules
	*standalone
}

// Start brings the process up. On error everything already started is
// stopped again.
func Start(o Options) (_ *App, err error) {
	a := &App{logger: o.Logger, delay: shutdownDelay(o), standalone: &standalone{}}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
			defer cancel()
			_ = a.Shutdown(ctx)
		}
	}()
	cfg, err := checkConfig(o)
	if err != nil {
		return nil, err
	}
	reg := admin.NewRegistry()
	if a.health, err = health.New(reg); err != nil {
		return nil, err
	}
	a.health.Add("ingress", func() error {
		if a.draining.Load() {
			return errors.New("shutting down")
		}
		return nil
	})
	in, err := a.startBus(o, cfg, reg)
	if err != nil {
		return nil, err
	}
	if err := a.startWeChat(o, cfg, in, reg); err != nil {
		return nil, err
	}
	if a.admin, err = a.startAdmin(o, cfg, reg); err != nil {
		return nil, err
	}
	a.logger.Info("ingress started", "standalone", o.Standalone, "mode", cfg.EffectiveMode(), "reply_timeout", cfg.ReplyTimeout.String())
	return a, nil
}

// shutdownDelay is SHUTDOWN_DELAY, or its default: none where no balancer
// watches the process (standalone, no bus).
func shutdownDelay(o Options) time.Duration {
	switch {
	case o.Config.ShutdownDelay >= 0:
		return o.Config.ShutdownDelay
	case o.Standalone || o.NoBus:
		return 0
	default:
		return DefaultShutdownDelay
	}
}

// checkConfig refuses a configuration the ingress cannot serve WeChat
// with; standalone without WECHAT_TOKEN gets the development token, on
// loopback only.
func checkConfig(o Options) (config.Config, error) {
	cfg := o.Config
	if o.Standalone && cfg.Token == "" {
		cfg.Token = DevToken
		// Published in the README, so only this host may use it.
		cfg.HTTPAddr, cfg.AdminAddr = onLoopback(cfg.HTTPAddr), onLoopback(cfg.AdminAddr)
		// A dev token is no secret; printing it is what makes it usable.
		o.Logger.Warn("WECHAT_TOKEN is not set: standalone mode uses a development token and listens on loopback only; set WECHAT_TOKEN before connecting a real account",
			"token", DevToken, "http_addr", cfg.HTTPAddr, "admin_addr", cfg.AdminAddr)
	}
	if err := errors.Join(checkExposure(cfg), cfg.ValidateIngress()); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	for name, key := range map[string]string{"WECHAT_ENCODING_AES_KEY": cfg.EncodingAESKey, "WECHAT_ENCODING_AES_KEY_PREVIOUS": cfg.PreviousEncodingAESKey} {
		if _, err := wechat.NewCipher(key, cfg.AppID); key != "" && err != nil {
			return cfg, fmt.Errorf("%s: %w", name, err)
		}
	}
	return cfg, nil
}

// startBus connects to NATS (in standalone mode, to the embedded server it
// starts with the workers) and starts the intake, which the gateway stores
// events with; with NoBus there is neither, and no intake.
func (a *App) startBus(o Options, cfg config.Config, reg prometheus.Registerer) (gateway.Intake, error) {
	logger := a.logger
	url, connOpts := cfg.NATSServers(), []nats.Option(nil)
	if o.Standalone {
		if err := a.startStandalone(o, cfg, reg); err != nil {
			return nil, err
		}
		url, connOpts = "", a.embedded.ConnectOptions()
	}
	if o.NoBus {
		logger.Warn("no-bus mode: replies computed in process, no NATS, no analytics (for benchmarks)")
		var err error
		a.accounts, err = worker.StartAccounts(cfg, nil, logger) // the default alone
		return nil, err
	}
	var err error
	if a.nc, err = bus.Connect(url, "wxgate-ingress", logger.With("component", "nats"), a.health.Fatal, connOpts...); err != nil {
		return nil, err
	}
	a.health.Add("nats", func() error { return bus.Ready(a.nc) })
	if a.accounts == nil { // standalone made it for its workers
		if a.accounts, err = worker.StartAccounts(cfg, a.nc, logger); err != nil {
			return nil, err
		}
		a.health.Add("accounts", a.accounts.Check)
	}
	if a.intake, err = intake.New(intake.Options{
		Conn: a.nc, Streams: cfg.Streams(), Buffer: cfg.IntakeBuffer, Accounts: a.accounts, MaxBody: cfg.MaxBodyBytes,
		Logger: logger.With("component", "intake"), Registerer: reg,
	}); err != nil {
		return nil, err
	}
	a.health.Add("intake", a.intake.Check)
	return a.intake, nil
}

// startWeChat starts the WeChat-facing listener: the gateway, asking the
// workers over the bus (standalone: its own workers, in process), or
// (NoBus) answering with their logic in process.
func (a *App) startWeChat(o Options, cfg config.Config, in gateway.Intake, reg prometheus.Registerer) error {
	var local func(string, []byte) ([]byte, error)
	var ask func(*nats.Msg, time.Duration) (*nats.Msg, error)
	switch {
	case o.NoBus:
		local = reply.NewHandler(reply.NewReplier(cfg.Replies), nil).Handle
	case a.workers != nil:
		// Standalone: the workers are in this process; the event still
		// goes to the stream first (the intake).
		ask = a.workers.Service.Ask
	}
	gw, err := gateway.New(gateway.Options{
		Accounts:      a.accounts,
		Conn:          a.nc,
		Local:         local,
		Ask:           ask,
		Intake:        in,
		ReplyTimeout:  cfg.ReplyTimeout,
		TimestampSkew: cfg.TimestampSkew,
		MaxBodyBytes:  cfg.MaxBodyBytes,
		Logger:        a.logger.With("component", "gateway"),
		Registerer:    reg,
	})
	if err != nil {
		return err
	}
	refused := promauto.With(reg).NewCounter(prometheus.CounterOpts{
		Name: "wxgate_ingress_connections_refused_total",
		Help: "Connections answered 503 and closed because MAX_CONNECTIONS were open.",
	})
	if a.http, err = serve.Start("http", WeChatServer(cfg.HTTPAddr, gw.Handler(), cfg.ReplyTimeout), a.logger,
		serve.MaxConns(cfg.MaxConnections, refused.Inc)); err != nil {
		return err
	}
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wxgate_ingress_open_connections",
		Help: "Connections open on the WeChat listener (MAX_CONNECTIONS is the cap).",
	}, func() float64 { return float64(a.http.OpenConns()) })
	return nil
}

// startAdmin starts the admin listener: metrics and health, and with a bus
// the totals API, the QR-code API and /ui/ beside it.
func (a *App) startAdmin(o Options, cfg config.Config, reg *prometheus.Registry) (*serve.Server, error) {
	logger := a.logger
	mux := admin.NewMux(admin.Options{Gatherer: reg, Ready: a.health.Ready, Pprof: cfg.Pprof, Token: cfg.AdminToken, Logger: logger})
	if !o.NoBus {
		// The totals API, and the QR-code API and /ui/ beside it. One
		// client of WeChat's API in the process: standalone, the
		// workers' (their late replies use it too), their QR-code
		// service, API and reconciliation.
		if w := a.workers; w != nil {
			mux.Handle("/api/", w.API())
			mux.Handle(reconcile.Route, w.Reconcile.Handler(cfg.AdminToken))
			if _, err := console.Mount(mux, console.MountOptions{Conn: a.nc, Config: cfg, Scenes: w.Scenes(), WeChat: w.WeChat, QR: w.QR, Logger: logger}); err != nil {
				return nil, err
			}
			worker.MountRules(mux, w.Rules, w.WeChat, w.QR, cfg.AdminToken)
		} else {
			wx, err := worker.NewWeChat(cfg, a.accounts, a.nc, logger, reg)
			if err != nil {
				return nil, err
			}
			scenes := stats.OpenOnUse(a.nc)
			rec, err := worker.NewReconciler(cfg, a.nc, wx, scenes, logger)
			if err != nil {
				return nil, err
			}
			mux.Handle(reconcile.Route, rec.Handler(cfg.AdminToken))
			qr, err := console.Mount(mux, console.MountOptions{Conn: a.nc, Config: cfg, Scenes: scenes, WeChat: wx, Logger: logger})
			if err != nil {
				return nil, err
			}
			api, err := stats.API(stats.APIOptions{Store: scenes, Token: cfg.AdminToken, Zone: cfg.AnalyticsZone, Labels: qr, Known: a.accounts.Has,
				Logger: logger.With("component", "stats")})
			if err != nil {
				return nil, err
			}
			mux.Handle("/api/", api)
			if a.rules, err = worker.StartRules(cfg, a.nc, logger); err != nil {
				return nil, err
			}
			worker.MountRules(mux, a.rules, wx, qr, cfg.AdminToken)
		}
		worker.MountAccounts(mux, a.accounts, cfg.AdminToken)
	}
	srv, err := serve.Start("admin", admin.Server(cfg.AdminAddr, mux), logger)
	if err != nil {
		return nil, err
	}
	admin.WarnIfOpen(logger, cfg.AdminAddr, cfg.AdminToken)
	return srv, nil
}

// publicTokens are tokens anyone can read (the README, .env.example): an
// account using one can be sent anything by anyone.
var publicTokens = []string{DevToken, "change-me"}

// checkExposure refuses a published token on a listener other hosts can
// reach: a non-loopback address needs a real WECHAT_TOKEN.
func checkExposure(cfg config.Config) error {
	if !slices.Contains(publicTokens, cfg.Token) {
		return nil
	}
	for name, addr := range map[string]string{"HTTP_ADDR": cfg.HTTPAddr, "ADMIN_ADDR": cfg.AdminAddr} {
		if !admin.IsLoopback(addr) {
			return fmt.Errorf("%s=%s is not a loopback address and WECHAT_TOKEN is a published development token: set WECHAT_TOKEN to the Token of the WeChat console, or listen on 127.0.0.1", name, addr)
		}
	}
	return nil
}

// onLoopback binds an address with no host (":8080", all interfaces) to
// 127.0.0.1 instead; an explicit host is kept (and checked by
// checkExposure).
func onLoopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// WeChatServer is the WeChat-facing http.Server: bounded reads against
// slow clients, and a write timeout that leaves room for the reply wait.
func WeChatServer(addr string, h http.Handler, replyTimeout time.Duration) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 2 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      replyTimeout + 5*time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
}

// HTTPAddr and AdminAddr are the bound listener addresses.
func (a *App) HTTPAddr() string  { return a.http.Addr() }
func (a *App) AdminAddr() string { return a.admin.Addr() }

// Done yields an error if a listener stopped by itself, or a part of the
// process was lost for good (a NATS connection closed, a consumer that
// cannot be rebuilt): the process should then exit non-zero.
func (a *App) Done() <-chan error {
	errc := make(chan error, 1)
	go func() {
		select {
		case err := <-a.http.Done():
			errc <- fmt.Errorf("http listener: %w", err)
		case err := <-a.admin.Done():
			errc <- fmt.Errorf("admin listener: %w", err)
		case err := <-a.health.Fatals():
			errc <- err
		}
	}()
	return errc
}

// Ready is what /readyz answers: nil, or every part that does not work.
func (a *App) Ready() error { return a.health.Ready() }

// Shutdown stops taking requests, lets in-flight ones finish (their replies
// still arrive over NATS), then stops the workers and drains NATS.
func (a *App) Shutdown(ctx context.Context) error {
	var errs []error
	a.drain()
	if a.http != nil {
		errs = append(errs, a.http.Shutdown(ctx))
	}
	if a.intake != nil {
		// Held events go out before the connection does.
		errs = append(errs, a.intake.Close(ctx))
	}
	errs = append(errs, a.stopWorkers(ctx))
	if a.accounts != nil {
		a.accounts.Stop()
	}
	if a.rules != nil {
		a.rules.Stop()
	}
	errs = append(errs, bus.Drain(ctx, a.nc), bus.Drain(ctx, a.workerNC))
	if a.admin != nil {
		errs = append(errs, a.admin.Shutdown(ctx))
	}
	a.stopServer()
	err := errors.Join(errs...)
	if err != nil {
		a.logger.Error("shutdown", "err", err)
	} else {
		a.logger.Info("ingress stopped")
	}
	return err
}

// drain keeps serving for the shutdown delay while /readyz says 503 and
// every response closes its connection: balancers move traffic elsewhere
// before the listener closes, and no request meets a closed socket.
func (a *App) drain() {
	if a.delay <= 0 || a.http == nil || a.draining.Swap(true) {
		return
	}
	a.http.CloseKeepAlives()
	a.logger.Info("draining: not ready, still serving", "delay", a.delay.String())
	time.Sleep(a.delay) // the delay is the point: balancers need time to notice
}

// Run starts the ingress and serves until ctx is cancelled or a listener
// fails, then shuts down within ShutdownGrace.
func Run(ctx context.Context, o Options) error {
	a, err := Start(o)
	if err != nil {
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
		o.Logger.Info("shutting down")
	case runErr = <-a.Done():
		o.Logger.Error("stopping: the process cannot serve", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), a.delay+ShutdownGrace)
	defer cancel()
	return errors.Join(runErr, a.Shutdown(sctx))
}
