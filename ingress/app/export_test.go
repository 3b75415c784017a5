package app

import "github.com/nats-io/nats.go"

// WorkerConn is the standalone workers' NATS connection, for tests that
// break it.
func (a *App) WorkerConn() *nats.Conn { return a.workerNC }
