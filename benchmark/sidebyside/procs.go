package sidebyside

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/child"
)

// build compiles the binaries into dir: ours, and nats-server at the
// version go.mod pins.
func build(ctx context.Context, dir string) error {
	return child.Build(ctx, dir, map[string]string{
		"ingress":     "github.com/wxgate/wxgate/ingress",
		"workers":     "github.com/wxgate/wxgate/workers",
		"nats-server": "github.com/nats-io/nats-server/v2",
	})
}

// proc is a child process whose output lines can be waited for. name, cmd
// and done mirror the child's for the soak's killer (analytics.go).
type proc struct {
	*child.Process
	name string
	cmd  *exec.Cmd
	done <-chan struct{}
}

// startTimeout bounds each wait for a line: a process starting on a loaded
// machine.
const startTimeout = time.Minute

func startProc(name, path string, env []string, args ...string) (*proc, error) {
	c, err := child.Start(name, path, env, args...)
	if err != nil {
		return nil, err
	}
	return &proc{Process: c, name: name, cmd: c.Cmd(), done: c.Exited()}, nil
}

// waitLine waits for an output line matching re and returns its submatches.
func (p *proc) waitLine(re *regexp.Regexp) ([]string, error) {
	line, err := p.WaitLine(re.String(), startTimeout, re.MatchString)
	if err != nil {
		return nil, fmt.Errorf("%w:\n%s", err, p.Tail(20))
	}
	return re.FindStringSubmatch(line), nil
}

// listen waits for a wxgate binary to log the bound address of a listener.
func (p *proc) listen(listener string) (string, error) {
	addr, err := p.ListenAddr(listener, startTimeout)
	if err != nil {
		return "", fmt.Errorf("%w:\n%s", err, p.Tail(20))
	}
	return addr, nil
}

// stop ends the process: SIGTERM, then SIGKILL after 15 s.
func (p *proc) stop() { _ = p.Stop(15 * time.Second) }

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
