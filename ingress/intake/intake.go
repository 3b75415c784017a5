// Package intake makes each verified callback durable before WeChat is
// answered: the ingress publishes it once to the event stream, with the
// dedup key as Nats-Msg-Id, so the stream stores WeChat's retries once and
// the PubAck says which delivery was a retry, across every replica, with no
// extra round trip. While JetStream cannot take events (NATS restarting,
// JetStream without quorum), they are held in a bounded buffer, in order, and
// published when it can; past the bound an event is refused, so that WeChat
// retries it rather than it being lost after a 200.
package intake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/config"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Receipt says what became of an event.
type Receipt struct {
	Seq       uint64 // its sequence in the event stream; 0 when held
	Duplicate bool   // the stream had it already: a retry (or a replay) of a stored event
	Held      bool   // JetStream could not take it now; held here until it can
	// Refused: JetStream, or the NATS client before it, will not take it
	// as it is (a bad request, larger than the stream or the server takes):
	// not stored, not held (it would stop every event behind it).
	Refused bool
}

// ErrFull means the buffer holds as many events as it may: the event is
// not accepted (the ingress answers 503, and WeChat retries it).
var ErrFull = errors.New("intake: buffer full")

// Options configure an Intake. Conn, Logger and Registerer are required.
type Options struct {
	Conn    *nats.Conn
	Streams events.Options
	// Buffer is how many events may be held while JetStream cannot take
	// them (INTAKE_BUFFER). Default 10 000. While several accounts exist,
	// one account may hold at most half of it: a burst on one leaves room
	// for the others' callbacks.
	Buffer int
	// Accounts say whether several accounts share the buffer; nil: one.
	Accounts *accounts.Registry
	// Timeout bounds one publish's wait for its acknowledgement; past it,
	// the event is held. Default 1s, well inside WeChat's 5.
	Timeout time.Duration
	// MaxBody is MAX_BODY_BYTES. While the server connected to takes less
	// (its max_payload less config.NATSHeaderRoom), callbacks that large
	// would be refused, and the intake reports itself not ready. 0: not
	// checked.
	MaxBody    int64
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (o *Options) setDefaults() {
	if o.Buffer <= 0 {
		o.Buffer = 10_000
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
}

func (o *Options) validate() error {
	if o.Conn == nil || o.Logger == nil || o.Registerer == nil {
		return errors.New("intake: Options.Conn, Logger and Registerer are required")
	}
	return nil
}

// Intake publishes events to the event stream.
type Intake struct {
	o       Options
	ttl     string // Nats-TTL of a message (not a scene event), in seconds
	js      jetstream.JetStream
	metrics *metrics

	mu     sync.Mutex
	queue  []*nats.Msg    // held events, oldest first
	heldBy map[string]int // held events by account
	closed bool
	wake   chan struct{} // the flusher has work

	unanswered chan *nats.Msg   // copies of events answered without their reply
	closing    chan struct{}    // closed by Close: the flushers return once their queue is empty
	stop       chan struct{}    // closed when Close's ctx ends: they return now
	done       sync.WaitGroup   // the flushers and the watcher
	connected  chan nats.Status // (re)connects, for the max_payload check

	createMu   sync.Mutex
	lastCreate time.Time
	ttlOnce    sync.Once
}

const (
	// flushWindow is how many held events are in flight at once.
	flushWindow = 256
	// maxPending bounds the publishes waiting for their acknowledgement:
	// the callbacks in flight (MAX_CONNECTIONS, 4096 by default), or a
	// flush window. Past it a publish waits, then the event is held.
	maxPending = 4096
)

// publishOpts: a stream that does not answer is created again, or the
// event held, at once (the client would retry twice, 250 ms apart, beyond
// the Timeout). A slice, made once: a variadic argument would be one per
// publish.
var publishOpts = []jetstream.PublishOpt{jetstream.WithRetryAttempts(0)}

// errStopped: Close's grace ended while an acknowledgement was awaited.
var errStopped = errors.New("intake: closed")

// New starts an Intake. The streams are created if they are missing (and
// never changed: the workers own their settings).
func New(o Options) (*Intake, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	if o.Conn.IsConnected() {
		if err := fits(o.Conn, o.MaxBody); err != nil {
			return nil, fmt.Errorf("intake: %w", err)
		}
	}
	js, err := jetstream.New(o.Conn, jetstream.WithPublishAsyncMaxPending(maxPending), jetstream.WithPublishAsyncTimeout(o.Timeout))
	if err != nil {
		return nil, fmt.Errorf("intake: %w", err)
	}
	in := &Intake{
		o: o, js: js, metrics: newMetrics(o.Registerer), ttl: o.Streams.MessagesTTL(), heldBy: map[string]int{},
		wake: make(chan struct{}, 1), unanswered: make(chan *nats.Msg, o.Buffer),
		closing: make(chan struct{}), stop: make(chan struct{}),
		connected: o.Conn.StatusChanged(nats.CONNECTED),
	}
	in.metrics.heldFunc(o.Registerer, in.held)
	if o.Conn.IsConnected() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := events.Create(ctx, js, o.Streams); err != nil {
			o.Logger.Warn("event streams not ready yet; events are held until they are", "err", err)
		}
		cancel()
	}
	in.done.Add(3)
	go in.flush()
	go in.flushUnanswered()
	go in.watch()
	return in, nil
}

// fits checks maxBody (MAX_BODY_BYTES) against the max_payload of the
// server nc is connected to, which nc learns at each (re)connect (0 before
// the first): a server, or a cluster node, may take less than another.
func fits(nc *nats.Conn, maxBody int64) error {
	maxPayload := nc.MaxPayload()
	if limit := maxPayload - config.NATSHeaderRoom; maxBody > 0 && maxPayload > 0 && maxBody > limit {
		return fmt.Errorf("MAX_BODY_BYTES=%d is more than the NATS server's max_payload (%d) leaves for a callback (%d): callbacks that large are refused", maxBody, maxPayload, limit)
	}
	return nil
}

// watch checks the max_payload of each server connected to; Check reports
// the same until a server takes MAX_BODY_BYTES.
func (in *Intake) watch() {
	defer in.done.Done()
	for range in.connected {
		if err := fits(in.o.Conn, in.o.MaxBody); err != nil {
			in.o.Logger.Error("connected to a NATS server that cannot take every callback; not ready", "err", err)
		}
	}
}

// message is the stream message for an event of account.
func (in *Intake) message(account string, m *wechat.Message, key string, raw []byte, received time.Time) *nats.Msg {
	subject := m.Subject()
	msg := &nats.Msg{Subject: events.Subject(account, subject), Data: raw, Header: make(nats.Header, 5)}
	msg.Header[jetstream.MsgIDHeader] = []string{key}
	msg.Header[bus.HeaderAccountID] = []string{account}
	msg.Header[bus.HeaderAccount] = []string{bus.Account(m.ToUserName)}
	msg.Header[bus.HeaderReceived] = []string{bus.FormatTime(received)}
	if !events.IsSceneEvent(subject) {
		// Messages are personal data: kept for the late-reply window, not
		// for the analytics' retention.
		msg.Header[jetstream.MsgTTLHeader] = []string{in.ttl}
	}
	return msg
}

// Publish stores the event of account (m, parsed from raw, with dedup key
// key, received at received) in the stream, waiting at most Timeout for
// it, or holds it when JetStream cannot take it now. A scan whose scene is
// not a scene is counted here, once per event.
func (in *Intake) Publish(account string, m *wechat.Message, key string, raw []byte, received time.Time) (Receipt, error) {
	msg := in.message(account, m, key, raw, received)
	r, err := in.publish(msg)
	if err == nil && !r.Duplicate {
		if scene, _, scan := m.SceneCandidate(); scan {
			if p := wechat.SceneProblem(scene); p != "" {
				in.metrics.sceneRejected.WithLabelValues(account, p).Inc()
			}
		}
	}
	return r, err
}

func (in *Intake) publish(msg *nats.Msg) (Receipt, error) {
	in.mu.Lock()
	// While events are held, newer ones queue behind them: the stream keeps
	// one person's follow and unfollow in the order they came (except
	// behind a publish still being tried when the outage began: README,
	// "Order, and its one gap"). And a connection that is down would only
	// make the publish wait.
	if in.closed || len(in.queue) > 0 || !in.o.Conn.IsConnected() {
		defer in.mu.Unlock()
		return in.hold(msg)
	}
	in.mu.Unlock()

	ack, err := in.send(msg)
	switch {
	case err == nil && ack.Duplicate:
		in.metrics.duplicate.Inc()
		return Receipt{Seq: ack.Sequence, Duplicate: true}, nil
	case err == nil:
		in.metrics.stored.Inc()
		return Receipt{Seq: ack.Sequence}, nil
	case in.drop("event", msg, err):
		return Receipt{Refused: true}, nil
	}
	in.o.Logger.Warn("event not stored; holding it", "subject", msg.Subject, "err", err)
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.hold(msg)
}

// send publishes one message and waits for its acknowledgement; a stream
// found missing (NATS restarted without its data) is created, once.
func (in *Intake) send(msg *nats.Msg) (*jetstream.PubAck, error) {
	ack, err := in.store(msg)
	if err == nil {
		return ack, nil // the common case, without the errors.As below
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
		ctx, cancel := context.WithTimeout(context.Background(), in.o.Timeout)
		defer cancel()
		if in.createStreams(ctx) == nil {
			ack, err = in.store(msg)
		}
	}
	if apiErrCode(err) == errCodeTTLDisabled && msg.Header.Get(jetstream.MsgTTLHeader) != "" {
		// A stream made before per-message TTLs (the ingress never changes
		// it; the workers' analytics do): keep the message for the
		// stream's age rather than not at all.
		in.ttlOnce.Do(func() {
			in.o.Logger.Warn("the event stream takes no per-message TTL: messages are kept for its MaxAge until the workers' analytics update it", "stream", events.Stream)
		})
		msg.Header.Del(jetstream.MsgTTLHeader)
		ack, err = in.store(msg)
	}
	return ack, err
}

// store publishes msg and waits for its acknowledgement: at most Timeout,
// the publisher's, which fails the future past it.
func (in *Intake) store(msg *nats.Msg) (*jetstream.PubAck, error) {
	f, err := in.js.PublishMsgAsync(msg, publishOpts...)
	if err != nil {
		return nil, err
	}
	return in.ack(f)
}

// ack waits for f, or until Close's grace has ended.
func (in *Intake) ack(f jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-f.Ok():
		return ack, nil
	case err := <-f.Err():
		return nil, err
	case <-in.stop:
		return nil, errStopped
	}
}

// errCodeTTLDisabled is JetStream's "per-message TTL is disabled".
const errCodeTTLDisabled = 10166

func apiErrCode(err error) jetstream.ErrorCode {
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.ErrorCode
	}
	return 0
}

// mendable says send knows what to do about err.
func mendable(err error) bool {
	return apiErrCode(err) == errCodeTTLDisabled || errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// refused says the message will not be taken as it is, however often
// asked: the client refuses it before publishing (larger than the
// server's max_payload, a bad subject or header), or JetStream does (a bad
// request, too large for the stream). Unavailable, timeouts and a missing
// stream pass; so does a stream without per-message TTLs, a 400 that send
// mends by storing the message without its TTL.
func refused(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrBadHeaderMsg) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.Code == 400 || api.Code == 413) && api.ErrorCode != errCodeTTLDisabled
}

// drop counts and logs msg, of kind (event, unanswered), when err refuses
// it: it is dropped, never retried, so that it stops nothing behind it.
func (in *Intake) drop(kind string, msg *nats.Msg, err error) bool {
	if !refused(err) {
		return false
	}
	in.metrics.dropped.WithLabelValues(kind, "refused").Inc()
	in.o.Logger.Error("refused as it is: dropped, not stored (the callback was answered)", "kind", kind, "subject", msg.Subject, "err", err)
	return true
}

func (in *Intake) createStreams(ctx context.Context) error {
	in.createMu.Lock()
	defer in.createMu.Unlock()
	if time.Since(in.lastCreate) < time.Second {
		return errors.New("streams created a moment ago")
	}
	in.lastCreate = time.Now()
	err := events.Create(ctx, in.js, in.o.Streams)
	if err != nil {
		in.o.Logger.Warn("event streams not created", "err", err)
	}
	return err
}

// hold queues msg for the flusher; in.mu is held.
func (in *Intake) hold(msg *nats.Msg) (Receipt, error) {
	if in.closed || len(in.queue) >= in.o.Buffer {
		in.metrics.dropped.WithLabelValues("event", "full").Inc()
		return Receipt{}, ErrFull
	}
	account := msg.Header.Get(bus.HeaderAccountID)
	share := in.o.Buffer
	if in.o.Accounts != nil && in.o.Accounts.Len() > 1 {
		share = max(share/2, 1)
	}
	if in.heldBy[account] >= share {
		in.metrics.dropped.WithLabelValues("event", "share").Inc()
		return Receipt{}, ErrFull
	}
	in.heldBy[account]++
	in.queue = append(in.queue, msg)
	in.metrics.held.Inc()
	select {
	case in.wake <- struct{}{}:
	default:
	}
	return Receipt{Held: true}, nil
}

func (in *Intake) held() float64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return float64(len(in.queue))
}

// flush publishes held events, oldest first, retrying until they are
// stored; it returns when Close asks and nothing more can be flushed.
// Up to flushWindow are in flight at once, in order on one connection: one
// at a time, a round trip each, the flush would fall behind the events
// still arriving (which queue behind it) and the ingress would stay in
// held mode under load.
func (in *Intake) flush() {
	defer in.done.Done()
	// Woken when the connection is back: while it is down, a publish would
	// only fill the client's reconnect buffer with copies of the batch.
	connected := in.o.Conn.StatusChanged(nats.CONNECTED)
	defer in.o.Conn.RemoveStatusListener(connected)
	backoff := 100 * time.Millisecond
	for {
		in.mu.Lock()
		batch := in.queue[:min(len(in.queue), flushWindow)]
		in.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-in.wake:
			case <-in.closing:
				if in.held() == 0 {
					return // Close holds nothing more
				}
			}
			continue
		}
		if !in.o.Conn.IsConnected() {
			select {
			case <-in.stop:
				return // Close counts what is left
			case <-connected:
			case <-time.After(2 * time.Second): // a status missed: look again
			}
			continue
		}
		done, err := in.sendAll(batch)
		if done > 0 {
			in.mu.Lock()
			for _, msg := range in.queue[:done] {
				account := msg.Header.Get(bus.HeaderAccountID)
				if in.heldBy[account]--; in.heldBy[account] <= 0 {
					delete(in.heldBy, account)
				}
			}
			clear(in.queue[:done])
			in.queue = in.queue[done:]
			if len(in.queue) == 0 {
				in.queue = nil // let the backing array go after an outage
			}
			in.mu.Unlock()
			backoff = 100 * time.Millisecond
		}
		if err != nil {
			select {
			case <-in.stop:
				return // Close counts what is left
			case <-time.After(backoff): // JetStream is away; try again soon
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// sendAll publishes batch, in order, then reads the acknowledgements. It
// returns how many from the front are done with (stored, or refused and
// dropped), and the error that stopped it there. Events after a failed one
// that were stored are published again with the rest: the stream's
// duplicate window stores them once.
func (in *Intake) sendAll(batch []*nats.Msg) (int, error) {
	futures := make([]jetstream.PubAckFuture, len(batch))
	errs := make([]error, len(batch))
	n := len(batch)
	for i, msg := range batch {
		if futures[i], errs[i] = in.js.PublishMsgAsync(msg, publishOpts...); errs[i] != nil && !refused(errs[i]) {
			n = i // disconnected, or too many in flight: the rest wait
			break
		}
	}
	for i, msg := range batch[:n] {
		err := errs[i]
		if err == nil {
			_, err = in.ack(futures[i])
		}
		if mendable(err) {
			_, err = in.send(msg) // one at a time: send mends it
		}
		switch {
		case err == nil:
			in.metrics.flushed.Inc()
		case in.drop("event", msg, err):
		default:
			return i, err
		}
	}
	if n < len(batch) {
		return n, errs[n]
	}
	return n, nil
}

// Unanswered records that the event was answered "success" without its
// reply, for a late reply. It does not wait: the answer to WeChat must not.
func (in *Intake) Unanswered(account string, m *wechat.Message, key string, raw []byte, received time.Time, r Receipt, reason string) {
	msg := in.message(account, m, "u."+key, raw, received)
	msg.Subject = events.UnansweredSubject(account, m.Subject())
	msg.Header.Del(jetstream.MsgTTLHeader)
	msg.Header[events.HeaderReason] = []string{reason}
	if r.Seq != 0 {
		msg.Header[events.HeaderEventSeq] = []string{strconv.FormatUint(r.Seq, 10)}
	}
	select {
	case in.unanswered <- msg:
	default:
		in.metrics.dropped.WithLabelValues("unanswered", "full").Inc()
	}
}

// flushUnanswered records the copies, one at a time, retrying each until
// it is stored or refused; it returns when Close asks and none is left, or
// Close's grace ends.
func (in *Intake) flushUnanswered() {
	defer in.done.Done()
	for {
		var msg *nats.Msg
		select {
		case msg = <-in.unanswered:
		case <-in.closing:
			select {
			case msg = <-in.unanswered:
			default:
				return
			}
		}
		for attempt := 1; ; attempt++ {
			_, err := in.send(msg)
			if err == nil {
				in.metrics.unanswered.Inc()
				break
			}
			if in.drop("unanswered", msg, err) {
				break
			}
			select {
			case <-in.stop:
				in.metrics.dropped.WithLabelValues("unanswered", "shutdown").Add(float64(1 + len(in.unanswered)))
				return
			case <-time.After(min(time.Duration(attempt)*100*time.Millisecond, 2*time.Second)):
			}
		}
	}
}

// Check reports whether events are accepted: not while the buffer is full,
// nor while the server connected to cannot take a callback of
// MAX_BODY_BYTES.
func (in *Intake) Check() error {
	if err := fits(in.o.Conn, in.o.MaxBody); err != nil {
		return err
	}
	if n := in.held(); int(n) >= in.o.Buffer {
		return fmt.Errorf("intake buffer full (%d events held: JetStream cannot take them)", int(n))
	}
	return nil
}

// Close stops accepting events and publishes those held, until ctx ends;
// what is still held then is lost, and counted.
func (in *Intake) Close(ctx context.Context) error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil // closed before: what was lost was counted then
	}
	in.closed = true
	in.mu.Unlock()
	in.o.Conn.RemoveStatusListener(in.connected) // the watcher returns
	close(in.closing)
	// The flushers return once their queues are empty; when ctx ends, at
	// once.
	flushed := make(chan struct{})
	go func() {
		in.done.Wait()
		close(flushed)
	}()
	select {
	case <-flushed:
	case <-ctx.Done():
		close(in.stop)
		<-flushed
	}
	in.mu.Lock()
	lost := len(in.queue)
	in.mu.Unlock()
	if lost > 0 {
		in.metrics.dropped.WithLabelValues("event", "shutdown").Add(float64(lost))
		return fmt.Errorf("intake: %d accepted events still held at exit (JetStream unreachable) are lost", lost)
	}
	return nil
}
