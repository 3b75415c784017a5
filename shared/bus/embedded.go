package bus

import (
	"cmp"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedOptions configures an in-process NATS server.
type EmbeddedOptions struct {
	// Listen is the client address ("127.0.0.1:4222"; port 0 picks one).
	// Empty means no listener: only in-process connections.
	Listen string
	// StoreDir is where JetStream keeps its files; empty disables JetStream.
	StoreDir string
	// Name is the server name; it must stay the same across restarts for
	// JetStream to find its data again.
	Name   string
	Logger *slog.Logger
	// Token, or User and Password, are the credentials every client must
	// present. With a listener and none of them, a random token is made:
	// the listener is never open to every local user. In-process clients
	// get them through ConnectOption.
	Token          string
	User, Password string
	// MaxPayload is the largest message the server takes (max_payload);
	// 0 is NATS's default, 1 MiB.
	MaxPayload int32
}

// Embedded is a NATS server running inside this process.
type Embedded struct {
	*server.Server
	auth nats.Option
	// Token is the token clients present (the generated one when none
	// was given); empty with user and password.
	Token string
}

// RunEmbedded starts a NATS server in process and waits until it accepts
// connections.
func RunEmbedded(o EmbeddedOptions) (*Embedded, error) {
	opts := &server.Options{
		ServerName: o.Name,
		NoSigs:     true, // the process owns its signals
		NoLog:      o.Logger == nil,
		MaxPayload: cmp.Or(o.MaxPayload, 1<<20),
	}
	if o.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats listen %q: %w", o.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("embedded nats listen %q: bad port", o.Listen)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		} else if ln, err := net.Listen("tcp", o.Listen); err != nil {
			// The server would only log this and never become ready; say
			// it now, and how to get out of the way.
			return nil, fmt.Errorf("embedded nats: cannot listen on %s (another NATS server running?): set -nats-listen (NATS_LISTEN) to a free address, or to empty for in-process connections only: %w", o.Listen, err)
		} else {
			ln.Close()
		}
		opts.Host, opts.Port = host, p
	}
	e := &Embedded{}
	switch {
	case o.User != "":
		opts.Username, opts.Password = o.User, o.Password
		e.auth = nats.UserInfo(o.User, o.Password)
	default:
		e.Token = o.Token
		if e.Token == "" {
			e.Token = rand.Text()
		}
		opts.Authorization = e.Token
		e.auth = nats.Token(e.Token)
	}
	if o.StoreDir != "" {
		opts.JetStream = true
		opts.StoreDir = o.StoreDir
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if o.Logger != nil {
		s.SetLoggerV2(serverLogger{o.Logger}, false, false, false)
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready for connections")
	}
	e.Server = s
	return e, nil
}

// ConnectOptions make a client connect to this server in process, without
// TCP, with its credentials. Pass them to Connect (the URL is then ignored).
func (e *Embedded) ConnectOptions() []nats.Option {
	return []nats.Option{nats.InProcessServer(e.Server), e.auth}
}

// AuthOption is the credentials option alone, for clients that connect
// over TCP (tests, tools).
func (e *Embedded) AuthOption() nats.Option { return e.auth }

// Close shuts the server down and waits until it has.
func (e *Embedded) Close() {
	e.Shutdown()
	e.WaitForShutdown()
}

// serverLogger routes the server's log through slog.
type serverLogger struct{ l *slog.Logger }

// Notices (the banner, "Server is ready") go to debug: the process logs
// what matters about the embedded server itself.
func (s serverLogger) Noticef(f string, v ...any) { s.l.Debug(fmt.Sprintf(f, v...)) }
func (s serverLogger) Warnf(f string, v ...any)   { s.l.Warn(fmt.Sprintf(f, v...)) }
func (s serverLogger) Fatalf(f string, v ...any)  { s.l.Error(fmt.Sprintf(f, v...)) }
func (s serverLogger) Errorf(f string, v ...any)  { s.l.Error(fmt.Sprintf(f, v...)) }
func (s serverLogger) Debugf(f string, v ...any)  { s.l.Debug(fmt.Sprintf(f, v...)) }
func (s serverLogger) Tracef(f string, v ...any)  { s.l.Debug(fmt.Sprintf(f, v...)) }
