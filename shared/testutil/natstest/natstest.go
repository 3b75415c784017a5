// Package natstest runs a real NATS server (JetStream on) inside a test,
// listening on loopback only, and cleans it up with the test.
package natstest

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxgate/wxgate/shared/bus"
)

// RunServer starts a NATS server with JetStream on 127.0.0.1 and a random
// port, its store in a temporary directory.
func RunServer(t testing.TB) *bus.Embedded {
	t.Helper()
	s, err := bus.RunEmbedded(bus.EmbeddedOptions{
		Listen:   "127.0.0.1:0",
		StoreDir: t.TempDir(),
		Name:     "natstest",
	})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Connect returns a client connection to s, with its credentials, closed
// with the test.
func Connect(t testing.TB, s *bus.Embedded, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), append([]nats.Option{s.AuthOption()}, opts...)...)
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Restartable is a NATS server (JetStream on) that can be stopped and
// started again on the same loopback address, as a NATS restart does:
// with its store, or on an empty one (the server's data lost). Clients
// from Connect reconnect to it for ever.
type Restartable struct {
	t    testing.TB
	addr string
	dir  string
	srv  *bus.Embedded
	// MaxPayload is the max_payload the server starts with (0: NATS's
	// default): a server restarted with a smaller one.
	MaxPayload int32
}

// NewRestartable starts a Restartable, stopped with the test.
func NewRestartable(t testing.TB) *Restartable {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Restartable{t: t, addr: l.Addr().String(), dir: t.TempDir()}
	l.Close()
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server again with the store it had.
func (r *Restartable) Start() {
	r.t.Helper()
	s, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: r.addr, StoreDir: r.dir, Name: "natstest", Token: "natstest-token", MaxPayload: r.MaxPayload})
	if err != nil {
		r.t.Fatalf("nats server: %v", err)
	}
	r.srv = s
}

// StartEmpty starts the server again on an empty store.
func (r *Restartable) StartEmpty() {
	r.t.Helper()
	r.dir = r.t.TempDir()
	r.Start()
}

// Stop stops the server (a no-op when stopped).
func (r *Restartable) Stop() {
	if r.srv != nil {
		r.srv.Close()
		r.srv = nil
	}
}

// Connect returns a client that reconnects to r for ever, closed with the
// test.
func (r *Restartable) Connect(opts ...nats.Option) *nats.Conn {
	r.t.Helper()
	nc, err := nats.Connect("nats://"+r.addr, append([]nats.Option{nats.Token("natstest-token"), nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}, opts...)...)
	if err != nil {
		r.t.Fatalf("nats connect: %v", err)
	}
	r.t.Cleanup(nc.Close)
	return nc
}
