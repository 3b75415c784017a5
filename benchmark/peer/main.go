// Command peer is the side-by-side benchmark's peer configuration: the
// callback server a Go team would write with silenceper/wechat (v2), the
// most used Go SDK for Official Accounts, answering the benchmark's mix with
// the same replies as wxgate's built-in texts. It is its own module, so
// wxgate's go.mod does not carry the SDK's dependencies.
//
//	go run . -addr 127.0.0.1:18080 -token bench-token
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	wechat "github.com/silenceper/wechat/v2"
	"github.com/silenceper/wechat/v2/cache"
	offconfig "github.com/silenceper/wechat/v2/officialaccount/config"
	"github.com/silenceper/wechat/v2/officialaccount/message"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	token := flag.String("token", "", "the WeChat Token")
	flag.Parse()
	if *token == "" {
		log.Fatal("peer: -token is required")
	}
	oa := wechat.NewWechat().GetOfficialAccount(&offconfig.Config{
		AppID: "wx_bench", AppSecret: "unused", Token: *token, Cache: cache.NewMemory(),
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/wechat", func(w http.ResponseWriter, r *http.Request) {
		srv := oa.GetServer(r, w)
		srv.SetMessageHandler(reply)
		if err := srv.Serve(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := srv.Send(); err != nil {
			log.Printf("send: %v", err)
		}
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	// The benchmark waits for this line.
	fmt.Fprintf(os.Stderr, "peer listening on %s\n", ln.Addr())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 2 * time.Second, ReadTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	go func() {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// reply answers as wxgate's built-in replier does.
func reply(msg *message.MixMessage) *message.Reply {
	text := func(s string) *message.Reply {
		return &message.Reply{MsgType: message.MsgTypeText, MsgData: message.NewText(s)}
	}
	switch msg.MsgType {
	case message.MsgTypeText:
		return text(msg.Content)
	case message.MsgTypeVoice:
		if strings.TrimSpace(msg.Recognition) == "" {
			return text("未识别")
		}
		return text(msg.Recognition)
	case message.MsgTypeEvent:
		switch msg.Event {
		case message.EventSubscribe:
			if scene, ok := strings.CutPrefix(msg.EventKey, "qrscene_"); ok && scene != "" {
				return text("感谢您的关注！场景值:" + scene)
			}
			return text("感谢您的关注！")
		case message.EventScan:
			return text("您扫描的场景值为：" + msg.EventKey)
		}
		return nil
	}
	return text("您的消息已收到。")
}
