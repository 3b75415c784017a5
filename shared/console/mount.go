package console

import (
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/qrcodes"
	"github.com/wxgate/wxgate/shared/stats"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// MountOptions are what Mount needs from the process. Conn and Logger are
// required.
type MountOptions struct {
	Conn   *nats.Conn
	Config config.Config
	Scenes stats.StoreFunc // the totals /api/scenes reads
	// WeChat are the process's clients of WeChat's API.
	WeChat *wechatapi.Clients
	// QR is the process's QR-code service when it has one already (the
	// workers': the analytics read its labels); nil: Mount makes one.
	QR     *qrcodes.Service
	Logger *slog.Logger
}

// Mount adds the QR-code API (/api/qrcodes…) and the /ui/ page to an admin
// mux that serves /api/scenes: the same listener, the same ADMIN_TOKEN
// rule. Without WECHAT_APPSECRET the QR routes answer 503 and the page
// shows the channels only. Nothing here is part of readiness: a token store
// or WeChat out of reach makes these routes answer 503 or 502, and the
// process goes on serving WeChat.
func Mount(mux *admin.Mux, o MountOptions) (*qrcodes.Service, error) {
	cfg := o.Config
	logger := o.Logger.With("component", "qrcodes")
	if cfg.AppSecret == "" {
		logger.Info("QR codes are off for the default account: WECHAT_APPSECRET is not set")
	}
	qr := o.QR
	if qr == nil {
		var err error
		if qr, err = qrcodes.New(qrcodes.Options{Conn: o.Conn, Clients: o.WeChat.For, Scenes: qrcodes.FromStore(o.Scenes),
			Replicas: cfg.JetStreamReplicas, Fonts: qrcodes.NewFonts(cfg.QRCaptionFont), Logger: logger}); err != nil {
			return nil, err
		}
	}
	// Ahead of the ServeMux, which would clean "/api/qrcodes/./image" (a
	// scene may be ".") into another route.
	mux.HandleUncleaned(qrcodes.Prefix, qr.Handler(cfg.AdminToken))
	ui, err := Handler(Options{Token: cfg.AdminToken, Logger: o.Logger.With("component", "ui")})
	if err != nil {
		return nil, err
	}
	mux.Handle("/ui/", ui)
	return qr, nil
}
