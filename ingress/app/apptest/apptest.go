// Package apptest starts an ingress app in the test's own process, in the
// way of net/http/httptest: on loopback ports, with a temporary data
// directory, shut down when the test ends.
package apptest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/wxgate/wxgate/ingress/app"
)

// Start runs app.Start(o) with both listeners on 127.0.0.1 at ports of the
// system's choosing and DataDir in a temporary directory; a nil Logger
// discards. No balancer watches a test's app, so the mode's default
// shutdown delay becomes none. The app is shut down at cleanup, and a
// failed shutdown fails the test.
func Start(tb testing.TB, o app.Options) *app.App {
	tb.Helper()
	o.Config.HTTPAddr, o.Config.AdminAddr, o.Config.DataDir = "127.0.0.1:0", "127.0.0.1:0", tb.TempDir()
	if o.Config.ShutdownDelay < 0 {
		o.Config.ShutdownDelay = 0
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	a, err := app.Start(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
	})
	return a
}
