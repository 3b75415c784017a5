// Package child runs the project's binaries as child processes, for the
// end-to-end tests and the side-by-side benchmark: it builds them, starts
// them, keeps their output lines, waits for a line, and stops them. Every
// call returns an error; tests wrap it in their own failing helpers.
package child

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles each package (name: import path) into dir/name.
func Build(ctx context.Context, dir string, pkgs map[string]string) error {
	for name, pkg := range pkgs {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, name), pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}

// maxLines bounds the output kept: a long soak must not grow without end.
// Past it, the older half is dropped.
const maxLines = 100_000

// Process is a started child whose stdout and stderr lines can be waited for.
type Process struct {
	Name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string
	dropped int           // lines dropped from the front of lines
	notify  chan struct{} // closed and replaced on every new line
	exited  chan struct{} // closed once the output is read and the process reaped
}

// Start runs path with args. Its environment is PATH and env, nothing else,
// so nothing from the caller's environment changes its configuration.
func Start(name, path string, env []string, args ...string) (*Process, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = cmd.Stderr // one pipe: the lines stay in the order written
	p := &Process{Name: name, cmd: cmd, notify: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			if len(p.lines) == maxLines {
				p.dropped += maxLines / 2
				p.lines = append(p.lines[:0:0], p.lines[maxLines/2:]...)
			}
			p.lines = append(p.lines, sc.Text())
			close(p.notify)
			p.notify = make(chan struct{})
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Cmd is the running command, for what this package does not wrap (its
// pid); do not Wait on it.
func (p *Process) Cmd() *exec.Cmd { return p.cmd }

// Exited is closed once the process has exited and all its output is read.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitCode is the exit code once Exited is closed; -1 if a signal ended it.
func (p *Process) ExitCode() int {
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// WaitLine waits for an output line, since the start, that match accepts,
// and returns it. It fails at once if the process exits without one; what
// names the line in the error.
func (p *Process) WaitLine(what string, timeout time.Duration, match func(string) bool) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := 0; ; {
		p.mu.Lock()
		i = max(i, p.dropped)
		for ; i < p.dropped+len(p.lines); i++ {
			if line := p.lines[i-p.dropped]; match(line) {
				p.mu.Unlock()
				return line, nil
			}
		}
		notify := p.notify
		p.mu.Unlock()
		select {
		case <-notify:
		case <-p.exited:
			p.mu.Lock()
			more := i < p.dropped+len(p.lines)
			p.mu.Unlock()
			if !more { // every line read and none matched
				return "", fmt.Errorf("%s exited (code %d) before %s", p.Name, p.ExitCode(), what)
			}
		case <-deadline.C:
			return "", fmt.Errorf("%s: no %s within %v", p.Name, what, timeout)
		}
	}
}

// WaitLog waits for a JSON log line with the given msg and fields (compared
// as printed by fmt) and returns it decoded.
func (p *Process) WaitLog(msg string, fields map[string]string, timeout time.Duration) (map[string]any, error) {
	var rec map[string]any
	_, err := p.WaitLine("log "+msg, timeout, func(line string) bool {
		rec = nil
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != msg {
			return false
		}
		for k, v := range fields {
			if fmt.Sprint(rec[k]) != v {
				return false
			}
		}
		return true
	})
	return rec, err
}

// ListenAddr waits for a wxgate binary to log the bound address of a
// listener ("http", "admin").
func (p *Process) ListenAddr(listener string, timeout time.Duration) (string, error) {
	rec, err := p.WaitLog("listening", map[string]string{"listener": listener}, timeout)
	if err != nil {
		return "", err
	}
	addr, ok := rec["addr"].(string)
	if !ok {
		return "", fmt.Errorf("%s: listening log without addr: %v", p.Name, rec)
	}
	return addr, nil
}

// Signal sends sig.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill sends SIGKILL and waits until the process is gone.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Terminate sends SIGTERM and returns the exit code, or an error if the
// process is still running after timeout.
func (p *Process) Terminate(timeout time.Duration) (int, error) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		return -1, fmt.Errorf("%s did not exit within %v of SIGTERM", p.Name, timeout)
	}
}

// Stop ends the process if it still runs: SIGTERM, then SIGKILL after
// grace. The error says it had to be killed.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if _, err := p.Terminate(grace); err != nil {
		p.Kill()
		return fmt.Errorf("%w; killed", err)
	}
	return nil
}

// Output is every line kept so far.
func (p *Process) Output() string { return p.Tail(maxLines) }

// Tail is the last n lines kept.
func (p *Process) Tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := strings.Join(p.lines[max(0, len(p.lines)-n):], "\n")
	if p.dropped > 0 && n >= len(p.lines) {
		s = fmt.Sprintf("[%d earlier lines dropped]\n%s", p.dropped, s)
	}
	return s
}
