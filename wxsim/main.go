// Command wxsim plays WeChat's side against a wxgate URL: it signs (and in
// safe mode encrypts) callbacks, prints the decrypted replies, resends as
// WeChat's retries would, and generates load.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxgate/wxgate/wxsim/sim"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sim.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}
