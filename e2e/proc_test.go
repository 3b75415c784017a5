package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDir holds the binaries built once for the whole package by TestMain.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wxgate-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		// nats-server is built from the module version go.mod pins, so the
		// tests run against the server production would use.
		for name, pkg := range map[string]string{
			"ingress":     "github.com/wxgate/wxgate/ingress",
			"workers":     "github.com/wxgate/wxgate/workers",
			"wxsim":       "github.com/wxgate/wxgate/wxsim",
			"nats-server": "github.com/nats-io/nats-server/v2",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: building %s: %v\n", name, err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// proc is a child process whose stderr lines the test can wait for.
type proc struct {
	name string
	cmd  *exec.Cmd

	mu     sync.Mutex
	lines  []string
	notify chan struct{} // closed and replaced on every new line
	exited chan struct{}
}

// start runs a built binary with env added to a minimal environment; the
// process is stopped (SIGTERM, then SIGKILL) when the test ends.
func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	p := &proc{name: name, cmd: cmd, notify: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go p.read(stderr)
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, p.output())
		}
	})
	return p
}

func (p *proc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		close(p.notify)
		p.notify = make(chan struct{})
		p.mu.Unlock()
	}
	_ = p.cmd.Wait()
	close(p.exited)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitLine waits for an output line that match accepts and returns it.
func (p *proc) waitLine(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for i := 0; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if match(p.lines[i]) {
				line := p.lines[i]
				p.mu.Unlock()
				return line
			}
		}
		notify := p.notify
		p.mu.Unlock()
		select {
		case <-notify:
		case <-p.exited:
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if i == n {
				t.Fatalf("%s exited before %s", p.name, what)
			}
		case <-timeout:
			t.Fatalf("%s: no %s within 30s", p.name, what)
		}
	}
}

// waitLog waits for a JSON log line with the given msg and fields.
func (p *proc) waitLog(t *testing.T, msg string, fields map[string]string) map[string]any {
	t.Helper()
	var rec map[string]any
	p.waitLine(t, "log "+msg, func(line string) bool {
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
	return rec
}

// listenAddr waits for a wxgate binary to log the bound address of a listener.
func (p *proc) listenAddr(t *testing.T, listener string) string {
	t.Helper()
	return p.waitLog(t, "listening", map[string]string{"listener": listener})["addr"].(string)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// terminate sends SIGTERM and returns the exit code.
func (p *proc) terminate(t *testing.T) int {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30s of SIGTERM", p.name)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Errorf("%s ignored SIGTERM for 15s; killing it", p.name)
		p.kill(t)
	}
}

var natsAddrRE = regexp.MustCompile(`Listening for client connections on (\S+)`)
var monitorAddrRE = regexp.MustCompile(`Starting http monitor on (\S+)`)

// natsServer runs the real nats-server binary on loopback with JetStream.
type natsServer struct {
	*proc
	url     string
	monitor string
}

func startNATS(t *testing.T) *natsServer {
	t.Helper()
	return startNATSAt(t, "-1", t.TempDir())
}

// startNATSAt runs nats-server on a given port and store directory, so a
// test can stop it and start it again where the clients expect it.
func startNATSAt(t *testing.T, port, storeDir string) *natsServer {
	t.Helper()
	p := start(t, "nats-server", nil, "-a", "127.0.0.1", "-p", port, "-m", "-1", "-js", "-sd", storeDir)
	mon := monitorAddrRE.FindStringSubmatch(p.waitLine(t, "monitor address", monitorAddrRE.MatchString))[1]
	addr := natsAddrRE.FindStringSubmatch(p.waitLine(t, "client address", natsAddrRE.MatchString))[1]
	p.waitLine(t, "readiness", func(l string) bool { return strings.Contains(l, "Server is ready") })
	return &natsServer{proc: p, url: "nats://" + addr, monitor: "http://" + mon}
}

// connections reads the server's current client connection count.
func (n *natsServer) connections(t *testing.T) int {
	t.Helper()
	var v struct {
		Connections int `json:"connections"`
	}
	getJSON(t, n.monitor+"/varz", &v)
	return v.Connections
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
}

// eventually polls cond until it holds, for state that has no event to
// wait on (a server's view of its connections, a readiness endpoint).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
