package wechatapitest

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/serve"
)

// Fake credentials, for the quick start: the fake accepts these unless
// -appid and -secret (or WECHAT_APPID and WECHAT_APPSECRET) say otherwise.
const (
	FakeAppID  = "wx_fake_appid"
	FakeSecret = "fake-appsecret"
)

// Main is "wxsim api": it serves the fake until ctx is done.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wxsim api", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o Options
	addr := fs.String("addr", "127.0.0.1:8090", "where to listen; point WECHAT_API_BASE at http://<addr>")
	fs.StringVar(&o.AppID, "appid", cmp.Or(os.Getenv("WECHAT_APPID"), FakeAppID), "the AppID stable_token accepts (default $WECHAT_APPID, else "+FakeAppID+")")
	// The flag's default is empty and read from the environment after
	// parsing: -h prints defaults, and an AppSecret must not be printed.
	fs.StringVar(&o.Secret, "secret", "", "the AppSecret stable_token accepts (from $WECHAT_APPSECRET, else "+FakeSecret+")")
	apps := fs.String("apps", "", "more apps, each with its own secret, tokens, codes, windows and counters: appid:secret,appid2:secret2")
	fs.DurationVar(&o.TokenTTL, "token-ttl", 2*time.Hour, "an access_token's lifetime (WeChat: 2h); whole seconds, at least 2s")
	fs.DurationVar(&o.Overlap, "overlap", 0, "how long old and new tokens are both valid (default 5m, or half -token-ttl when shorter)")
	fs.IntVar(&o.PermanentCap, "permanent-cap", 100000, "permanent codes allowed before 45029")
	windows := fs.Bool("windows", true, "enforce customer-service windows and counts (45015, 45047); false accepts every well-formed send")
	fs.DurationVar(&o.MessageWindow, "message-window", 48*time.Hour, "how long a message from the person allows customer-service messages")
	fs.IntVar(&o.MessageQuota, "message-quota", 5, "how many a message from the person allows (at least 1)")
	fs.DurationVar(&o.EventWindow, "event-window", time.Minute, "how long a subscribe, SCAN or menu click allows customer-service messages")
	fs.IntVar(&o.EventQuota, "event-quota", 3, "how many a subscribe, SCAN or menu click allows (at least 1)")
	healthcheck := fs.Bool("healthcheck", false, "probe a running fake at -addr and exit 0 if it answers (for container healthchecks)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *healthcheck {
		return admin.Healthcheck(*addr, stderr)
	}
	o.Secret = secretOr(o.Secret, os.Getenv("WECHAT_APPSECRET"))
	var err error
	if o.Apps, err = ParsePairs(*apps, ":"); err != nil {
		fmt.Fprintln(stderr, "wxsim api: -apps:", err)
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "wechat-api")
	o.Logger = logger
	o.NoWindows = !*windows
	s := New(o)
	srv, err := serve.Start("wechat-api", &http.Server{Addr: *addr, Handler: s, ReadHeaderTimeout: 5 * time.Second}, logger)
	if err != nil {
		fmt.Fprintln(stderr, "wxsim api:", err)
		return 1
	}
	logger.Info("fake WeChat API ready", "appids", s.AppIDs(), "token_ttl", s.o.TokenTTL.String(), "overlap", s.o.Overlap.String(),
		"windows", *windows, "message_window", s.o.MessageWindow.String(), "message_quota", s.o.MessageQuota,
		"event_window", s.o.EventWindow.String(), "event_quota", s.o.EventQuota)
	fmt.Fprintf(stdout, "fake WeChat API on http://%s (WECHAT_API_BASE); control: POST /wxsim/fault, /wxsim/interaction, /wxsim/datacube, /wxsim/autoreply; GET /wxsim/calls\n", srv.Addr())
	select {
	case <-ctx.Done():
	case err := <-srv.Done():
		if err != nil {
			fmt.Fprintln(stderr, "wxsim api:", err)
			return 1
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintln(stderr, "wxsim api:", err)
		return 1
	}
	return 0
}

// ParsePairs reads "key<sep>value,key2<sep>value2" (-apps: appid:secret).
// The error never echoes a value: they are secrets.
func ParsePairs(v, sep string) (map[string]string, error) {
	if v == "" {
		return nil, nil
	}
	m := map[string]string{}
	for i, part := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), sep)
		switch {
		case !ok || k == "" || val == "":
			return nil, fmt.Errorf("item %d: want key%svalue", i+1, sep)
		case m[k] != "":
			return nil, fmt.Errorf("%q given twice", k)
		}
		m[k] = val
	}
	return m, nil
}

// secretOr is the AppSecret the fake accepts: the flag's, else the
// environment's, else the quick start's.
func secretOr(flagValue, env string) string { return cmp.Or(flagValue, env, FakeSecret) }
