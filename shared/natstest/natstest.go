// Package natstest runs a real NATS server (JetStream on) inside a test,
// listening on loopback only, and cleans it up with the test.
package natstest

import (
	"testing"

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
