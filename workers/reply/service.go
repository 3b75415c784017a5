package reply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/workers/dedup"
)

// Version is the micro service version (SemVer, as micro requires).
const Version = "0.1.0"

// Options wire a Service.
type Options struct {
	Conn    *nats.Conn
	Decider Decider // the built-in Replier, or an application's own
	// Accounts bound the account label of the metrics (an id this process
	// does not serve is "unknown"), and say whether other accounts share
	// the worker; nil: the default alone.
	Accounts *accounts.Registry
	// Dedup, when set, runs each message's handler once across replicas and
	// answers retries with its reply, marked so that no late reply sends it
	// too; nil handles every request.
	Dedup      *dedup.Store
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now stamps replies' CreateTime; time.Now when nil.
	Now func() time.Time
	// Concurrency bounds the requests one worker holds at once (waiting
	// retries included); past it the subscription backs up. While several
	// accounts exist, one account may hold at most half of them: past
	// that its requests are answered at once with the error ErrorCodeBusy
	// (a fallback, and a late reply), so that a burst on it, or a handler
	// of its that hangs, leaves the others room. Default 1024.
	Concurrency int
	// HandlerTimeout bounds every handler run, with or without Dedup.
	// Default 20s.
	HandlerTimeout time.Duration
	// LateReplies says a late sender runs here: a retry's reply that could
	// not be marked is then left to it (answered with an error the ingress
	// turns into a fallback, recorded for the late reply). Without one it
	// is answered as it is: a fallback would be silence.
	LateReplies bool
}

// Handler is a worker's decision without the bus: raw message in, reply
// XML out.
type Handler struct {
	decider Decider
	now     func() time.Time
}

// NewHandler returns a Handler; now stamps replies (time.Now when nil).
func NewHandler(d Decider, now func() time.Time) *Handler {
	if now == nil {
		now = time.Now
	}
	return &Handler{decider: d, now: now}
}

// Service answers msg.> and event.> requests in the workers' queue group.
type Service struct {
	*Handler
	svc      micro.Service
	dedup    *dedup.Store
	accounts *accounts.Registry
	logger   *slog.Logger
	timeout  time.Duration
	late     bool
	metrics  *metrics
	slots    chan struct{}  // one per request in hand
	pending  sync.WaitGroup // requests in hand
	// asking guards Ask's requests against Stop: one that began before
	// Stop is counted in pending before Stop waits on it.
	asking  sync.RWMutex
	stopped bool

	mu     sync.Mutex
	inHand map[string]int // requests in hand by account
}

// ErrMalformed is what Handle returns for a payload that is not a message.
var ErrMalformed = errors.New("malformed message")

// Start registers the service on the connection and begins serving.
func Start(o Options) (*Service, error) {
	if o.Conn == nil || o.Decider == nil || o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("reply: Conn, Decider, Logger and Registerer are required")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1024
	}
	if o.HandlerTimeout <= 0 {
		o.HandlerTimeout = 20 * time.Second
	}
	if o.Accounts == nil {
		var err error
		if o.Accounts, err = accounts.Start(accounts.Options{Logger: o.Logger}); err != nil {
			return nil, err
		}
	}
	s := &Service{
		Handler: NewHandler(o.Decider, o.Now), dedup: o.Dedup, accounts: o.Accounts, logger: o.Logger,
		timeout: o.HandlerTimeout, late: o.LateReplies, metrics: newMetrics(o.Registerer, o.Accounts),
		slots: make(chan struct{}, o.Concurrency), inHand: map[string]int{},
	}
	svc, err := micro.AddService(o.Conn, micro.Config{
		Name:        bus.ServiceName,
		Version:     Version,
		Description: "wxgate WeChat callback workers: passive replies",
		QueueGroup:  bus.QueueGroup,
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			o.Logger.Error("worker subscription error", "subject", e.Subject, "err", e.Description)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("add service: %w", err)
	}
	for name, subject := range map[string]string{"messages": bus.MessagesSubject, "events": bus.EventsSubject} {
		if err := svc.AddEndpoint(name, micro.HandlerFunc(s.serve), micro.WithEndpointSubject(subject)); err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("add endpoint %s: %w", subject, err)
		}
	}
	s.svc = svc
	// Once Start returns on a connected client, the server routes requests
	// here: a worker that says it started is really serving.
	if o.Conn.IsConnected() {
		if err := o.Conn.FlushTimeout(5 * time.Second); err != nil {
			o.Logger.Warn("worker flush after subscribe", "err", err)
		}
	}
	return s, nil
}

// Stop drains the service's subscriptions (no new requests), then waits
// for the requests in hand and for handlers still running to store their
// replies, until ctx ends.
func (s *Service) Stop(ctx context.Context) error {
	err := s.svc.Stop()
	s.asking.Lock()
	s.stopped = true
	s.asking.Unlock()
	done := make(chan struct{})
	go func() { s.pending.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return errors.Join(err, fmt.Errorf("requests still in hand: %w", ctx.Err()))
	}
	if s.dedup != nil {
		err = errors.Join(err, s.dedup.Wait(ctx))
		s.dedup.Close()
	}
	return err
}

// ID is this instance's micro service ID.
func (s *Service) ID() string { return s.svc.Info().ID }

// Check reports whether the service still takes requests: micro stops it
// when its connection closes.
func (s *Service) Check() error {
	if s.svc.Stopped() {
		return errors.New("reply service stopped")
	}
	return nil
}

// serve runs on the subscription's goroutine (or Ask's): it parses, then
// hands the request to its own goroutine so that a slow handler, or a
// retry waiting for another's reply, holds up nothing else. A first
// delivery is in hand from here, slot wait included: a retry's lookup
// finds it.
func (s *Service) serve(req micro.Request) {
	m, err := parse(req.Data())
	account, aerr := accountOf(req.Headers())
	if err = errors.Join(err, aerr); err != nil {
		s.logger.Warn("worker rejected request", "subject", req.Subject(), "err", err)
		_ = req.Error("400", err.Error(), nil)
		return
	}
	arrival := time.Now()
	if !s.take(account) {
		s.logger.Warn("an account's share of this worker is in use; answered busy", "account", s.accounts.Label(account), "subject", req.Subject())
		_ = req.Error(bus.ErrorCodeBusy, "the account's share of this worker is in use", nil)
		return
	}
	// Computed here, not taken from the header: anyone on the bus can send
	// a request, and the key becomes a KV key and a message ID.
	key := m.DedupKey(account, req.Data())
	var first *dedup.InHand
	if s.dedup != nil && req.Headers().Get(bus.HeaderRetry) != "1" {
		first = s.dedup.Arrived(key, arrival)
	}
	s.slots <- struct{}{}
	s.pending.Add(1)
	go func() {
		defer func() { <-s.slots; s.put(account); s.pending.Done() }()
		s.answer(req, account, m, key, first, deadline(req.Headers(), arrival))
	}()
}

// Ask answers msg in this process as the service answers a request on
// the bus, without a round trip through the NATS server: standalone mode,
// whose workers share the ingress's process, asks them with it. It returns
// what nats.Conn.RequestMsg would: the answer (micro's error headers on an
// error), nats.ErrTimeout when none came within wait, nats.ErrNoResponders
// once the service has stopped. msg's data and headers are read by the
// handler after Ask returns: the caller must not reuse them.
func (s *Service) Ask(msg *nats.Msg, wait time.Duration) (*nats.Msg, error) {
	s.asking.RLock()
	if s.stopped || s.svc.Stopped() {
		s.asking.RUnlock()
		return nil, nats.ErrNoResponders
	}
	s.pending.Add(1)
	s.asking.RUnlock()
	r := &asked{msg: msg, answer: make(chan *nats.Msg, 1)}
	t := time.NewTimer(wait)
	defer t.Stop()
	// On its own goroutine, as on the subscription's: serve may wait for
	// a slot, and the asker does not wait past wait.
	go func() {
		defer s.pending.Done()
		s.serve(r)
	}()
	select {
	case resp := <-r.answer:
		return resp, nil
	case <-t.C:
		return nil, nats.ErrTimeout
	}
}

// asked is a request made with Ask. Its answer channel holds one: an
// answer that comes after the asker gave up is dropped, not waited on.
type asked struct {
	msg    *nats.Msg
	answer chan *nats.Msg
}

func (r *asked) Respond(data []byte, opts ...micro.RespondOpt) error {
	m := &nats.Msg{Data: data}
	for _, opt := range opts {
		opt(m)
	}
	select {
	case r.answer <- m:
	default: // answered already
	}
	return nil
}

func (r *asked) RespondJSON(v any, opts ...micro.RespondOpt) error {
	data, err := json.Marshal(v)
	if err != nil {
		return micro.ErrMarshalResponse
	}
	return r.Respond(data, opts...)
}

func (r *asked) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	h := micro.Headers{micro.ErrorCodeHeader: {code}, micro.ErrorHeader: {description}}
	return r.Respond(data, append(opts, micro.WithHeaders(h))...)
}

func (r *asked) Data() []byte           { return r.msg.Data }
func (r *asked) Headers() micro.Headers { return micro.Headers(r.msg.Header) }
func (r *asked) Subject() string        { return r.msg.Subject }
func (r *asked) Reply() string          { return "" }

// take counts a request of account in hand, unless the account holds its
// share already: all the slots while it is the only account, half of them
// while there are others.
func (s *Service) take(account string) bool {
	share := cap(s.slots)
	if s.accounts.Len() > 1 {
		share /= 2
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inHand[account] >= share {
		return false
	}
	s.inHand[account]++
	return true
}

func (s *Service) put(account string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inHand[account]--; s.inHand[account] <= 0 {
		delete(s.inHand, account)
	}
}

// accountOf is the id of the account a request is for: its
// Wx-Account-Id, or the default without one (an older ingress).
func accountOf(h micro.Headers) (string, error) {
	switch id := h.Get(bus.HeaderAccountID); {
	case id == "":
		return accounts.DefaultID, nil
	case !accounts.ValidID(id):
		return "", fmt.Errorf("%s: not an account id", bus.HeaderAccountID)
	default:
		return id, nil
	}
}

func (s *Service) answer(req micro.Request, account string, m *wechat.Message, key string, first *dedup.InHand, deadline time.Time) {
	subject := req.Subject()
	run := func(ctx context.Context) ([]byte, error) { return s.Reply(ctx, account, m, req.Data()) }
	var body []byte
	var err error
	outcome := dedup.Ran
	switch {
	case s.dedup == nil:
		// Bounded like any handler.
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		body, err = run(ctx)
		cancel()
	case first != nil:
		// Bounded by HandlerTimeout alone: it carries on past the
		// request's deadline for the retry, or the late reply.
		body, outcome, err = s.dedup.First(first, deadline, run)
	default:
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		body, outcome, err = s.dedup.Retry(ctx, key, run)
		cancel()
	}
	switch {
	case errors.Is(err, dedup.ErrPending):
		// The ingress has answered "success" by now; the reply, when the
		// handler finishes, is stored for what comes next.
		s.logger.Debug("no reply before the deadline", "subject", subject, "dedup_key", key)
	case errors.Is(err, dedup.ErrNotMarked) && s.late:
		s.logger.Warn("reply not marked; left to the late reply", "subject", subject, "err", err)
		_ = req.Error(bus.ErrorCodeNotMarked, err.Error(), nil)
	case errors.Is(err, dedup.ErrNotMarked):
		s.logger.Warn("reply not marked; answered all the same (no late sender runs here)", "subject", subject, "err", err)
		err = nil
	case err != nil:
		s.logger.Warn("worker handler failed", "subject", subject, "err", err)
		_ = req.Error("500", "handler failed", nil)
	}
	if err == nil {
		if err := req.Respond(body); err != nil {
			s.logger.Error("worker respond", "subject", subject, "err", err)
		}
	}
	if s.logger.Enabled(context.Background(), slog.LevelDebug) {
		s.logger.Debug("handled", "subject", subject, "dedup_key", key, "outcome", outcome)
	}
}

// Reply runs the handler for m (read from raw), sent to account, timed in
// the metrics: what a first delivery, a retry and a late reply produce a
// reply with.
func (s *Service) Reply(ctx context.Context, account string, m *wechat.Message, raw []byte) ([]byte, error) {
	start := time.Now()
	body, err := s.decide(ctx, account, m, raw)
	s.metrics.observe(s.accounts.Label(account), m.Subject(), time.Since(start))
	return body, err
}

// deadline is when the ingress stops waiting, on this worker's clock: its
// arrival here plus the wait the ingress still had when it sent the
// request, less the answer's way back; at most WeChat's 5 s. A request
// that does not say (an older ingress) gets a second: a retry marked after
// its ingress gave up would keep the late reply from the person, one
// given up on too soon only sends it late.
func deadline(h micro.Headers, arrival time.Time) time.Time {
	const margin = 100 * time.Millisecond
	ms, err := strconv.ParseInt(h.Get(bus.HeaderTimeout), 10, 64)
	if err != nil || ms < 0 {
		return arrival.Add(time.Second)
	}
	return arrival.Add(min(max(time.Duration(ms)*time.Millisecond-margin, 0), 5*time.Second))
}

// Handle parses a raw message sent to account and returns the reply XML,
// or an empty body when there is nothing to say. It is the whole of a
// worker's decision, so it can also run without a bus.
func (s *Handler) Handle(account string, data []byte) ([]byte, error) {
	m, err := parse(data)
	if err != nil {
		return nil, err
	}
	return s.decide(context.Background(), account, m, data)
}

func parse(data []byte) (*wechat.Message, error) {
	m, err := wechat.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return m, nil
}

func (s *Handler) decide(ctx context.Context, account string, m *wechat.Message, raw []byte) ([]byte, error) {
	r, err := s.decider.Decide(ctx, account, m, raw)
	if err != nil || r == nil {
		return nil, err
	}
	return r.ReplyTo(m, s.now().Unix()), nil
}
