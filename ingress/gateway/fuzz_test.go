package gateway

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
)

// FuzzCallback drives the whole POST handler with hostile bodies, signed so
// that they get past the signature: as plain XML, as a raw Encrypt field,
// and as XML correctly encrypted; to a gateway in each mode. Whatever the
// body, the answer is a 200 or a 4xx that closes the connection, never a
// 5xx, and no panic was recovered on the way. The mode decides before the
// body does: safe refuses plaintext, plain refuses encrypted.
//
// mode%3 is the kind of request; mode/3%4 the gateway: 0 as the seeds
// before modes had it (plain XML to a plain gateway, encrypted to a safe
// one), then plain with a key, compat, safe.
func FuzzCallback(f *testing.F) {
	gin.SetMode(gin.TestMode)
	const token, key, appID = "fuzz-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx_fuzz"
	cipher, err := wechat.NewCipher(key, appID)
	if err != nil {
		f.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	newGateway := func(key string, m wechat.Mode) *Gateway {
		accts, err := accounts.Start(accounts.Options{Default: accounts.Account{Token: token, AppID: appID, EncodingAESKey: key, Mode: string(m)}, Logger: quiet})
		if err != nil {
			f.Fatal(err)
		}
		g, err := New(Options{
			Accounts: accts, ReplyTimeout: time.Second, TimestampSkew: time.Minute,
			Local:  reply.NewHandler(reply.NewReplier(config.Defaults().Replies), nil).Handle,
			Logger: quiet, Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			f.Fatal(err)
		}
		return g
	}
	plain, safe := newGateway("", ""), newGateway(key, "")
	gateways := [4]*Gateway{nil, newGateway(key, wechat.ModePlain), newGateway(key, wechat.ModeCompat), newGateway(key, wechat.ModeSafe)}

	samples, _ := filepath.Glob("../../shared/wechat/testdata/*.xml")
	for _, s := range samples {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		for mode := uint8(0); mode < 3*4; mode++ {
			f.Add(b, mode)
		}
	}
	for mode := uint8(1); mode < 3*4; mode += 3 {
		f.Add([]byte("<xml><Encrypt>AAAA</Encrypt></xml>"), mode)
	}

	f.Fuzz(func(t *testing.T, body []byte, mode uint8) {
		now := time.Now()
		var req *http.Request
		var err error
		kind := mode % 3
		g := gateways[mode/3%4]
		if g == nil {
			g = plain
			if kind != 0 {
				g = safe
			}
		}
		switch kind {
		case 0: // plain XML, signed query
			req, err = wechat.Sender{Token: token}.NewRequest("http://wx"+Path, body, now, "n")
		case 1: // a raw Encrypt field with a valid msg_signature
			ts := fmt.Sprint(now.Unix())
			env := append(append([]byte("<xml><Encrypt><![CDATA["), bytes.ReplaceAll(body, []byte("]]>"), nil)...), "]]></Encrypt></xml>"...)
			req = httptest.NewRequest(http.MethodPost, "http://wx"+Path+"?timestamp="+ts+"&nonce=n&encrypt_type=aes"+
				"&signature="+wechat.Signature(token, ts, "n")+
				"&msg_signature="+wechat.Signature(token, ts, "n", string(bytes.ReplaceAll(body, []byte("]]>"), nil))), bytes.NewReader(env))
		case 2: // hostile XML, correctly encrypted
			req, err = wechat.Sender{Token: token, Cipher: cipher}.NewRequest("http://wx"+Path, body, now, "n")
		}
		if err != nil {
			t.Skip(err) // the sender could not build it; nothing to test
		}
		w := httptest.NewRecorder()
		g.Handler().ServeHTTP(w, req)
		if w.Code >= 500 || (w.Code != 200 && w.Code < 400) {
			t.Fatalf("mode %d: status %d for %q", mode, w.Code, body)
		}
		if p := testutil.ToFloat64(g.metrics.panics); p != 0 {
			t.Fatalf("mode %d: a panic was recovered for %q", mode, body)
		}
		if w.Code >= 400 && w.Header().Get("Connection") != "close" {
			t.Fatalf("mode %d: a %d without Connection: close", mode, w.Code)
		}
		switch gwMode := g.table.Load().byID[accounts.DefaultID].mode; {
		case gwMode == wechat.ModeSafe && kind == 0 && w.Code != http.StatusForbidden:
			t.Fatalf("mode %d: plaintext to a safe gateway answered %d, want 403", mode, w.Code)
		case gwMode == wechat.ModePlain && kind != 0 && w.Code != http.StatusBadRequest:
			t.Fatalf("mode %d: encrypted to a plain gateway answered %d, want 400", mode, w.Code)
		}
	})
}
