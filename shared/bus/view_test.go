package bus_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/testutil/natstest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

// logBuffer is a log the view writes from its goroutine and the test reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// numbers is a view of a bucket of numbers (any other value is refused),
// started once the bucket holds before (key, value, key, value...).
func numbers(t *testing.T, nc *nats.Conn, before ...string) (*bus.View[int], jetstream.KeyValue, *logBuffer) {
	t.Helper()
	b := bus.NewBucket(nc, "numbers", "", 1)
	kv, err := b.KV(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(before); i += 2 {
		put(t, kv, before[i], before[i+1])
	}
	var log logBuffer
	v := bus.StartView(b, slog.New(slog.NewTextHandler(&log, nil)), func(_ string, value []byte) (int, error) {
		return strconv.Atoi(string(value))
	})
	t.Cleanup(v.Stop)
	return v, kv, &log
}

func put(t *testing.T, kv jetstream.KeyValue, key, value string) {
	t.Helper()
	if _, err := kv.PutString(context.Background(), key, value); err != nil {
		t.Fatal(err)
	}
}

// shows waits until the view is current and its map is want.
func shows(t *testing.T, v *bus.View[int], want map[string]int) {
	t.Helper()
	wait.For(t, wait.Short, wait.Every, func() error {
		if err := v.Check(); err != nil {
			return err
		}
		if got := v.Map(); !maps.Equal(got, want) {
			return fmt.Errorf("map %v, want %v", got, want)
		}
		return nil
	})
}

func TestViewFollowsTheBucket(t *testing.T) {
	v, kv, log := numbers(t, natstest.Connect(t, natstest.RunServer(t)), "a", "1", "bad", "x")
	<-v.Ready()
	if err := v.Check(); err != nil {
		t.Fatalf("Check after Ready: %v", err)
	}
	first, gen := v.Map(), v.Generation()
	if !maps.Equal(first, map[string]int{"a": 1}) {
		t.Fatalf("read whole: %v, want a=1 (the unreadable value left out)", first)
	}
	put(t, kv, "a", "2")
	put(t, kv, "c", "3")
	shows(t, v, map[string]int{"a": 2, "c": 3})
	if !maps.Equal(first, map[string]int{"a": 1}) || v.Generation() == gen {
		t.Errorf("a map handed out changed (%v), or the generation did not (%d)", first, gen)
	}
	// A value that cannot be read leaves the key as it was, and says so.
	put(t, kv, "a", "two")
	if err := kv.Delete(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	shows(t, v, map[string]int{"a": 2})
	if l := log.String(); !strings.Contains(l, "key=a ") || !strings.Contains(l, "key=bad ") {
		t.Errorf("the unreadable values are not logged:\n%s", l)
	}
}

// The bucket deleted and created again by another: the view follows the
// new one.
func TestViewOfABucketDeletedAndRecreated(t *testing.T) {
	ctx := context.Background()
	nc := natstest.Connect(t, natstest.RunServer(t))
	v, kv, _ := numbers(t, nc)
	put(t, kv, "old", "1")
	shows(t, v, map[string]int{"old": 1})
	js, _ := jetstream.New(nc)
	if err := js.DeleteKeyValue(ctx, "numbers"); err != nil {
		t.Fatal(err)
	}
	// The view may be creating it at the same moment (the server refuses
	// one of two creates racing: error 10049).
	wait.For(t, wait.Short, wait.Every, func() (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "numbers"})
		return err
	})
	put(t, kv, "new", "2")
	shows(t, v, map[string]int{"new": 2})
}

// NATS restarted without its data: the view creates the bucket again, is
// not current meanwhile, and keeps serving what it last read.
func TestViewAcrossANATSRestart(t *testing.T) {
	srv := natstest.NewRestartable(t)
	v, kv, _ := numbers(t, srv.Connect())
	put(t, kv, "a", "1")
	shows(t, v, map[string]int{"a": 1})
	srv.Stop()
	wait.For(t, wait.Short, wait.Every, func() error {
		if v.Check() == nil {
			return fmt.Errorf("current with NATS down")
		}
		return nil
	})
	if !maps.Equal(v.Map(), map[string]int{"a": 1}) {
		t.Errorf("while NATS is down: %v, want the last map", v.Map())
	}
	srv.StartEmpty()
	shows(t, v, map[string]int{})
	js, _ := jetstream.New(srv.Connect())
	kv, err := js.KeyValue(context.Background(), "numbers")
	if err != nil {
		t.Fatalf("the view did not create the bucket again: %v", err)
	}
	put(t, kv, "b", "2")
	shows(t, v, map[string]int{"b": 2})
}

func TestViewWithoutNATS(t *testing.T) {
	v := bus.StartView(bus.NewBucket(nil, "numbers", "", 1), slog.New(slog.DiscardHandler), func(string, []byte) (int, error) { return 0, nil })
	defer v.Stop()
	<-v.Ready()
	if err := v.Check(); err != nil || len(v.Map()) != 0 {
		t.Errorf("Check = %v, map %v: want an empty view, current", err, v.Map())
	}
	if _, err := bus.NewBucket(nil, "numbers", "", 1).KV(context.Background()); err == nil {
		t.Error("KV without a connection: no error")
	}
}
