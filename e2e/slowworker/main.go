// Command slowworker is the workers binary with a handler slower than the
// ingress's deadline, for the end-to-end tests of late replies: a text
// starting with "slow", and a scan of a scene starting with "slow", are
// answered after SLOW_REPLY_DELAY (default 2s); everything else as the
// built-in replies answer it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/logging"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
	"github.com/wxgate/wxgate/workers/worker"
)

type slow struct {
	*reply.Replier
	delay time.Duration
}

func (s slow) Decide(ctx context.Context, _ string, m *wechat.Message, _ []byte) (*wechat.Reply, error) {
	scene, _, _ := m.SceneCandidate()
	if strings.HasPrefix(m.Content, "slow") || strings.HasPrefix(scene, "slow") {
		select {
		case <-time.After(s.delay): // the slowness under test
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Reply(m), nil
}

func main() {
	cfg := config.Defaults()
	cfg.AdminAddr = ":8082"
	if err := cfg.FromEnv(os.LookupEnv); err != nil {
		fmt.Fprintln(os.Stderr, "slowworker:", err)
		os.Exit(2)
	}
	delay := 2 * time.Second
	if v := os.Getenv("SLOW_REPLY_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "slowworker: SLOW_REPLY_DELAY:", err)
			os.Exit(2)
		}
		delay = d
	}
	logger, err := logging.New(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "slowworker:", err)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	d := slow{Replier: reply.NewReplier(cfg.Replies), delay: delay}
	if err := worker.Run(ctx, worker.RunOptions{Config: cfg, Logger: logger, Decider: d}); err != nil {
		logger.Error("slowworker exited with error", "err", err)
		os.Exit(1)
	}
}
