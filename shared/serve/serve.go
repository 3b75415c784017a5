// Package serve runs HTTP listeners with the lifecycle every wxgate process
// needs: bind first (so the bound address can be logged and tested), serve
// in the background, shut down gracefully.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
)

// Server is a started http.Server.
type Server struct {
	name   string
	srv    *http.Server
	ln     net.Listener
	errc   chan error
	logger *slog.Logger
}

// Start listens on srv.Addr and serves in the background. name identifies
// the listener in logs ("http", "admin"); the log line "listening" carries
// the bound address, which matters when the port was 0.
func Start(name string, srv *http.Server, logger *slog.Logger, opts ...Option) (*Server, error) {
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", name, err)
	}
	if srv.ErrorLog == nil {
		srv.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	}
	s := &Server{name: name, srv: srv, ln: ln, errc: make(chan error, 1), logger: logger}
	for _, o := range opts {
		o(s)
	}
	logger.Info("listening", "listener", name, "addr", ln.Addr().String())
	go func() {
		err := srv.Serve(s.ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.errc <- err
	}()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Done yields the error that stopped the server unexpectedly, or nil after
// Shutdown.
func (s *Server) Done() <-chan error { return s.errc }

// CloseKeepAlives makes every later response close its connection, so
// clients reconnect (through their load balancer) before Shutdown.
func (s *Server) CloseKeepAlives() { s.srv.SetKeepAlivesEnabled(false) }

// Shutdown stops accepting connections and waits, until ctx is done, for
// in-flight requests to finish.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("%s shutdown: %w", s.name, err)
	}
	return nil
}
