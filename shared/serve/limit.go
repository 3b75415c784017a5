package serve

import (
	"io"
	"net"
	"sync"
	"time"
)

// Option configures Start.
type Option func(*Server)

// MaxConns caps open connections at n. A connection past the cap is
// answered 503 and closed at once, rather than left waiting in the
// kernel's backlog where the client cannot tell it from a hang; onRefuse
// (may be nil) counts it.
func MaxConns(n int, onRefuse func()) Option {
	return func(s *Server) {
		if n > 0 {
			s.ln = &limitListener{Listener: s.ln, slots: make(chan struct{}, n), onRefuse: onRefuse}
		}
	}
}

type limitListener struct {
	net.Listener
	slots    chan struct{}
	onRefuse func()
}

// open is how many connections hold a slot.
func (l *limitListener) open() int { return len(l.slots) }

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			if l.onRefuse != nil {
				l.onRefuse()
			}
			go refuse(c)
		}
	}
}

const overLimit = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 22\r\nConnection: close\r\n\r\ntoo many connections\r\n"

// refuse reads what the client sent first (so that closing does not reset
// the connection under its response), answers 503 and closes.
func refuse(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = c.Read(make([]byte, 4096))
	_, _ = io.WriteString(c, overLimit)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
}

// OpenConns is how many connections are open, with MaxConns; -1 without.
func (s *Server) OpenConns() int {
	if l, ok := s.ln.(*limitListener); ok {
		return l.open()
	}
	return -1
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Close frees the slot first, so that a client which sees the connection
// closed can count on the slot being free.
func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
