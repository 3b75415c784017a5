package child

import (
	"strings"
	"testing"
	"time"
)

func sh(t *testing.T, script string) *Process {
	t.Helper()
	p, err := Start("sh", "/bin/sh", []string{"GREETING=hello"}, "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	return p
}

func TestWaitLineAndLog(t *testing.T) {
	p := sh(t, `echo "$GREETING"; echo '{"msg":"listening","listener":"http","addr":"127.0.0.1:1"}' >&2; exec sleep 60`)
	if line, err := p.WaitLine("greeting", 10*time.Second, func(l string) bool { return strings.HasPrefix(l, "hell") }); err != nil || line != "hello" {
		t.Fatalf("WaitLine = %q, %v", line, err)
	}
	if addr, err := p.ListenAddr("http", 10*time.Second); err != nil || addr != "127.0.0.1:1" {
		t.Fatalf("ListenAddr = %q, %v", addr, err)
	}
	if _, err := p.WaitLine("nothing", 50*time.Millisecond, func(string) bool { return false }); err == nil || !strings.Contains(err.Error(), "within") {
		t.Fatalf("a line that never comes: %v", err)
	}
	if code, err := p.Terminate(10 * time.Second); err != nil || code != -1 {
		t.Fatalf("Terminate = %d, %v; want -1 (ended by the signal)", code, err)
	}
}

// A process that exits without the line fails the wait at once, not at
// the timeout.
func TestWaitLineFailsFastOnExit(t *testing.T) {
	p := sh(t, `echo starting; exit 3`)
	start := time.Now()
	_, err := p.WaitLine("ready", time.Minute, func(l string) bool { return l == "ready" })
	if err == nil || !strings.Contains(err.Error(), "exited (code 3) before ready") || time.Since(start) > 10*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	if p.ExitCode() != 3 || p.Output() != "starting" {
		t.Fatalf("exit %d, output %q", p.ExitCode(), p.Output())
	}
}

func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	p := sh(t, `trap '' TERM; echo up; while :; do sleep 0.05; done`)
	if _, err := p.WaitLine("up", 10*time.Second, func(l string) bool { return l == "up" }); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop = %v, want it killed", err)
	}
	select {
	case <-p.Exited():
	default:
		t.Fatal("still running after Stop")
	}
}
