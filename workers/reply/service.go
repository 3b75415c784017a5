package reply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxgate/wxgate/shared/bus"
	"github.com/wxgate/wxgate/shared/wechat"
)

// Version is the micro service version (SemVer, as micro requires).
const Version = "0.1.0"

// Options wire a Service.
type Options struct {
	Conn       *nats.Conn
	Replier    *Replier
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now stamps replies' CreateTime; time.Now when nil.
	Now func() time.Time
	// Observe, when set, sees every handled message with its dedup key and
	// the time the ingress received it (the analytics fan-out). It must not
	// block: the reply waits for it.
	Observe func(m *wechat.Message, dedupKey string, received time.Time)
}

// Handler is a worker's decision without the bus: raw message in, reply
// XML out.
type Handler struct {
	replier *Replier
	now     func() time.Time
}

// NewHandler returns a Handler; now stamps replies (time.Now when nil).
func NewHandler(r *Replier, now func() time.Time) *Handler {
	if now == nil {
		now = time.Now
	}
	return &Handler{replier: r, now: now}
}

// Service answers msg.> and event.> requests in the workers' queue group.
type Service struct {
	*Handler
	svc     micro.Service
	logger  *slog.Logger
	observe func(*wechat.Message, string, time.Time)
	metrics *metrics
}

// ErrMalformed is what Handle returns for a payload that is not a message.
var ErrMalformed = errors.New("malformed message")

// Start registers the service on the connection and begins serving.
func Start(o Options) (*Service, error) {
	if o.Conn == nil || o.Replier == nil || o.Logger == nil || o.Registerer == nil {
		return nil, errors.New("reply: Conn, Replier, Logger and Registerer are required")
	}
	s := &Service{Handler: NewHandler(o.Replier, o.Now), logger: o.Logger, observe: o.Observe, metrics: newMetrics(o.Registerer)}
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

// Stop drains the service's subscriptions: requests already received are
// answered, no new ones are taken.
func (s *Service) Stop() error { return s.svc.Stop() }

// ID is this instance's micro service ID.
func (s *Service) ID() string { return s.svc.Info().ID }

func (s *Service) serve(req micro.Request) {
	start := time.Now()
	subject := req.Subject()
	m, body, err := s.handle(req.Data())
	if err != nil {
		s.logger.Warn("worker rejected request", "subject", subject, "err", err)
		_ = req.Error("400", err.Error(), nil)
	} else {
		if err := req.Respond(body); err != nil {
			s.logger.Error("worker respond", "subject", subject, "err", err)
		}
		if s.observe != nil {
			h := req.Headers()
			key := h.Get(bus.HeaderDedupKey)
			if key == "" {
				key = m.DedupKey()
			}
			received, ok := bus.ParseTime(h.Get(bus.HeaderReceived))
			if !ok {
				received = s.now()
			}
			s.observe(m, key, received)
		}
	}
	s.metrics.observe(subject, time.Since(start))
	if s.logger.Enabled(context.Background(), slog.LevelDebug) {
		s.logger.Debug("handled", "subject", subject, "dedup_key", req.Headers().Get(bus.HeaderDedupKey), "duration", time.Since(start))
	}
}

// Handle parses a raw message and returns the reply XML, or an empty body
// when there is nothing to say. It is the whole of a worker's decision, so
// it can also run without a bus.
func (s *Handler) Handle(data []byte) ([]byte, error) {
	_, body, err := s.handle(data)
	return body, err
}

func (s *Handler) handle(data []byte) (*wechat.Message, []byte, error) {
	m, err := wechat.Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	r := s.replier.Reply(m)
	if r == nil {
		return m, nil, nil
	}
	return m, r.ReplyTo(m, s.now().Unix()), nil
}
