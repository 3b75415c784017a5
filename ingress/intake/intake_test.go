package intake

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
	"github.com/wxgate/wxgate/shared/wechat"
)

func newIntake(t *testing.T, nc *nats.Conn, buffer int) (*Intake, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	in, err := New(Options{Conn: nc, Streams: events.Defaults(), Buffer: buffer, Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = in.Close(ctx)
	})
	return in, reg
}

func scanEvent(i int) *wechat.Message {
	return &wechat.Message{ToUserName: "gh", FromUserName: fmt.Sprint("o", i), CreateTime: int64(1000 + i), MsgType: "event", Event: "SCAN", EventKey: "poster"}
}

func textEvent(i int) *wechat.Message {
	return &wechat.Message{ToUserName: "gh", FromUserName: fmt.Sprint("o", i), CreateTime: int64(1000 + i), MsgType: "text", Content: "hi", MsgID: fmt.Sprint(5000 + i)}
}

func streamMsgs(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), events.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// NATS down: events are held, in order, and answered; past the buffer one
// is refused (ErrFull) and the intake reports itself not ready. NATS back:
// every held event is stored once, and the intake is ready again.
func TestHeldWhileNATSIsDownThenFlushed(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, reg := newIntake(t, nc, 300)
	disconnect(t, r, nc)
	for i := 0; i < 300; i++ {
		mustHold(t, in, scanEvent(i))
	}
	m := scanEvent(300)
	if _, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now()); !errors.Is(err, ErrFull) {
		t.Fatalf("past the buffer = %v, want ErrFull", err)
	}
	if in.Check() == nil {
		t.Error("Check passes with the buffer full")
	}
	if got := testutil.ToFloat64(in.metrics.dropped.WithLabelValues("event", "full")); got != 1 {
		t.Errorf("dropped{full} = %v, want 1", got)
	}
	r.Start()
	waitFlushed(t, in)
	if n := streamMsgs(t, nc); n != 300 {
		t.Errorf("stream holds %d events, want 300", n)
	}
	if got := testutil.ToFloat64(in.metrics.flushed); got != 300 {
		t.Errorf("flushed = %v, want 300", got)
	}
	if err := in.Check(); err != nil {
		t.Errorf("Check after the flush: %v", err)
	}
	if v := testutil.ToFloat64(in.metrics.held); v != 300 {
		t.Errorf("held counted %v, want 300", v)
	}
	_ = reg
}

// An event JetStream refuses as it is does not stop the events behind it:
// it is answered, counted as refused, and the rest are stored.
func TestRefusedEventDoesNotBlockTheQueue(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, _ := newIntake(t, nc, 100)
	// A refusal by the stream itself: too large for its message size limit.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := events.Config(events.Defaults())
	cfg.MaxMsgSize = 512
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	long := textEvent(2)
	long.Content = strings.Repeat("x", 1024)
	rc, err := in.Publish("default", long, long.DedupKey("default", long.AppendXML(nil)), long.AppendXML(nil), time.Now())
	if err != nil || !rc.Refused || rc.Held {
		t.Fatalf("an event over the stream's size limit = %+v %v, want refused, not held", rc, err)
	}
	m := scanEvent(3)
	if rc, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now()); err != nil || rc.Held || rc.Seq == 0 {
		t.Fatalf("the event after it = %+v %v, want stored", rc, err)
	}
	if got := testutil.ToFloat64(in.metrics.dropped.WithLabelValues("event", "refused")); got != 1 {
		t.Errorf("dropped{refused} = %v, want 1", got)
	}
}

// createStreamWithoutTTL makes the event stream as a version before
// per-message TTLs did.
func createStreamWithoutTTL(t *testing.T, nc *nats.Conn) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := events.Config(events.Defaults())
	cfg.AllowMsgTTL = false
	if _, err := js.CreateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
}

// A stream made without per-message TTLs (an older one) still stores
// messages: without the TTL, for the stream's age.
func TestStreamWithoutMessageTTL(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	createStreamWithoutTTL(t, nc)
	in, _ := newIntake(t, nc, 100)
	for i, m := range []*wechat.Message{textEvent(1), scanEvent(2)} {
		if rc, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now()); err != nil || rc.Held || rc.Refused || rc.Seq != uint64(i+1) {
			t.Fatalf("event %d = %+v %v, want stored", i, rc, err)
		}
	}
}

// SIGTERM while events are held: Close publishes them once NATS is back
// within its grace; what is left at the end of the grace is counted lost.
func TestCloseFlushesThenCountsWhatIsLeft(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, _ := newIntake(t, nc, 100)
	disconnect(t, r, nc)
	for i := 0; i < 5; i++ {
		mustHold(t, in, scanEvent(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := in.Close(ctx); err == nil {
		t.Error("Close with events held and NATS down returned no error")
	}
	if got := testutil.ToFloat64(in.metrics.dropped.WithLabelValues("event", "shutdown")); got != 5 {
		t.Errorf("dropped{shutdown} = %v, want 5", got)
	}
}

// mustHold publishes m, which the intake must hold (JetStream away).
func mustHold(t *testing.T, in *Intake, m *wechat.Message) {
	t.Helper()
	if rc, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now()); err != nil || !rc.Held {
		t.Fatalf("%s from %s = %+v %v, want held", m.MsgType, m.FromUserName, rc, err)
	}
}

// wantAllStored checks that the stream holds n events and the intake
// dropped none, for any reason.
func wantAllStored(t *testing.T, nc *nats.Conn, in *Intake, n uint64) {
	t.Helper()
	if got := streamMsgs(t, nc); got != n {
		t.Errorf("stream holds %d events, want %d", got, n)
	}
	for _, reason := range []string{"full", "refused", "shutdown"} {
		if got := testutil.ToFloat64(in.metrics.dropped.WithLabelValues("event", reason)); got != 0 {
			t.Errorf("dropped{%s} = %v, want 0", reason, got)
		}
	}
}

// waitFlushed waits until the intake holds nothing.
func waitFlushed(t *testing.T, in *Intake) {
	t.Helper()
	wait.For(t, wait.Long, wait.Every, func() error {
		if n := in.held(); n > 0 {
			return fmt.Errorf("%v still held", n)
		}
		return nil
	})
}

// disconnect stops r's server and waits until nc knows.
func disconnect(t *testing.T, r *natstest.Restartable, nc *nats.Conn) {
	t.Helper()
	r.Stop()
	wait.For(t, wait.Short, wait.Every, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
}

// Held messages on a stream without per-message TTLs are stored when NATS
// is back, without their TTL: never dropped as refused.
func TestHeldMessagesOnAStreamWithoutTTL(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	createStreamWithoutTTL(t, nc)
	in, _ := newIntake(t, nc, 100)
	disconnect(t, r, nc)
	for i := 0; i < 6; i++ {
		m := textEvent(i)
		if i%2 == 1 {
			m = scanEvent(i)
		}
		mustHold(t, in, m)
	}
	r.Start()
	waitFlushed(t, in)
	wantAllStored(t, nc, in, 6)
}

// SIGTERM while events are held and NATS comes back within the grace:
// Close publishes every one of them, and nothing is counted lost.
func TestCloseFlushesWhenNATSReturns(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, _ := newIntake(t, nc, 100)
	disconnect(t, r, nc)
	for i := 0; i < 50; i++ {
		mustHold(t, in, scanEvent(i))
	}
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait.Long)
		defer cancel()
		closed <- in.Close(ctx)
	}()
	r.Start()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(wait.Long + 5*time.Second):
		t.Fatal("Close did not return")
	}
	wantAllStored(t, nc, in, 50)
}

// Messages (personal data) carry a per-message TTL; scene events do not:
// they are kept EVENTS_MAX_AGE, so the analytics can be rebuilt.
func TestMessagesCarryATTLSceneEventsDoNot(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, _ := newIntake(t, nc, 100)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), events.Stream)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		m       *wechat.Message
		wantTTL bool
	}{{textEvent(1), true}, {scanEvent(2), false}} {
		rc, err := in.Publish("default", c.m, c.m.DedupKey("default", c.m.AppendXML(nil)), c.m.AppendXML(nil), time.Now())
		if err != nil || rc.Seq == 0 {
			t.Fatalf("%s = %+v %v", c.m.MsgType, rc, err)
		}
		stored, err := s.GetMsg(context.Background(), rc.Seq)
		if err != nil {
			t.Fatal(err)
		}
		if ttl := stored.Header.Get(jetstream.MsgTTLHeader); (ttl != "") != c.wantTTL {
			t.Errorf("%s stored with %s %q, want one: %v", c.m.MsgType, jetstream.MsgTTLHeader, ttl, c.wantTTL)
		}
	}
}

// An event answered without its reply is marked so, for the late reply:
// a copy in WXGATE_UNANSWERED with the reason and the event's sequence.
// Both are stored under their account: its id in the subject and the
// header.
func TestUnansweredCopyIsMarked(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, _ := newIntake(t, nc, 100)
	m := textEvent(7)
	raw := m.AppendXML(nil)
	rc, err := in.Publish("shop", m, m.DedupKey("shop", m.AppendXML(nil)), raw, time.Now())
	if err != nil || rc.Seq == 0 {
		t.Fatalf("publish = %+v %v", rc, err)
	}
	in.Unanswered("shop", m, m.DedupKey("shop", m.AppendXML(nil)), raw, time.Now(), rc, "timeout")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var stored *jetstream.RawStreamMsg
	wait.For(t, wait.Short, wait.Every, func() error {
		s, err := js.Stream(context.Background(), events.Unanswered)
		if err != nil {
			return err
		}
		stored, err = s.GetMsg(context.Background(), 1)
		return err
	})
	if stored.Subject != "wxgate.unanswered.shop.msg.text" || string(stored.Data) != string(raw) || stored.Header.Get(bus.HeaderAccountID) != "shop" {
		t.Errorf("copy = %s %v %q", stored.Subject, stored.Header, stored.Data)
	}
	s, err := js.Stream(context.Background(), events.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if event, err := s.GetMsg(context.Background(), rc.Seq); err != nil || event.Subject != "wxgate.events.shop.msg.text" || event.Header.Get(bus.HeaderAccountID) != "shop" {
		t.Errorf("event = %+v %v, want it on wxgate.events.shop.msg.text with Wx-Account-Id shop", event, err)
	}
	if got := stored.Header.Get(events.HeaderReason); got != "timeout" {
		t.Errorf("%s = %q, want timeout", events.HeaderReason, got)
	}
	if got := stored.Header.Get(events.HeaderEventSeq); got != fmt.Sprint(rc.Seq) {
		t.Errorf("%s = %q, want %d", events.HeaderEventSeq, got, rc.Seq)
	}
	wait.For(t, wait.Short, wait.Every, func() error { // counted once the flusher has its ack
		if got := testutil.ToFloat64(in.metrics.unanswered); got != 1 {
			return fmt.Errorf("unanswered = %v, want 1", got)
		}
		return nil
	})
}

// The server's acknowledgements, first and duplicate, read right; a stream
// found missing is created and the event stored.
func TestDuplicateAndMissingStream(t *testing.T) {
	nc := natstest.Connect(t, natstest.RunServer(t))
	in, _ := newIntake(t, nc, 100)
	m := textEvent(1)
	first, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil || first.Duplicate || first.Held || first.Seq == 0 {
		t.Fatalf("first = %+v, %v", first, err)
	}
	again, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil || !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("again = %+v, %v; want a duplicate of seq %d", again, err, first.Seq)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(context.Background(), events.Stream); err != nil {
		t.Fatal(err)
	}
	m.MsgID = "2"
	r, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil || r.Duplicate || r.Held || r.Seq != 1 {
		t.Fatalf("with the stream gone = %+v, %v; want it recreated and the event stored first", r, err)
	}
}

// publish publishes m through in and returns the receipt.
func publish(t *testing.T, in *Intake, m *wechat.Message) Receipt {
	t.Helper()
	rc, err := in.Publish("default", m, m.DedupKey("default", m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	if err != nil {
		t.Fatalf("%s from %s: %v", m.MsgType, m.FromUserName, err)
	}
	return rc
}

// Review N2: a callback larger than the server's max_payload (the client
// refuses to publish it) is refused, counted and dropped, and stops
// nothing: not the events held behind it during an outage, not those that
// come after it, not the unanswered copies behind its own.
func TestLargerThanMaxPayloadStopsNothing(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	in, _ := newIntake(t, nc, 100)
	big := textEvent(0)
	big.Content = strings.Repeat("x", 20_000)
	refusedEvents := in.metrics.dropped.WithLabelValues("event", "refused")

	// NATS restarts with a smaller max_payload, while events are held.
	disconnect(t, r, nc)
	mustHold(t, in, big)
	for i := 1; i <= 3; i++ {
		mustHold(t, in, textEvent(i))
	}
	r.MaxPayload = 16 << 10
	r.Start()
	waitFlushed(t, in)
	if n := streamMsgs(t, nc); n != 3 {
		t.Errorf("after the flush the stream holds %d events, want the 3 small ones", n)
	}
	if got := testutil.ToFloat64(refusedEvents); got != 1 {
		t.Errorf("dropped{event,refused} after the flush = %v, want 1", got)
	}

	// Connected: the large one is refused at once, the small ones stored.
	if rc := publish(t, in, big); !rc.Refused || rc.Held {
		t.Fatalf("a callback over max_payload = %+v, want refused, not held", rc)
	}
	for i := 4; i <= 6; i++ {
		if rc := publish(t, in, textEvent(i)); rc.Held || rc.Refused || rc.Seq == 0 {
			t.Fatalf("small event %d after it = %+v, want stored", i, rc)
		}
	}
	if n := streamMsgs(t, nc); n != 6 {
		t.Errorf("the stream holds %d events, want the 6 small ones", n)
	}
	if got := testutil.ToFloat64(refusedEvents); got != 2 {
		t.Errorf("dropped{event,refused} = %v, want 2", got)
	}

	// Its unanswered copy is refused too, and the one behind it recorded.
	in.Unanswered("default", big, big.DedupKey("default", big.AppendXML(nil)), big.AppendXML(nil), time.Now(), Receipt{Refused: true}, "bus_down")
	small := textEvent(7)
	in.Unanswered("default", small, small.DedupKey("default", small.AppendXML(nil)), small.AppendXML(nil), time.Now(), Receipt{}, "timeout")
	wait.For(t, wait.Long, wait.Every, func() error {
		if got := testutil.ToFloat64(in.metrics.unanswered); got != 1 {
			return fmt.Errorf("unanswered recorded = %v, want 1", got)
		}
		return nil
	})
	if got := testutil.ToFloat64(in.metrics.dropped.WithLabelValues("unanswered", "refused")); got != 1 {
		t.Errorf("dropped{unanswered,refused} = %v, want 1", got)
	}
}

// MAX_BODY_BYTES is checked against the max_payload of each server the
// intake connects to: not ready while it cannot take a callback that
// large, ready again once it can; at start, with NATS not connected yet,
// at the first connect.
func TestNotReadyWhileMaxPayloadIsTooSmall(t *testing.T) {
	r := natstest.NewRestartable(t)
	r.Stop()
	nc := r.Connect(nats.RetryOnFailedConnect(true))
	reg := prometheus.NewRegistry()
	in, err := New(Options{Conn: nc, Streams: events.Defaults(), MaxBody: 64 << 10, Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = in.Close(ctx)
	})
	if err := in.Check(); err != nil {
		t.Errorf("before the first connect: Check = %v, want ready (the nats check reports the connection)", err)
	}
	for _, c := range []struct {
		maxPayload int32
		ready      bool
	}{{32 << 10, false}, {0, true}, {64 << 10, false}} {
		disconnect(t, r, nc)
		r.MaxPayload = c.maxPayload
		r.Start()
		wait.For(t, wait.Long, wait.Every, func() error {
			if !nc.IsConnected() {
				return errors.New("not connected")
			}
			return nil
		})
		err := in.Check()
		switch {
		case c.ready && err != nil:
			t.Errorf("max_payload %d: Check = %v, want ready", c.maxPayload, err)
		case !c.ready && (err == nil || !strings.Contains(err.Error(), "MAX_BODY_BYTES=65536") || !strings.Contains(err.Error(), fmt.Sprintf("max_payload (%d)", c.maxPayload))):
			t.Errorf("max_payload %d: Check = %v, want not ready, naming MAX_BODY_BYTES and max_payload", c.maxPayload, err)
		}
	}
}

// While several accounts exist, one account holds at most half the buffer
// with JetStream away: a burst on it leaves the others room, and each
// held event is stored once it is back.
func TestAnAccountHoldsHalfTheBuffer(t *testing.T) {
	r := natstest.NewRestartable(t)
	nc := r.Connect()
	accts, err := accounts.Start(accounts.Options{Conn: r.Connect(), SecretKey: base64.StdEncoding.EncodeToString(make([]byte, 32)), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(accts.Stop)
	wait.For(t, wait.Short, wait.Every, accts.Check)
	if _, err := accts.Create(context.Background(), accounts.Account{ID: "burst", Token: "BurstToken"}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, wait.Short, wait.Every, func() error {
		if accts.Len() != 2 {
			return errors.New("burst not read yet")
		}
		return nil
	})
	in, err := New(Options{Conn: nc, Streams: events.Defaults(), Buffer: 10, Accounts: accts, Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close(context.Background()) })
	disconnect(t, r, nc)
	publish := func(account string, i int) (Receipt, error) {
		m := scanEvent(i)
		return in.Publish(account, m, m.DedupKey(account, m.AppendXML(nil)), m.AppendXML(nil), time.Now())
	}
	for i := 0; i < 5; i++ {
		if rc, err := publish("burst", i); err != nil || !rc.Held {
			t.Fatalf("burst's event %d = %+v %v, want held", i, rc, err)
		}
	}
	if _, err := publish("burst", 5); !errors.Is(err, ErrFull) {
		t.Fatalf("burst's event past half the buffer = %v, want ErrFull", err)
	}
	for i := 0; i < 5; i++ {
		if rc, err := publish("default", 100+i); err != nil || !rc.Held {
			t.Fatalf("the default's event %d during the burst = %+v %v, want held", i, rc, err)
		}
	}
	if got := testutil.ToFloat64(in.metrics.dropped.WithLabelValues("event", "share")); got != 1 {
		t.Errorf("dropped{share} = %v, want 1", got)
	}
	r.Start()
	waitFlushed(t, in)
	if n := streamMsgs(t, nc); n != 10 {
		t.Errorf("stream holds %d events, want 10", n)
	}
	if rc, err := publish("burst", 6); err != nil || rc.Held {
		t.Errorf("burst's event after the flush = %+v %v, want stored", rc, err)
	}
}
