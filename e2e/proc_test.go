package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wxgate/wxgate/shared/testutil/child"
	"github.com/wxgate/wxgate/shared/testutil/nettest"
	"github.com/wxgate/wxgate/shared/testutil/wait"
)

// binDir holds the binaries built once for the whole package by TestMain.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped under -short (builds the binaries and runs real processes)")
		os.Exit(0)
	}
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
		if err := child.Build(context.Background(), dir, map[string]string{
			"ingress":     "github.com/wxgate/wxgate/ingress",
			"workers":     "github.com/wxgate/wxgate/workers",
			"wxsim":       "github.com/wxgate/wxgate/wxsim",
			"slowworker":  "github.com/wxgate/wxgate/e2e/slowworker",
			"nats-server": "github.com/nats-io/nats-server/v2",
		}); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// proc is a child process whose output lines the test can wait for; its
// lower-case methods fail the test.
type proc struct{ *child.Process }

// stopGrace is how long a process may take to exit on SIGTERM at the end
// of a test: an ingress draining for its shutdown delay, then finishing.
const stopGrace = 15 * time.Second

// start runs a built binary (or another program, by its absolute path)
// with env added to a minimal environment; the process is stopped
// (SIGTERM, then SIGKILL) when the test ends.
func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	path := name
	if !filepath.IsAbs(path) {
		path = filepath.Join(binDir, name)
	}
	c, err := child.Start(name, path, append([]string{"HOME=" + t.TempDir()}, env...), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(stopGrace); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, c.Output())
		}
	})
	return &proc{c}
}

// waitLine waits for an output line that match accepts and returns it.
func (p *proc) waitLine(t *testing.T, what string, match func(string) bool) string {
	t.Helper()
	line, err := p.WaitLine(what, wait.Long, match)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// waitLog waits for a JSON log line with the given msg and fields.
func (p *proc) waitLog(t *testing.T, msg string, fields map[string]string) map[string]any {
	t.Helper()
	rec, err := p.WaitLog(msg, fields, wait.Long)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// listenAddr waits for a wxgate binary to log the bound address of a listener.
func (p *proc) listenAddr(t *testing.T, listener string) string {
	t.Helper()
	addr, err := p.ListenAddr(listener, wait.Long)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.Kill()
}

// terminate sends SIGTERM and returns the exit code.
func (p *proc) terminate(t *testing.T) int {
	t.Helper()
	code, err := p.Terminate(wait.Long)
	if err != nil {
		t.Fatal(err)
	}
	return code
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
func startNATSAt(t *testing.T, port, storeDir string, args ...string) *natsServer {
	t.Helper()
	p := start(t, "nats-server", nil, append([]string{"-a", "127.0.0.1", "-p", port, "-m", "-1", "-js", "-sd", storeDir}, args...)...)
	mon := monitorAddrRE.FindStringSubmatch(p.waitLine(t, "monitor address", monitorAddrRE.MatchString))[1]
	addr := natsAddrRE.FindStringSubmatch(p.waitLine(t, "client address", natsAddrRE.MatchString))[1]
	p.waitLine(t, "readiness", func(l string) bool { return strings.Contains(l, "Server is ready") })
	return &natsServer{proc: p, url: "nats://" + addr, monitor: "http://" + mon}
}

// connections reads the server's current client connection count.
func (n *natsServer) connections() (int, error) {
	var v struct {
		Connections int `json:"connections"`
	}
	err := nettest.FetchJSON(n.monitor+"/varz", &v)
	return v.Connections, err
}
