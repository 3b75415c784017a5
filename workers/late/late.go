// Package late sends the replies WeChat was answered without. When the
// ingress answered "success" because no reply came in time (no worker, a
// slow handler, the bus down), it recorded the event in WXGATE_UNANSWERED.
// A worker takes each such event, gets its reply from the replies store
// (found, awaited, or produced once across replicas), and sends it through
// WeChat's customer-service API, inside the window WeChat allows for what
// the person did: 48 hours after a message, about a minute after a
// subscribe, a SCAN or a menu click. Past it, the reply is dropped and
// counted as expired.
//
// A late reply is sent at most once across replicas and restarts, and never
// beside a passive one: the message's key in the replies store is moved to
// "sending" (compare-and-set) before the call and to what WeChat answered
// after it, and a key a retry was answered with (passive) is not sent
// (docs/reply-once.md).
package late

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/events"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi"
	"github.com/wxgate/wxgate/workers/dedup"
)

// Consumer is the durable consumer of WXGATE_UNANSWERED.
const Consumer = "wxgate-late"

// Outcomes of a late reply (the outcome label of wxgate_late_replies_total).
const (
	Sent        = "sent"        // WeChat took it
	Expired     = "expired"     // the person's window closed first (or WeChat said so: 45015)
	Failed      = "failed"      // WeChat refused it (45047 the window's count used up, others)
	Unsupported = "unsupported" // a passive reply with no customer-service form
)

// Sender sends a customer-service message (wechatapi.Client does, with
// the shared access_token and its refresh on 40001/42001).
type Sender interface {
	CustomSend(ctx context.Context, msg wechatapi.CustomMessage) error
}

// Options configure a Service. Conn, API, Store, Reply, Logger and
// Registerer are required.
type Options struct {
	Conn *nats.Conn
	// API is the customer-service sender of an account (wechatapi.Clients'
	// For): each account's late replies go through its own AppID.
	API func(account string) (Sender, error)
	// Accounts bound the account label of wxgate_late_replies_total, and
	// say whether other accounts share the senders; nil: the default alone.
	Accounts *accounts.Registry
	// Store holds what became of each reply: the late sender finds the
	// reply there and marks its send there.
	Store *dedup.Store
	// Reply runs the handler for m, read from raw and sent to account (the
	// store runs it once across replicas, when no reply exists); empty
	// means nothing to say.
	Reply func(ctx context.Context, account string, m *wechat.Message, raw []byte) ([]byte, error)
	// MessageWindow and EventWindow are how long after a person's message,
	// and after their subscribe, SCAN or menu click, WeChat takes a
	// customer-service message to them. Defaults 48h and 60s.
	MessageWindow, EventWindow time.Duration
	// AckWait is how long a late reply may take before another worker
	// takes the event over (and finds the send's mark); a send that waits
	// on WeChat keeps extending it. Default 10s.
	AckWait time.Duration
	// Settle is how long after an event was received its late reply
	// waits before it asks for the reply (config.LateSettle): a first
	// delivery reaches a worker's hands by then, where a lookup finds it,
	// so the late reply waits for its reply instead of running the handler
	// beside it. It matters only when the ingress's REPLY_TIMEOUT is
	// shorter than that. Zero: none.
	Settle time.Duration
	// RetryBase is the first back-off after a failed attempt (a handler
	// error, WeChat busy or out of reach); it doubles, up to a minute.
	// Default 1s.
	RetryBase time.Duration
	// Backlog is how far back a new consumer starts: unanswered events
	// older than that, from before late replies were on, are not sent.
	// Default 10m.
	Backlog time.Duration
	// ID names this process in the marks.
	ID string
	// Outcomes counts late replies (NewOutcomes, with Accounts); nil makes
	// one on Registerer.
	Outcomes   *prometheus.CounterVec
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

func (o *Options) setDefaults() {
	if o.MessageWindow <= 0 {
		o.MessageWindow = 48 * time.Hour
	}
	if o.EventWindow <= 0 {
		o.EventWindow = time.Minute
	}
	if o.AckWait <= 0 {
		o.AckWait = 10 * time.Second
	}
	if o.Backlog <= 0 {
		o.Backlog = 10 * time.Minute
	}
	if o.RetryBase <= 0 {
		o.RetryBase = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

func (o *Options) validate() error {
	if o.Conn == nil || o.API == nil || o.Store == nil || o.Reply == nil || o.Logger == nil || o.Registerer == nil {
		return errors.New("late: Options.Conn, API, Store, Reply, Logger and Registerer are required")
	}
	return nil
}

// senders is how many late replies are worked on at once: sends wait on
// WeChat.
const senders = 8

// Service sends late replies.
type Service struct {
	o        Options
	js       jetstream.JetStream
	outcomes *prometheus.CounterVec

	mu   sync.Mutex
	cc   jetstream.ConsumeContext
	down error
	work chan jetstream.Msg
	wg   sync.WaitGroup
	busy map[string]int // late replies worked on, by account

	cancel context.CancelFunc
	done   chan struct{}
}

// Start starts the service: it sets itself up in the background, and keeps
// trying while JetStream is away.
func Start(o Options) (*Service, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.setDefaults()
	js, err := jetstream.New(o.Conn)
	if err != nil {
		return nil, fmt.Errorf("late: %w", err)
	}
	if o.Accounts == nil {
		if o.Accounts, err = accounts.Start(accounts.Options{Logger: o.Logger}); err != nil {
			return nil, err
		}
	}
	if o.Outcomes == nil {
		o.Outcomes = NewOutcomes(o.Registerer, o.Accounts)
	}
	s := &Service{o: o, js: js, down: errors.New("not started yet"), work: make(chan jetstream.Msg, 64), done: make(chan struct{}),
		outcomes: o.Outcomes, busy: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for i := 0; i < senders; i++ {
		s.wg.Add(1)
		go s.worker(ctx)
	}
	go s.supervise(ctx)
	return s, nil
}

// NewOutcomes registers wxgate_late_replies_total, every account's
// outcomes at zero from when it appears: a worker registers it whether
// late replies are on or not, so that the dashboard's series exist either
// way.
func NewOutcomes(reg prometheus.Registerer, accts *accounts.Registry) *prometheus.CounterVec {
	v := promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "wxgate_late_replies_total",
		Help: "Replies WeChat was answered without, sent later through the customer-service API, by account and outcome: sent, expired (the person's window closed), failed (WeChat refused), unsupported (no customer-service form).",
	}, []string{"account", "outcome"})
	accts.Series(func(id string) {
		for _, out := range []string{Sent, Expired, Failed, Unsupported} {
			v.WithLabelValues(id, out)
		}
	}, v)
	return v
}

// supervise sets the consumer up, and again when lost.
func (s *Service) supervise(ctx context.Context) {
	defer close(s.done)
	for {
		lost, err := s.setup(ctx)
		if err != nil {
			s.setDown(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // JetStream away: try again soon
			}
			continue
		}
		s.setDown(nil)
		select {
		case <-ctx.Done():
			s.stopConsume()
			return
		case <-lost:
			s.stopConsume()
			s.o.Logger.Warn("late replies: consumer lost; setting up again")
		}
	}
}

func (s *Service) setup(ctx context.Context) (<-chan struct{}, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg := jetstream.ConsumerConfig{
		Durable:       Consumer,
		Description:   "wxgate late replies",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.o.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 256,
	}
	switch c, err := s.js.Consumer(sctx, events.Unanswered, Consumer); {
	case err == nil:
		// It keeps its place: what came while no worker ran is still sent.
		cfg.DeliverPolicy, cfg.OptStartTime = c.CachedInfo().Config.DeliverPolicy, c.CachedInfo().Config.OptStartTime
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		// New (late replies just turned on, or the consumer lost): it
		// starts Backlog ago, not at the stream's 72 hours, which would
		// answer people days after they asked and run old handlers again.
		start := s.o.Now().Add(-s.o.Backlog)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	default:
		return nil, fmt.Errorf("consumer %s: %w", Consumer, err)
	}
	cons, err := s.js.CreateOrUpdateConsumer(sctx, events.Unanswered, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", Consumer, err)
	}
	lost := make(chan struct{})
	var once sync.Once
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case s.work <- m:
		case <-ctx.Done():
		}
	}, jetstream.PullMaxMessages(32),
		// Pulls that expire (and heartbeats) every few seconds: after
		// JetStream comes back, the unanswered events flow again within
		// seconds, not after the 30 s default.
		jetstream.PullExpiry(5*time.Second), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				once.Do(func() { close(lost) })
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	s.mu.Lock()
	s.cc = cc
	s.mu.Unlock()
	return lost, nil
}

func (s *Service) stopConsume() {
	s.mu.Lock()
	cc := s.cc
	s.cc = nil
	s.mu.Unlock()
	if cc != nil {
		cc.Stop()
		<-cc.Closed()
	}
}

func (s *Service) setDown(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = err
}

// Check reports whether late replies can be sent.
func (s *Service) Check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down != nil {
		return fmt.Errorf("late replies not running: %w", s.down)
	}
	return nil
}

// worker handles unanswered events until ctx ends. An account that holds
// its share of the senders already (half of them, while there are other
// accounts) has its event back a second later: one whose WeChat hangs, or
// whose handler is slow, leaves the others' late replies room.
func (s *Service) worker(ctx context.Context) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-s.work:
			account, _ := events.AccountOf(events.UnansweredPrefix, m.Subject())
			if !s.take(account) {
				_ = m.NakWithDelay(time.Second)
				continue
			}
			s.handle(ctx, m)
			s.put(account)
		}
	}
}

func (s *Service) take(account string) bool {
	share := senders
	if s.o.Accounts.Len() > 1 {
		share /= 2
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[account] >= share {
		return false
	}
	s.busy[account]++
	return true
}

func (s *Service) put(account string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[account]--; s.busy[account] <= 0 {
		delete(s.busy, account)
	}
}

// window is how long after m WeChat takes a customer-service message to
// its sender; ok is false for what opens none (a VIEW, a location report,
// an unfollow).
func (s *Service) window(m *wechat.Message) (time.Duration, bool) {
	if !m.IsEvent() {
		return s.o.MessageWindow, true
	}
	switch strings.ToLower(m.Event) {
	case "subscribe", "scan", "click", "scancode_push", "scancode_waitmsg":
		return s.o.EventWindow, true
	}
	return 0, false
}

func (s *Service) handle(ctx context.Context, msg jetstream.Msg) {
	m, err := wechat.Parse(msg.Data())
	account, ok := events.AccountOf(events.UnansweredPrefix, msg.Subject())
	if err != nil || !ok {
		s.o.Logger.Error("late replies: an unanswered event that is not a message of an account; dropped", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	received := events.Received(msg.Headers(), m)
	window, ok := s.window(m)
	if !ok {
		// A VIEW, a location report, an unfollow: WeChat takes no
		// customer-service message after these, and they have no reply to
		// carry. Not counted: nothing was to be sent.
		_ = msg.Ack()
		return
	}
	deadline := received.Add(window)
	key := m.DedupKey(account, msg.Data())
	ev := event{account, key}
	if early := received.Add(s.o.Settle).Sub(s.o.Now()); early > 0 {
		_ = msg.NakWithDelay(early)
		return
	}
	// The reply: found, awaited, or produced by the handler, bounded by the
	// window, not by the service (a stop lets it finish). Past the window
	// nothing runs: the ticket says only where the key stands.
	var run dedup.Handler
	until := s.o.Now().Add(5 * time.Second) // past the window: time to read the key
	if s.o.Now().Before(deadline) {
		run = func(hctx context.Context) ([]byte, error) { return s.o.Reply(hctx, account, m, msg.Data()) }
		until = deadline
	}
	rctx, cancel := context.WithDeadline(context.Background(), until)
	defer cancel()
	stopProgress := s.inProgress(msg)
	t, err := s.o.Store.ForLate(rctx, key, run)
	stopProgress()
	switch {
	case errors.Is(err, dedup.ErrSettled):
		s.o.Logger.Debug("late reply already settled", "dedup_key", key, "err", err)
		_ = msg.Ack()
		return
	case errors.Is(err, dedup.ErrUnavailable):
		// The store says why in Check, and sets itself up again.
		s.o.Logger.Debug("late reply waits for the replies store", "dedup_key", key, "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	case err != nil && rctx.Err() != nil:
		s.settle(msg, nil, ev, Expired, nil)
		return
	case err != nil:
		attempt := deliveries(msg)
		if attempt >= maxHandlerAttempts {
			s.settle(msg, nil, ev, Failed, fmt.Errorf("the handler failed %d times: %w", attempt, err))
			return
		}
		s.o.Logger.Warn("late reply: the handler failed; will retry", "dedup_key", key, "attempt", attempt, "err", err)
		_ = msg.NakWithDelay(s.backoff(attempt))
		return
	case run == nil && t.Tried:
		// Tried inside the window and refused for reasons that pass
		// (WeChat busy, out of reach): a failure, for the alert.
		s.settle(msg, t, ev, Failed, errors.New("WeChat busy or out of reach until the window closed"))
		return
	case run == nil:
		s.settle(msg, t, ev, Expired, nil)
		return
	case len(t.Body) == 0:
		_ = msg.Ack() // nothing to say
		return
	}
	cm, ok := customMessage(m.FromUserName, t.Body)
	if !ok {
		s.settle(msg, t, ev, Unsupported, nil)
		return
	}
	s.send(ctx, msg, t, ev, cm, deadline)
}

// maxHandlerAttempts bounds the runs of a handler that fails: after it, the
// late reply is counted failed instead of hammering the handler (and the
// log) until the window closes.
const maxHandlerAttempts = 5

// deliveries is how many times the event has been delivered, this one
// included (1 when unknown).
func deliveries(msg jetstream.Msg) int {
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 0 {
		return int(md.NumDelivered)
	}
	return 1
}

// backoff is the wait before attempt+1: RetryBase doubling, at most a
// minute.
func (s *Service) backoff(attempt int) time.Duration {
	return min(s.o.RetryBase<<min(max(attempt-1, 0), 6), time.Minute)
}

// inProgress tells JetStream the event is being worked on while a handler
// runs longer than the ack wait.
func (s *Service) inProgress(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(s.o.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// send makes one attempt at sending cm. The mark "sending" goes first: a
// worker killed after the send and before its outcome leaves it, and
// nobody sends again (one killed after the mark and before the send leaves
// the reply unsent: at most once, never twice). A refusal that passes
// (WeChat busy, -1, or a call that never left: no token, no connection)
// turns the mark to "retry" and the event comes back after a back-off; a
// failure that leaves unknown whether WeChat has it (a timeout, a
// connection lost while waiting for the answer) is not tried again.
func (s *Service) send(ctx context.Context, msg jetstream.Msg, t *dedup.Ticket, ev event, cm wechatapi.CustomMessage, deadline time.Time) {
	api, err := s.o.API(ev.account)
	if err != nil { // no AppSecret, or the account went: nothing can send it
		s.settle(msg, t, ev, Failed, err)
		return
	}
	if err := t.Mark(ctx, dedup.MarkSending, []byte(s.o.ID)); err != nil {
		if errors.Is(err, dedup.ErrSettled) {
			_ = msg.Ack() // another worker, or a retry, got there first
			return
		}
		_ = msg.NakWithDelay(time.Second)
		return
	}
	// Not cut by a stop: once asked, WeChat's answer decides the mark.
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	sendErr := api.CustomSend(sctx, cm)
	outcome, again := classify(sendErr)
	mark, payload := dedup.MarkDone, t.Body
	switch {
	case outcome == Sent:
		mark, payload = dedup.MarkSent, nil
	case again && s.o.Now().Before(deadline):
		mark = dedup.MarkRetry
	case again:
		outcome = Failed // tried until the window closed
	case !isAnswer(sendErr):
		mark, payload = dedup.MarkUnknown, nil
	}
	uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ucancel()
	if err := t.Mark(uctx, mark, payload); err != nil {
		s.o.Logger.Warn("late reply: mark not updated", "dedup_key", ev.key, "err", err)
	}
	if mark == dedup.MarkRetry {
		attempt := deliveries(msg)
		s.o.Logger.Info("late reply not sent yet; will try again", "account", ev.account, "dedup_key", ev.key, "attempt", attempt, "err", sendErr)
		_ = msg.NakWithDelay(s.backoff(attempt))
		return
	}
	s.count(ev, outcome, sendErr)
	_ = msg.Ack()
}

// classify maps WeChat's answer to an outcome, and says whether the send
// may be made again without WeChat seeing it twice.
func classify(err error) (outcome string, again bool) {
	var apiErr *wechatapi.Error
	switch {
	case err == nil:
		return Sent, false
	case errors.As(err, &apiErr) && apiErr.Code == 45015:
		return Expired, false // the window closed, or the person unfollowed
	case errors.As(err, &apiErr) && apiErr.Code == -1:
		return Failed, true // system busy: not taken
	case errors.As(err, &apiErr):
		return Failed, false // 45047 (count used up), 48001, 45009, ...
	case errors.Is(err, wechatapi.ErrNotSent):
		return Failed, true // never left: no token, no connection
	default:
		return Failed, false // may have reached WeChat: never twice
	}
}

// isAnswer says WeChat answered (an errcode): it did not take the message.
func isAnswer(err error) bool {
	var apiErr *wechatapi.Error
	return errors.As(err, &apiErr)
}

// event is the unanswered event a late reply is for: its account and its
// message's dedup key.
type event struct{ account, key string }

// settle records a late reply that will not be sent (marked done, with its
// reply for a retry that may still answer with it, when there is a ticket),
// counts it, and acks.
func (s *Service) settle(msg jetstream.Msg, t *dedup.Ticket, ev event, outcome string, cause error) {
	if t != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = t.Mark(ctx, dedup.MarkDone, t.Body)
		cancel()
	}
	s.count(ev, outcome, cause)
	_ = msg.Ack()
}

func (s *Service) count(ev event, outcome string, cause error) {
	account := s.o.Accounts.Label(ev.account)
	s.outcomes.WithLabelValues(account, outcome).Inc()
	switch outcome {
	case Sent:
		s.o.Logger.Info("late reply sent", "account", account, "dedup_key", ev.key)
	case Expired:
		s.o.Logger.Info("late reply expired: the person's window closed", "account", account, "dedup_key", ev.key, "err", cause)
	default:
		s.o.Logger.Warn("late reply not sent", "account", account, "outcome", outcome, "dedup_key", ev.key, "err", cause)
	}
}

// Stop stops taking events; sends in progress finish or are cut at ctx.
func (s *Service) Stop(ctx context.Context) error {
	s.cancel()
	done := make(chan struct{})
	go func() { <-s.done; s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("late replies stop: %w", ctx.Err())
	}
}
