package app

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/workers/worker"
)

// standalone is what standalone mode adds to the ingress: the embedded NATS
// server and the workers, on their own connection.
type standalone struct {
	embedded *bus.Embedded
	workerNC *nats.Conn
	workers  *worker.Worker
}

// TokenFile is where standalone mode writes the embedded NATS server's
// generated token (in DATA_DIR, readable by its owner only), for tools and
// extra workers that connect to NATS_LISTEN.
const TokenFile = "nats.token"

func (a *App) startStandalone(o Options, cfg config.Config, reg prometheus.Registerer) (err error) {
	logger := a.logger
	eo := bus.EmbeddedOptions{
		Listen:   o.NATSListen,
		StoreDir: cfg.DataDir, // the server adds its own jetstream/ below
		Name:     "wxgate-standalone",
		Logger:   logger.With("component", "nats-server"),
	}
	// Credentials from NATS_URL when it carries them; otherwise the server
	// makes a token, so the listener is never open to every local user.
	eo.Token, eo.User, eo.Password = credentials(cfg.NATSServers())
	if a.embedded, err = bus.RunEmbedded(eo); err != nil {
		return err
	}
	if o.NATSListen != "" {
		attrs := []any{"url", a.embedded.ClientURL()}
		if eo.Token == "" && eo.User == "" {
			path := filepath.Join(cfg.DataDir, TokenFile)
			if err := writeSecret(path, a.embedded.Token+"\n"); err != nil {
				return fmt.Errorf("embedded nats token: %w", err)
			}
			attrs = append(attrs, "token_file", path)
		}
		logger.Info("embedded nats listening; clients need its credentials", attrs...)
	}
	a.health.Add("nats-server", func() error {
		if !a.embedded.Running() || !a.embedded.JetStreamEnabled() {
			return errors.New("embedded server without JetStream")
		}
		return nil
	})
	if a.workerNC, err = bus.Connect("", "wxgate-standalone-worker", logger.With("component", "worker-nats"), a.health.Fatal, a.embedded.ConnectOptions()...); err != nil {
		return err
	}
	a.health.Add("worker-nats", func() error { return bus.Ready(a.workerNC) })
	if a.accounts, err = worker.StartAccounts(cfg, a.workerNC, logger); err != nil {
		return err
	}
	a.health.Add("accounts", a.accounts.Check)
	wcfg := cfg
	wcfg.WorkerRoles = []string{"replies", "analytics"} // one process does it all
	if a.workers, err = worker.Start(worker.Options{Conn: a.workerNC, Config: wcfg, Accounts: a.accounts, Logger: logger, Registerer: reg, Health: a.health}); err != nil {
		return err
	}
	// JetStream is in this process: the analytics consumer starts at
	// once, so the scene metrics exist from the first scrape.
	// The bound covers the exporter's first read of every scene's totals,
	// which may take up to two minutes on a large bucket.
	select {
	case <-a.workers.Analytics.Ready():
	case <-time.After(150 * time.Second):
		return errors.New("standalone: analytics did not start within 150s")
	}
	return nil
}

// writeSecret writes a file only its owner can read, whatever mode a file
// already there had: into a temporary file made 0600, renamed over it.
func writeSecret(path, content string) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".nats.token-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// credentials reads a token, or a user and password, from the first URL of
// NATS_URL.
func credentials(servers string) (token, user, password string) {
	first, _, _ := strings.Cut(servers, ",")
	u, err := url.Parse(first)
	if err != nil || u.User == nil {
		return "", "", ""
	}
	if p, ok := u.User.Password(); ok {
		return "", u.User.Username(), p
	}
	return u.User.Username(), "", ""
}

func (s *standalone) stopWorkers(ctx context.Context) error {
	if s.workers == nil {
		return nil
	}
	return s.workers.Stop(ctx)
}

func (s *standalone) stopServer() {
	if s.embedded != nil {
		s.embedded.Close()
	}
}
