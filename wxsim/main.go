// Command wxsim plays WeChat's side against a wxgate URL: it signs (and in
// safe mode encrypts) callbacks, prints the decrypted replies, resends as
// WeChat's retries would, and generates load. "wxsim api" is a fake of
// WeChat's API (access_token, QR codes, customer-service messages).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxgate/wxgate/shared/wechatapi/wechatapitest"
	"github.com/wxgate/wxgate/wxsim/sim"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var code int
	if len(os.Args) > 1 && os.Args[1] == "api" {
		code = wechatapitest.Main(ctx, os.Args[2:], os.Stdout, os.Stderr)
	} else {
		code = sim.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	cancel()
	os.Exit(code)
}
