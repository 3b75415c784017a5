package sidebyside

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// build compiles the binaries into dir: ours, and nats-server at the
// version go.mod pins.
func build(ctx context.Context, dir string) error {
	for name, pkg := range map[string]string{
		"ingress":     "github.com/wxgate/wxgate/ingress",
		"workers":     "github.com/wxgate/wxgate/workers",
		"nats-server": "github.com/nats-io/nats-server/v2",
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, name), pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}

// proc is a child process whose output lines can be waited for.
type proc struct {
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	notify chan struct{}
	done   chan struct{}
}

func startProc(name, path string, env []string, args ...string) (*proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = cmd.Stderr
	p := &proc{name: name, cmd: cmd, notify: make(chan struct{}), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			if len(p.lines) < 10000 {
				p.lines = append(p.lines, sc.Text())
			}
			close(p.notify)
			p.notify = make(chan struct{})
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitLine waits for an output line matching re and returns its submatches.
func (p *proc) waitLine(re *regexp.Regexp) ([]string, error) {
	timeout := time.After(60 * time.Second)
	for i := 0; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if m := re.FindStringSubmatch(p.lines[i]); m != nil {
				p.mu.Unlock()
				return m, nil
			}
		}
		notify := p.notify
		p.mu.Unlock()
		select {
		case <-notify:
		case <-p.done:
			return nil, fmt.Errorf("%s exited before %s:\n%s", p.name, re, p.tail())
		case <-timeout:
			return nil, fmt.Errorf("%s: no %s within 60s:\n%s", p.name, re, p.tail())
		}
	}
}

// listen waits for a wxgate binary to log the bound address of a listener.
func (p *proc) listen(listener string) (string, error) {
	m, err := p.waitLine(regexp.MustCompile(`"msg":"listening","listener":"` + listener + `","addr":"([^"]+)"`))
	if err != nil {
		return "", err
	}
	return m[1], nil
}

func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := max(0, len(p.lines)-20)
	return strings.Join(p.lines[n:], "\n")
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// usage is a process's resident memory and CPU time so far, from /proc.
type usage struct {
	rssKB int64
	cpu   time.Duration
}

func (p *proc) usage() usage { return pidUsage(p.cmd.Process.Pid) }

// selfUsage is this process's: the load generator's share of the machine.
func selfUsage() usage { return pidUsage(os.Getpid()) }

func pidUsage(pid int) usage {
	var u usage
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				u.rssKB, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command name, which may hold spaces: utime is
		// field 14 and stime 15, in clock ticks (100 per second on Linux).
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 13 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				u.cpu = time.Duration(ut+st) * 10 * time.Millisecond
			}
		}
	}
	return u
}
