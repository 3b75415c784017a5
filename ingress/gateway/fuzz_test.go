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

	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/reply"
)

// FuzzCallback drives the whole POST handler with hostile bodies, signed so
// that they get past the signature: as plain XML, as a raw Encrypt field,
// and as XML correctly encrypted. Whatever the body, the answer is a 200
// or a 4xx, never a 5xx, and no panic was recovered on the way.
func FuzzCallback(f *testing.F) {
	gin.SetMode(gin.TestMode)
	const token, key, appID = "fuzz-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wx_fuzz"
	cipher, err := wechat.NewCipher(key, appID)
	if err != nil {
		f.Fatal(err)
	}
	newGateway := func(c *wechat.Cipher) *Gateway {
		g, err := New(Options{
			Token: token, Cipher: c, ReplyTimeout: time.Second, TimestampSkew: time.Minute,
			Local:  reply.NewHandler(reply.NewReplier(config.Defaults().Replies), nil).Handle,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			f.Fatal(err)
		}
		return g
	}
	plain, safe := newGateway(nil), newGateway(cipher)

	samples, _ := filepath.Glob("../../shared/wechat/testdata/*.xml")
	for _, s := range samples {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		for mode := uint8(0); mode < 3; mode++ {
			f.Add(b, mode)
		}
	}
	f.Add([]byte("<xml><Encrypt>AAAA</Encrypt></xml>"), uint8(1))

	f.Fuzz(func(t *testing.T, body []byte, mode uint8) {
		now := time.Now()
		var req *http.Request
		g := plain
		switch mode % 3 {
		case 0: // plain XML, signed query
			req, err = wechat.Sender{Token: token}.NewRequest("http://wx"+Path, body, now, "n")
		case 1: // a raw Encrypt field with a valid msg_signature
			g = safe
			ts := fmt.Sprint(now.Unix())
			env := append(append([]byte("<xml><Encrypt><![CDATA["), bytes.ReplaceAll(body, []byte("]]>"), nil)...), "]]></Encrypt></xml>"...)
			req = httptest.NewRequest(http.MethodPost, "http://wx"+Path+"?timestamp="+ts+"&nonce=n&encrypt_type=aes"+
				"&signature="+wechat.Signature(token, ts, "n")+
				"&msg_signature="+wechat.Signature(token, ts, "n", string(bytes.ReplaceAll(body, []byte("]]>"), nil))), bytes.NewReader(env))
		case 2: // hostile XML, correctly encrypted
			g = safe
			req, err = wechat.Sender{Token: token, Cipher: cipher}.NewRequest("http://wx"+Path, body, now, "n")
		}
		if err != nil {
			t.Skip(err) // the sender could not build it; nothing to test
		}
		w := httptest.NewRecorder()
		g.Handler().ServeHTTP(w, req)
		if w.Code >= 500 || (w.Code != 200 && w.Code < 400) {
			t.Fatalf("mode %d: status %d for %q", mode%3, w.Code, body)
		}
		if p := testutil.ToFloat64(g.metrics.panics); p != 0 {
			t.Fatalf("mode %d: a panic was recovered for %q", mode%3, body)
		}
	})
}
